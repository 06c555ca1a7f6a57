"""The 64-bit hash ``entries`` finds a key by (schema revision 0004).

The unique index on ``entries.key_hash`` replaces a unique index on the key text: a stored key
is ~150 characters of base64 hashes, so its index cost 164 bytes per entry (a quarter of the
file) and was the most expensive b-tree a put wrote. The index on an 8-byte integer costs ~18
bytes per entry and made the put statement ~20 % cheaper (measured in
``docs/benchmarks-details.md``).

Every lookup also compares the key itself, so two keys that share a hash never read each
other's entry: the second one cannot be stored while the first is
(:class:`~flytecache.errors.KeyHashCollisionError`).
For n stored entries a new key collides with probability n / 2**64 (5e-14 at a million).

The hash is the first 8 bytes of SHA-256 over the key's UTF-8 bytes, read as a signed
big-endian integer (BIGINT on both backends). SQL can compute it too (:class:`key_hash_of`):
PostgreSQL with its built-in ``sha256``, SQLite with a function flytecache registers on each
connection (``store/engine.py``).
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

__all__ = ["SQLITE_FUNCTION", "key_hash", "key_hash_of", "sqlite_key_hash"]

SQLITE_FUNCTION = "flytecache_key_hash"
"""The name of the SQL function registered on SQLite connections."""

_sha256 = hashlib.sha256
# Reads the digest's first 8 bytes in place: 20 % of the call against slicing + from_bytes.
_first_int64 = struct.Struct(">q").unpack_from


def key_hash(key: str) -> int:
    """The signed 64-bit hash of ``key`` stored in ``entries.key_hash``."""
    value: int = _first_int64(_sha256(key.encode()).digest())[0]
    return value


def sqlite_key_hash(key: Any) -> int | None:
    """:func:`key_hash` as SQLite's ``flytecache_key_hash(text)``: NULL for NULL."""
    if key is None:
        return None
    return key_hash(str(key))


class key_hash_of(FunctionElement[int]):
    """``key_hash(column)`` computed by the database, for joins on a key held elsewhere."""

    type = sa.BigInteger()
    name = "key_hash_of"
    inherit_cache = True


@compiles(key_hash_of, "sqlite")
def _sqlite(element: key_hash_of, compiler: Any, **kw: Any) -> str:
    return f"{SQLITE_FUNCTION}({compiler.process(element.clauses, **kw)})"


@compiles(key_hash_of, "postgresql")
def _postgresql(element: key_hash_of, compiler: Any, **kw: Any) -> str:
    text = compiler.process(element.clauses, **kw)
    # 'x' || 16 hex digits read as bit(64) is the two's-complement bigint of those 8 bytes.
    digest = f"substr(sha256(convert_to({text}, 'UTF8')), 1, 8)"
    return f"('x' || encode({digest}, 'hex'))::bit(64)::bigint"
