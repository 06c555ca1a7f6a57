"""CacheStore entries, row by row against SPEC §3: get, put (overwrite, max_age, created_at),
delete, and keys as opaque strings.

Every time comes from the injected ``clock`` so boundaries are checked to the microsecond.
``OverwriteOutput.delete_blob`` is not tested here: the store's ``put`` has no such parameter (the
server accepts and ignores it), so there is nothing to observe at this level.
Reservations (SPEC §4) are in ``test_store_reservations.py``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from _store import (
    US,
    check_error,
    inline_output,
    int_literal,
    lease_rows,
    query,
    string_literal,
    ts,
    uri_output,
)
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import identifier_pb2, literals_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from flytecache import CacheStore
from flytecache.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError
from flytecache.store import ReservationOutcome
from flytecache.store.codec import SPILL_BYTES

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


def _large(text_bytes: int) -> cs.CachedOutput:
    output = inline_output({"a": int_literal(1), "big": string_literal("x" * text_bytes)})
    output.metadata.source_identifier.CopyFrom(
        identifier_pb2.Identifier(resource_type=1, project="p", domain="d", name="n", version="v")
    )
    output.metadata.key_map.values.update({"task-version": "v", "exec-node": "n0"})
    return output


def test_large_payloads_live_in_outputs_and_read_the_same(store: CacheStore) -> None:
    """A payload over SPILL_BYTES moves to ``outputs``; get, overwrite and delete see no
    difference, and no outputs row outlives its entry's version."""
    small, large = _large(10), _large(SPILL_BYTES)
    store.put("k", large)
    assert query(store, "SELECT count(*) FROM outputs") == [(1,)]
    assert query(store, "SELECT count(*) FROM entries WHERE payload IS NULL") == [(1,)]
    got = store.get("k")
    got.metadata.ClearField("created_at")
    got.metadata.ClearField("last_updated_at")
    assert got == large
    store.put("k", small, overwrite=True)
    assert query(store, "SELECT count(*) FROM outputs") == [(0,)]
    assert store.get("k").output_literals == small.output_literals
    store.put("k", large, overwrite=True)
    assert store.get("k").output_literals == large.output_literals
    with pytest.raises(AlreadyExistsError):
        store.put("k", small)
    assert store.get("k").output_literals == large.output_literals
    store.delete("k")
    assert query(store, "SELECT count(*) FROM outputs") == [(0,)]


def test_the_payload_is_what_get_returns(store: CacheStore, clock: Any) -> None:
    """A get parses the stored bytes and nothing else; an overwrite that keeps created_at
    rewrites the payload's copy of it too."""
    output = _large(10)
    output.metadata.created_at.CopyFrom(ts(datetime(2024, 1, 1, tzinfo=UTC)))
    store.put("k", output)
    (payload,) = query(store, "SELECT payload FROM entries")[0]
    assert cs.CachedOutput.FromString(bytes(payload)) == store.get("k")
    first = store.get("k").metadata.created_at
    clock.advance(timedelta(seconds=5))
    store.put("k", _large(20), overwrite=True)
    got = store.get("k")
    assert got.metadata.created_at == first
    (payload,) = query(store, "SELECT payload FROM entries")[0]
    assert cs.CachedOutput.FromString(bytes(payload)) == got


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
    _, outcome = store.get_or_extend_reservation("k", "b", with_outcome=True)
    assert outcome is ReservationOutcome.ACQUIRED


def test_put_never_releases_or_checks_a_reservation(store: CacheStore, clock):
    held, _ = store.get_or_extend_reservation("k", "owner-a", with_outcome=True)
    before = lease_rows(store)
    # Someone who does not hold the lease may still put, and the lease survives.
    store.put("k", uri_output("s3://b/o"))
    store.put("k", uri_output("s3://b/o2"), overwrite=True)
    store.delete("k")
    assert lease_rows(store) == before
    got, outcome = store.get_or_extend_reservation("k", "owner-b", with_outcome=True)
    assert outcome is ReservationOutcome.HELD_BY_OTHER
    assert got == held


# -- Delete -------------------------------------------------------------------------------------


def test_delete_removes_entry_and_its_large_payload(store: CacheStore):
    store.put("k", _large(SPILL_BYTES))
    store.put("other", inline_output({"a": int_literal(3)}))
    store.put("other-large", _large(SPILL_BYTES))
    assert query(store, "SELECT count(*) FROM outputs") == [(2,)]
    store.delete("k")
    with pytest.raises(NotFoundError, match=re.escape('cache entry "k" not found')):
        store.get("k")
    assert query(store, "SELECT count(*) FROM outputs") == [(1,)]
    assert dict(store.get("other").output_literals.literals) == {"a": int_literal(3)}
    assert store.get("other-large").output_literals == _large(SPILL_BYTES).output_literals


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
    got, outcome = store.get_or_extend_reservation(key, "owner", with_outcome=True)
    assert outcome is ReservationOutcome.ACQUIRED
    assert got.key == key
    assert store.release_reservation(key, "owner") is True
