"""CacheStore semantics, row by row against SPEC §3 (entries) and §4 (reservations).

Every time comes from the injected ``clock`` so boundaries are checked to the microsecond.
``OverwriteOutput.delete_blob`` is not tested here: the store's ``put`` has no such parameter (the
server accepts and ignores it), so there is nothing to observe at this level.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import identifier_pb2, literals_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from flytecache import CacheStore, StoreSettings
from flytecache.errors import (
    AlreadyExistsError,
    FlyteCacheError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    SchemaError,
    StorageBusyError,
    StorageError,
    UnauthenticatedError,
    UnavailableError,
)
from flytecache.store import ReservationOutcome
from flytecache.store.engine import create_store_engine, normalize_url
from flytecache.store.migrate import head_revision

US = timedelta(microseconds=1)
MAX_HB = timedelta(seconds=10)  # StoreSettings defaults (Flyte's)
GRACE = 3


# -- helpers ------------------------------------------------------------------------------------


def ts(dt: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(dt)
    return out


def dur(delta: timedelta) -> Duration:
    out = Duration()
    out.FromTimedelta(delta)
    return out


def int_literal(value: int) -> literals_pb2.Literal:
    return literals_pb2.Literal(
        scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(integer=value))
    )


def uri_output(uri: str, metadata: cs.Metadata | None = None) -> cs.CachedOutput:
    return cs.CachedOutput(output_uri=uri, metadata=metadata)


def inline_output(
    literals: dict[str, literals_pb2.Literal], metadata: cs.Metadata | None = None
) -> cs.CachedOutput:
    return cs.CachedOutput(
        output_literals=literals_pb2.LiteralMap(literals=literals), metadata=metadata
    )


def check_error(error: BaseException, code: str) -> None:
    assert isinstance(error, FlyteCacheError)
    assert error.code == code


def query(target: str | CacheStore, sql: str) -> list[tuple[Any, ...]]:
    """Read the database directly, bypassing the store (a SQLite path, or a store's engine)."""
    if isinstance(target, CacheStore):
        with target.engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(sql).fetchall()]
    with contextlib.closing(sqlite3.connect(target)) as conn:
        return conn.execute(sql).fetchall()


def lease_rows(target: str | CacheStore) -> list[tuple[Any, ...]]:
    return query(target, "SELECT * FROM reservations ORDER BY key")


def lease(key: str, owner: str, hb: timedelta, expires: datetime) -> cs.Reservation:
    return cs.Reservation(
        key=key, owner_id=owner, heartbeat_interval=dur(hb), expires_at=ts(expires)
    )


# -- errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (InvalidArgumentError, "INVALID_ARGUMENT"),
        (NotFoundError, "NOT_FOUND"),
        (AlreadyExistsError, "ALREADY_EXISTS"),
        (StorageBusyError, "UNAVAILABLE"),
        (UnavailableError, "UNAVAILABLE"),
        (ResourceExhaustedError, "RESOURCE_EXHAUSTED"),
        (SchemaError, "FAILED_PRECONDITION"),
        (UnauthenticatedError, "UNAUTHENTICATED"),
        (StorageError, "INTERNAL"),
    ],
)
def test_every_error_is_a_flytecache_error_with_a_code(cls: type[FlyteCacheError], code: str):
    error = cls("boom", key="k")
    assert isinstance(error, FlyteCacheError)
    assert error.code == code
    assert str(error) == "boom"
    assert error.key == "k"
    assert error.fields == {"key": "k"}


# -- Get ----------------------------------------------------------------------------------------


def test_get_empty_key_is_invalid_argument(store: CacheStore):
    with pytest.raises(InvalidArgumentError, match="key") as info:
        store.get("")
    check_error(info.value, "INVALID_ARGUMENT")
    assert info.value.field == "key"


def test_get_missing_is_not_found_with_flytes_message(store: CacheStore):
    with pytest.raises(NotFoundError) as info:
        store.get("no-such/key")
    check_error(info.value, "NOT_FOUND")
    assert str(info.value) == 'cache entry "no-such/key" not found'
    assert info.value.key == "no-such/key"


def test_put_get_round_trip_uri(store: CacheStore, clock):
    uri = "s3://bucket/a b/ünïcode/outputs.pb?x=1&y=2"
    store.put("k", uri_output(uri))
    got = store.get("k")
    assert got.WhichOneof("output") == "output_uri"
    assert got.output_uri == uri
    assert got.metadata.created_at == ts(clock.now)
    assert got.metadata.last_updated_at == ts(clock.now)


def test_put_get_round_trip_inline(store: CacheStore):
    literals = {
        "o0": int_literal(-(2**63)),
        "out ü": literals_pb2.Literal(
            scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(string_value="héllo"))
        ),
        "blob": literals_pb2.Literal(
            scalar=literals_pb2.Scalar(binary=literals_pb2.Binary(value=b"\x00\xff", tag="t"))
        ),
    }
    store.put("k", inline_output(literals))
    got = store.get("k")
    assert got.WhichOneof("output") == "output_literals"
    assert dict(got.output_literals.literals) == literals
    for name, literal in literals.items():
        stored = got.output_literals.literals[name].SerializeToString()
        assert stored == literal.SerializeToString()


def test_put_get_round_trip_empty_inline_literal_map(store: CacheStore, clock):
    store.put("k", cs.CachedOutput(output_literals=literals_pb2.LiteralMap()))
    got = store.get("k")
    # An empty map is still an inline output, not "no output" and not a URI.
    assert got.WhichOneof("output") == "output_literals"
    assert len(got.output_literals.literals) == 0
    assert got.metadata.last_updated_at == ts(clock.now)


def test_get_always_sets_created_and_last_updated_even_without_metadata(store: CacheStore, clock):
    store.put("k", uri_output("s3://b/o"))
    got = store.get("k")
    assert got.metadata.HasField("created_at")
    assert got.metadata.HasField("last_updated_at")
    assert got.metadata.created_at == got.metadata.last_updated_at == ts(clock.now)
    # Nothing the request did not carry is invented.
    assert not got.metadata.HasField("source_identifier")
    assert dict(got.metadata.key_map.values) == {}


def test_metadata_source_identifier_and_key_map_round_trip(store: CacheStore, clock):
    ident = identifier_pb2.Identifier(
        resource_type=identifier_pb2.TASK,
        project="proj",
        domain="development",
        name="my.module.task",
        version="v1/ü",
        org="org-1",
    )
    key_map = {"task-version": "v1", "exec-attempt": "0", "ключ": "значение 🔑", "": "empty"}
    created = datetime(2020, 2, 29, 23, 59, 59, 999999, tzinfo=UTC)
    metadata = cs.Metadata(
        source_identifier=ident,
        key_map=cs.KeyMapMetadata(values=key_map),
        created_at=ts(created),
    )
    store.put("k", uri_output("s3://b/o", metadata))
    got = store.get("k").metadata
    assert got.source_identifier == ident
    assert dict(got.key_map.values) == key_map
    assert got.created_at == ts(created)
    assert got.last_updated_at == ts(clock.now)


def test_default_source_identifier_is_kept_present(store: CacheStore):
    # An explicitly set but all-default identifier is still "set" (presence round-trips).
    metadata = cs.Metadata(source_identifier=identifier_pb2.Identifier())
    store.put("k", uri_output("s3://b/o", metadata))
    assert store.get("k").metadata.HasField("source_identifier")


def test_store_applies_no_age_limit_on_get(store: CacheStore, clock):
    store.put("k", uri_output("s3://b/o"))
    clock.advance(timedelta(days=3650))
    assert store.get("k").output_uri == "s3://b/o"


# -- Put: invalid inputs ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "output", "field"),
    [
        pytest.param("", uri_output("s3://b/o"), "key", id="empty-key"),
        pytest.param(None, uri_output("s3://b/o"), "key", id="key-not-a-string"),
        pytest.param("k", None, "output", id="output-none"),
        pytest.param("k", literals_pb2.LiteralMap(), "output", id="output-wrong-type"),
        pytest.param("k", {"output_uri": "s3://b/o"}, "output", id="output-a-dict"),
        pytest.param("k", cs.CachedOutput(), "output", id="neither-uri-nor-literals"),
        pytest.param(
            "k",
            cs.CachedOutput(metadata=cs.Metadata(created_at=Timestamp(seconds=1))),
            "output",
            id="metadata-only",
        ),
        pytest.param("k", cs.CachedOutput(output_uri=""), "output", id="empty-uri"),
    ],
)
def test_put_invalid_input_is_invalid_argument_naming_the_field(
    store: CacheStore, key: Any, output: Any, field: str
):
    with pytest.raises(InvalidArgumentError) as info:
        store.put(key, output)
    check_error(info.value, "INVALID_ARGUMENT")
    assert info.value.field == field
    assert field in str(info.value)
    assert query(store, "SELECT count(*) FROM entries") == [(0,)]


# -- Put: existing entries, overwrite and max_age ----------------------------------------------


def test_put_existing_without_overwrite_is_already_exists(store: CacheStore, clock):
    store.put("k", uri_output("s3://b/first"))
    first = store.get("k")
    clock.advance(timedelta(seconds=1))
    with pytest.raises(AlreadyExistsError) as info:
        store.put("k", uri_output("s3://b/second"))
    check_error(info.value, "ALREADY_EXISTS")
    assert str(info.value) == 'cache entry "k" already exists'
    assert info.value.key == "k"
    assert store.get("k") == first  # untouched, timestamps included


def test_already_exists_leaves_inline_outputs_untouched(store: CacheStore):
    store.put("k", inline_output({"a": int_literal(1)}))
    with pytest.raises(AlreadyExistsError):
        store.put("k", inline_output({"b": int_literal(2)}))
    assert dict(store.get("k").output_literals.literals) == {"a": int_literal(1)}


def test_put_overwrite_replaces(store: CacheStore, clock):
    t0 = clock.now
    store.put("k", uri_output("s3://b/first"))
    t1 = clock.advance(timedelta(minutes=5, microseconds=1))
    store.put("k", uri_output("s3://b/second"), overwrite=True)
    got = store.get("k")
    assert got.output_uri == "s3://b/second"
    assert got.metadata.created_at == ts(t0)  # kept: the request carried none
    assert got.metadata.last_updated_at == ts(t1)


def test_put_overwrite_uri_with_inline_and_back(store: CacheStore):
    store.put("k", uri_output("s3://b/o"))
    store.put("k", inline_output({"a": int_literal(1), "b": int_literal(2)}), overwrite=True)
    got = store.get("k")
    assert got.WhichOneof("output") == "output_literals"
    assert dict(got.output_literals.literals) == {"a": int_literal(1), "b": int_literal(2)}

    store.put("k", inline_output({"c": int_literal(3)}), overwrite=True)
    assert dict(store.get("k").output_literals.literals) == {"c": int_literal(3)}

    store.put("k", uri_output("s3://b/again"), overwrite=True)
    got = store.get("k")
    assert got.WhichOneof("output") == "output_uri"
    assert got.output_uri == "s3://b/again"
    assert query(store, "SELECT count(*) FROM outputs") == [(0,)]


def test_put_overwrite_on_missing_key_creates(store: CacheStore, clock):
    store.put("k", uri_output("s3://b/o"), overwrite=True)
    assert store.get("k").metadata.created_at == ts(clock.now)


def test_max_age_boundary_is_strict(store: CacheStore, clock):
    max_age = timedelta(hours=1, microseconds=7)
    store.put("k", uri_output("s3://b/first"))
    clock.advance(max_age)  # age == max_age exactly: still fresh
    with pytest.raises(AlreadyExistsError):
        store.put("k", uri_output("s3://b/second"), max_age=max_age)
    assert store.get("k").output_uri == "s3://b/first"

    now = clock.advance(US)  # age == max_age + 1µs: expired
    store.put("k", uri_output("s3://b/second"), max_age=max_age)
    got = store.get("k")
    assert got.output_uri == "s3://b/second"
    assert got.metadata.last_updated_at == ts(now)


def test_max_age_counts_from_last_update_not_creation(store: CacheStore, clock):
    long_ago = datetime(2000, 1, 1, tzinfo=UTC)
    metadata = cs.Metadata(created_at=ts(long_ago))
    store.put("k", uri_output("s3://b/first", metadata))
    with pytest.raises(AlreadyExistsError):
        store.put("k", uri_output("s3://b/second"), max_age=timedelta(hours=1))

    # An overwrite restarts the age.
    clock.advance(timedelta(hours=2))
    store.put("k", uri_output("s3://b/second"), overwrite=True)
    clock.advance(timedelta(minutes=59))
    with pytest.raises(AlreadyExistsError):
        store.put("k", uri_output("s3://b/third"), max_age=timedelta(hours=1))


def test_present_but_zero_max_age_replaces_even_at_the_same_instant(store: CacheStore, clock):
    store.put("k", uri_output("s3://b/first"))
    store.put("k", uri_output("s3://b/second"), max_age=timedelta(0))  # clock not advanced
    got = store.get("k")
    assert got.output_uri == "s3://b/second"
    assert got.metadata.created_at == ts(clock.now)


def test_max_age_none_never_expires(store: CacheStore, clock):
    store.put("k", uri_output("s3://b/first"))
    clock.advance(timedelta(days=365 * 50))
    with pytest.raises(AlreadyExistsError):
        store.put("k", uri_output("s3://b/second"), max_age=None)
    with pytest.raises(AlreadyExistsError):
        store.put("k", uri_output("s3://b/second"))
    assert store.get("k").output_uri == "s3://b/first"


def test_huge_max_age_never_expires(store: CacheStore, clock):
    store.put("k", uri_output("s3://b/first"))
    clock.advance(timedelta(days=365 * 50))
    with pytest.raises(AlreadyExistsError):
        store.put("k", uri_output("s3://b/second"), max_age=timedelta.max)


def test_negative_max_age_expires_every_entry(store: CacheStore):
    # now - last_updated_at (0) > max_age (negative): expired, by the same strict rule.
    store.put("k", uri_output("s3://b/first"))
    store.put("k", uri_output("s3://b/second"), max_age=-US)
    assert store.get("k").output_uri == "s3://b/second"


def test_overwrite_wins_over_a_fresh_max_age(store: CacheStore):
    store.put("k", uri_output("s3://b/first"))
    store.put("k", uri_output("s3://b/second"), overwrite=True, max_age=timedelta(days=1))
    assert store.get("k").output_uri == "s3://b/second"


def test_max_age_on_missing_key_creates(store: CacheStore):
    store.put("k", uri_output("s3://b/o"), max_age=timedelta(seconds=1))
    assert store.get("k").output_uri == "s3://b/o"


# -- Put: created_at / last_updated_at ---------------------------------------------------------


def test_created_at_is_now_when_nothing_else(store: CacheStore, clock):
    store.put("k", uri_output("s3://b/o", cs.Metadata()))
    assert store.get("k").metadata.created_at == ts(clock.now)


def test_created_at_from_request_on_create(store: CacheStore, clock):
    created = datetime(2025, 6, 1, 12, 0, 0, 1, tzinfo=UTC)
    store.put("k", uri_output("s3://b/o", cs.Metadata(created_at=ts(created))))
    got = store.get("k").metadata
    assert got.created_at == ts(created)
    assert got.last_updated_at == ts(clock.now)


def test_created_at_from_request_replaces_existing(store: CacheStore, clock):
    store.put("k", uri_output("s3://b/first"))
    clock.advance(timedelta(seconds=3))
    created = datetime(2024, 1, 1, tzinfo=UTC)
    store.put("k", uri_output("s3://b/second", cs.Metadata(created_at=ts(created))), overwrite=True)
    assert store.get("k").metadata.created_at == ts(created)


def test_created_at_kept_from_existing_when_request_has_none(store: CacheStore, clock):
    created = datetime(2024, 1, 1, 0, 0, 0, 42, tzinfo=UTC)
    store.put("k", uri_output("s3://b/first", cs.Metadata(created_at=ts(created))))
    clock.advance(timedelta(hours=2))
    store.put("k", uri_output("s3://b/second"), overwrite=True)
    assert store.get("k").metadata.created_at == ts(created)
    # Also when the replacement is due to max_age.
    now = clock.advance(timedelta(hours=2))
    store.put("k", uri_output("s3://b/third"), max_age=timedelta(hours=1))
    got = store.get("k").metadata
    assert got.created_at == ts(created)
    assert got.last_updated_at == ts(now)


def test_created_at_of_a_deleted_entry_is_not_reused(store: CacheStore, clock):
    store.put("k", uri_output("s3://b/first"))
    store.delete("k")
    now = clock.advance(timedelta(seconds=1))
    store.put("k", uri_output("s3://b/second"))
    assert store.get("k").metadata.created_at == ts(now)


def test_client_last_updated_at_is_ignored(store: CacheStore, clock):
    client_time = ts(datetime(2001, 9, 9, 1, 46, 40, tzinfo=UTC))
    store.put("k", uri_output("s3://b/o", cs.Metadata(last_updated_at=client_time)))
    assert store.get("k").metadata.last_updated_at == ts(clock.now)

    now = clock.advance(timedelta(seconds=1))
    future = ts(datetime(2099, 1, 1, tzinfo=UTC))
    store.put("k", uri_output("s3://b/o2", cs.Metadata(last_updated_at=future)), overwrite=True)
    assert store.get("k").metadata.last_updated_at == ts(now)
    # A client-claimed fresh (or future) last_updated_at does not protect an entry from max_age.
    clock.advance(timedelta(seconds=2))
    store.put("k", uri_output("s3://b/o3"), max_age=timedelta(seconds=1))
    assert store.get("k").output_uri == "s3://b/o3"


def test_metadata_is_the_requests_on_overwrite(store: CacheStore):
    first = cs.Metadata(
        source_identifier=identifier_pb2.Identifier(project="p1", name="t1"),
        key_map=cs.KeyMapMetadata(values={"a": "1", "b": "2"}),
    )
    store.put("k", uri_output("s3://b/o", first))
    second = cs.Metadata(key_map=cs.KeyMapMetadata(values={"c": "3"}))
    store.put("k", uri_output("s3://b/o", second), overwrite=True)
    got = store.get("k").metadata
    assert not got.HasField("source_identifier")
    assert dict(got.key_map.values) == {"c": "3"}


# -- Put and reservations are independent --------------------------------------------------------


def test_put_never_creates_a_reservation(store: CacheStore):
    store.put("k", uri_output("s3://b/o"))
    store.put("k", uri_output("s3://b/o2"), overwrite=True)
    assert lease_rows(store) == []
    _, outcome = store.reserve("k", "b")
    assert outcome is ReservationOutcome.ACQUIRED


def test_put_never_releases_or_checks_a_reservation(store: CacheStore, clock):
    held, _ = store.reserve("k", "owner-a")
    before = lease_rows(store)
    # Someone who does not hold the lease may still put, and the lease survives.
    store.put("k", uri_output("s3://b/o"))
    store.put("k", uri_output("s3://b/o2"), overwrite=True)
    store.delete("k")
    assert lease_rows(store) == before
    got, outcome = store.reserve("k", "owner-b")
    assert outcome is ReservationOutcome.HELD_BY_OTHER
    assert got == held


# -- Delete -------------------------------------------------------------------------------------


def test_delete_removes_entry_and_outputs(store: CacheStore):
    store.put("k", inline_output({"a": int_literal(1), "b": int_literal(2)}))
    store.put("other", inline_output({"a": int_literal(3)}))
    assert query(store, "SELECT count(*) FROM outputs") == [(3,)]
    store.delete("k")
    with pytest.raises(NotFoundError, match=re.escape('cache entry "k" not found')):
        store.get("k")
    assert query(store, "SELECT count(*) FROM outputs") == [(1,)]
    assert dict(store.get("other").output_literals.literals) == {"a": int_literal(3)}


def test_delete_missing_is_not_found(store: CacheStore):
    with pytest.raises(NotFoundError) as info:
        store.delete("nope")
    check_error(info.value, "NOT_FOUND")
    assert str(info.value) == 'cache entry "nope" not found'


def test_delete_twice_is_not_found_the_second_time(store: CacheStore):
    store.put("k", uri_output("s3://b/o"))
    store.delete("k")
    with pytest.raises(NotFoundError):
        store.delete("k")


def test_delete_empty_key_is_invalid_argument(store: CacheStore):
    with pytest.raises(InvalidArgumentError) as info:
        store.delete("")
    assert info.value.field == "key"


# -- Keys are opaque ----------------------------------------------------------------------------

OPAQUE_KEYS = [
    "proj-dev-abc+/=-def",
    "a-b",
    "a+b",
    "a/b",
    "a=b",
    "+UmrGhEwHv3FesdpA4gliBluF3FUXz4tshmuOlw1FSk=-GKw-c0Pw-GKw-c0Pw-GQid5LjHbakcW68D-v1",
    "--only-dashes",
    "%_wildcards_%",
    "key with spaces ",
    "ключ/値/🔑",
    "\u00e9",  # é precomposed
    "e\u0301",  # é decomposed: a different key (no normalization)
]


def test_opaque_keys_are_distinct_and_round_trip(store: CacheStore):
    for i, key in enumerate(OPAQUE_KEYS):
        store.put(key, uri_output(f"s3://b/{i}"))
    for i, key in enumerate(OPAQUE_KEYS):
        assert store.get(key).output_uri == f"s3://b/{i}"
    for key in OPAQUE_KEYS:
        store.delete(key)
        with pytest.raises(NotFoundError, match=re.escape(f'cache entry "{key}" not found')):
            store.get(key)


@pytest.mark.parametrize("key", OPAQUE_KEYS)
def test_opaque_keys_work_for_reservations(store: CacheStore, key: str):
    got, outcome = store.reserve(key, "owner")
    assert outcome is ReservationOutcome.ACQUIRED
    assert got.key == key
    assert store.release(key, "owner") is True


# -- Reservations: arguments and heartbeat -------------------------------------------------------


@pytest.mark.parametrize(("key", "owner", "field"), [("", "o", "key"), ("k", "", "owner_id")])
@pytest.mark.parametrize(
    "method", ["reserve", "get_or_extend_reservation", "release", "release_reservation"]
)
def test_reservation_empty_key_or_owner_is_invalid_argument(
    store: CacheStore, method: str, key: str, owner: str, field: str
):
    with pytest.raises(InvalidArgumentError) as info:
        getattr(store, method)(key, owner)
    check_error(info.value, "INVALID_ARGUMENT")
    assert info.value.field == field
    assert lease_rows(store) == []


@pytest.mark.parametrize(
    ("requested", "effective"),
    [
        pytest.param(None, MAX_HB, id="absent"),
        pytest.param(timedelta(0), MAX_HB, id="zero"),
        pytest.param(timedelta(seconds=-5), MAX_HB, id="negative"),
        pytest.param(-US, MAX_HB, id="minus-1us"),
        pytest.param(MAX_HB, MAX_HB, id="equal-to-max"),
        pytest.param(MAX_HB + US, MAX_HB, id="max-plus-1us"),
        pytest.param(timedelta(days=365), MAX_HB, id="far-too-large"),
        pytest.param(timedelta.max, MAX_HB, id="timedelta-max"),
        pytest.param(timedelta.min, MAX_HB, id="timedelta-min"),
        pytest.param(US, US, id="1us"),
        pytest.param(MAX_HB - US, MAX_HB - US, id="max-minus-1us"),
        pytest.param(
            timedelta(seconds=2, microseconds=345678),
            timedelta(seconds=2, microseconds=345678),
            id="in-range",
        ),
    ],
)
def test_heartbeat_clamp_and_expiry(
    store: CacheStore, clock, requested: timedelta | None, effective: timedelta
):
    got, outcome = store.reserve("k", "owner", requested)
    assert outcome is ReservationOutcome.ACQUIRED
    assert got == lease("k", "owner", effective, clock.now + effective * GRACE)


@pytest.mark.parametrize(
    ("requested", "effective"),
    [
        (None, timedelta(seconds=2, microseconds=2)),
        (timedelta(seconds=3), timedelta(seconds=2, microseconds=2)),
        (timedelta(seconds=1, microseconds=2), timedelta(seconds=1, microseconds=2)),
    ],
)
def test_heartbeat_with_custom_settings(
    db_url: str, clock, requested: timedelta | None, effective: timedelta
):
    settings = StoreSettings(
        max_heartbeat=timedelta(seconds=2, microseconds=2), grace_multiplier=2.5
    )
    with CacheStore.open(db_url, settings=settings, clock=clock) as custom:
        got = custom.get_or_extend_reservation("k", "owner", requested)
    # Multiples chosen so hb × 2.5 is a whole number of microseconds (no rounding question).
    assert got == lease("k", "owner", effective, clock.now + effective * 5 / 2)


def test_grace_multiplier_one(db_url: str, clock):
    settings = StoreSettings(max_heartbeat=timedelta(minutes=1), grace_multiplier=1)
    with CacheStore.open(db_url, settings=settings, clock=clock) as custom:
        got = custom.get_or_extend_reservation("k", "owner", timedelta(seconds=7, microseconds=1))
        hb = timedelta(seconds=7, microseconds=1)
        assert got == lease("k", "owner", hb, clock.now + hb)
        # With grace 1 the lease is free for others exactly one heartbeat later.
        clock.advance(hb)
        _, outcome = custom.reserve("k", "other")
        assert outcome is ReservationOutcome.TAKEN_OVER


def test_heartbeat_must_be_a_timedelta(store: CacheStore):
    with pytest.raises(InvalidArgumentError) as info:
        store.reserve("k", "owner", 5)  # type: ignore[arg-type]
    assert info.value.field == "heartbeat_interval"


# -- Reservations: the decision table ------------------------------------------------------------


def test_no_lease_creates_one(store: CacheStore, clock):
    hb = timedelta(seconds=1)
    got, outcome = store.reserve("k", "owner-a", hb)
    assert outcome is ReservationOutcome.ACQUIRED
    assert got == lease("k", "owner-a", hb, clock.now + hb * GRACE)
    assert [row[:2] for row in lease_rows(store)] == [("k", "owner-a")]


def test_get_or_extend_reservation_returns_the_reservation_only(store: CacheStore, clock):
    got = store.get_or_extend_reservation("k", "owner-a", timedelta(seconds=1))
    assert isinstance(got, cs.Reservation)
    assert got == lease("k", "owner-a", timedelta(seconds=1), clock.now + timedelta(seconds=3))


def test_own_live_lease_is_extended(store: CacheStore, clock):
    store.reserve("k", "owner-a", timedelta(seconds=1))
    now = clock.advance(timedelta(seconds=2, microseconds=999999))  # 1µs before expiry
    got, outcome = store.reserve("k", "owner-a", timedelta(seconds=2))
    assert outcome is ReservationOutcome.EXTENDED
    # New heartbeat and a new expires_at counted from now.
    assert got == lease("k", "owner-a", timedelta(seconds=2), now + timedelta(seconds=6))


def test_own_lease_extended_at_the_same_instant(store: CacheStore, clock):
    store.reserve("k", "owner-a", timedelta(seconds=1))
    got, outcome = store.reserve("k", "owner-a", timedelta(seconds=1))
    assert outcome is ReservationOutcome.EXTENDED
    assert got == lease("k", "owner-a", timedelta(seconds=1), clock.now + timedelta(seconds=3))


@pytest.mark.parametrize("late", [timedelta(0), US, timedelta(days=1)])
def test_own_expired_lease_is_extended(store: CacheStore, clock, late: timedelta):
    store.reserve("k", "owner-a", timedelta(seconds=1))
    now = clock.advance(timedelta(seconds=3) + late)  # expires_at <= now
    got, outcome = store.reserve("k", "owner-a", timedelta(seconds=1))
    assert outcome is ReservationOutcome.EXTENDED
    assert got == lease("k", "owner-a", timedelta(seconds=1), now + timedelta(seconds=3))


@pytest.mark.parametrize("late", [timedelta(0), US, timedelta(days=1)])
def test_others_expired_lease_is_taken_over(store: CacheStore, clock, late: timedelta):
    store.reserve("k", "owner-a", timedelta(seconds=1))
    now = clock.advance(timedelta(seconds=3) + late)  # late == 0: expires_at == now exactly
    got, outcome = store.reserve("k", "owner-b", timedelta(seconds=2))
    assert outcome is ReservationOutcome.TAKEN_OVER
    assert got == lease("k", "owner-b", timedelta(seconds=2), now + timedelta(seconds=6))

    # The previous holder now sees the new holder's lease and cannot release it.
    seen, outcome = store.reserve("k", "owner-a", timedelta(seconds=1))
    assert outcome is ReservationOutcome.HELD_BY_OTHER
    assert seen == got
    assert store.release("k", "owner-a") is False
    assert store.reserve("k", "owner-c")[0] == got


def test_others_live_lease_is_returned_unchanged(store: CacheStore, clock):
    hb = timedelta(seconds=1, microseconds=5)
    held, _ = store.reserve("k", "owner-a", hb)
    before = lease_rows(store)
    clock.advance(hb * GRACE - US)  # expires_at == now + 1µs: still live
    got, outcome = store.reserve("k", "owner-b", timedelta(seconds=7))
    assert outcome is ReservationOutcome.HELD_BY_OTHER
    # The holder's owner, heartbeat and expires_at, not the requester's.
    assert got == held
    assert got.owner_id == "owner-a"
    assert got.heartbeat_interval == dur(hb)
    assert got.key == "k"
    assert store.get_or_extend_reservation("k", "owner-b") == held
    assert lease_rows(store) == before


def test_others_lease_becomes_takeable_exactly_at_expiry(store: CacheStore, clock):
    held, _ = store.reserve("k", "owner-a", timedelta(seconds=1))
    clock.advance(timedelta(seconds=3) - US)
    assert store.reserve("k", "owner-b") == (held, ReservationOutcome.HELD_BY_OTHER)
    clock.advance(US)
    assert store.reserve("k", "owner-b")[1] is ReservationOutcome.TAKEN_OVER


def test_leases_on_different_keys_are_independent(store: CacheStore):
    assert store.reserve("k1", "owner-a")[1] is ReservationOutcome.ACQUIRED
    assert store.reserve("k2", "owner-b")[1] is ReservationOutcome.ACQUIRED
    assert store.reserve("k1", "owner-b")[0].owner_id == "owner-a"
    assert store.reserve("k2", "owner-a")[0].owner_id == "owner-b"


def test_reservation_key_is_the_key_given(store: CacheStore, clock):
    key = "reservation:proj-dev-abc+/="
    assert store.reserve(key, "owner-a")[0].key == key
    assert store.reserve(key, "owner-b")[0].key == key  # held by other
    clock.advance(timedelta(minutes=1))
    assert store.reserve(key, "owner-b")[0].key == key  # taken over


def test_reservation_owner_ids_are_compared_exactly(store: CacheStore):
    store.reserve("k", "owner")
    got, outcome = store.reserve("k", "Owner")
    assert outcome is ReservationOutcome.HELD_BY_OTHER
    assert got.owner_id == "owner"
    assert store.release("k", "owner ") is False


# -- Release ------------------------------------------------------------------------------------


def test_release_by_non_owner_is_a_no_op(store: CacheStore):
    held, _ = store.reserve("k", "owner-a")
    before = lease_rows(store)
    assert store.release("k", "owner-b") is False
    assert store.release_reservation("k", "owner-b") is None
    assert lease_rows(store) == before
    assert store.reserve("k", "owner-c") == (held, ReservationOutcome.HELD_BY_OTHER)


def test_release_missing_is_a_no_op(store: CacheStore):
    assert store.release("k", "owner-a") is False
    assert store.release_reservation("k", "owner-a") is None
    assert lease_rows(store) == []


def test_release_by_owner_frees_the_lease(store: CacheStore, clock):
    store.reserve("k", "owner-a")
    assert store.release("k", "owner-a") is True
    assert lease_rows(store) == []
    assert store.release("k", "owner-a") is False  # already gone
    got, outcome = store.reserve("k", "owner-b", timedelta(seconds=1))
    # A fresh acquisition, not a takeover: the old lease is gone.
    assert outcome is ReservationOutcome.ACQUIRED
    assert got == lease("k", "owner-b", timedelta(seconds=1), clock.now + timedelta(seconds=3))


def test_release_reservation_by_owner_frees_the_lease(store: CacheStore):
    store.reserve("k", "owner-a")
    assert store.release_reservation("k", "owner-a") is None
    assert store.reserve("k", "owner-b")[1] is ReservationOutcome.ACQUIRED


def test_owner_may_release_its_expired_lease(store: CacheStore, clock):
    store.reserve("k", "owner-a", timedelta(seconds=1))
    clock.advance(timedelta(hours=1))
    assert store.release("k", "owner-a") is True


# -- Clock --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_now", [datetime(2026, 1, 1), "2026-01-01T00:00:00Z", 1_767_225_600], ids=str
)
def test_clock_must_return_an_aware_datetime(db_path: str, bad_now: Any):
    with CacheStore.open(db_path, clock=lambda: bad_now) as bad:
        with pytest.raises(InvalidArgumentError) as info:
            bad.put("k", uri_output("s3://b/o"))
        check_error(info.value, "INVALID_ARGUMENT")
        assert info.value.field == "clock"
        with pytest.raises(InvalidArgumentError):
            bad.reserve("k", "owner")
    assert query(db_path, "SELECT count(*) FROM entries") == [(0,)]
    assert lease_rows(db_path) == []


def test_clock_in_another_time_zone_is_converted_to_utc(db_path: str, clock):
    from datetime import timezone

    tz = timezone(timedelta(hours=-5, minutes=-30))
    with CacheStore.open(db_path, clock=lambda: clock.now.astimezone(tz)) as shifted:
        shifted.put("k", uri_output("s3://b/o"))
        assert shifted.get("k").metadata.last_updated_at == ts(clock.now)


def test_clock_must_be_callable(db_path: str):
    with pytest.raises(InvalidArgumentError):
        CacheStore.open(db_path, clock=datetime.now(UTC))  # type: ignore[arg-type]


# -- Schema -------------------------------------------------------------------------------------


def test_newer_unknown_schema_revision_is_a_schema_error(db_path: str):
    CacheStore.open(db_path).close()
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffff'")
    for migrate in (True, False):
        with pytest.raises(SchemaError) as info:
            CacheStore.open(db_path, migrate=migrate)
        check_error(info.value, "FAILED_PRECONDITION")
        assert "ffffffff" in str(info.value)
        assert head_revision() in str(info.value)
    # Nothing was "migrated" over the unknown schema.
    assert query(db_path, "SELECT version_num FROM alembic_version") == [("ffffffff",)]


def test_empty_database_without_migrate_is_a_schema_error(db_path: str):
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute("CREATE TABLE scratch (x)")
        conn.execute("DROP TABLE scratch")
    with pytest.raises(SchemaError, match=re.escape("flytecache db upgrade")) as info:
        CacheStore.open(db_path, migrate=False)
    assert head_revision() in str(info.value)
    assert query(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'") == []
    # With migrate (the default) the same file is brought to head.
    with CacheStore.open(db_path) as migrated:
        migrated.put("k", uri_output("s3://b/o"))
    assert query(db_path, "SELECT version_num FROM alembic_version") == [(head_revision(),)]


def test_open_at_head_without_migrate_works(db_path: str):
    CacheStore.open(db_path).close()
    with CacheStore.open(db_path, migrate=False) as opened:
        opened.put("k", uri_output("s3://b/o"))
        assert opened.get("k").output_uri == "s3://b/o"


def test_a_file_that_is_not_a_database_is_a_flytecache_error(db_path: str):
    Path(db_path).write_bytes(b"this is not a SQLite database, just text" * 100)
    with pytest.raises(FlyteCacheError):
        CacheStore.open(db_path)


# -- Settings -----------------------------------------------------------------------------------


def test_settings_defaults_are_flytes():
    settings = StoreSettings()
    assert settings.max_heartbeat == timedelta(seconds=10)
    assert settings.grace_multiplier == 3
    assert settings.synchronous == "NORMAL"
    assert settings.allow_network_filesystem is False


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        StoreSettings().max_heartbeat = timedelta(seconds=1)  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"max_heartbeat": timedelta(0)},
        {"max_heartbeat": timedelta(seconds=-1)},
        {"max_heartbeat": 10},
        {"busy_timeout": timedelta(0)},
        {"busy_timeout": -US},
        {"grace_multiplier": 0},
        {"grace_multiplier": -1},
        {"grace_multiplier": 1001},
        {"grace_multiplier": "3"},
        {"grace_multiplier": True},
        {"grace_multiplier": float("nan")},
        {"synchronous": "OFF"},
        {"synchronous": "normal"},
        {"allow_network_filesystem": "yes"},
        {"pool_size": 0},
        {"max_overflow": -1},
    ],
    ids=repr,
)
def test_settings_validation(changes: dict[str, Any]):
    with pytest.raises(InvalidArgumentError) as info:
        StoreSettings(**changes)
    check_error(info.value, "INVALID_ARGUMENT")
    with pytest.raises(InvalidArgumentError):
        StoreSettings().replace(**changes)


def test_settings_from_env():
    environ = {
        "FLYTECACHE_MAX_HEARTBEAT": "15s",
        "FLYTECACHE_GRACE_MULTIPLIER": "2.5",
        "FLYTECACHE_BUSY_TIMEOUT": "250ms",
        "FLYTECACHE_SYNCHRONOUS": "full",
        "FLYTECACHE_ALLOW_NETWORK_FILESYSTEM": "yes",
        "FLYTECACHE_POOL_SIZE": "3",
        "FLYTECACHE_MAX_OVERFLOW": "0",
        "FLYTECACHE_UNRELATED": "ignored",
        "MAX_HEARTBEAT": "1s",
    }
    assert StoreSettings.from_env(environ) == StoreSettings(
        max_heartbeat=timedelta(seconds=15),
        grace_multiplier=2.5,
        busy_timeout=timedelta(milliseconds=250),
        synchronous="FULL",
        allow_network_filesystem=True,
        pool_size=3,
        max_overflow=0,
    )


def test_settings_from_env_overrides_win_and_empty_env_gives_defaults():
    environ = {"FLYTECACHE_MAX_HEARTBEAT": "15s", "FLYTECACHE_GRACE_MULTIPLIER": "4"}
    settings = StoreSettings.from_env(environ, max_heartbeat=timedelta(seconds=2))
    assert settings.max_heartbeat == timedelta(seconds=2)
    assert settings.grace_multiplier == 4
    assert StoreSettings.from_env({}) == StoreSettings()


def test_settings_from_process_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLYTECACHE_MAX_HEARTBEAT", "1m")
    assert StoreSettings.from_env().max_heartbeat == timedelta(minutes=1)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("FLYTECACHE_MAX_HEARTBEAT", "soon"),
        ("FLYTECACHE_MAX_HEARTBEAT", "0s"),
        ("FLYTECACHE_BUSY_TIMEOUT", "-1s"),
        ("FLYTECACHE_GRACE_MULTIPLIER", "three"),
        ("FLYTECACHE_GRACE_MULTIPLIER", "0"),
        ("FLYTECACHE_SYNCHRONOUS", "off"),
        ("FLYTECACHE_ALLOW_NETWORK_FILESYSTEM", "maybe"),
        ("FLYTECACHE_POOL_SIZE", "many"),
    ],
)
def test_settings_from_env_rejects_bad_values(var: str, value: str):
    with pytest.raises(InvalidArgumentError):
        StoreSettings.from_env({var: value})


def test_open_rejects_settings_of_the_wrong_type(db_path: str):
    with pytest.raises(InvalidArgumentError):
        CacheStore.open(db_path, settings={"max_heartbeat": 5})  # type: ignore[arg-type]


# -- Opening: URLs, paths and network filesystems -----------------------------------------------


def test_open_plain_path_and_sqlite_url_reach_the_same_file(db_path: str, clock):
    with CacheStore.open(db_path, clock=clock) as by_path:
        by_path.put("k", uri_output("s3://b/o"))
        assert by_path.is_sqlite
    assert Path(db_path).is_file()
    with CacheStore.open(f"sqlite:///{db_path}", clock=clock) as by_url:
        assert by_url.get("k").output_uri == "s3://b/o"
    with CacheStore.open(Path(db_path), clock=clock) as by_pathlike:
        assert by_pathlike.get("k").output_uri == "s3://b/o"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://x",
        "mysql://user:pw@host/db",
        "",
        "   ",
        ":memory:",
        "sqlite://",
        "sqlite:///:memory:",
    ],
)
def test_open_refuses_unsupported_or_in_memory_urls(url: str):
    with pytest.raises(InvalidArgumentError) as info:
        CacheStore.open(url)
    check_error(info.value, "INVALID_ARGUMENT")


def test_open_in_a_missing_directory_is_invalid_argument(tmp_path: Path):
    missing = tmp_path / "does" / "not" / "exist" / "cache.db"
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        CacheStore.open(str(missing))
    assert not missing.parent.exists()


def test_open_a_directory_is_invalid_argument(tmp_path: Path):
    with pytest.raises(InvalidArgumentError, match="directory"):
        CacheStore.open(str(tmp_path))


def _fake_mounts(tmp_path: Path, fstype: str) -> str:
    # Fault injection: an NFS mount cannot be created in the sandbox, so we hand the engine a
    # fake /proc/self/mounts in which the test directory is a network mount.
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw,relatime 0 0\n"
        f"fileserver:/export/cache {tmp_path.resolve()} {fstype} rw,relatime,vers=4.2 0 0\n"
    )
    return str(mounts)


@pytest.mark.parametrize("fstype", ["nfs4", "nfs", "cifs", "fuse.sshfs"])
def test_network_filesystem_is_refused(tmp_path: Path, fstype: str):
    mounts = _fake_mounts(tmp_path, fstype)
    url = normalize_url(str(tmp_path / "cache.db"))
    with pytest.raises(InvalidArgumentError, match="network filesystem") as info:
        create_store_engine(url, StoreSettings(), mounts_file=mounts)
    assert fstype in str(info.value)
    assert "allow_network_filesystem" in str(info.value)
    assert not (tmp_path / "cache.db").exists()


def test_network_filesystem_allowed_when_asked(tmp_path: Path):
    mounts = _fake_mounts(tmp_path, "nfs4")
    url = normalize_url(str(tmp_path / "cache.db"))
    engine = create_store_engine(
        url, StoreSettings(allow_network_filesystem=True), mounts_file=mounts
    )
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_local_filesystem_in_fake_mounts_is_allowed(tmp_path: Path):
    mounts = _fake_mounts(tmp_path, "ext4")
    engine = create_store_engine(
        normalize_url(str(tmp_path / "cache.db")), StoreSettings(), mounts_file=mounts
    )
    engine.dispose()


# -- Lifecycle ----------------------------------------------------------------------------------


def test_closed_store_refuses_every_operation(db_path: str, clock):
    opened = CacheStore.open(db_path, clock=clock)
    opened.put("k", uri_output("s3://b/o"))
    opened.close()
    opened.close()  # idempotent
    calls = [
        lambda: opened.get("k"),
        lambda: opened.put("k2", uri_output("s3://b/o")),
        lambda: opened.delete("k"),
        lambda: opened.reserve("k", "owner"),
        lambda: opened.get_or_extend_reservation("k", "owner"),
        lambda: opened.release("k", "owner"),
        lambda: opened.release_reservation("k", "owner"),
    ]
    for call in calls:
        with pytest.raises(FlyteCacheError, match="closed"):
            call()


def test_context_manager_closes(db_path: str):
    with CacheStore.open(db_path) as opened:
        pass
    with pytest.raises(FlyteCacheError, match="closed"):
        opened.get("k")


def test_data_survives_reopen(db_path: str, clock):
    with CacheStore.open(db_path, clock=clock) as first:
        first.put("k", inline_output({"a": int_literal(1)}))
        first.reserve("r", "owner-a")
    with CacheStore.open(db_path, clock=clock) as second:
        assert dict(second.get("k").output_literals.literals) == {"a": int_literal(1)}
        assert second.reserve("r", "owner-b")[1] is ReservationOutcome.HELD_BY_OTHER


def test_rows_without_a_metadata_blob_read_the_same(store: CacheStore) -> None:
    """Rows written without ``metadata_pb`` (imports) are rebuilt from the columns, identically."""
    output = cs.CachedOutput(
        output_literals=literals_pb2.LiteralMap(literals={"a": int_literal(1), "b": int_literal(2)})
    )
    output.metadata.source_identifier.CopyFrom(
        identifier_pb2.Identifier(resource_type=1, project="p", domain="d", name="n", version="v")
    )
    output.metadata.key_map.values.update({"task-version": "v", "exec-node": "n0"})
    store.put("blob", output)
    store.put("uri", cs.CachedOutput(output_uri="s3://b/u", metadata=output.metadata))
    fast = {key: store.get(key) for key in ("blob", "uri")}
    with store.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE entries SET metadata_pb = NULL")
    for key, expected in fast.items():
        assert store.get(key) == expected
