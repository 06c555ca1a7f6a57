"""Property tests: inline outputs and metadata round-trip exactly; max_age and leases obey §3–§4.

Each test opens one store (module scope) and gives every example its own key, so hypothesis's
many examples do not pay for a database each.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import identifier_pb2, literals_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flytecache import CacheStore
from flytecache.errors import AlreadyExistsError
from flytecache.store import ReservationOutcome
from flytecache.store.codec import literal_map_entries

PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
US = timedelta(microseconds=1)
START = datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)
_keys = itertools.count()


class _Clock:
    """The module's store clock (the shared ``clock`` fixture is per test function)."""

    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(scope="module")
def prop_clock() -> _Clock:
    return _Clock()


@pytest.fixture(scope="module")
def prop_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(tmp_path_factory.mktemp("properties") / "cache.db")


@pytest.fixture(scope="module")
def prop_store(prop_db: str, prop_clock: _Clock) -> Iterator[CacheStore]:
    with CacheStore.open(prop_db, clock=prop_clock) as opened:
        yield opened


def fresh_key(prefix: str) -> str:
    """A key no other example uses, in Flyte's shape (with '-', '+', '/', '=')."""
    return f"{prefix}-{next(_keys)}+/=ключ"


def ts_from_us(us: int) -> Timestamp:
    seconds, micros = divmod(us, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


# -- strategies ---------------------------------------------------------------------------------

# Protobuf strings must be valid UTF-8 (no lone surrogates). Stored text columns refuse NUL
# (PostgreSQL cannot hold it), so metadata/URI/name texts leave it out; literal values keep it.
texts = st.text(st.characters(codec="utf-8", blacklist_characters="\x00"), max_size=12)
literal_texts = st.text(st.characters(codec="utf-8"), max_size=12)


def _scalar(**primitive: object) -> literals_pb2.Literal:
    return literals_pb2.Literal(
        scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(**primitive))
    )


scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(lambda v: _scalar(integer=v)),
    # st.floats() includes -0.0, ±inf and nan (with varied payloads via the byte encoding).
    st.one_of(st.floats(), st.sampled_from([-0.0, float("inf"), float("-inf"), float("nan")])).map(
        lambda v: _scalar(float_value=v)
    ),
    literal_texts.map(lambda v: _scalar(string_value=v)),
    st.booleans().map(lambda v: _scalar(boolean=v)),
    st.builds(
        lambda value, tag: literals_pb2.Literal(
            scalar=literals_pb2.Scalar(binary=literals_pb2.Binary(value=value, tag=tag))
        ),
        st.binary(max_size=64),
        texts,
    ),
)


def _with_extras(literal: literals_pb2.Literal, hash_: str, meta: dict[str, str]):
    literal.hash = hash_
    literal.metadata.update(meta)
    return literal


def literals(depth: int) -> st.SearchStrategy[literals_pb2.Literal]:
    """Literals whose collections/maps nest at most ``depth`` levels."""
    if depth == 0:
        base = scalars
    else:
        child = literals(depth - 1)
        base = st.one_of(
            scalars,
            st.lists(child, max_size=3).map(
                lambda items: literals_pb2.Literal(
                    collection=literals_pb2.LiteralCollection(literals=items)
                )
            ),
            st.dictionaries(texts, child, max_size=3).map(
                lambda items: literals_pb2.Literal(map=literals_pb2.LiteralMap(literals=items))
            ),
        )
    # Literal.hash and Literal.metadata (a map) ride along on some literals.
    return st.one_of(
        base,
        st.builds(_with_extras, base, texts, st.dictionaries(texts, texts, max_size=2)),
    )


literal_maps = st.dictionaries(texts, literals(3), max_size=5)

# protobuf Timestamp range, at the store's microsecond precision.
_MIN_US = -62_135_596_800 * 1_000_000
_MAX_US = 253_402_300_799 * 1_000_000 + 999_999
timestamps_us = st.integers(_MIN_US, _MAX_US)

identifiers = st.builds(
    identifier_pb2.Identifier,
    resource_type=st.sampled_from(list(identifier_pb2.ResourceType.values())),
    project=texts,
    domain=texts,
    name=texts,
    version=texts,
    org=texts,
)


@st.composite
def metadatas(draw: st.DrawFn) -> cs.Metadata:
    metadata = cs.Metadata()
    if draw(st.booleans()):
        metadata.source_identifier.CopyFrom(draw(identifiers))
    key_map = draw(st.dictionaries(texts, texts, max_size=6))
    if key_map:
        metadata.key_map.values.update(key_map)
    if draw(st.booleans()):
        metadata.created_at.CopyFrom(ts_from_us(draw(timestamps_us)))
    if draw(st.booleans()):  # the client's claim, always replaced by the store clock
        metadata.last_updated_at.CopyFrom(ts_from_us(draw(timestamps_us)))
    return metadata


# -- round trips --------------------------------------------------------------------------------


def _raw_outputs(db_path: str, key: str) -> dict[str, bytes]:
    """The inline literals exactly as stored (entry row or spilled payload), by name."""
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        (payload,) = conn.execute(
            "SELECT coalesce(e.payload, o.payload) FROM entries e "
            "LEFT JOIN outputs o ON o.entry_id = e.id WHERE e.key = ?",
            (key,),
        ).fetchone()
    return dict(literal_map_entries(payload))


def _expected_metadata(sent: cs.Metadata, now: Timestamp) -> cs.Metadata:
    expected = cs.Metadata()
    expected.CopyFrom(sent)
    if not expected.HasField("created_at"):
        expected.created_at.CopyFrom(now)
    expected.last_updated_at.CopyFrom(now)
    return expected


@PROPERTY_SETTINGS
@given(outputs=literal_maps, metadata=metadatas(), step_us=st.integers(0, 10**9))
def test_inline_outputs_and_metadata_round_trip(
    prop_store: CacheStore,
    prop_db: str,
    prop_clock: _Clock,
    outputs: dict[str, literals_pb2.Literal],
    metadata: cs.Metadata,
    step_us: int,
):
    prop_clock.now += step_us * US
    key = fresh_key("inline")
    sent = cs.CachedOutput(
        output_literals=literals_pb2.LiteralMap(literals=outputs), metadata=metadata
    )
    prop_store.put(key, sent)
    got = prop_store.get(key)

    assert got.WhichOneof("output") == "output_literals"
    assert set(got.output_literals.literals) == set(outputs)
    # Stored byte-for-byte as the message handed to put serializes each literal. (Compare with
    # ``sent``'s copies, not ``outputs``: protobuf map entries have no fixed wire order, so two
    # equal messages, or a message and its parsed copy, may serialize their maps differently.)
    sent_literals = sent.output_literals.literals
    assert _raw_outputs(prop_db, key) == {
        name: literal.SerializeToString() for name, literal in sent_literals.items()
    }
    for name, literal in outputs.items():
        returned = got.output_literals.literals[name]
        # The returned literal is a parsed copy, so compare it in deterministic (sorted-map) form.
        assert returned.SerializeToString(deterministic=True) == literal.SerializeToString(
            deterministic=True
        )
        assert returned == literal
    assert got.output_literals == sent.output_literals

    now = ts_from_us((prop_clock.now - datetime(1970, 1, 1, tzinfo=UTC)) // US)
    assert got.metadata == _expected_metadata(metadata, now)


@PROPERTY_SETTINGS
@given(
    uri=st.text(
        st.characters(codec="utf-8", blacklist_characters="\x00"), min_size=1, max_size=200
    ),
    metadata=metadatas(),
)
def test_uri_outputs_and_metadata_round_trip(
    prop_store: CacheStore, prop_clock: _Clock, uri: str, metadata: cs.Metadata
):
    key = fresh_key("uri")
    prop_store.put(key, cs.CachedOutput(output_uri=uri, metadata=metadata))
    got = prop_store.get(key)
    assert got.WhichOneof("output") == "output_uri"
    assert got.output_uri == uri
    now = ts_from_us((prop_clock.now - datetime(1970, 1, 1, tzinfo=UTC)) // US)
    assert got.metadata == _expected_metadata(metadata, now)


@PROPERTY_SETTINGS
@given(
    first=literal_maps,
    second=st.one_of(
        literal_maps,
        st.text(st.characters(codec="utf-8", blacklist_characters="\x00"), min_size=1, max_size=20),
    ),
)
def test_overwrite_replaces_everything(
    prop_store: CacheStore,
    prop_db: str,
    first: dict[str, literals_pb2.Literal],
    second: dict[str, literals_pb2.Literal] | str,
):
    key = fresh_key("overwrite")
    prop_store.put(key, cs.CachedOutput(output_literals=literals_pb2.LiteralMap(literals=first)))
    if isinstance(second, str):
        prop_store.put(key, cs.CachedOutput(output_uri=second), overwrite=True)
        assert prop_store.get(key).output_uri == second
        assert _raw_outputs(prop_db, key) == {}
    else:
        replacement = literals_pb2.LiteralMap(literals=second)
        prop_store.put(key, cs.CachedOutput(output_literals=replacement), overwrite=True)
        got = prop_store.get(key)
        assert got.WhichOneof("output") == "output_literals"
        assert got.output_literals == replacement  # no output of the first put survives


# -- max_age ------------------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    age_us=st.integers(-(10**12), 10**12),
    max_age_us=st.one_of(st.none(), st.integers(-(10**12), 10**12)),
    overwrite=st.booleans(),
)
def test_put_replaces_exactly_when_overwrite_or_strictly_older_than_max_age(
    prop_store: CacheStore,
    prop_clock: _Clock,
    age_us: int,
    max_age_us: int | None,
    overwrite: bool,
):
    key = fresh_key("age")
    written = prop_clock.now = START
    prop_store.put(key, cs.CachedOutput(output_uri="first"))
    prop_clock.now = written + age_us * US
    max_age = None if max_age_us is None else max_age_us * US
    # Strict ">"; a present zero max_age expires every entry (Flyte's quirk), even one "from
    # the future" when the clock went backwards.
    should_replace = overwrite or (
        max_age is not None and (max_age_us == 0 or age_us * US > max_age)
    )
    try:
        prop_store.put(
            key, cs.CachedOutput(output_uri="second"), overwrite=overwrite, max_age=max_age
        )
    except AlreadyExistsError:
        replaced = False
    else:
        replaced = True
    assert replaced == should_replace
    assert prop_store.get(key).output_uri == ("second" if should_replace else "first")


# -- reservations against a model ---------------------------------------------------------------

OWNERS = ["a", "b", "c"]
reservation_ops = st.lists(
    st.one_of(
        st.tuples(st.just("advance"), st.integers(0, 40_000_000)),
        st.tuples(
            st.just("reserve"),
            st.sampled_from(OWNERS),
            st.one_of(st.none(), st.integers(-2_000_000, 15_000_000)),
        ),
        st.tuples(st.just("release"), st.sampled_from(OWNERS)),
    ),
    max_size=30,
)


@PROPERTY_SETTINGS
@given(ops=reservation_ops)
def test_reservations_follow_the_decision_table(
    prop_store: CacheStore, prop_clock: _Clock, ops: list[tuple]
):
    """A model of SPEC §4 (max_heartbeat 10 s, grace 3) run step by step against the store."""
    key = fresh_key("lease")
    max_hb = 10_000_000
    now = (START - datetime(1970, 1, 1, tzinfo=UTC)) // US
    prop_clock.now = START
    held: tuple[str, int, int] | None = None  # (owner, heartbeat µs, expires_at µs)
    for op in ops:
        if op[0] == "advance":
            now += op[1]
            prop_clock.now += op[1] * US
        elif op[0] == "release":
            released = prop_store.release_reservation(key, op[1])
            assert released == (held is not None and held[0] == op[1])
            if released:
                held = None
        else:
            _, owner, requested = op
            got, outcome = prop_store.get_or_extend_reservation(
                key, owner, None if requested is None else requested * US, with_outcome=True
            )
            hb = requested if requested is not None and 0 < requested < max_hb else max_hb
            if held is None:
                expected_outcome, held = ReservationOutcome.ACQUIRED, (owner, hb, now + hb * 3)
            elif held[0] == owner:
                expected_outcome, held = ReservationOutcome.EXTENDED, (owner, hb, now + hb * 3)
            elif held[2] <= now:
                expected_outcome, held = ReservationOutcome.TAKEN_OVER, (owner, hb, now + hb * 3)
            else:
                expected_outcome = ReservationOutcome.HELD_BY_OTHER
            assert outcome is expected_outcome
            assert got.key == key
            assert got.owner_id == held[0]
            assert got.heartbeat_interval.ToMicroseconds() == held[1]
            assert got.expires_at == ts_from_us(held[2])
