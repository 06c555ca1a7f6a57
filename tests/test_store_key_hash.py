"""Entries are found by the key's 64-bit hash and the key itself (schema 0004).

The hash is XXH3-64 as a signed integer, in ``entries`` and ``reservations`` alike. Two keys
sharing a hash never read or replace each other's entry: the second is refused with
FAILED_PRECONDITION, locally and through the server. A real 64-bit collision cannot be found,
so the tests give a stored row the other key's hash by SQL (fault injection).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import xxhash
from _store import check_error, inline_output, int_literal, query, uri_output

from flytecache import CacheStore
from flytecache.errors import KeyHashCollisionError, NotFoundError
from flytecache.remote import RemoteCache
from flytecache.scoping import Scope
from flytecache.store.admin.entries import delete_entries, get_entry
from flytecache.store.codec import SPILL_BYTES
from flytecache.store.keyhash import key_hash

KEYS = [
    "",
    "abc",
    "flytesnacks-development-+UmrGhEwHv3FesdpA4gliBluF3FUXz4tshmuOlw1FSk=-GKw-c0Pw-x/y=1",
    "ünïcode ✓ 鍵",
    "k" * 2048,
]


def test_the_hash_is_xxh3_64_as_a_signed_integer() -> None:
    # XXH3_64bits of no bytes, seed 0, from the xxHash specification's test vectors; the top
    # bit is clear, so the signed value is the same number.
    assert key_hash("") == 0x2D06800538D394C2
    for key in KEYS:
        unsigned = xxhash.xxh3_64_intdigest(key.encode("utf-8"))
        assert key_hash(key) == (unsigned if unsigned < 2**63 else unsigned - 2**64)
        assert -(2**63) <= key_hash(key) < 2**63
    assert key_hash("a") < 0 < key_hash("b")  # both halves of the range occur


def test_every_stored_row_carries_its_keys_hash(store: CacheStore) -> None:
    keys = KEYS[1:]
    for key in keys:
        store.put(key, uri_output("s3://b/" + str(len(key))))
    rows = query(store, "SELECT key, key_hash FROM entries")
    assert sorted(rows) == sorted((key, key_hash(key)) for key in keys)
    for key in keys:
        store.get_or_extend_reservation(key, "owner")
    leases = query(store, "SELECT key, key_hash FROM reservations")
    assert sorted(leases) == sorted((key, key_hash(key)) for key in keys)


def _collide(store: CacheStore, holder: str, key: str) -> None:
    """Give ``holder``'s row the hash of ``key``: as if the two keys shared one."""
    with store.engine.begin() as conn:
        conn.execute(
            sa.text("UPDATE entries SET key_hash = :h WHERE key = :k"),
            {"h": key_hash(key), "k": holder},
        )


def test_a_key_whose_hash_another_key_holds_is_refused_and_changes_nothing(
    store: CacheStore,
) -> None:
    store.put("holder", uri_output("s3://b/holder"))
    _collide(store, "holder", "victim")
    before = query(store, "SELECT * FROM entries")

    with pytest.raises(NotFoundError):
        store.get("victim")
    large = inline_output({"x": int_literal(1)})
    large.output_literals.literals["pad"].scalar.primitive.string_value = "p" * (2 * SPILL_BYTES)
    attempts = [
        {},
        {"overwrite": True},
        {"max_age": timedelta(0)},
        {"max_age": timedelta(days=1)},
    ]
    for output in (uri_output("s3://b/victim"), large):
        for kwargs in attempts:
            with pytest.raises(KeyHashCollisionError) as info:
                store.put("victim", output, **kwargs)  # type: ignore[arg-type]
            check_error(info.value, "FAILED_PRECONDITION")
            assert info.value.key == "victim" and info.value.stored == "holder"
            assert '"victim"' in str(info.value) and '"holder"' in str(info.value)
    with pytest.raises(NotFoundError):
        store.delete("victim")
    assert delete_entries(store, ["victim"]).missing == ["victim"]
    with pytest.raises(NotFoundError):
        get_entry(store, "victim")
    assert query(store, "SELECT * FROM entries") == before
    assert query(store, "SELECT count(*) FROM outputs") == [(0,)]

    with store.engine.begin() as conn:  # once the holder is gone, the key can be stored
        conn.execute(sa.text("DELETE FROM entries WHERE key = 'holder'"))
    store.put("victim", uri_output("s3://b/victim"))
    assert store.get("victim").output_uri == "s3://b/victim"


def test_the_server_answers_failed_precondition_and_the_client_raises_the_same(
    cache_server: object,
) -> None:
    server: Any = cache_server
    remote = RemoteCache(server.url)
    scope = Scope(project="p", domain="d")
    remote.put(scope, "holder-k", uri_output("s3://b/holder"))
    with CacheStore.open(server.database) as local:
        _collide(local, "p-d-holder-k", "p-d-victim-k")
    try:
        with pytest.raises(KeyHashCollisionError) as info:
            remote.put(scope, "victim-k", uri_output("s3://b/victim"), overwrite=True)
        check_error(info.value, "FAILED_PRECONDITION")
        assert info.value.key == "victim-k"
        assert '"p-d-victim-k"' in str(info.value)
        assert "holder" not in str(info.value)  # another project's key is not named
        with CacheStore.open(server.database) as local:
            rows = query(local, "SELECT key, output_uri FROM entries WHERE key LIKE 'p-d-%'")
            assert rows == [("p-d-holder-k", "s3://b/holder")]
    finally:
        remote.close()
        with CacheStore.open(server.database) as local, local.engine.begin() as conn:
            conn.execute(sa.text("DELETE FROM entries WHERE key = 'p-d-holder-k'"))
