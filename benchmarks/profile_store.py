"""Where a store get and put spend their time, for contributors: regenerated every run.

* ``profile`` — cProfile's top functions by own time for ``CacheStore.get`` and ``put``
  (cProfile inflates Python-level call overhead, so read it for *which* functions; the
  single-process cells say *how much* against the limit).
* ``wal_pages`` — database pages written per put (WAL frames per commit): flytecache, the limit
  and diskcache. The I/O a commit cannot avoid.
* ``statement_cost`` — CPU µs of a put's statement alone (run raw through ``sqlite3``, its
  parameters built beforehand), interleaved in blocks: the store's schema, the same schema
  without its two secondary indexes (``last_updated_at``; project, domain, name,
  last_updated_at), and the limit's upsert. What those indexes cost each put.

    python -m benchmarks.profile_store [--quick]
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache

from benchmarks import populate
from benchmarks._common import entry_key, typical_output
from benchmarks.limit import PUT_SQL, Limit
from flytecache import CacheStore
from flytecache.store import codec

SIZE = 1_000


def profile(directory: Path, n: int, top: int = 8) -> dict[str, list[dict[str, Any]]]:
    path = populate.copy("store", SIZE, directory)
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

    path = populate.copy("store", SIZE, directory)
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
    limit_path = populate.copy("limit", SIZE, directory)
    limit = Limit.open(limit_path)
    limit_result = frames(
        limit_path,
        lambda i: limit.put(f"pages-{i}", output),
        lambda: limit.conn.execute("PRAGMA wal_autocheckpoint = 0"),
    )
    limit.close()
    cache_path = populate.copy("diskcache", SIZE, directory)
    cache = diskcache.Cache(str(cache_path))
    value = output.SerializeToString()
    cache_result = frames(
        cache_path / "cache.db",
        lambda i: cache.set(f"pages-{i}", value),
        # diskcache's documented way to set a PRAGMA on this thread's connection.
        lambda: cache.reset("sqlite_wal_autocheckpoint", 0, update=False),
    )
    cache.close()
    return {"flytecache": store_result, "limit": limit_result, "diskcache": cache_result}


SECONDARY_INDEXES = (
    "ix_entries_last_updated_at",
    "ix_entries_project_domain_name_last_updated_at",
)
"""The indexes of ``entries`` beside the key hash's (age, eviction order, task filters)."""


def statement_cost(directory: Path, n: int, repeats: int) -> dict[str, dict[str, float]]:
    """CPU µs per put statement (median and min–max over ``repeats`` interleaved blocks of
    ``n`` new keys): ``flytecache``, ``flytecache without secondary indexes``, ``limit``."""
    output = typical_output(SIZE + 1)
    stores: dict[str, CacheStore] = {}
    for name in ("flytecache", "flytecache without secondary indexes"):
        (directory / name).mkdir()
        store = CacheStore.open(populate.copy("store", SIZE, directory / name))
        if name != "flytecache":
            with store.dbapi_connection() as conn:
                for index in SECONDARY_INDEXES:
                    conn.execute(f"DROP INDEX {index}")
        stores[name] = store
    limit = Limit.open(populate.copy("limit", SIZE, directory))
    statement = next(iter(stores.values())).statements.put_simple
    value = output.SerializeToString()

    def store_block(store: CacheStore, tag: str) -> float:
        args = [statement.args(_put_params(f"cost-{tag}-{i}", output)) for i in range(n)]
        with store.dbapi_connection() as conn:
            started = time.process_time()
            for arg in args:
                conn.execute(statement.text, arg)
            return (time.process_time() - started) / n * 1e6

    def limit_block(tag: str) -> float:
        args = [(f"cost-{tag}-{i}", value, False) for i in range(n)]
        put = limit.conn.execute
        started = time.process_time()
        for arg in args:
            put(PUT_SQL, arg)
        return (time.process_time() - started) / n * 1e6

    blocks: dict[str, Callable[[str], float]] = {
        name: (lambda tag, store=store: store_block(store, tag)) for name, store in stores.items()
    }
    blocks["limit"] = limit_block
    samples: dict[str, list[float]] = {name: [] for name in blocks}
    names = list(blocks)
    try:
        for repeat in range(repeats):
            shift = repeat % len(names)  # rotating order: drift hits every contender alike
            for name in names[shift:] + names[:shift]:
                samples[name].append(blocks[name](f"{repeat}"))
        # Checked after timing: every statement stored its entry, readable by the store.
        for name, store in stores.items():
            stored = store.get(f"cost-0-{n - 1}")
            assert stored.output_literals == output.output_literals, name
        assert limit.get(f"cost-0-{n - 1}") == output
    finally:
        for store in stores.values():
            store.close()
        limit.close()
    return {
        name: {
            "median": statistics.median(values),
            "min": min(values),
            "max": max(values),
        }
        for name, values in samples.items()
    }


def _put_params(key: str, output: Any) -> dict[str, Any]:
    """The parameters ``CacheStore.put`` gives its one-statement put for a new entry."""
    now = time.time_ns() // 1000
    params = codec.entry_params(key, output)
    created = now if params["created_at"] is None else params["created_at"]
    params.update(
        request_created_at=params["created_at"],
        created_at=created,
        last_updated_at=now,
        overwrite=False,
        expired_before=-(2**63),
        payload=codec.payload(params["head"], params["meta"], created, now),
    )
    return params


def run(quick: bool = False, n: int | None = None, repeats: int | None = None) -> dict[str, Any]:
    """cProfile of ``n`` × 10 gets and half as many puts; WAL pages per put; the cost of a
    put's statement with and without the secondary indexes (``repeats`` blocks)."""
    n = n or (300 if quick else 2_000)
    repeats = repeats or (3 if quick else 7)
    with tempfile.TemporaryDirectory(prefix="flytecache-profile-") as tmp:
        base = Path(tmp)
        for name in ("profile", "wal", "cost"):
            (base / name).mkdir()
        return {
            "profile": profile(base / "profile", max(n * 10, 2_000)),
            "wal_pages_per_put": wal_pages(base / "wal", min(500, n * 5)),
            "statement_cost_us": statement_cost(base / "cost", min(2_000, n * 5), repeats),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
