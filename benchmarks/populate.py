"""Databases of 1k, 100k and 1M entries, built fast and cached between runs.

A store database is created with the store's own schema (``CacheStore.open`` runs the
migrations), then filled with raw sqlite3 ``executemany`` in one transaction per table through
INSERT statements compiled from the store's models, with journaling off while building. Every
row is what ``CacheStore.put(entry_key(i), stored_output(i))`` writes: the store's own
``entry_params`` flattens each of the 1024 distinct payloads once (``stored_output(i)`` is
``typical_output(i % 1024)``), so a million rows cost a million tuple copies, not a million
protobuf round trips. N entries come with N/10 leases left behind by crashed owners (all
expired), which is what a long-lived cache accumulates between prunes.

diskcache gets the same N keys and values (``stored_output(i).SerializeToString()``) inserted
into its own ``Cache`` table the way ``Cache.set`` stores small byte values.

Files live in ``benchmarks/.cache/`` (gitignored; ``FLYTECACHE_BENCH_CACHE`` overrides), named
by size and a fingerprint of the schema and payload, so a schema change rebuilds them.
Benchmarks copy them before writing, so a cached file is never modified.

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
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from benchmarks._common import (
    PAYLOAD_VERSION,
    PAYLOADS,
    ROOT,
    entry_key,
    lease_key,
    stored_output,
)

SIZES = (1_000, 100_000, 1_000_000)
BASE_US = 1_700_000_000_000_000  # a fixed epoch for deterministic timestamps
BATCH = 50_000


def cache_dir() -> Path:
    """Where populated databases are kept between runs."""
    path = Path(os.environ.get("FLYTECACHE_BENCH_CACHE") or ROOT / "benchmarks" / ".cache")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _schema_fingerprint() -> str:
    """A hash of the store's DDL (from a freshly migrated file) and the payload version."""
    import tempfile

    from flytecache import CacheStore

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "schema.db"
        CacheStore.open(path).close()
        conn = sqlite3.connect(path)
        ddl = sorted(
            str(row[0]) for row in conn.execute("SELECT sql FROM sqlite_master WHERE sql NOT NULL")
        )
        revision = conn.execute("SELECT version_num FROM alembic_version").fetchall()
        conn.close()
    text = json.dumps([PAYLOAD_VERSION, ddl, revision])
    return hashlib.sha256(text.encode()).hexdigest()[:12]


_FINGERPRINT: str | None = None


def fingerprint() -> str:
    global _FINGERPRINT
    if _FINGERPRINT is None:
        _FINGERPRINT = _schema_fingerprint()
    return _FINGERPRINT


def _entry_rows(
    order: list[tuple[str, int]], columns: list[str]
) -> Iterator[tuple[tuple[Any, ...], list[tuple[int, str, bytes]]]]:
    """Per entry, the row ``CacheStore.put(entry_key(i), stored_output(i))`` writes.

    The store's own ``entry_params`` flattens each of the PAYLOADS distinct outputs once;
    each entry then takes its payload's values with its own key, id and timestamps.
    """
    from flytecache.store.codec import entry_params

    payloads = [entry_params("", stored_output(j)) for j in range(PAYLOADS)]
    at = {name: columns.index(name) for name in ("key", "id", "created_at", "last_updated_at")}
    templates = []
    for params, literals in payloads:
        params.update(key=None, id=None, writes=0, created_at=None, last_updated_at=None)
        templates.append(([params[c] for c in columns], literals))
    for entry_id, (key, i) in enumerate(order, start=1):
        values, literals = templates[i % PAYLOADS]
        row = values.copy()
        stamp = BASE_US + entry_id * 1000
        row[at["key"]], row[at["id"]] = key, entry_id
        row[at["created_at"]] = row[at["last_updated_at"]] = stamp
        yield tuple(row), [(entry_id, name, value) for name, value in literals]


def _statements(entry_columns: list[str]) -> dict[str, str]:
    """INSERT statements compiled from the store's models (sqlite dialect, qmark style).

    Each binds its columns in the order given (checked: the compiler orders by table).
    """
    import sqlalchemy as sa
    from sqlalchemy.dialects import sqlite

    from flytecache.store.models import Entry, Output, Reservation

    def insert(table: Any, columns: list[str]) -> str:
        stmt = sa.insert(table).values({c: sa.bindparam(c) for c in columns})
        compiled = stmt.compile(dialect=sqlite.dialect())
        if list(compiled.positiontup or ()) != columns:
            raise SystemExit(f"populate: {table.name} binds {compiled.positiontup}")
        return str(compiled)

    return {
        "entries": insert(Entry.__table__, entry_columns),
        "outputs": insert(Output.__table__, ["entry_id", "name", "literal"]),
        "reservations": insert(
            Reservation.__table__,
            [
                "key",
                "owner_id",
                "heartbeat_interval",
                "expires_at",
                "created_at",
                "updated_at",
                "previous_owner",
            ],
        ),
    }


def _entry_columns() -> list[str]:
    """The entry columns a put binds (whatever the model holds today), plus id and writes."""
    import sqlalchemy as sa

    from flytecache.store.codec import entry_params
    from flytecache.store.models import Entry

    params, _ = entry_params("probe", stored_output(0))
    bound = {"id", "writes", "created_at", "last_updated_at", *params}
    # In table order, which is the order the compiled INSERT binds them.
    return [c.name for c in cast(sa.Table, Entry.__table__).columns if c.name in bound]


def _sorted_keys(size: int) -> list[tuple[str, int]]:
    """(key, i) in key order: inserting in index order appends instead of splitting pages."""
    return sorted((entry_key(i), i) for i in range(size))


def _batched(rows: Iterator[Any], size: int = BATCH) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def build_store(size: int, path: Path) -> None:
    """Create ``path`` with the store's schema and ``size`` entries (and ``size // 10`` leases)."""
    from flytecache import CacheStore

    CacheStore.open(path).close()
    columns = _entry_columns()
    sql = _statements(columns)
    conn = sqlite3.connect(path, isolation_level=None)
    # Building a scratch file: no journal, no fsync, a big page cache.
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    conn.execute("BEGIN")
    # Insert in key order: the unique key index is appended to, not split at random.
    for batch in _batched(_entry_rows(_sorted_keys(size), columns)):
        conn.executemany(sql["entries"], [row for row, _ in batch])
        conn.executemany(sql["outputs"], [o for _, outputs in batch for o in outputs])
    expired = BASE_US
    leases = sorted((lease_key(i) for i in range(0, size, 10)), key=str)
    conn.executemany(
        sql["reservations"],
        (
            (key, f"crashed-owner-{n % 97}", 10_000_000, expired, expired - 1, expired - 1, None)
            for n, key in enumerate(leases)
        ),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    count = conn.execute("SELECT count(*) FROM entries").fetchone()[0]
    conn.close()
    if count != size:
        raise SystemExit(f"populate: expected {size} entries, wrote {count}")


def build_diskcache(size: int, directory: Path) -> None:
    """A diskcache directory holding the same ``size`` keys and serialized values."""
    import diskcache

    diskcache.Cache(str(directory)).close()
    conn = sqlite3.connect(directory / "cache.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode = DELETE")
    conn.execute("PRAGMA journal_mode = OFF")
    conn.execute("PRAGMA synchronous = OFF")
    conn.execute("PRAGMA cache_size = -262144")
    now = time.time()

    values = [stored_output(j).SerializeToString() for j in range(PAYLOADS)]

    def rows() -> Iterator[tuple[Any, ...]]:
        for key, i in _sorted_keys(size):
            # What Cache.set stores for a small bytes value: raw key, MODE_RAW, inline blob.
            yield (key, 1, now, None, now, 0, None, 0, 1, None, values[i % PAYLOADS])

    conn.execute("BEGIN")
    for batch in _batched(rows()):
        conn.executemany(
            "INSERT INTO Cache(key, raw, store_time, expire_time, access_time, access_count,"
            " tag, size, mode, filename, value) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            batch,
        )
    conn.execute("COMMIT")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.close()
    with diskcache.Cache(str(directory)) as cache:
        if len(cache) != size:
            raise SystemExit(f"populate: diskcache has {len(cache)} keys, expected {size}")
        if type(stored_output(1)).FromString(cache.get(entry_key(1))) != stored_output(1):
            raise SystemExit("populate: diskcache value differs from typical_output")


def cached_path(kind: str, size: int) -> Path:
    """Where the ``kind`` ("store" or "diskcache") database of ``size`` entries is cached."""
    return cache_dir() / f"{kind}-{size}-{fingerprint()}{'' if kind == 'diskcache' else '.db'}"


def _cached(kind: str, size: int, builder: Any, *, is_dir: bool, log: bool) -> Path:
    target = cached_path(kind, size)
    if target.exists():
        return target
    for stale in cache_dir().glob(f"{kind}-{size}-*"):
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    scratch = target.with_name(target.name + f".building-{os.getpid()}")
    if is_dir:
        scratch.mkdir()
    started = time.perf_counter()
    try:
        builder(size, scratch)
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


def store_db(size: int, *, log: bool = True) -> Path:
    """The cached store database with ``size`` entries (built on first use)."""
    return _cached("store", size, build_store, is_dir=False, log=log)


def diskcache_dir(size: int, *, log: bool = True) -> Path:
    """The cached diskcache directory with ``size`` keys (built on first use)."""
    return _cached("diskcache", size, build_diskcache, is_dir=True, log=log)


def _flushed_copy(source: Path, target: Path) -> None:
    # Flush the copy before anything is timed: otherwise the first fsync of a benchmark (at a
    # WAL checkpoint) waits for the kernel to write back the whole freshly copied file.
    shutil.copyfile(source, target)
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copy_store(size: int, destination: Path) -> Path:
    """A private copy of the ``size`` database (benchmarks write to it)."""
    target = destination / f"store-{size}.db"
    _flushed_copy(store_db(size), target)
    return target


def copy_diskcache(size: int, destination: Path) -> Path:
    """A private copy of the ``size`` diskcache directory."""
    source = diskcache_dir(size)
    target = destination / f"diskcache-{size}"
    target.mkdir()
    for item in source.iterdir():
        _flushed_copy(item, target / item.name)
    return target


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=list(SIZES))
    args = parser.parse_args(argv)
    for size in args.sizes:
        store_db(size)
        diskcache_dir(size)
    print(cache_dir())


if __name__ == "__main__":
    main()
