"""The limit of issue #14: a cache and a lease table with nothing around them.

What SQLite (or PostgreSQL) can do for flytecache's job when a library adds nothing but the
statements themselves, measured in the same run as flytecache so every result is a ratio:

* one database with the same PRAGMAs as flytecache's engine (``flytecache/store/engine.py``:
  busy timeout, WAL, ``synchronous=NORMAL``, foreign keys);
* ``kv(key TEXT PRIMARY KEY, value BLOB)`` holding ``CachedOutput.SerializeToString()``:
  put = serialize + one upsert, get = one ``SELECT value`` + ``CachedOutput.FromString``;
* ``lease(key PRIMARY KEY, owner, expires)``: acquire = one
  ``INSERT … ON CONFLICT DO UPDATE … WHERE … RETURNING``, release = one ``DELETE``
  (``limit_service.py``, which serves the limit, also reads a refused lease's holder and
  deletes entries: one statement each).

Every operation is one autocommit statement, one round trip on PostgreSQL (psycopg, prepared
statements): the fewest a cache can do. ``Limit.open`` takes a file path (SQLite) or a
psycopg conninfo / ``postgresql://`` URL.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flyteidl2.cacheservice import cacheservice_pb2 as cs

__all__ = ["PUT_SQL", "KvLimit", "Limit", "checkpoint", "sqlite_pragmas"]


def sqlite_pragmas() -> tuple[str, ...]:
    """flytecache's connection settings with its default ``StoreSettings`` (see
    ``flytecache/store/engine.py``), in the order its engine sets them."""
    from flytecache import StoreSettings

    settings = StoreSettings()
    return (
        f"PRAGMA busy_timeout = {int(settings.busy_timeout.total_seconds() * 1000)}",
        "PRAGMA journal_mode = WAL",
        f"PRAGMA synchronous = {settings.synchronous}",
        "PRAGMA foreign_keys = ON",
    )


_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value {blob} NOT NULL)",
    "CREATE TABLE IF NOT EXISTS lease (key TEXT PRIMARY KEY, owner TEXT NOT NULL,"
    " expires BIGINT NOT NULL)",
)

_GET = "SELECT value FROM kv WHERE key = ?"
# The WHERE keeps an existing value unless the caller overwrites (Flyte's ALREADY_EXISTS).
PUT_SQL = (
    "INSERT INTO kv (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value WHERE ?"
)
# Granted when the key is free, already the owner's, or held by an expired lease.
_ACQUIRE = (
    "INSERT INTO lease (key, owner, expires) VALUES (?, ?, ?)"
    " ON CONFLICT (key) DO UPDATE SET owner = excluded.owner, expires = excluded.expires"
    " WHERE lease.owner = excluded.owner OR lease.expires <= ? RETURNING owner"
)
_RELEASE = "DELETE FROM lease WHERE key = ? AND owner = ?"
_HOLDER = "SELECT owner, expires FROM lease WHERE key = ?"
_DELETE = "DELETE FROM kv WHERE key = ?"


def _now_us() -> int:
    return time.time_ns() // 1000


class Limit:
    """The baseline cache on one database; every method is one statement."""

    def __init__(self, conn: Any, *, postgres: bool) -> None:
        self.conn = conn
        self.postgres = postgres
        marker = "%s" if postgres else "?"
        self._get, self._put, self._acquire, self._release, self._holder, self._delete = (
            sql.replace("?", marker)
            for sql in (_GET, PUT_SQL, _ACQUIRE, _RELEASE, _HOLDER, _DELETE)
        )
        self._parse = cs.CachedOutput.FromString
        # psycopg: prepared on first use (server-side plan, no parse per call).
        self._run: Any = (
            (lambda sql, params: conn.execute(sql, params, prepare=True))
            if postgres
            else conn.execute
        )

    @classmethod
    def open(cls, target: str | os.PathLike[str]) -> Limit:
        """Open (and create) the limit's tables in a SQLite file or a PostgreSQL database."""
        text = os.fspath(target)
        if text.startswith(("postgresql:", "postgresql+psycopg:", "postgres:", "host=")):
            import psycopg

            conn: Any = psycopg.connect(
                text.replace("postgresql+psycopg:", "postgresql:"), autocommit=True
            )
            for ddl in _SCHEMA:
                conn.execute(ddl.format(blob="BYTEA"))
            return cls(conn, postgres=True)
        conn = sqlite3.connect(text, isolation_level=None, check_same_thread=False)
        for pragma in sqlite_pragmas():
            conn.execute(pragma)
        for ddl in _SCHEMA:
            conn.execute(ddl.format(blob="BLOB"))
        return cls(conn, postgres=False)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Limit:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the cache -----------------------------------------------------------------------

    def get(self, key: str) -> cs.CachedOutput | None:
        """The stored output, or None."""
        row = self._run(self._get, (key,)).fetchone()
        return None if row is None else self._parse(row[0])

    def put(self, key: str, output: cs.CachedOutput, *, overwrite: bool = False) -> bool:
        """Store ``output``; False when the key exists and ``overwrite`` is not set."""
        return bool(self._run(self._put, (key, output.SerializeToString(), overwrite)).rowcount)

    def delete(self, key: str) -> bool:
        """Remove the entry under ``key``; whether there was one."""
        return bool(self._run(self._delete, (key,)).rowcount)

    # -- leases --------------------------------------------------------------------------

    def acquire(
        self, key: str, owner: str, ttl_us: int = 30_000_000, *, now_us: int | None = None
    ) -> bool:
        """Take or extend the lease on ``key`` for ``ttl_us`` from now (the clock, or
        ``now_us``); False while another owner holds it (the holder is not looked up)."""
        now = _now_us() if now_us is None else now_us
        return self._run(self._acquire, (key, owner, now + ttl_us, now)).fetchone() is not None

    def release(self, key: str, owner: str) -> bool:
        """Drop ``owner``'s lease on ``key``; whether there was one."""
        return bool(self._run(self._release, (key, owner)).rowcount)

    def holder(self, key: str) -> tuple[str, int] | None:
        """The lease on ``key`` as (owner, expiry in µs), expired or not; None if there is
        none (read after a refused :meth:`acquire`, to answer with the holder's lease)."""
        row = self._run(self._holder, (key,)).fetchone()
        return None if row is None else (row[0], int(row[1]))

    # -- building databases --------------------------------------------------------------

    def load(
        self, items: Iterable[tuple[str, bytes]], leases: Iterable[tuple[str, str, int]]
    ) -> None:
        """Bulk-insert serialized outputs and leases in one transaction (populating only)."""
        if self.postgres:
            with self.conn.transaction(), self.conn.cursor() as cur:
                cur.executemany("INSERT INTO kv (key, value) VALUES (%s, %s)", list(items))
                cur.executemany(
                    "INSERT INTO lease (key, owner, expires) VALUES (%s, %s, %s)", list(leases)
                )
            return
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT INTO kv (key, value) VALUES (?, ?)", items)
        self.conn.executemany("INSERT INTO lease (key, owner, expires) VALUES (?, ?, ?)", leases)
        self.conn.execute("COMMIT")

    def count(self, table: str, prefix: str) -> int:
        """Rows of ``kv`` or ``lease`` whose key starts with ``prefix`` (checks after timing)."""
        assert table in ("kv", "lease")
        sql = f"SELECT count(*) FROM {table} WHERE key >= ? AND key < ?"
        if self.postgres:
            sql = sql.replace("?", "%s")
        return int(self.conn.execute(sql, (prefix, prefix + "\uffff")).fetchone()[0])


class KvLimit:
    """The limit on one SQLite file in the call shapes ``bench_keys`` uses: put replaces,
    leases take explicit times."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self._limit = Limit.open(path)
        self.connection = self._limit.conn
        self.get = self._limit.get

    def put(self, key: str, output: cs.CachedOutput) -> None:
        """Store ``output`` under ``key``, replacing what was there."""
        self._limit.put(key, output, overwrite=True)

    def acquire(self, key: str, owner: str, *, now_us: int, expires_us: int) -> bool:
        """Take or extend the lease on ``key`` until ``expires_us``; False if another holds it."""
        return self._limit.acquire(key, owner, expires_us - now_us, now_us=now_us)

    def release(self, key: str, owner: str) -> None:
        """Drop ``owner``'s lease on ``key``; nothing if it holds none."""
        self._limit.release(key, owner)

    def close(self) -> None:
        self._limit.close()


def checkpoint(path: Path) -> None:
    """Fold the WAL into a SQLite file and truncate it (before measuring the file's size)."""
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
