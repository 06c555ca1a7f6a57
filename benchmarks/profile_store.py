"""Where a store get and put spend their time: evidence for the docs, regenerated every run.

* ``breakdown`` — median microseconds per call of the public call and of its parts, each
  timed call by call in interleaved blocks: the SQL alone on a raw connection, the
  row↔protobuf conversion alone, and what remains (validation, pooling, transactions).
* ``profile`` — cProfile's top functions by own time for 20k calls (cProfile inflates
  Python-level call overhead, so read it for *which* functions, the breakdown for *how much*).
* ``wal_pages`` — database pages written per put (WAL frames per commit), store vs diskcache:
  the I/O a commit cannot avoid.

    python -m benchmarks.profile_store [--quick]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache

from benchmarks import populate
from benchmarks._common import (
    entry_key,
    key_position,
    median,
    put_args,
    raw_connection,
    raw_put,
    typical_output,
)
from flytecache import CacheStore
from flytecache.store import codec
from flytecache.store.codec import entry_params

SIZE = 1_000


def _cached_output(rows: list[Any]) -> Any:
    """The rows → CachedOutput step of ``CacheStore.get``, whichever path the store takes:
    the wire-assembly path when the row carries the serialized metadata, else the
    field-by-field rebuild (both in ``flytecache.store.codec``)."""
    if len(rows[0]) > 13 and rows[0][13] is not None:
        return codec.cached_output(rows)
    return codec.rows_to_cached_output(rows)


def _per_call_us(n: int, fn: Callable[[int], Any]) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - start) / n * 1e6


def breakdown(directory: Path, n: int, repeats: int) -> dict[str, dict[str, float]]:
    path = populate.copy_store(SIZE, directory)
    store = CacheStore.open(path)
    raw = raw_connection(path)
    sql = store.statements
    keys = [entry_key(i) for i in random.Random(3).choices(range(SIZE), k=4096)]
    rows = raw.execute(sql.get.text, (keys[0],)).fetchall()
    output = typical_output(SIZE + 1)
    args, literals = put_args(sql, "placeholder", output, overwrite=False)
    at = key_position(sql)
    head, tail = args[:at], args[at + 1 :]
    fresh = iter(range(SIZE + 1, 10**9))
    new_keys: list[str] = []

    def next_key(_: int) -> str:
        new_keys.append(entry_key(next(fresh)))
        return new_keys[-1]

    parts: dict[str, dict[str, Callable[[int], Any]]] = {
        "get": {
            "total": lambda i: store.get(keys[i & 4095]),
            "sql": lambda i: raw.execute(sql.get.text, (keys[i & 4095],)).fetchall(),
            "rows_to_protobuf": lambda i: _cached_output(rows),
        },
        "put": {
            "total": lambda i: store.put(next_key(i), output),
            "sql": lambda i: raw_put(raw, sql, (*head, next_key(i), *tail), literals),
            "protobuf_to_rows": lambda i: entry_params(keys[i & 4095], output),
        },
    }
    # Every call is timed on its own and the medians are compared: robust to load spikes on a
    # shared machine and to the WAL checkpoint every ~140 puts (which the medians leave out).
    samples: dict[str, dict[str, list[int]]] = {
        op: {part: [] for part in fns} for op, fns in parts.items()
    }
    clock = time.perf_counter_ns
    for rep in range(repeats):
        for op, fns in parts.items():
            count = n if op == "put" else n * 5
            names = list(fns)
            for part in names[rep % len(names) :] + names[: rep % len(names)]:
                fn, record = fns[part], samples[op][part].append
                for i in range(count):
                    start = clock()
                    fn(i)
                    record(clock() - start)
    result: dict[str, dict[str, float]] = {}
    for op, by_part in samples.items():
        medians = {part: median(values) / 1000 for part, values in by_part.items()}
        parts_sum = sum(v for k, v in medians.items() if k != "total")
        medians["other"] = max(0.0, medians["total"] - parts_sum)
        result[op] = medians
    raw.close()
    store.close()
    return result


def profile(directory: Path, n: int, top: int = 8) -> dict[str, list[dict[str, Any]]]:
    path = populate.copy_store(SIZE, directory)
    result: dict[str, list[dict[str, Any]]] = {}
    with CacheStore.open(path) as store:
        keys = [entry_key(i) for i in random.Random(5).choices(range(SIZE), k=n)]
        output = typical_output(SIZE + 1)
        calls = {
            "get": lambda: [store.get(k) for k in keys],
            "put": lambda: [store.put(f"profile-{i}", output) for i in range(n // 2)],
        }
        for op, call in calls.items():
            profiler = cProfile.Profile()
            profiler.enable()
            call()
            profiler.disable()
            stats = pstats.Stats(profiler)
            total = stats.total_tt  # type: ignore[attr-defined]
            entries = sorted(
                stats.stats.items(),  # type: ignore[attr-defined]
                key=lambda item: item[1][2],
                reverse=True,
            )[:top]
            result[op] = [
                {
                    "function": _name(func),
                    "calls": stat[1],
                    "own_share": stat[2] / total,
                    "cumulative_share": stat[3] / total,
                }
                for func, stat in entries
            ]
    return result


def _name(func: tuple[str, int, str]) -> str:
    filename, line, name = func
    if filename == "~":
        return name
    parts = Path(filename).parts
    short = "/".join(parts[parts.index("flytecache") :]) if "flytecache" in parts else parts[-1]
    return f"{short}:{line} {name}"


def wal_pages(directory: Path, n: int) -> dict[str, float]:
    """WAL frames (pages) written per put, averaged over ``n`` puts into a 1k database."""
    output = typical_output(SIZE + 1)

    def frames(db: Path, write: Callable[[int], Any], setup: Callable[[], None]) -> float:
        probe = sqlite3.connect(db, isolation_level=None)
        probe.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        setup()
        for i in range(n):
            write(i)
        log_frames = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        probe.close()
        return float(log_frames) / n

    path = populate.copy_store(SIZE, directory)
    store = CacheStore.open(path)
    store.put("warm-up", output)

    def store_no_checkpoints() -> None:
        # The puts follow one another on this thread, so the store's pool lends every one of them
        # the connection it lends here; stop it checkpointing so the WAL keeps every frame.
        with store.dbapi_connection() as conn:
            conn.execute("PRAGMA wal_autocheckpoint = 0")

    store_result = frames(path, lambda i: store.put(f"pages-{i}", output), store_no_checkpoints)
    with store.dbapi_connection() as conn:  # checked after timing: the puts ran on it
        assert conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
    store.close()
    cache_path = populate.copy_diskcache(SIZE, directory)
    cache = diskcache.Cache(str(cache_path))
    value = output.SerializeToString()
    cache_result = frames(
        cache_path / "cache.db",
        lambda i: cache.set(f"pages-{i}", value),
        # diskcache's documented way to set a PRAGMA on this thread's connection.
        lambda: cache.reset("sqlite_wal_autocheckpoint", 0, update=False),
    )
    cache.close()
    return {"flytecache": store_result, "diskcache": cache_result}


_VARIANT_SCHEMA = """
CREATE TABLE entries (
    id INTEGER PRIMARY KEY, key TEXT NOT NULL UNIQUE, project TEXT, domain TEXT, name TEXT,
    created_at INTEGER, last_updated_at INTEGER, size INTEGER, payload BLOB);
CREATE INDEX ix_entries_project_domain_name ON entries (project, domain, name);
CREATE INDEX ix_entries_last_updated_at ON entries (last_updated_at);
"""
_VARIANT_PUT = (
    "INSERT INTO entries (key, project, domain, name, created_at, last_updated_at, size, payload)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET payload = excluded.payload,"
    " last_updated_at = excluded.last_updated_at WHERE ? OR entries.last_updated_at < ?"
    " RETURNING id"
)
_VARIANT_GET = "SELECT payload, created_at, last_updated_at FROM entries WHERE key = ?"


def schema_variant(directory: Path, n: int, repeats: int) -> dict[str, Any]:
    """What one serialized ``CachedOutput`` per entry row (no ``outputs`` table) would give.

    Raw sqlite3 on today's schema and on that variant (same indexes on the entry row), against
    diskcache, interleaved: put rate, get rate (the variant parses its blob and sets the two
    timestamps, i.e. returns what ``CacheStore.get`` returns) and pages per put.
    """
    from flyteidl2.cacheservice import cacheservice_pb2 as cs

    output = typical_output(SIZE + 1)
    path = populate.copy_store(SIZE, directory)
    with CacheStore.open(path) as store:
        sql = store.statements
    today = raw_connection(path)
    args, literals = put_args(sql, "placeholder", output, overwrite=False)
    at = key_position(sql)
    head, tail = args[:at], args[at + 1 :]
    variant_path = directory / "variant.db"
    variant = raw_connection(variant_path)
    variant.executescript(_VARIANT_SCHEMA)
    variant.execute("BEGIN")
    variant.executemany(
        "INSERT INTO entries (key, project, domain, name, created_at, last_updated_at, size,"
        " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (entry_key(i), "flytesnacks", "development", f"t{i % 500}", 1, 1, 250, blob)
            for i in range(SIZE)
            for blob in [typical_output(i).SerializeToString()]
        ],
    )
    variant.execute("COMMIT")
    cache = diskcache.Cache(str(populate.copy_diskcache(SIZE, directory)))
    payload = output.SerializeToString()
    parse = cs.CachedOutput.FromString
    keys = [entry_key(i) for i in random.Random(9).choices(range(SIZE), k=4096)]
    counter = iter(range(10**9))

    def fresh(_: int) -> str:
        return f"variant-{next(counter)}"

    def variant_put(i: int) -> None:
        variant.execute("BEGIN IMMEDIATE")
        variant.execute(
            _VARIANT_PUT, (fresh(i), "p", "d", "n", 1, 1, 250, payload, 0, -(2**63))
        ).fetchone()
        variant.execute("COMMIT")

    def variant_get(i: int) -> Any:
        blob, created, updated = variant.execute(_VARIANT_GET, (keys[i & 4095],)).fetchone()
        result = parse(blob)
        result.metadata.created_at.FromMicroseconds(created)
        result.metadata.last_updated_at.FromMicroseconds(updated)
        return result

    fns: dict[str, Callable[[int], Any]] = {
        "put_today": lambda i: raw_put(today, sql, (*head, fresh(i), *tail), literals),
        "put_variant": variant_put,
        "put_diskcache": lambda i: cache.set(fresh(i), output.SerializeToString()),
        "get_today": lambda i: _cached_output(
            today.execute(sql.get.text, (keys[i & 4095],)).fetchall()
        ),
        "get_variant": variant_get,
        "get_diskcache": lambda i: cache.get(keys[i & 4095]),
    }
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            count = n if name.startswith("put") else n * 5
            samples[name].append(1e6 / _per_call_us(count, fn))
    rates = {name: median(values) for name, values in samples.items()}

    def pages(db: Path, conn: Any, write: Callable[[int], Any]) -> float:
        conn.execute("PRAGMA wal_autocheckpoint = 0")
        probe = sqlite3.connect(db, isolation_level=None)
        probe.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for i in range(200):
            write(i)
        frames = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]
        probe.close()
        return float(frames) / 200

    result = {
        "rates": rates,
        "pages_per_put": {
            "today": pages(path, today, fns["put_today"]),
            "variant": pages(variant_path, variant, variant_put),
        },
    }
    today.close()
    variant.close()
    cache.close()
    return result


def run(quick: bool = False, n: int | None = None, repeats: int | None = None) -> dict[str, Any]:
    """Breakdown (``n`` puts, 5n gets per part and repeat), cProfile and WAL pages."""
    n = n or (300 if quick else 2_000)
    repeats = repeats or (9 if quick else 11)
    with tempfile.TemporaryDirectory(prefix="flytecache-profile-") as tmp:
        base = Path(tmp)
        for name in ("breakdown", "profile", "wal", "variant"):
            (base / name).mkdir()
        return {
            "breakdown": breakdown(base / "breakdown", n, repeats=repeats),
            "profile": profile(base / "profile", max(n * 10, 2_000)),
            "wal_pages_per_put": wal_pages(base / "wal", min(500, n * 5)),
            "schema_variant": schema_variant(base / "variant", n * 2, repeats=max(1, repeats // 2)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
