"""Where a store get and put spend their time, for contributors: regenerated every run.

* ``profile`` — cProfile's top functions by own time for ``CacheStore.get`` and ``put``
  (cProfile inflates Python-level call overhead, so read it for *which* functions; the
  single-process cells say *how much* against the limit).
* ``wal_pages`` — database pages written per put (WAL frames per commit): flytecache, the limit
  and diskcache. The I/O a commit cannot avoid.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache

from benchmarks import populate
from benchmarks._common import entry_key, typical_output
from benchmarks.limit import Limit
from flytecache import CacheStore

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


def run(quick: bool = False, n: int | None = None, repeats: int | None = None) -> dict[str, Any]:
    """cProfile of ``n`` × 10 gets and half as many puts; WAL pages per put."""
    n = n or (300 if quick else 2_000)
    with tempfile.TemporaryDirectory(prefix="flytecache-profile-") as tmp:
        base = Path(tmp)
        for name in ("profile", "wal"):
            (base / name).mkdir()
        return {
            "profile": profile(base / "profile", max(n * 10, 2_000)),
            "wal_pages_per_put": wal_pages(base / "wal", min(500, n * 5)),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    print(json.dumps(run(quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
