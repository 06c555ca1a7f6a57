"""Size limits with eviction (issue #16): the limit kept, and what it costs.

Three cells, each on fresh database files under a temporary directory:

* ``limit`` — a store with ``max_size_bytes`` (50 MiB) and one writer putting four times that
  (200 MiB) in 16 KiB entries as fast as it can; a second thread samples the payload total
  (``SUM(entries.size)``, the measure the limit applies to) every 20 ms on its own connection.
  Reported: the largest sample over the limit (target: within 10 %), the evictor's batches and
  how long each held the write lock (median, max). Run again on PostgreSQL
  (``limit_postgresql``, a throwaway server: see ``benchmarks/_postgres.py``) except in smoke
  mode.
* ``put`` — puts of the typical output per second with a size limit that keeps the evictor
  busy (a quarter of what is written) against the same puts without a limit; blocks
  interleaved, the order alternating, ratio per repeat (target: ≥ 0.8).
* ``get`` — gets of random keys per second through a least-recently-used store (every read
  recorded, flushed every second by its thread) against a store without a limit, both on one
  populated file; interleaved, ratio per repeat (target: ≥ 0.9).

Each ratio is given twice: of throughput (wall clock: the calls a caller gets through, the
target's measure; the evictor works on its own thread beside the writer) and of CPU time
(``time.process_time``, every thread of the process: what eviction costs in all, since at the
limit every new entry eventually costs the deletion of an old one).

    python -m benchmarks.eviction [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2

from benchmarks._common import entry_key, median, percentile, spread, typical_output, write_json
from flytecache import CacheStore, StoreSettings
from flytecache.store.eviction import totals

MIB = 1024**2
MODES: dict[str, dict[str, Any]] = {
    "full": {"limit_mib": 50, "write_mib": 200, "n": 20_000, "repeats": 5},
    "quick": {"limit_mib": 50, "write_mib": 200, "n": 5_000, "repeats": 3},
    "smoke": {"limit_mib": 1, "write_mib": 4, "n": 100, "repeats": 1},
}


def _big_output(i: int, size: int) -> cs.CachedOutput:
    literals = literals_pb2.LiteralMap()
    literals.literals["blob"].scalar.binary.value = i.to_bytes(8, "big") * (size // 8)
    return cs.CachedOutput(output_literals=literals)


def limit_cell(
    limit_mib: int = 50, write_mib: int = 200, entry_kib: int = 16, url: str | None = None
) -> dict[str, Any]:
    """Write ``write_mib`` through a store limited to ``limit_mib``; sample the payload.

    On a new SQLite file, or on the (empty) database at ``url``. The sampler reads the totals
    through a store of its own (no limit), as another process would.
    """
    limit = limit_mib * MIB
    entry = entry_kib * 1024
    with tempfile.TemporaryDirectory() as tmp:
        target = url or str(Path(tmp) / "limit.db")
        store = CacheStore.open(target, settings=StoreSettings(max_size_bytes=limit))
        observer = CacheStore.open(target)
        samples: list[int] = []
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                samples.append(totals(observer)[1])
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, name="sampler")
        sampler.start()
        started = time.perf_counter()
        written = puts = 0
        try:
            while written < write_mib * MIB:
                output = _big_output(puts, entry)
                store.put(f"entry-{puts}", output)
                written += len(output.output_literals.SerializeToString())
                puts += 1
            elapsed = time.perf_counter() - started
            time.sleep(0.5)  # the evictor's last round, sampled too
        finally:
            done.set()
            sampler.join()
        assert store.evictor is not None
        stats = store.evictor.stats.snapshot()
        held = sorted(store.evictor.stats.batch_seconds)
        store.close()
        final = totals(observer)[1]
        observer.close()
        file_bytes = None if url else Path(target).stat().st_size
    peak = max(samples, default=0)
    return {
        "backend": "postgresql" if url else "sqlite",
        "limit_bytes": limit,
        "written_bytes": written,
        "puts": puts,
        "entry_bytes": entry,
        "seconds": elapsed,
        "samples": len(samples),
        "peak_bytes": peak,
        "peak_over_limit": peak / limit,
        "final_bytes": final,
        "file_bytes": file_bytes,
        "evicted_entries": stats["evicted_entries"],
        "batches": stats["eviction_batches"],
        "batch_ms": {
            "median": median(held) * 1000,
            "p99": percentile(held, 0.99) * 1000,
            "max": (held[-1] if held else float("nan")) * 1000,
        },
    }


def _block(fn: Any, n: int) -> tuple[float, float]:
    """Calls of ``fn(0..n-1)`` per wall-clock second and per CPU-second of the process."""
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - wall), n / max(time.process_time() - cpu, 1e-9)


def _ratios(rates: dict[str, list[tuple[float, float]]], on: str, off: str) -> dict[str, Any]:
    """Per-repeat ratios ``on``/``off``: of throughput (wall clock, the target's measure) and
    of CPU-seconds (every thread of the process, so the evictor's own work too)."""
    pairs = list(zip(rates[on], rates[off], strict=True))
    return {
        "rates": {mode: spread([wall for wall, _ in values]) for mode, values in rates.items()},
        "cpu_rates": {mode: spread([cpu for _, cpu in values]) for mode, values in rates.items()},
        "ratio": spread([a[0] / b[0] for a, b in pairs]),
        "cpu_ratio": spread([a[1] / b[1] for a, b in pairs]),
    }


def put_cell(n: int = 20_000, repeats: int = 5) -> dict[str, Any]:
    """Puts per CPU-second with eviction on (limit = a quarter of what is written) and off."""
    outputs = [typical_output(i) for i in range(n)]
    keys = [entry_key(i) for i in range(n)]
    written = sum(len(o.output_literals.SerializeToString()) for o in outputs)
    settings = {"on": StoreSettings(max_size_bytes=written // 4), "off": StoreSettings()}
    rates: dict[str, list[tuple[float, float]]] = {"on": [], "off": []}
    held: list[float] = []
    evicted: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(repeats):
            for mode in ("on", "off") if rep % 2 == 0 else ("off", "on"):
                path = Path(tmp) / f"put-{rep}-{mode}.db"
                with CacheStore.open(path, settings=settings[mode]) as store:
                    rates[mode].append(_block(lambda i: store.put(keys[i], outputs[i]), n))
                    if store.evictor is not None:
                        held.extend(store.evictor.stats.batch_seconds)
                        evicted.append(store.evictor.stats.snapshot()["evicted_entries"])
                        # Checked after timing: the limit was kept (the last round included).
                        store.evictor.run_once()
                        assert store.get(keys[-1]).output_literals == outputs[-1].output_literals
                path.unlink()
    held.sort()
    return {
        "n": n,
        "limit_bytes": written // 4,
        **_ratios(rates, "on", "off"),
        "evicted_per_run": spread([float(e) for e in evicted]),
        "batch_ms": {
            "median": median(held) * 1000,
            "p99": percentile(held, 0.99) * 1000,
            "max": (held[-1] if held else float("nan")) * 1000,
        },
    }


def get_cell(n: int = 20_000, repeats: int = 5, size: int = 10_000) -> dict[str, Any]:
    """Gets per CPU-second through a least-recently-used store and a plain one."""
    rng = random.Random(16)
    keys = [entry_key(i) for i in range(size)]
    order = [keys[rng.randrange(size)] for _ in range(n)]
    rates: dict[str, list[tuple[float, float]]] = {"lru": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "get.db"
        with CacheStore.open(path) as store:
            for i, key in enumerate(keys):
                store.put(key, typical_output(i))
        lru = CacheStore.open(
            path, settings=StoreSettings(max_entries=size * 10, eviction="least-recently-used")
        )
        plain = CacheStore.open(path)
        stores = {"lru": lru, "plain": plain}
        try:
            for rep in range(repeats):
                for mode in ("lru", "plain") if rep % 2 == 0 else ("plain", "lru"):
                    get = stores[mode].get
                    rates[mode].append(_block(lambda i, get=get: get(order[i]), n))
            assert lru.evictor is not None
            lru.evictor.flush_hits()
            flushed = lru.evictor.stats.snapshot()["recency_flushed"]
        finally:
            lru.close()
            plain.close()
        with sqlite3.connect(path) as conn:
            recorded = conn.execute(
                "SELECT count(*) FROM entries WHERE accessed_at IS NOT NULL"
            ).fetchone()[0]
        conn.close()
    assert recorded == len(set(order))  # every key read has its read time
    return {
        "n": n,
        "entries": size,
        **_ratios(rates, "lru", "plain"),
        "recency_flushed": flushed,
    }


def run(mode: str = "full") -> dict[str, Any]:
    """Every cell with the sizes of ``mode`` (``full``, ``quick`` or ``smoke``); the limit
    cell also on PostgreSQL, except in ``smoke`` (see ``benchmarks/_postgres.py``)."""
    config = MODES[mode]
    results = {
        "limit": limit_cell(config["limit_mib"], config["write_mib"]),
        "put": put_cell(config["n"], config["repeats"]),
        "get": get_cell(config["n"], config["repeats"], size=max(100, config["n"] // 2)),
    }
    if mode != "smoke":
        from benchmarks._postgres import databases

        with databases() as dbs:
            results["limit_postgresql"] = (
                {"note": dbs}
                if isinstance(dbs, str)
                else limit_cell(config["limit_mib"], config["write_mib"], url=dbs.new_url())
            )
    return results


def _print_limit(name: str, limit: dict[str, Any] | None) -> None:
    if not limit or "note" in limit:
        print(f"{name}: {limit['note'] if limit else 'not measured'}")
        return
    print(
        f"{name}: peak {limit['peak_bytes'] / MIB:.1f} MiB of {limit['limit_bytes'] / MIB:.0f} "
        f"MiB ({limit['peak_over_limit']:.3f}x) over {limit['samples']} samples; "
        f"{limit['puts']} puts, {limit['written_bytes'] / MIB:.0f} MiB in "
        f"{limit['seconds']:.1f} s; {limit['batches']} batches, lock held median "
        f"{limit['batch_ms']['median']:.2f} ms, max {limit['batch_ms']['max']:.2f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results = run("quick" if args.quick else "full")
    for name in ("limit", "limit_postgresql"):
        _print_limit(name, results.get(name))
    for cell_name in ("put", "get"):
        cell = results[cell_name]
        for label, ratio, rates in (
            ("throughput", cell["ratio"], cell["rates"]),
            ("CPU", cell["cpu_ratio"], cell["cpu_rates"]),
        ):
            shown = ", ".join(f"{m} {v['median']:,.0f}/s" for m, v in rates.items())
            print(
                f"{cell_name} {label}: ratio {ratio['median']:.3f} "
                f"[{ratio['min']:.3f}-{ratio['max']:.3f}] ({shown})"
            )
    if "batch_ms" in results["put"]:
        b = results["put"]["batch_ms"]
        print(f"put cell batches: median {b['median']:.2f} ms, max {b['max']:.2f} ms")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
