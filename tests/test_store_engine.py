"""The engine: PRAGMAs, BEGIN IMMEDIATE, busy handling, fork safety."""

from __future__ import annotations

import sqlite3
import threading
from datetime import timedelta
from typing import Any

import pytest
from _store import in_forked_child
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache import CacheStore, StoreSettings
from flytecache.errors import StorageBusyError, StorageError
from flytecache.store.codec import SPILL_BYTES


def test_pragmas_on_every_connection(db_path: str) -> None:
    settings = StoreSettings(synchronous="FULL", busy_timeout=timedelta(seconds=2))
    with CacheStore.open(db_path, settings=settings) as store, store.dbapi_connection() as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
        assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2000
    with CacheStore.open(db_path) as store, store.dbapi_connection() as conn:
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL


def _traced(store: CacheStore) -> tuple[Any, list[str]]:
    statements: list[str] = []
    with store.dbapi_connection() as conn:
        conn.set_trace_callback(statements.append)
    # The pool is LIFO: the next operation on this thread uses that connection.
    return conn, statements


def test_reservation_is_one_write_statement(sqlite_store: CacheStore) -> None:
    """Acquisition is one upsert in autocommit: SQLite takes the write lock when a write
    statement starts, before it reads, so it decides exactly as inside BEGIN IMMEDIATE."""
    conn, statements = _traced(sqlite_store)
    sqlite_store.get_or_extend_reservation("k", "owner")
    sqlite_store.release_reservation("k", "owner")
    conn.set_trace_callback(None)
    assert len(statements) == 2
    assert statements[0].startswith("INSERT INTO reservations")
    assert "ON CONFLICT" in statements[0] and "RETURNING" in statements[0]
    assert statements[1].startswith("DELETE FROM reservations")


def test_holder_is_read_only_when_the_upsert_was_refused(sqlite_store: CacheStore) -> None:
    sqlite_store.get_or_extend_reservation("k", "holder")
    conn, statements = _traced(sqlite_store)
    lease = sqlite_store.get_or_extend_reservation("k", "other")
    conn.set_trace_callback(None)
    assert lease.owner_id == "holder"
    assert [s.split()[0] for s in statements] == ["INSERT", "SELECT"]


def test_put_is_one_statement_and_a_large_put_one_immediate_transaction(
    sqlite_store: CacheStore,
) -> None:
    conn, statements = _traced(sqlite_store)
    sqlite_store.put("k", cs.CachedOutput(output_uri="s3://b/k"))
    assert len(statements) == 1 and statements[0].startswith("INSERT INTO entries")
    statements.clear()
    sqlite_store.put("large", cs.CachedOutput(output_uri="s3://b/" + "x" * SPILL_BYTES))
    conn.set_trace_callback(None)
    assert statements[0] == "BEGIN IMMEDIATE" and statements[-1] == "COMMIT"
    assert [s.split()[0] for s in statements[1:-1]] == ["INSERT", "INSERT"]


def test_a_write_statement_waits_for_the_lock_instead_of_failing(db_path: str) -> None:
    """Unlike a deferred transaction upgrading to a writer (SQLITE_BUSY at once, SPEC §7), an
    autocommit write statement waits for the lock through the busy handler."""
    with CacheStore.open(db_path) as store:
        blocker = sqlite3.connect(db_path, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")
        timer = threading.Timer(0.3, blocker.commit)
        timer.start()
        try:
            assert store.get_or_extend_reservation("k", "owner").owner_id == "owner"
            store.put("k", cs.CachedOutput(output_uri="s3://b/k"))
        finally:
            timer.join()
            blocker.close()


def test_lock_held_past_busy_timeout_raises_storage_busy(db_path: str) -> None:
    settings = StoreSettings(busy_timeout=timedelta(milliseconds=200))
    with CacheStore.open(db_path, settings=settings) as store:
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StorageBusyError) as info:
                store.put("k", cs.CachedOutput(output_uri="s3://b/k"))
            assert info.value.code == "UNAVAILABLE"
            assert "retry" in str(info.value)
            with pytest.raises(StorageBusyError):
                store.get_or_extend_reservation("k", "o")
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        # Nothing was half-written, and the store works again once the lock is gone.
        assert store.engine.dialect.name == "sqlite"
        store.put("k", cs.CachedOutput(output_uri="s3://b/k"))
        assert store.get("k").output_uri == "s3://b/k"


def test_nowait_refuses_at_once_what_would_wait_and_changes_nothing(db_path: str) -> None:
    # A busy timeout of a minute: a call that waited for it would hang the test.
    settings = StoreSettings(busy_timeout=timedelta(seconds=60))
    with CacheStore.open(db_path, settings=settings) as store:
        now = store.nowait()
        assert store.nowait() is now and now.nowait() is now
        now.put("k", cs.CachedOutput(output_uri="s3://b/k"))
        large = cs.CachedOutput(output_uri="s3://b/" + "x" * SPILL_BYTES)
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            for write in (
                lambda: now.put("k2", cs.CachedOutput(output_uri="s3://b/k2")),
                lambda: now.put("k3", large),  # the transaction path
                lambda: now.get_or_extend_reservation("r", "o"),
                lambda: now.delete("k"),
            ):
                with pytest.raises(StorageBusyError):
                    write()
            assert now.get("k").output_uri == "s3://b/k"  # reads do not wait anyway
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        with now.dbapi_connection() as conn:
            assert conn.execute("SELECT key FROM entries").fetchall() == [("k",)]
            assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 0
            assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        now.put("k2", cs.CachedOutput(output_uri="s3://b/k2"))
        assert store.get("k2").output_uri == "s3://b/k2"
    with pytest.raises(StorageError, match="closed"):
        now.get("k")


def test_reads_do_not_wait_for_a_writer(db_path: str) -> None:
    settings = StoreSettings(busy_timeout=timedelta(milliseconds=200))
    with CacheStore.open(db_path, settings=settings) as store:
        store.put("k", cs.CachedOutput(output_uri="s3://b/k"))
        blocker = sqlite3.connect(db_path, isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            assert store.get("k").output_uri == "s3://b/k"  # WAL: readers never block
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()


def test_forked_child_never_reuses_parent_connections(db_path: str) -> None:
    with CacheStore.open(db_path) as store:
        store.put("parent", cs.CachedOutput(output_uri="s3://b/p"))
        with store.dbapi_connection() as parent_conn:  # the one the put used (LIFO)
            pass

        def child() -> bool:
            with store.dbapi_connection() as fresh:
                ok = fresh is not parent_conn
            store.put("child", cs.CachedOutput(output_uri="s3://b/c"))
            return ok and store.get("parent").output_uri == "s3://b/p"

        assert in_forked_child(child)
        # The parent's connection still works after the child exited.
        assert store.get("child").output_uri == "s3://b/c"
        with store.dbapi_connection() as conn:
            assert conn is parent_conn


def test_wal_switch_waits_for_another_opener(tmp_path) -> None:
    """A concurrent switch to WAL fails at once in SQLite ("database is locked", no busy
    handler); the engine waits for it instead. Produced for real: another connection holds
    the write lock of a brand-new rollback-journal file."""
    import threading
    import time

    from flytecache.store.engine import _switch_to_wal  # the race is only reachable here

    path = str(tmp_path / "fresh.db")
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    opener = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    release = threading.Timer(0.2, lambda: holder.execute("COMMIT"))
    release.start()
    started = time.monotonic()
    try:
        _switch_to_wal(opener, timeout=5.0)
    finally:
        release.join()
    assert time.monotonic() - started >= 0.1  # it really waited
    assert opener.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    opener.close()
    holder.close()
