"""PostgreSQL-specific behaviour: errors, lock timeouts, pool limits."""

from __future__ import annotations

import concurrent.futures
import socket
from datetime import timedelta

import psycopg
import pytest
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache import CacheStore, StoreSettings
from flytecache.errors import StorageBusyError, UnavailableError


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_is_unavailable() -> None:
    url = f"postgresql+psycopg://nobody@127.0.0.1:{_closed_port()}/db"
    settings = StoreSettings(busy_timeout=timedelta(seconds=1))
    with pytest.raises(UnavailableError) as info:
        CacheStore.open(url, settings=settings)
    assert info.value.code == "UNAVAILABLE"
    assert "127.0.0.1" in str(info.value) or "connect" in str(info.value).lower()


def test_wrong_credentials_are_a_clear_error(pg_server, pg_url: str) -> None:
    if pg_server is None:
        pytest.skip("needs the suite's own server")
    bad = pg_url.replace("flytecache@", "no_such_role@")
    with pytest.raises(UnavailableError, match=r"no_such_role|credentials|authentication"):
        CacheStore.open(bad)


def test_plain_postgresql_url_uses_psycopg(migrated_pg_url: str) -> None:
    plain = migrated_pg_url.replace("postgresql+psycopg://", "postgresql://")
    with CacheStore.open(plain) as store:
        assert store.url.drivername == "postgresql+psycopg"


def test_lock_held_too_long_is_storage_busy(migrated_pg_url: str) -> None:
    settings = StoreSettings(busy_timeout=timedelta(milliseconds=300))
    with CacheStore.open(migrated_pg_url, settings=settings) as store:
        store.put("k", cs.CachedOutput(output_uri="s3://b/k"))
        dsn = store.url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(dsn) as blocker:
            blocker.execute("LOCK TABLE entries IN ACCESS EXCLUSIVE MODE")
            with pytest.raises(StorageBusyError) as info:
                store.put("k", cs.CachedOutput(output_uri="s3://b/k2"), overwrite=True)
            assert info.value.code == "UNAVAILABLE"
            blocker.rollback()
        # Nothing half-written; the store works again.
        assert store.get("k").output_uri == "s3://b/k"
        store.put("k", cs.CachedOutput(output_uri="s3://b/k3"), overwrite=True)
        assert store.get("k").output_uri == "s3://b/k3"


def test_connection_budget_is_bounded(migrated_pg_url: str) -> None:
    settings = StoreSettings(pool_size=1, max_overflow=0, pool_timeout=timedelta(milliseconds=200))
    with CacheStore.open(migrated_pg_url, settings=settings) as store:
        # Holding the only connection the budget allows, the next call waits pool_timeout.
        with store.dbapi_connection(), pytest.raises(StorageBusyError, match="connections"):
            store.get_or_extend_reservation("k", "o")
        store.get_or_extend_reservation("k", "o")


def test_calls_waiting_for_a_connection_get_one_when_it_is_returned(
    migrated_pg_url: str,
) -> None:
    settings = StoreSettings(pool_size=2, max_overflow=0, pool_timeout=timedelta(seconds=60))
    with CacheStore.open(migrated_pg_url, settings=settings) as store:
        store.put("k", cs.CachedOutput(output_uri="s3://b/k"))
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            with store.dbapi_connection(), store.dbapi_connection():
                # Every connection is out: eight calls queue for them...
                waiting = [pool.submit(store.get, "k") for _ in range(8)]
                done, _ = concurrent.futures.wait(waiting, timeout=0.5)
                assert not done
            # ...and each is served once the two come back, none left waiting.
            assert all(f.result(timeout=60).output_uri == "s3://b/k" for f in waiting)
