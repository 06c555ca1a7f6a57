"""Single-process get and put throughput: flytecache vs raw sqlite3 vs diskcache, interleaved.

* ``flytecache`` — ``CacheStore.get``/``put`` with the typical inline output and metadata.
* ``raw`` — raw sqlite3 executing exactly the SQL the store executes (the store's compiled
  statements, the same PRAGMAs, ``BEGIN IMMEDIATE`` for writes), with the parameters
  flattened ahead of timing: no validation, no protobuf, no pooling. The physical limit.
* ``diskcache`` — ``Cache.get`` (returns the stored bytes, no parsing) and ``Cache.set`` of
  the serialized output; ``diskcache+parse`` adds ``CachedOutput.FromString`` so it returns
  what ``CacheStore.get`` returns (context only; the targets compare against plain get).

Each repeat times a block of every implementation back to back, in rotating order, on fresh
copies of the 1k-entry database, so drift on a shared machine hits all alike. Ratios are the
median over repeats of the per-repeat ratio.

    python -m benchmarks.store_harness [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import functools
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import diskcache
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from benchmarks import populate
from benchmarks._common import (
    entry_key,
    key_position,
    median,
    put_args,
    rate,
    raw_connection,
    raw_put,
    stored_output,
    typical_output,
    write_json,
)
from flytecache import CacheStore

SIZE = 1_000
GET_IMPLS = ("flytecache", "raw", "diskcache", "diskcache+parse")
PUT_IMPLS = ("flytecache", "raw", "diskcache")


def _get_fns(store: CacheStore, raw: Any, cache: Any) -> dict[str, Callable[[int], Any]]:
    keys = [entry_key(i) for i in random.Random(7).choices(range(SIZE), k=4096)]
    get, execute, text = store.get, raw.execute, store.statements.get.text
    dc_get, parse = cache.get, cs.CachedOutput.FromString
    return {
        "flytecache": lambda i: get(keys[i & 4095]),
        "raw": lambda i: execute(text, (keys[i & 4095],)).fetchall(),
        "diskcache": lambda i: dc_get(keys[i & 4095]),
        "diskcache+parse": lambda i: parse(dc_get(keys[i & 4095])),
    }


def bench_get(directory: Path, n: int, order: list[str]) -> dict[str, float]:
    path = populate.copy_store(SIZE, directory)
    cache_dir = populate.copy_diskcache(SIZE, directory)
    with CacheStore.open(path) as store, diskcache.Cache(str(cache_dir)) as cache:
        raw = raw_connection(path)
        fns = _get_fns(store, raw, cache)
        for fn in fns.values():  # warm every page and statement cache alike
            rate(min(n, 4096), fn)
        rates = {impl: rate(n, fns[impl]) for impl in order}
        # Checked after timing: each returned the stored entry.
        assert store.get(entry_key(3)).output_literals == stored_output(3).output_literals
        assert cs.CachedOutput.FromString(cache.get(entry_key(3))) == stored_output(3)
        assert len(raw.execute(store.statements.get.text, (entry_key(3),)).fetchall()) == 2
        raw.close()
    return rates


def _put_flytecache(directory: Path, keys: list[str], output: Any) -> float:
    with CacheStore.open(populate.copy_store(SIZE, directory)) as store:
        put = store.put
        result = rate(len(keys), lambda i: put(keys[i], output))
        assert store.get(keys[-1]).output_literals == output.output_literals
    return result


def _put_raw(directory: Path, keys: list[str], output: Any) -> float:
    path = populate.copy_store(SIZE, directory)
    with CacheStore.open(path) as store:
        sql = store.statements
    conn = raw_connection(path)
    args, literals = put_args(sql, "placeholder", output, overwrite=False)
    at = key_position(sql)
    head, tail = args[:at], args[at + 1 :]
    result = rate(len(keys), lambda i: raw_put(conn, sql, (*head, keys[i], *tail), literals))
    conn.close()
    with CacheStore.open(path) as store:
        assert store.get(keys[-1]).output_literals == output.output_literals
    return result


def _put_diskcache(directory: Path, keys: list[str], output: Any) -> float:
    with diskcache.Cache(str(populate.copy_diskcache(SIZE, directory))) as cache:
        set_ = cache.set
        result = rate(len(keys), lambda i: set_(keys[i], output.SerializeToString()))
        assert len(cache) == SIZE + len(keys)
    return result


_PUTS = {"flytecache": _put_flytecache, "raw": _put_raw, "diskcache": _put_diskcache}


def bench_put(directory: Path, n: int, order: list[str]) -> dict[str, float]:
    output = typical_output(SIZE + 1)
    keys = [entry_key(SIZE + 1 + i) for i in range(n)]
    rates: dict[str, float] = {}
    for impl in order:
        sub = directory / impl
        sub.mkdir()
        rates[impl] = _PUTS[impl](sub, keys, output)
    return rates


def scaling(
    sizes: tuple[int, ...] = (1_000, 1_000_000), block: int = 500, rounds: int = 10
) -> dict[str, Any]:
    """Per-call get (hit) and put (new key) latency on databases of each size, interleaved.

    Both databases are open at once and timed in alternating blocks of ``block`` calls, so
    machine drift hits every size alike; each call is timed on its own. Gets read uniformly
    random existing keys. Returns per op and size the median and mean µs per call.
    """
    output = typical_output(0)
    with tempfile.TemporaryDirectory(prefix="flytecache-scaling-") as tmp:
        stores = {size: CacheStore.open(populate.copy_store(size, Path(tmp))) for size in sizes}
        try:
            rng = random.Random(11)
            fresh = iter(range(10**7, 10**9))
            ops = ("get_hit", "put_new")
            times: dict[tuple[str, int], list[int]] = {
                (op, size): [] for op in ops for size in sizes
            }
            clock = time.perf_counter_ns
            for r in range(rounds):
                for op in ops:
                    for size in sizes if r % 2 == 0 else sizes[::-1]:
                        store, record = stores[size], times[(op, size)].append
                        if op == "get_hit":
                            keys = [entry_key(rng.randrange(size)) for _ in range(block)]
                            call = store.get
                        else:
                            keys = [entry_key(next(fresh)) for _ in range(max(1, block // 5))]
                            call = functools.partial(store.put, output=output)
                        for key in keys:
                            start = clock()
                            call(key)
                            record(clock() - start)
        finally:
            for store in stores.values():
                store.close()
    result: dict[str, Any] = {"sizes": list(sizes), "ops": {}}
    for (op, size), values in times.items():
        result["ops"].setdefault(op, {})[str(size)] = {
            "median_us": median(values) / 1000,
            "mean_us": sum(values) / len(values) / 1000,
            "calls": len(values),
        }
    return result


def run(quick: bool = False, repeats: int | None = None, n: int | None = None) -> dict[str, Any]:
    """Time get and put ``repeats`` times; per implementation the median rate (ops/s).

    Returns ``{"get": {...}, "put": {...}}``; each has the median ``rates``, the per-repeat
    ``samples`` and ``ratios`` (median of per-repeat flytecache/peer ratios).
    """
    n = n or (2_000 if quick else 10_000)
    repeats = repeats or (5 if quick else 7)
    samples: dict[str, list[dict[str, float]]] = {"get": [], "put": []}
    for rep in range(repeats):
        get_order = list(GET_IMPLS[rep % 4 :] + GET_IMPLS[: rep % 4])
        put_order = list(PUT_IMPLS[rep % 3 :] + PUT_IMPLS[: rep % 3])
        with tempfile.TemporaryDirectory(prefix="flytecache-harness-") as tmp:
            samples["get"].append(bench_get(Path(tmp), n * 5, get_order))
        with tempfile.TemporaryDirectory(prefix="flytecache-harness-") as tmp:
            samples["put"].append(bench_put(Path(tmp), n, put_order))
    results: dict[str, Any] = {}
    for op, runs in samples.items():
        impls = list(runs[0])
        results[op] = {
            "rates": {impl: median([r[impl] for r in runs]) for impl in impls},
            "ratios": {
                impl: median([r["flytecache"] / r[impl] for r in runs])
                for impl in impls
                if impl != "flytecache"
            },
            "samples": runs,
            "n": n * 5 if op == "get" else n,
            "repeats": repeats,
        }
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small blocks, 5 repeats")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(quick=args.quick)
    for op, r in results.items():
        rates = "  ".join(f"{impl} {v:>8,.0f}/s" for impl, v in r["rates"].items())
        ratios = "  ".join(f"÷{impl} {v:.2f}" for impl, v in r["ratios"].items())
        print(f"{op:4} {rates}\n     flytecache {ratios}")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
