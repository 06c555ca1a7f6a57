"""Databases of 1k, 100k and 1M entries for flytecache, the limit and diskcache, cached.

Every database holds the same N keys (``entry_key(i)``) and outputs (``stored_output(i)``),
inserted in key order, plus N/10 leases left behind by crashed owners (all expired): what a
long-lived cache accumulates between prunes.

*flytecache* rows are written by the store itself, through its public API only: a template
database gets ``CacheStore.put`` of each of the PAYLOADS distinct outputs (and one expired lease
through ``get_or_extend_reservation``), then every table's rows are copied N times by SQL with
the key (its hash, and the entry id) replaced. The copy knows nothing of the columns beyond the
design's table names, ``entries.key`` (and ``key_hash``, from ``flytecache.store.keyhash``) and
the foreign keys the schema declares, so a schema revision needs no change here; a read-back
through ``CacheStore.get`` checks the result. (A million single puts would take minutes; the
copy takes seconds.)

*The limit* (``benchmarks.limit``) and *diskcache* get the same keys and serialized outputs
through their own bulk inserts.

Files live in ``benchmarks/.cache/`` (gitignored; ``FLYTECACHE_BENCH_CACHE`` overrides), named
by kind, size and a fingerprint — for the store's, of its DDL and of the rows its puts write —
so a schema or encoding change rebuilds them. Each is checkpointed (no WAL left) when built;
benchmarks copy them before writing, so a cached file is never modified.

    python -m benchmarks.populate 1000 100000 1000000
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from benchmarks._common import (
    PAYLOAD_VERSION,
    PAYLOADS,
    ROOT,
    entry_key,
    lease_key,
    stored_output,
)
from benchmarks.limit import Limit, checkpoint
from flytecache.store.keyhash import key_hash

SIZES = (1_000, 100_000, 1_000_000)
KINDS = ("store", "limit", "diskcache")
BASE = datetime(2023, 11, 14, 22, 13, 20, tzinfo=UTC)
"""The store clock while building: fixed, so databases are deterministic (and leases expired)."""
BASE_US = int(BASE.timestamp() * 1_000_000)
"""``BASE`` in microseconds since the epoch: every built entry's timestamps."""
LEASE_OWNERS = 97
BUILD_VERSION = 3
"""Bump when the way databases are built changes: cached ones are rebuilt."""


def cache_dir() -> Path:
    """Where populated databases are kept between runs."""
    path = Path(os.environ.get("FLYTECACHE_BENCH_CACHE") or ROOT / "benchmarks" / ".cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _stable(row: tuple[Any, ...]) -> tuple[Any, ...]:
    # protobuf writes map entries in a per-process order (string hashing): compare the bytes
    # of a serialized value as a multiset, which an encoding change still alters.
    return tuple(bytes(sorted(v)) if isinstance(v, bytes) else v for v in row)


def _schema_fingerprint() -> str:
    """A hash of the store's DDL and of the rows its puts write (from a fresh file), and of
    the payload: a schema or encoding change rebuilds the cached databases."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "schema.db"
        _template(path, payloads=3)
        conn = sqlite3.connect(path)
        ddl = sorted(
            str(row[0]) for row in conn.execute("SELECT sql FROM sqlite_master WHERE sql NOT NULL")
        )
        tables = [
            str(row[0]) for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        rows = {
            table: sorted(repr(_stable(row)) for row in conn.execute(f"SELECT * FROM {table}"))
            for table in sorted(tables)
        }
        conn.close()
    text = json.dumps([PAYLOAD_VERSION, BUILD_VERSION, ddl, rows])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _payload_fingerprint() -> str:
    text = json.dumps([PAYLOAD_VERSION, BUILD_VERSION])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


_FINGERPRINT: str | None = None


def fingerprint() -> str:
    global _FINGERPRINT
    if _FINGERPRINT is None:
        _FINGERPRINT = _schema_fingerprint()
    return _FINGERPRINT


def _sorted_keys(size: int) -> list[tuple[str, int]]:
    """(key, i) in key order: inserting in index order appends instead of splitting pages."""
    return sorted((entry_key(i), i) for i in range(size))


def _lease_keys(size: int) -> list[str]:
    return sorted(lease_key(i) for i in range(0, size, 10))


def _scratch(conn: sqlite3.Connection) -> None:
    # Building a scratch file: no journal, no fsync, a big page cache.
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")


# -- flytecache ---------------------------------------------------------------------------------


def _template(path: Path, payloads: int = PAYLOADS) -> None:
    """``payloads`` entries and one expired lease, written by ``CacheStore`` itself."""
    from flytecache import CacheStore, StoreSettings

    settings = StoreSettings(max_heartbeat=timedelta(seconds=10))
    with CacheStore.open(path, settings=settings, clock=lambda: BASE) as store:
        for j in range(payloads):
            store.put(f"template-{j:05d}", stored_output(j))
        store.get_or_extend_reservation("template-lease", "crashed-owner", timedelta(seconds=10))


def _columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in conn.execute(f"PRAGMA main.table_info({table})")]


def build_store(size: int, path: Path) -> None:
    """``size`` entries and ``size // 10`` expired leases, copied from a template of real puts."""
    from flytecache import CacheStore

    CacheStore.open(path).close()
    template = path.with_name(path.name + ".template")
    template.unlink(missing_ok=True)
    _template(template)
    conn = sqlite3.connect(path, isolation_level=None)
    _scratch(conn)
    conn.execute("ATTACH DATABASE ? AS t", (str(template),))
    tables = [
        str(row[0])
        for row in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")
        if not str(row[0]).startswith(("sqlite_", "alembic_"))
    ]
    if "entries" not in tables or "reservations" not in tables:
        raise SystemExit(f"populate: the store's tables are {tables}")
    entry_cols = _columns(conn, "entries")
    conn.execute("BEGIN")
    # rank = position in key order; j = which template payload the entry copies.
    conn.execute(
        "CREATE TEMP TABLE ranked (rank INTEGER PRIMARY KEY, j INTEGER, key TEXT, key_hash INTEGER)"
    )
    conn.executemany(
        "INSERT INTO ranked VALUES (?, ?, ?, ?)",
        (
            (rank, i % PAYLOADS, key, key_hash(key))
            for rank, (key, i) in enumerate(_sorted_keys(size), start=1)
        ),
    )
    conn.execute("CREATE TEMP TABLE payload (j INTEGER PRIMARY KEY, key TEXT) WITHOUT ROWID")
    conn.execute("INSERT INTO payload SELECT CAST(substr(key, 10) AS INTEGER), key FROM t.entries")
    # Entries: every column from the template row, the key (its hash, and an integer id, if
    # the schema has them) replaced; ids follow key order.
    own = {"key": "r.key", "key_hash": "r.key_hash", "id": "r.rank"}
    select = ", ".join(own.get(c, f"e.{c}") for c in entry_cols)
    conn.execute(
        f"INSERT INTO main.entries ({', '.join(entry_cols)}) SELECT {select} FROM ranked r"
        " JOIN payload p ON p.j = r.j JOIN t.entries e ON e.key = p.key ORDER BY r.rank"
    )
    # Tables hanging off entries (by their declared foreign key): copied per entry.
    for table in tables:
        if table in ("entries", "reservations"):
            continue
        links = [
            (str(fk[3]), str(fk[4]))
            for fk in conn.execute(f"PRAGMA main.foreign_key_list({table})")
            if fk[2] == "entries"
        ]
        if len(links) != 1:
            raise SystemExit(f"populate: cannot tell how {table} refers to entries: {links}")
        child, parent = links[0]
        cols = _columns(conn, table)
        new_parent = own.get(parent)
        if new_parent is None:
            raise SystemExit(f"populate: {table}.{child} refers to entries.{parent}")
        select = ", ".join(new_parent if c == child else f"c.{c}" for c in cols)
        conn.execute(
            f"INSERT INTO main.{table} ({', '.join(cols)}) SELECT {select} FROM ranked r"
            " JOIN payload p ON p.j = r.j JOIN t.entries e ON e.key = p.key"
            f" JOIN t.{table} c ON c.{child} = e.{parent} ORDER BY r.rank"
        )
    lease_cols = _columns(conn, "reservations")
    conn.execute(
        "CREATE TEMP TABLE lease_keys (key TEXT PRIMARY KEY, key_hash INTEGER) WITHOUT ROWID"
    )
    conn.executemany(
        "INSERT INTO lease_keys VALUES (?, ?)", ((k, key_hash(k)) for k in _lease_keys(size))
    )
    lease_own = {"key": "k.key", "key_hash": "k.key_hash"}
    select = ", ".join(lease_own.get(c, f"l.{c}") for c in lease_cols)
    conn.execute(
        f"INSERT INTO main.reservations ({', '.join(lease_cols)}) SELECT {select}"
        " FROM lease_keys k, t.reservations l ORDER BY k.key"
    )
    conn.execute("COMMIT")
    conn.execute("DETACH DATABASE t")
    conn.execute("PRAGMA journal_mode = WAL")
    count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    conn.close()
    template.unlink()
    if count != size:
        raise SystemExit(f"populate: expected {size} entries, wrote {count}")
    _check_store(path, size)
    checkpoint(path)


def _check_store(path: Path, size: int) -> None:
    """Read a few entries back through the store: each is what its put stored."""
    from flytecache import CacheStore

    with CacheStore.open(path) as store:
        for i in {0, 1, size // 2, size - 1}:
            got = store.get(entry_key(i))
            want = stored_output(i)
            if got.output_literals != want.output_literals or (
                got.metadata.key_map != want.metadata.key_map
            ):
                raise SystemExit(f"populate: entry {i} reads back differently")


# -- the limit and diskcache ----------------------------------------------------------------------


def _values() -> list[bytes]:
    return [stored_output(j).SerializeToString() for j in range(PAYLOADS)]


def build_limit(size: int, path: Path) -> None:
    """The limit's ``kv`` and ``lease`` tables with the same keys, outputs and leases."""
    values = _values()
    expired = BASE_US
    with Limit.open(path) as limit:
        _scratch(limit.conn)
        limit.load(
            ((key, values[i % PAYLOADS]) for key, i in _sorted_keys(size)),
            (
                (key, f"crashed-owner-{n % LEASE_OWNERS}", expired)
                for n, key in enumerate(_lease_keys(size))
            ),
        )
        limit.conn.execute("PRAGMA journal_mode = WAL")
        got = limit.get(entry_key(1 % size))
        if got != stored_output(1 % size):
            raise SystemExit("populate: the limit's value differs from stored_output")
    checkpoint(path)


def build_diskcache(size: int, directory: Path) -> None:
    """A diskcache directory holding the same ``size`` keys and serialized values."""
    import diskcache

    diskcache.Cache(str(directory)).close()
    conn = sqlite3.connect(directory / "cache.db", isolation_level=None)
    _scratch(conn)
    now = time.time()
    values = _values()

    def rows() -> Iterator[tuple[Any, ...]]:
        for key, i in _sorted_keys(size):
            # What Cache.set stores for a small bytes value: raw key, MODE_RAW, inline blob.
            yield (key, 1, now, None, now, 0, None, 0, 1, None, values[i % PAYLOADS])

    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
        " tag, size, mode, filename, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        rows(),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    with diskcache.Cache(str(directory)) as cache:
        if len(cache) != size:
            raise SystemExit(f"populate: diskcache has {len(cache)} keys, expected {size}")
        if type(stored_output(1)).FromString(cache.get(entry_key(1))) != stored_output(1):
            raise SystemExit("populate: diskcache value differs from typical_output")


# -- the cache of built databases -----------------------------------------------------------------

_BUILDERS = {"store": build_store, "limit": build_limit, "diskcache": build_diskcache}


def cached_path(kind: str, size: int) -> Path:
    """Where the ``kind`` (store, limit, diskcache) database of ``size`` entries is cached."""
    suffix = "" if kind == "diskcache" else ".db"
    # Only the store's files follow its schema; the others change with the payload alone.
    stamp = fingerprint() if kind == "store" else _payload_fingerprint()
    return cache_dir() / f"{kind}-{size}-{stamp}{suffix}"


def cached(kind: str, size: int, *, log: bool = True) -> Path:
    """The cached ``kind`` database with ``size`` entries (built on first use)."""
    target = cached_path(kind, size)
    if target.exists():
        return target
    for stale in cache_dir().glob(f"{kind}-{size}-*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    is_dir = kind == "diskcache"
    scratch = target.with_name(target.name + f".building-{os.getpid()}")
    if is_dir:
        scratch.mkdir()
    started = time.perf_counter()
    try:
        _BUILDERS[kind](size, scratch)
        os.replace(scratch, target)
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True) if is_dir else scratch.unlink(missing_ok=True)
        raise
    if log:
        print(
            f"populated {kind} with {size:,} entries in {time.perf_counter() - started:.1f} s",
            file=sys.stderr,
            flush=True,
        )
    return target


def _flushed_copy(source: Path, target: Path) -> None:
    # Flush the copy before anything is timed: otherwise the first fsync of a benchmark (at a
    # WAL checkpoint) waits for the kernel to write back the whole freshly copied file.
    shutil.copyfile(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy(kind: str, size: int, destination: Path, *, flush: bool = True) -> Path:
    """A private copy of the cached ``kind`` database of ``size`` entries.

    ``flush`` (for benchmarks that write) waits until the copy is on disk.
    """
    source = cached(kind, size)
    target = destination / source.name
    copier = _flushed_copy if flush else shutil.copyfile
    if kind != "diskcache":
        copier(source, target)
        return target
    target.mkdir()
    for item in source.iterdir():
        copier(item, target / item.name)
    return target


def copy_store(size: int, destination: Path) -> Path:
    """A private copy of the store's database of ``size`` entries (``copy("store", ...)``)."""
    return copy("store", size, destination)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=list(SIZES))
    args = parser.parse_args(argv)
    for size in args.sizes:
        for kind in KINDS:
            cached(kind, size)
    print(cache_dir())


if __name__ == "__main__":
    main()
