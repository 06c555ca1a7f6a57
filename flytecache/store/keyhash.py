"""The 64-bit hash ``entries`` finds a key by (schema revision 0004).

The unique index on ``entries.key_hash`` replaces a unique index on the key text: a stored key
is ~150 characters of base64 hashes, so its index cost 164 bytes per entry (a quarter of the
file) and was the most expensive b-tree a put wrote. The index on an 8-byte integer costs ~18
bytes per entry and made the put statement ~20 % cheaper (measured in
``docs/benchmarks-details.md``). ``reservations.key_hash`` carries the same value, so listings
join a lease to its entry through that index without computing a hash in SQL.

Every lookup also compares the key itself, so two keys that share a hash never read each
other's entry: the second one cannot be stored while the first is
(:class:`~flytecache.errors.KeyHashCollisionError`). For n stored entries a new key collides
with probability n / 2**64 (5e-14 at a million).

The hash is XXH3-64 (xxHash's 64-bit XXH3, seed 0) of the key's UTF-8 bytes, as a signed
integer (BIGINT on both backends). XXH3's output is fixed by its specification, so stored
hashes stay valid across xxhash releases. It is not a cryptographic hash, and need not be:
keys are compared whenever a hash matches, and a client that could craft a colliding key can
already put any key it likes. SHA-256 cost 0.5 µs per get (7 % of one), XXH3 0.1 µs.
"""

from __future__ import annotations

from xxhash import xxh3_64_intdigest

__all__ = ["key_hash"]

_SIGN = 1 << 63
_WRAP = 1 << 64


def key_hash(key: str) -> int:
    """The signed 64-bit hash of ``key`` stored in ``entries.key_hash`` (and
    ``reservations.key_hash``): XXH3-64 of its UTF-8 bytes, as two's complement."""
    value = xxh3_64_intdigest(key.encode())
    return value - _WRAP if value >= _SIGN else value
