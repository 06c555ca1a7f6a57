"""Hostile input to the store and the client: only INVALID_ARGUMENT-class errors, data inert."""

from __future__ import annotations

from datetime import timedelta

import pytest
from _catalog import literal_map, make_key
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flytecache import CacheStore, CatalogClient
from flytecache.errors import FlyteCacheError, InvalidArgumentError, NotFoundError
from flytecache.store.cache import MAX_KEY_BYTES

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
ALLOWED = (InvalidArgumentError, NotFoundError)


@pytest.fixture(scope="module")
def fuzz_store(tmp_path_factory):
    with CacheStore.open(str(tmp_path_factory.mktemp("fuzz") / "fuzz.db")) as store:
        yield store


@FUZZ
@given(key=st.text(max_size=300) | st.binary(max_size=50) | st.none() | st.integers())
def test_any_key_is_handled(fuzz_store: CacheStore, key) -> None:
    try:
        fuzz_store.put(key, cs.CachedOutput(output_uri="s3://b/x"), overwrite=True)
        assert fuzz_store.get(key).output_uri == "s3://b/x"
        fuzz_store.get_or_extend_reservation(key, "owner")
        fuzz_store.release_reservation(key, "owner")
        fuzz_store.delete(key)
    except ALLOWED as error:
        assert error.code in {"INVALID_ARGUMENT", "NOT_FOUND"}


@pytest.mark.parametrize(
    "key",
    ["", "\x00", "a\x00b", "\ud800", "x" * (MAX_KEY_BYTES + 1), "é" * (MAX_KEY_BYTES // 2 + 1)],
)
def test_bad_keys_are_invalid_argument(fuzz_store: CacheStore, key: str) -> None:
    with pytest.raises(InvalidArgumentError, match="key"):
        fuzz_store.put(key, cs.CachedOutput(output_uri="s3://b/x"))
    with pytest.raises(InvalidArgumentError, match="key"):
        fuzz_store.get_or_extend_reservation(key, "owner")


def test_longest_key_is_accepted(fuzz_store: CacheStore) -> None:
    key = "k" * MAX_KEY_BYTES
    fuzz_store.put(key, cs.CachedOutput(output_uri="s3://b/x"), overwrite=True)
    assert fuzz_store.get(key).output_uri == "s3://b/x"


@FUZZ
@given(
    seconds=st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
)
def test_any_duration_is_handled(fuzz_store: CacheStore, seconds) -> None:
    try:
        duration = timedelta(seconds=seconds)
    except OverflowError:
        return
    lease = fuzz_store.get_or_extend_reservation("dur", "owner", duration)
    assert lease.owner_id == "owner"
    fuzz_store.release_reservation("dur", "owner")
    try:
        fuzz_store.put("dur", cs.CachedOutput(output_uri="s3://b"), max_age=duration)
    except FlyteCacheError as error:
        assert error.code == "ALREADY_EXISTS"


@FUZZ
@given(data=st.binary(max_size=2000))
def test_random_protobuf_bytes_never_break_put(fuzz_store: CacheStore, data: bytes) -> None:
    output = cs.CachedOutput()
    try:
        output.ParseFromString(data)
    except DecodeError:
        return
    try:
        fuzz_store.put("random", output, overwrite=True)
    except InvalidArgumentError:
        return
    fuzz_store.get("random")


@FUZZ
@given(
    seconds=st.integers(min_value=-(2**62), max_value=2**62), nanos=st.integers(-(2**31), 2**31 - 1)
)
def test_out_of_range_timestamps_are_invalid_argument(
    fuzz_store: CacheStore, seconds: int, nanos: int
) -> None:
    output = cs.CachedOutput(output_uri="s3://b")
    output.metadata.created_at.seconds = seconds
    output.metadata.created_at.nanos = nanos
    try:
        fuzz_store.put("ts", output, overwrite=True)
    except InvalidArgumentError as error:
        assert "created_at" in str(error)


@pytest.mark.parametrize(
    "text",
    ["'; DROP TABLE entries; --", '" OR 1=1 --', "%s%s%(key)s", "?", "x' UNION SELECT 1 --"],
)
def test_sql_looking_keys_and_owners_are_inert(fuzz_store: CacheStore, text: str) -> None:
    fuzz_store.put(text, cs.CachedOutput(output_uri=text), overwrite=True)
    assert fuzz_store.get(text).output_uri == text
    assert fuzz_store.get_or_extend_reservation(text, text).owner_id == text
    fuzz_store.release_reservation(text, text)
    fuzz_store.delete(text)
    fuzz_store.put("still-here", cs.CachedOutput(output_uri="s3://b"), overwrite=True)
    assert fuzz_store.get("still-here").output_uri == "s3://b"


def test_client_rejects_hostile_inputs(fuzz_store: CacheStore) -> None:
    client = CatalogClient(fuzz_store)
    with pytest.raises(InvalidArgumentError):
        client.get_or_extend_reservation(make_key(), "\x00")
    with pytest.raises(InvalidArgumentError):
        client.put(make_key(), literal_map(o=1), metadata="nope")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        client.get_or_compute(make_key(), "not callable")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError):
        client.get_or_compute(make_key(), lambda: 42)  # type: ignore[arg-type, return-value]


@pytest.mark.parametrize(
    "mutate",
    [
        lambda o: setattr(o.metadata.source_identifier, "project", "p\x00"),
        lambda o: o.metadata.key_map.values.__setitem__("k", "v\x00"),
        lambda o: o.output_literals.literals["a\x00"].scalar.primitive.integer.__class__,
    ],
    ids=["project", "key_map", "output name"],
)
def test_nul_in_stored_text_is_invalid_argument_on_every_backend(store: CacheStore, mutate) -> None:
    output = cs.CachedOutput()
    output.output_literals.SetInParent()
    mutate(output)
    with pytest.raises(InvalidArgumentError, match="NUL"):
        store.put("nul", output)
    with pytest.raises(InvalidArgumentError, match="NUL"):
        store.put("nul", cs.CachedOutput(output_uri="s3://a\x00b"))
