"""The physical limit of the store's hot path (issue #14), to measure flytecache against.

One SQLite file opened with flytecache's PRAGMAs (``raw_connection``: WAL, ``synchronous=NORMAL``,
5 s busy timeout, foreign keys), a table ``kv(key TEXT PRIMARY KEY, value BLOB)`` holding each
serialized ``CachedOutput``, and a lease table ``(key PRIMARY KEY, owner, expires)``:

* ``put`` = ``SerializeToString()`` + one upsert;
* ``get`` = one ``SELECT value`` + ``CachedOutput.FromString()``;
* ``acquire`` = one ``INSERT … ON CONFLICT DO UPDATE … WHERE … RETURNING``; ``release`` = one
  ``DELETE``.

Each call is one autocommit statement: nothing validated, no pooling, no second round trip. No
store does less and still answers the same questions, so a ratio to it says how much of the
possible speed a store reaches.

    limit = KvLimit(tmp_path / "limit.db")
    limit.put("k", output)
    assert limit.get("k") == output
    assert limit.acquire("lease", "me", now_us=0, expires_us=30_000_000)
    limit.release("lease", "me")
    limit.close()
"""

from __future__ import annotations

import os
from typing import Any

from flyteidl2.cacheservice import cacheservice_pb2 as cs

from benchmarks._common import raw_connection

__all__ = ["KvLimit"]

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS lease"
    " (key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires INTEGER NOT NULL)",
)
_GET = "SELECT value FROM kv WHERE key = ?"
_PUT = (
    "INSERT INTO kv (key, value) VALUES (?, ?)"
    " ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
# Taken when free, already the caller's, or expired (expires <= now, the store's rule).
_ACQUIRE = (
    "INSERT INTO lease (key, owner, expires) VALUES (?, ?, ?) ON CONFLICT (key) DO UPDATE"
    " SET owner = excluded.owner, expires = excluded.expires"
    " WHERE lease.owner = excluded.owner OR lease.expires <= ? RETURNING owner"
)
_RELEASE = "DELETE FROM lease WHERE key = ? AND owner = ?"


class KvLimit:
    """The limit store on one SQLite file at ``path`` (created if missing)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.connection = raw_connection(path)
        for statement in _SCHEMA:
            self.connection.execute(statement)
        self._execute = self.connection.execute
        self._parse = cs.CachedOutput.FromString

    def put(self, key: str, output: cs.CachedOutput) -> None:
        """Store ``output`` under ``key``, replacing what was there."""
        self._execute(_PUT, (key, output.SerializeToString()))

    def get(self, key: str) -> cs.CachedOutput | None:
        """The output stored under ``key``, parsed; None when there is none."""
        row: Any = self._execute(_GET, (key,)).fetchone()
        return None if row is None else self._parse(row[0])

    def acquire(self, key: str, owner: str, *, now_us: int, expires_us: int) -> bool:
        """Take or extend the lease on ``key`` until ``expires_us``; False if another holds it
        (its holder is not looked up: a limit pays for nothing it does not need)."""
        row = self._execute(_ACQUIRE, (key, owner, expires_us, now_us)).fetchone()
        return row is not None

    def release(self, key: str, owner: str) -> None:
        """Drop ``owner``'s lease on ``key``; nothing if it holds none."""
        self._execute(_RELEASE, (key, owner))

    def close(self) -> None:
        """Close the connection."""
        self.connection.close()
