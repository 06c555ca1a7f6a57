"""The one place that creates database engines and talks dialect: PRAGMAs, BEGIN modes, fork safety,
network-filesystem refusal, URL handling and driver-error translation.

Everything SQLite-specific lives here; the rest of the store speaks portable SQLAlchemy Core.
"""

from __future__ import annotations

import contextlib
import os
import re
import sqlite3
import threading
import time
import urllib.parse
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy import event, exc
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from flytecache.config import StoreSettings
from flytecache.errors import (
    FlyteCacheError,
    InvalidArgumentError,
    ResourceExhaustedError,
    StorageBusyError,
    StorageError,
    UnavailableError,
)

__all__ = [
    "HotPool",
    "Sql",
    "create_store_engine",
    "is_sqlite",
    "network_filesystem_type",
    "normalize_url",
    "translate_errors",
]

# Filesystem types on which SQLite's POSIX/WAL shared-memory locking is unreliable.
_NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb",
    "smb2",
    "smb3",
    "smbfs",
    "9p",
    "afs",
    "ceph",
    "glusterfs",
    "lustre",
    "gpfs",
    "ncpfs",
    "coda",
    "davfs",
    "fuse.sshfs",
    "fuse.glusterfs",
    "fuse.cephfs",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "fuse.rclone",
    "fuse.davfs",
    "fuse.juicefs",
    "fuse.goofys",
    "fuse.mountpoint-s3",
    "fuse.blobfuse",
    "fuse.blobfuse2",
    "fuse.smbnetfs",
    "fuse.curlftpfs",
}

_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()
_HOT_POOLS: weakref.WeakSet[HotPool] = weakref.WeakSet()


def sqlite_unopenable_directory(url: URL) -> bool:
    """Whether a SQLite file exists but its directory refuses the WAL companion files.

    That is the one case a read-only engine (``read_only=True``) is used for.
    """
    if not is_sqlite(url) or not url.database:
        return False
    path = Path(url.database)
    wal = path.with_name(path.name + "-wal")
    if not path.is_file() or wal.exists():
        return False
    probe = path.with_name(f".{path.name}.flytecache-probe-{os.getpid()}")
    try:
        probe.touch(exist_ok=False)
    except OSError:
        return True
    probe.unlink(missing_ok=True)
    return False


def is_sqlite(url: URL | Engine) -> bool:
    """Whether ``url`` (or an engine) points at SQLite."""
    name = url.dialect.name if isinstance(url, Engine) else url.get_backend_name()
    return name == "sqlite"


def normalize_url(url_or_path: str | os.PathLike[str]) -> URL:
    """Turn a plain path or a URL string into a SQLAlchemy URL (``sqlite:///`` for paths)."""
    if isinstance(url_or_path, os.PathLike):
        url_or_path = os.fspath(url_or_path)
    if not isinstance(url_or_path, str) or not url_or_path.strip():
        raise InvalidArgumentError("database URL or path must be a non-empty string", field="url")
    text = url_or_path.strip()
    if "://" not in text:
        if text == ":memory:":
            raise InvalidArgumentError(
                "an in-memory database cannot be shared between processes; give a file path",
                field="url",
            )
        return URL.create("sqlite", database=str(Path(text).expanduser().absolute()))
    try:
        url = make_url(text)
    except exc.ArgumentError as error:
        raise InvalidArgumentError(f"not a database URL: {text!r}", field="url") from error
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise InvalidArgumentError(
                "an in-memory SQLite database cannot be shared between processes; give a file",
                field="url",
            )
        return url.set(database=str(Path(url.database).expanduser().absolute()))
    if backend == "postgresql":
        if url.drivername != "postgresql+psycopg":
            # psycopg 3 is the only PostgreSQL driver tested (and the one we install).
            url = url.set(drivername="postgresql+psycopg")
        return url
    raise InvalidArgumentError(
        f"unsupported database {backend!r}: use a SQLite path/URL or postgresql+psycopg://",
        field="url",
    )


def network_filesystem_type(path: Path, mounts_file: str = "/proc/self/mounts") -> str | None:
    """The network filesystem type ``path`` lives on, or None if local (or unknown)."""
    try:
        with open(mounts_file, encoding="utf-8") as fh:
            mounts = [line.split() for line in fh]
    except OSError:
        return None
    target = str(path.resolve())
    best, best_type = "", ""
    for fields in mounts:
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        if (
            target == mount_point
            or target.startswith(mount_point.rstrip("/") + "/")
            or mount_point == "/"
        ) and len(mount_point) >= len(best):
            best, best_type = mount_point, fields[2]
    return best_type if best_type.lower() in _NETWORK_FS else None


def _sqlite_path_checks(url: URL, settings: StoreSettings, mounts_file: str) -> None:
    assert url.database is not None
    path = Path(url.database.removeprefix("file:").split("?")[0])
    if not path.parent.is_dir():
        raise InvalidArgumentError(
            f"cannot open database {path}: directory {path.parent} does not exist", field="url"
        )
    if path.exists() and path.is_dir():
        raise InvalidArgumentError(f"cannot open database {path}: it is a directory", field="url")
    fstype = network_filesystem_type(path.parent, mounts_file)
    if fstype and not settings.allow_network_filesystem:
        raise InvalidArgumentError(
            f"refusing to open {path}: it is on a network filesystem ({fstype}) where SQLite's "
            "WAL locking is unsafe and concurrent writers can corrupt it. Put the database on a "
            "local disk, use PostgreSQL, or set allow_network_filesystem=True "
            "(FLYTECACHE_ALLOW_NETWORK_FILESYSTEM=1) if you accept the risk.",
            field="url",
            fstype=fstype,
        )


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
            if not _BUSY.search(str(error)) or time.monotonic() + delay > deadline:
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
    for pool in list(_HOT_POOLS):
        pool.forget()


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
    """
    if is_sqlite(url):
        _sqlite_path_checks(url, settings, mounts_file)
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


# -- hot path: compiled Core statements run straight on pooled DBAPI connections -------------


@dataclass(frozen=True, slots=True)
class Sql:
    """A Core statement compiled once for one dialect, run on raw DBAPI cursors."""

    text: str
    positions: tuple[str, ...] | None
    """Bind names in order for positional paramstyles; None for named (dict) paramstyles."""

    @classmethod
    def compile(cls, statement: ClauseElement, engine: Engine) -> Sql:
        compiled = cast(SQLCompiler, statement.compile(dialect=engine.dialect))
        if compiled.positional:
            return cls(compiled.string, tuple(compiled.positiontup or ()))
        return cls(compiled.string, None)

    def args(self, params: dict[str, Any]) -> Any:
        if self.positions is None:
            return params
        return tuple([params[name] for name in self.positions])


class HotPool:
    """Idle DBAPI connections for the store's hot paths.

    SQLAlchemy's pool checkout costs about as much as a primary-key SELECT, so the hot paths
    keep their own stack of connections (created through the engine, so every PRAGMA and event
    applies, then detached). Reused LIFO; at most ``keep`` stay idle; emptied unclosed in a
    forked child.
    """

    def __init__(
        self, engine: Engine, keep: int, limit: int | None = None, wait: float = 30.0
    ) -> None:
        self._engine = engine
        self._keep = keep
        self._idle: deque[Any] = deque()
        self._pid = os.getpid()
        self._sqlite = is_sqlite(engine)
        # A server has a connection budget; SQLite connections are cheap and local.
        self._limit = limit or 1
        self._slots = None if limit is None or self._sqlite else threading.BoundedSemaphore(limit)
        self._wait = wait
        self._lock = threading.Lock()
        self._orphans: list[Any] = []
        _HOT_POOLS.add(self)

    def forget(self) -> None:
        # Keep references so the inherited connections are never closed (or finalized) here.
        self._orphans.extend(self._idle)
        self._idle = deque()
        self._pid = os.getpid()
        if self._slots is not None:
            self._slots = threading.BoundedSemaphore(self._limit)

    def acquire(self) -> Any:
        if self._pid != os.getpid():
            self.forget()
        if self._slots is not None and not self._slots.acquire(timeout=self._wait):
            raise StorageBusyError(
                f"all {self._limit} database connections stayed busy for {self._wait:.0f}s; "
                "raise pool_size/max_overflow or retry"
            )
        try:
            return self._idle.pop()
        except IndexError:
            pass
        try:
            return self._connect()
        except BaseException:
            if self._slots is not None:
                self._slots.release()
            raise

    def _connect(self) -> Any:
        proxy = self._engine.raw_connection()
        dbapi = proxy.driver_connection
        proxy.detach()
        if dbapi is None:  # pragma: no cover - only after an invalidation race
            raise StorageError("could not open a database connection")
        if not self._sqlite:
            dbapi.autocommit = False
        return dbapi

    def release(self, dbapi: Any, *, broken: bool = False) -> None:
        if self._pid != os.getpid():
            self._orphans.append(dbapi)  # a connection from before a fork: never touch it
            return
        if self._slots is not None:
            self._slots.release()
        if broken or len(self._idle) >= self._keep:
            with contextlib.suppress(Exception):
                dbapi.close()
            return
        self._idle.append(dbapi)

    def close(self) -> None:
        while self._idle:
            dbapi = self._idle.pop()
            with contextlib.suppress(Exception):
                dbapi.close()

    def transaction(self, *, write: bool) -> _Transaction:
        """A DBAPI cursor inside one transaction: IMMEDIATE for writes on SQLite.

        Commits on success, rolls back on any error; driver errors come out translated.
        A class rather than ``@contextmanager``: the generator machinery of two nested
        context managers cost about a tenth of a reservation call.
        """
        return _Transaction(self, write)

    def _abandon(self, dbapi: Any) -> None:
        """Roll back and return ``dbapi`` after a failure (closed if the rollback fails)."""
        broken = False
        try:
            dbapi.rollback()
        except Exception:
            broken = True
        broken = broken or bool(getattr(dbapi, "closed", False))
        self.release(dbapi, broken=broken)

    def fetchall(self, sql: Sql, params: dict[str, Any]) -> list[Any]:
        """Run one read statement and return its rows (the hot path for ``get``).

        Written without context managers: on SQLite this is a third of the call's overhead.
        """
        try:
            dbapi = self.acquire()
            try:
                if self._sqlite:
                    # One statement is its own (deferred, snapshot-consistent) transaction.
                    rows: list[Any] = dbapi.execute(sql.text, sql.args(params)).fetchall()
                else:
                    with dbapi.cursor() as cur:
                        rows = cur.execute(sql.text, sql.args(params)).fetchall()
                    dbapi.commit()
            except BaseException:
                if not self._sqlite:
                    try:
                        dbapi.rollback()
                    except Exception:
                        self.release(dbapi, broken=True)
                        raise
                self.release(dbapi)
                raise
            self.release(dbapi)
            return rows
        except FlyteCacheError:
            raise
        except Exception as error:
            with translate_errors():
                raise error

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Any]:
        """A DBAPI cursor for one self-contained read statement (autocommit on SQLite)."""
        if not self._sqlite:
            with self.transaction(write=False) as cur:
                yield cur
            return
        with translate_errors():
            dbapi = self.acquire()
            try:
                yield dbapi.cursor()
            finally:
                self.release(dbapi)


class _Transaction:
    """The context manager behind :meth:`HotPool.transaction`."""

    __slots__ = ("_dbapi", "_pool", "_write")

    def __init__(self, pool: HotPool, write: bool) -> None:
        self._pool = pool
        self._write = write
        self._dbapi: Any = None

    def __enter__(self) -> Any:
        pool = self._pool
        try:
            dbapi = pool.acquire()
        except BaseException as error:
            replacement = translated(error)
            if replacement is error:
                raise
            raise replacement from error
        try:
            cur = dbapi.cursor()
            if pool._sqlite:
                # See _on_begin: writes take the write lock before reading anything.
                cur.execute("BEGIN IMMEDIATE" if self._write else "BEGIN")
        except BaseException as error:
            pool._abandon(dbapi)
            replacement = translated(error)
            if replacement is error:
                raise
            raise replacement from error
        self._dbapi = dbapi
        return cur

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        dbapi, self._dbapi = self._dbapi, None
        if exc is None:
            try:
                # sqlite3 and psycopg both COMMIT only when a transaction is open.
                dbapi.commit()
            except BaseException as error:
                self._pool._abandon(dbapi)
                replacement = translated(error)
                if replacement is error:
                    raise
                raise replacement from error
            self._pool.release(dbapi)
            return
        self._pool._abandon(dbapi)
        replacement = translated(exc)
        if replacement is not exc:
            raise replacement from exc


# -- error translation ------------------------------------------------------------------------

_BUSY = re.compile(r"database is locked|database table is locked|database is busy", re.I)
_FULL = re.compile(r"database or disk is full|disk I/O error.*space|no space left", re.I)
_CORRUPT = re.compile(r"file is not a database|malformed|file is encrypted|corrupt", re.I)
_READONLY = re.compile(r"readonly database|read-only|attempt to write a readonly", re.I)
_CANT_OPEN = re.compile(r"unable to open database file", re.I)
_PG_BUSY_STATES = {"55P03", "40001", "40P01", "57014"}  # lock/serialization/deadlock/timeout
_PG_UNAVAILABLE_PREFIXES = ("08", "57P", "53")


def _classify(error: BaseException) -> FlyteCacheError:
    original = getattr(error, "orig", None) or error
    message = str(original).strip().splitlines()[0] if str(original).strip() else repr(original)
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate:
        if sqlstate in _PG_BUSY_STATES:
            return StorageBusyError(
                f"database busy ({message}); retry the operation", sqlstate=sqlstate
            )
        if sqlstate == "53100":
            return ResourceExhaustedError(f"database disk full: {message}", sqlstate=sqlstate)
        if sqlstate.startswith(_PG_UNAVAILABLE_PREFIXES):
            return UnavailableError(f"database unavailable: {message}", sqlstate=sqlstate)
        if sqlstate.startswith("28"):
            return UnavailableError(f"database refused the credentials: {message}")
        return StorageError(f"database error: {message}", sqlstate=sqlstate)
    module = type(original).__module__ or ""
    if module.startswith("psycopg") and "connect" in message.lower():
        return UnavailableError(f"database unavailable: {message}")
    if isinstance(original, sqlite3.Error) or module.startswith("sqlite3"):
        if _BUSY.search(message):
            return StorageBusyError(
                f"database is locked by another writer ({message}); the busy timeout expired, "
                "retry the operation"
            )
        if _FULL.search(message):
            return ResourceExhaustedError(
                f"database or disk is full ({message}); nothing was written"
            )
        if _CORRUPT.search(message):
            return StorageError(
                f"the database file is damaged or not a SQLite database ({message}); "
                "run `flytecache db check`"
            )
        if _READONLY.search(message):
            return StorageError(f"the database is read-only ({message}); check file permissions")
        if _CANT_OPEN.search(message):
            return UnavailableError(
                f"cannot open the database file ({message}); check the path and permissions"
            )
    return StorageError(f"database error: {message}")


def translated(error: BaseException) -> BaseException:
    """The flytecache error for a driver/SQLAlchemy ``error``; anything else unchanged."""
    if isinstance(error, FlyteCacheError):
        return error
    if isinstance(error, exc.DBAPIError | sqlite3.Error):
        return _classify(error)
    if isinstance(error, exc.SQLAlchemyError):
        return StorageError(f"database error: {error}")
    if isinstance(error, Exception) and type(error).__module__.startswith("psycopg"):
        return _classify(error)
    return error


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver and SQLAlchemy exceptions into the flytecache error tree (one place)."""
    try:
        yield
    except BaseException as error:
        replacement = translated(error)
        if replacement is error:
            raise
        raise replacement from error


def dialect_insert(engine: Engine) -> Callable[..., Any]:
    """The dialect's INSERT construct (with ``on_conflict_do_update``)."""
    if is_sqlite(engine):
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return pg_insert
