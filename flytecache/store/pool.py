"""The hot path's connections: Core statements compiled once, run on DB-API connections the
store pools itself (SQLAlchemy's checkout costs as much as a primary-key SELECT)."""

from __future__ import annotations

import contextlib
import operator
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy.engine import Engine
from sqlalchemy.sql import ClauseElement
from sqlalchemy.sql.compiler import SQLCompiler

from flytecache.errors import StorageBusyError, StorageError
from flytecache.store.driver_errors import reraise_translated, translate_errors, translated
from flytecache.store.urls import is_sqlite

__all__ = ["HotPool", "Sql", "forget_pools_after_fork"]

_HOT_POOLS: weakref.WeakSet[HotPool] = weakref.WeakSet()


def forget_pools_after_fork() -> None:
    """In a forked child: drop every pool's inherited connections, unclosed."""
    for pool in list(_HOT_POOLS):
        pool.forget()


@dataclass(frozen=True, slots=True)
class Sql:
    """A Core statement compiled once for one dialect, run on raw DBAPI cursors."""

    text: str
    positions: tuple[str, ...] | None
    """Bind names in order for positional paramstyles; None for named (dict) paramstyles."""
    args: Callable[[dict[str, Any]], Any]
    """Parameters by name -> the driver's form: a tuple in ``positions`` order, or the dict
    itself for named paramstyles (built once: on a get it was a twentieth of the call)."""

    @classmethod
    def compile(cls, statement: ClauseElement, engine: Engine) -> Sql:
        compiled = cast(SQLCompiler, statement.compile(dialect=engine.dialect))
        if not compiled.positional:
            return cls(compiled.string, None, _as_is)
        positions = tuple(compiled.positiontup or ())
        if len(positions) == 1:
            (name,) = positions
            return cls(compiled.string, positions, lambda params: (params[name],))
        if not positions:
            return cls(compiled.string, positions, _no_args)
        return cls(compiled.string, positions, operator.itemgetter(*positions))


def _as_is(params: dict[str, Any]) -> dict[str, Any]:
    return params


def _no_args(params: dict[str, Any]) -> tuple[()]:
    return ()


class _Budget:
    """At most ``limit`` connections out at once (a semaphore that waits only when all are
    out). threading.BoundedSemaphore's Python-level Condition cost 2 µs per take and give,
    on every PostgreSQL call; here the common case is one C lock each."""

    __slots__ = ("_free", "_lock", "_ready", "_waiting")

    def __init__(self, limit: int) -> None:
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._free = limit
        self._waiting = 0

    def take(self, wait: float) -> bool:
        """One connection's worth; False after ``wait`` seconds with none free."""
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return True
            deadline = time.monotonic() + wait
            self._waiting += 1
            try:
                while self._free <= 0:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._ready.wait(left)
                self._free -= 1
                return True
            finally:
                self._waiting -= 1

    def give(self) -> None:
        """Return one taken by :meth:`take`."""
        with self._lock:
            self._free += 1
            if self._waiting:
                self._ready.notify()


class HotPool:
    """Idle DBAPI connections for the store's hot paths.

    SQLAlchemy's pool checkout costs about as much as a primary-key SELECT, so the hot paths
    keep their own stack of connections (created through the engine, so every PRAGMA and event
    applies, then detached). Reused LIFO; at most ``keep`` stay idle; emptied unclosed in a
    forked child. ``setup`` statements run on each new connection after the engine's own.
    """

    def __init__(
        self,
        engine: Engine,
        keep: int,
        limit: int | None = None,
        wait: float = 30.0,
        setup: tuple[str, ...] = (),
    ) -> None:
        self._engine = engine
        self._setup = setup
        self._keep = keep
        self._idle: deque[Any] = deque()
        self._pid = os.getpid()
        self._sqlite = is_sqlite(engine)
        # A server has a connection budget; SQLite connections are cheap and local.
        self._limit = limit or 1
        self._slots = None if limit is None or self._sqlite else _Budget(limit)
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
            self._slots = _Budget(self._limit)

    def acquire(self) -> Any:
        if self._pid != os.getpid():
            self.forget()
        if self._slots is not None and not self._slots.take(self._wait):
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
                self._slots.give()
            raise

    def _connect(self) -> Any:
        proxy = self._engine.raw_connection()
        dbapi = proxy.driver_connection
        proxy.detach()
        if dbapi is None:  # pragma: no cover - only after an invalidation race
            raise StorageError("could not open a database connection")
        if not self._sqlite:
            # Each hot operation is one statement: autocommit makes it one round trip (no
            # BEGIN/COMMIT), and no ROLLBACK ever clears psycopg's prepared statements.
            # Multi-statement work opens its transaction explicitly (see _Transaction).
            dbapi.autocommit = True
        for statement in self._setup:
            dbapi.execute(statement)
        return dbapi

    def release(self, dbapi: Any, *, broken: bool = False) -> None:
        # No fork check here (acquire has one, and a fork keeps only the forking thread, so a
        # connection is released in the process that acquired it): a getpid() system call
        # per release was a twentieth of a get.
        if self._slots is not None:
            self._slots.give()
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
        """Run one statement on its own (autocommit) and return its rows: the hot path.

        A read is its own snapshot-consistent transaction; a write statement is its own
        write transaction, which on SQLite takes the write lock before reading (as
        ``BEGIN IMMEDIATE`` does). Written without context managers: on SQLite they were a
        third of the call's overhead.
        """
        try:
            dbapi = self.acquire()
            try:
                rows: list[Any] = dbapi.execute(sql.text, sql.args(params)).fetchall()
            except BaseException:
                self._abandon(dbapi)
                raise
            self.release(dbapi)
            return rows
        except Exception as error:
            reraise_translated(error)

    def fetch_timed(self, sql: Sql, timer: Callable[[], int]) -> tuple[int, Any, int]:
        """Run one read statement without parameters: ``(timer() before, its first value,
        timer() after)``, the readings taken just around the round trip (checking out the
        connection, which may open one, is outside them)."""
        try:
            dbapi = self.acquire()
            try:
                before = timer()
                row = dbapi.execute(sql.text, sql.args({})).fetchone()
                after = timer()
            except BaseException:
                self._abandon(dbapi)
                raise
            self.release(dbapi)
            return before, row[0], after
        except Exception as error:
            reraise_translated(error)

    def rowcount(self, sql: Sql, params: dict[str, Any]) -> int:
        """Run one write statement without result rows on its own; the rows it changed."""
        try:
            dbapi = self.acquire()
            try:
                count: int = dbapi.execute(sql.text, sql.args(params)).rowcount
            except BaseException:
                self._abandon(dbapi)
                raise
            self.release(dbapi)
            return count
        except Exception as error:
            reraise_translated(error)

    @contextlib.contextmanager
    def cursor(self) -> Iterator[Any]:
        """A DBAPI cursor for self-contained statements (autocommit on both backends)."""
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
            reraise_translated(error)
        try:
            cur = dbapi.cursor()
            # See _on_begin: on SQLite writes take the write lock before reading anything.
            # Connections are in autocommit mode on both backends, so BEGIN is explicit.
            cur.execute("BEGIN IMMEDIATE" if self._write and pool._sqlite else "BEGIN")
        except BaseException as error:
            pool._abandon(dbapi)
            reraise_translated(error)
        self._dbapi = dbapi
        return cur

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        dbapi, self._dbapi = self._dbapi, None
        if exc is None:
            try:
                # Both drivers' commit() sends COMMIT only when a transaction is open,
                # whatever their autocommit setting.
                dbapi.commit()
            except BaseException as error:
                self._pool._abandon(dbapi)
                reraise_translated(error)
            self._pool.release(dbapi)
            return
        self._pool._abandon(dbapi)
        # Returning lets the original propagate; a driver error is replaced by ours.
        if translated(exc) is not exc:
            reraise_translated(exc)
