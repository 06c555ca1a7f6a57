"""The one place that creates database engines: PRAGMAs and BEGIN modes (SQLite), lock timeouts
(PostgreSQL), fork safety, and the SQLAlchemy connections admin and migrations use.

URLs live in :mod:`~flytecache.store.urls`, file-location checks in
:mod:`~flytecache.store.filesystem`, the hot path's own pool in :mod:`~flytecache.store.pool`
and the driver-error table in :mod:`~flytecache.store.driver_errors`.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
import urllib.parse
import weakref
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine

from flytecache.config import StoreSettings
from flytecache.errors import UnavailableError
from flytecache.store.driver_errors import BUSY_MESSAGE, translate_errors
from flytecache.store.filesystem import check_sqlite_path, create_private_file
from flytecache.store.pool import forget_pools_after_fork
from flytecache.store.urls import is_sqlite, sqlite_file

__all__ = [
    "create_store_engine",
    "lock_for_migration",
    "read_connection",
    "write_connection",
]

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _switch_to_wal(dbapi_conn: sqlite3.Connection, timeout: float) -> None:
    """``PRAGMA journal_mode = WAL``, waiting up to ``timeout`` for other openers.

    On a brand-new file the first opener writes the header while switching; SQLite then fails
    a concurrent switch with "database is locked" at once, without consulting the busy
    handler, so the wait is done here.
    """
    deadline = time.monotonic() + timeout
    delay = 0.001
    while True:
        try:
            dbapi_conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if not BUSY_MESSAGE.search(str(error)) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def _install_sqlite_events(engine: Engine, settings: StoreSettings, read_only: bool) -> None:
    busy_ms = int(settings.busy_timeout.total_seconds() * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        # Driver autocommit: we emit BEGIN ourselves so writes can start IMMEDIATE (below).
        dbapi_conn.isolation_level = None
        # busy_timeout first: the journal_mode switch below may itself wait for other openers.
        dbapi_conn.execute(f"PRAGMA busy_timeout = {busy_ms}")
        mode = dbapi_conn.execute("PRAGMA journal_mode").fetchone()
        if not read_only and (mode is None or str(mode[0]).lower() != "wal"):
            # WAL lets readers run while one writer commits; it is persistent in the file.
            _switch_to_wal(dbapi_conn, settings.busy_timeout.total_seconds())
        # NORMAL in WAL mode loses no committed transaction on a process crash; FULL adds
        # an fsync per commit for power loss.
        dbapi_conn.execute(f"PRAGMA synchronous = {settings.synchronous}")
        # SQLite leaves foreign keys off by default; outputs rely on ON DELETE CASCADE.
        dbapi_conn.execute("PRAGMA foreign_keys = ON")
        # Without a limit the -wal file never shrinks: after a reader pinned old data it keeps
        # the size it grew to (883 MiB, measured) although checkpoints empty it. With one, the
        # first commit after a complete checkpoint cuts it back to this size.
        dbapi_conn.execute(f"PRAGMA journal_size_limit = {settings.wal_size_limit}")

    @event.listens_for(engine, "begin")
    def _on_begin(conn: sa.Connection) -> None:
        # pysqlite's deferred BEGIN lets two read-then-write transactions interleave and then
        # fail with "database is locked" (the busy handler is skipped on lock upgrade); writes
        # therefore take the write lock up front. Read-only work opts into DEFERRED.
        mode = conn.get_execution_options().get("flytecache_begin", "IMMEDIATE")
        conn.exec_driver_sql(f"BEGIN {mode}")


def _install_fork_guard(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _stamp(_dbapi_conn: Any, record: Any) -> None:
        record.info["pid"] = os.getpid()

    @event.listens_for(engine, "checkout")
    def _check(_dbapi_conn: Any, record: Any, proxy: Any) -> None:
        # Belt and braces for fork() without register_at_fork (e.g. os.fork from C code).
        if record.info.get("pid") != os.getpid():
            record.dbapi_connection = proxy.dbapi_connection = None
            raise exc.DisconnectionError("connection belongs to another process")


def _after_fork_in_child() -> None:
    # The child must never use (or close) the parent's connections: drop them unclosed.
    for engine in list(_ENGINES):
        engine.dispose(close=False)
    forget_pools_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)


def create_store_engine(
    url: URL,
    settings: StoreSettings,
    *,
    mounts_file: str = "/proc/self/mounts",
    read_only: bool = False,
) -> Engine:
    """Create the engine for ``url`` with flytecache's connection settings.

    ``read_only`` opens a SQLite file that cannot be written at all (its directory is
    read-only, so SQLite cannot create the WAL companions): reads work, writes fail clearly.
    A SQLite file that does not exist yet is created here with ``settings.file_mode``.
    """
    if is_sqlite(url):
        check_sqlite_path(url, settings, mounts_file)
        if not read_only and url.database not in (None, "", ":memory:"):
            # SQLite would create it with 0644 minus the umask, and give the -wal and -shm
            # files the same mode: cache outputs and keys readable by every local user.
            path = sqlite_file(url)
            try:
                create_private_file(path, settings.file_mode)
            except OSError as error:
                raise UnavailableError(
                    f"cannot create the database file {path} ({error.strerror}); check the "
                    "path and permissions"
                ) from None
        connect_args: dict[str, Any] = {
            "timeout": settings.busy_timeout.total_seconds(),
            "check_same_thread": False,
            "isolation_level": None,
        }
        if read_only:
            # immutable: no -shm/-wal needed. Only used when nobody can have a WAL open
            # (none exists and none can be created in the directory).
            assert url.database is not None
            target = url.set(
                database="file:" + urllib.parse.quote(url.database) + "?mode=ro&immutable=1"
            ).update_query_dict({"uri": "true"})
            connect_args["uri"] = True
            url = target
        engine = sa.create_engine(
            url,
            connect_args=connect_args,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
        )
        _install_sqlite_events(engine, settings, read_only)
    else:
        engine = sa.create_engine(
            url,
            pool_size=settings.pool_size,
            max_overflow=settings.max_overflow,
            pool_pre_ping=True,
            connect_args={"connect_timeout": max(1, int(settings.busy_timeout.total_seconds()))},
        )

        @event.listens_for(engine, "connect")
        def _pg_connect(dbapi_conn: Any, _record: Any) -> None:
            # Bound lock waits like SQLite's busy_timeout, so a stuck lock becomes a retryable
            # StorageBusyError instead of a hang.
            ms = int(settings.busy_timeout.total_seconds() * 1000)
            with dbapi_conn.cursor() as cur:
                cur.execute(f"SET lock_timeout = {ms}")
            dbapi_conn.commit()

    _install_fork_guard(engine)
    _ENGINES.add(engine)
    return engine


@contextlib.contextmanager
def write_connection(engine: Engine) -> Iterator[sa.Connection]:
    """A SQLAlchemy connection in a write transaction (BEGIN IMMEDIATE on SQLite)."""
    with translate_errors(), engine.connect() as conn, conn.begin():
        yield conn


def lock_for_migration(conn: sa.Connection) -> None:
    """Serialize schema changes between processes, inside the caller's write transaction.

    SQLite's BEGIN IMMEDIATE already holds the database write lock. PostgreSQL gets a
    transaction-scoped advisory lock: released at commit/rollback, so it cannot leak from a pool.
    """
    if conn.dialect.name == "postgresql":
        conn.exec_driver_sql("SELECT pg_advisory_xact_lock(7414221032)")


@contextlib.contextmanager
def read_connection(engine: Engine) -> Iterator[sa.Connection]:
    """A SQLAlchemy connection in a read-only transaction (deferred BEGIN on SQLite)."""
    with (
        translate_errors(),
        engine.connect().execution_options(flytecache_begin="DEFERRED") as conn,
        conn.begin(),
    ):
        yield conn
