"""flytecache's store against raw sqlite3 running the same transactions, in one run.

The raw baseline executes exactly the SQL the store executes (the store's compiled
statements, the same PRAGMAs, BEGIN IMMEDIATE for writes) with nothing around it: no
validation, no protobuf, no pooling. The ratio store/raw is therefore the cost of everything
flytecache adds, and raw is the physical limit of this machine's SQLite.

    python -m benchmarks.store_harness [--quick]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2

from flytecache import CacheStore
from flytecache.store.cache import _entry_params

CTX = multiprocessing.get_context("spawn")


def sample_output(i: int) -> cs.CachedOutput:
    """A small inline result: two outputs, like a typical task."""
    literals = literals_pb2.LiteralMap()
    literals.literals["n"].scalar.primitive.integer = i
    literals.literals["s"].scalar.primitive.string_value = f"result-{i}"
    return cs.CachedOutput(output_literals=literals)


def _raw_connection(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _fresh_db(directory: str, name: str) -> str:
    path = os.path.join(directory, name)
    CacheStore.open(path).close()
    return path


def _rate(n: int, fn: Callable[[int], Any]) -> float:
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


# -- single-process: put (new key) and get (hit) ---------------------------------------------


def bench_put(directory: str, n: int) -> dict[str, float]:
    outputs = [sample_output(i) for i in range(n)]
    store_path = _fresh_db(directory, "put-store.db")
    with CacheStore.open(store_path) as store:
        store_rate = _rate(n, lambda i: store.put(f"key-{i}", outputs[i]))
        sql = store._sql
    raw_path = _fresh_db(directory, "put-raw.db")
    conn = _raw_connection(raw_path)
    # Pre-flatten the rows: the raw side does only the database work.
    rows = []
    for i in range(n):
        params, literals = _entry_params(f"key-{i}", outputs[i])
        params.update(
            request_created_at=None,
            created_at=1,
            last_updated_at=1,
            overwrite=False,
            writes=0,
            expired_before=-(2**63),
        )
        rows.append((sql.put.args(params), literals))

    def raw_put(i: int) -> None:
        args, literals = rows[i]
        conn.execute("BEGIN IMMEDIATE")
        entry_id, writes = conn.execute(sql.put.text, args).fetchone()
        if writes:
            conn.execute(sql.delete_outputs.text, (entry_id,))
        conn.executemany(sql.insert_output.text, [(entry_id, k, v) for k, v in literals])
        conn.execute("COMMIT")

    raw_rate = _rate(n, raw_put)
    conn.close()
    return {"store": store_rate, "raw": raw_rate, "ratio": store_rate / raw_rate}


def bench_get(directory: str, n: int) -> dict[str, float]:
    path = _fresh_db(directory, "get.db")
    keys = 1000
    with CacheStore.open(path) as store:
        for i in range(keys):
            store.put(f"key-{i}", sample_output(i))
        store_rate = _rate(n, lambda i: store.get(f"key-{i % keys}"))
        sql = store._sql.get
    conn = _raw_connection(path)
    raw_rate = _rate(n, lambda i: conn.execute(sql.text, (f"key-{i % keys}",)).fetchall())
    conn.close()
    return {"store": store_rate, "raw": raw_rate, "ratio": store_rate / raw_rate}


# -- multi-process: reservations on hot keys --------------------------------------------------


def _reserve_worker(path: str, mode: str, n: int, keys: int, owner: str, start_at: float) -> float:
    while time.time() < start_at:
        time.sleep(0.001)
    if mode == "store":
        with CacheStore.open(path) as store:
            hb = timedelta(seconds=1)
            begin = time.perf_counter()
            for i in range(n):
                store.get_or_extend_reservation(f"hot-{i % keys}", owner, hb)
            return time.perf_counter() - begin
    with CacheStore.open(path) as store:
        sql = store._sql
    conn = _raw_connection(path)
    begin = time.perf_counter()
    for i in range(n):
        now = time.time_ns() // 1000
        key = f"hot-{i % keys}"
        conn.execute("BEGIN IMMEDIATE")
        row = conn.execute(sql.reserve.text, (key, owner, 1_000_000, now + 3_000_000, now, now))
        if row.fetchone() is None:
            conn.execute(sql.holder.text, (key,)).fetchone()
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - begin
    conn.close()
    return elapsed


def bench_reserve(directory: str, n: int, processes: int = 4, keys: int = 10) -> dict[str, float]:
    result = {}
    for mode in ("store", "raw"):
        path = _fresh_db(directory, f"reserve-{mode}.db")
        start_at = time.time() + 1.5  # let every process import and open first
        with CTX.Pool(processes) as pool:
            times = pool.starmap(
                _reserve_worker,
                [(path, mode, n, keys, f"owner-{p}", start_at) for p in range(processes)],
            )
        result[mode] = processes * n / max(times)
    result["ratio"] = result["store"] / result["raw"]
    return result


def run(quick: bool = False, repeats: int | None = None, n: int | None = None) -> dict[str, Any]:
    """Run every comparison ``repeats`` times and keep the medians."""
    n = n or (2000 if quick else 20000)
    repeats = repeats or (3 if quick else 5)
    samples: dict[str, list[dict[str, float]]] = {"put": [], "get": [], "reserve_4p_10keys": []}
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as directory:
            samples["put"].append(bench_put(directory, n))
            samples["get"].append(bench_get(directory, n * 2))
            samples["reserve_4p_10keys"].append(bench_reserve(directory, n // 2))
    return {
        name: {field: statistics.median(s[field] for s in runs) for field in runs[0]}
        for name, runs in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, 3 repeats")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(quick=args.quick)
    for name, r in results.items():
        print(
            f"{name:20} flytecache {r['store']:>9.0f}/s   raw sqlite3 {r['raw']:>9.0f}/s   "
            f"ratio {r['ratio']:.2f}"
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
