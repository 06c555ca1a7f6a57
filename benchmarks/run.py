"""Run every benchmark; write the results, the pages and the plots to ``benchmarks/out/``.

    python -m benchmarks.run            # make bench: long cells, more repeats
    python -m benchmarks.run --quick    # make bench-quick: the same matrix, short cells
    python -m benchmarks.report --publish   # make bench-publish: the latest run → docs/

Phases, in order: build or reuse the cached databases (``populate``); per-operation latency
(pytest-benchmark over ``bench_store.py`` and ``bench_keys.py``); single-process get/put per
CPU-second against the limit, diskcache and the Flyte SDK's cache, get latency growth by size
and bytes per entry (``store_harness``); PostgreSQL against raw psycopg (``pg_cells``);
processes × workloads × targets (``concurrency``); profiles (``profile_store``); a cache hit in
a Flyte SDK local run (``flyte_sdk``); size limits with eviction (``eviction``, issue #16).
Then the targets are evaluated (``targets``) and the pages and plots rendered (``report``)
into ``benchmarks/out/docs/`` — never into ``docs/``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks import populate
from benchmarks._common import OUT_DIR, ROOT, machine, revision, write_json

MODES: dict[str, dict[str, Any]] = {
    "full": {
        "sizes": populate.SIZES,
        "pytest": ["--benchmark-max-time=1.0", "--benchmark-min-rounds=50"],
        "rounds": 2000,
        "single": {"n": 10_000, "repeats": 7},
        "growth_rounds": 30,
        "postgresql": {"n": 2_000, "repeats": 5},
        "concurrency": {"seconds": 1.5, "repeats": 5, "procs": [1, 2, 4, 8]},
        "profile": {"quick": False},
        "flyte_sdk": {"rounds": 7, "calls": 300},
    },
    "quick": {
        "sizes": (1_000, 1_000_000),
        "pytest": ["--benchmark-max-time=0.1", "--benchmark-min-rounds=20"],
        "rounds": 300,
        "single": {"n": 2_000, "repeats": 5},
        "growth_rounds": 10,
        "postgresql": {"n": 500, "repeats": 3},
        "concurrency": {"seconds": 0.4, "repeats": 5, "procs": [1, 4, 8]},
        "profile": {"quick": True},
        "flyte_sdk": {"rounds": 3, "calls": 100},
    },
    # For the test suite: every phase end to end on tiny inputs, no meaningful numbers.
    "smoke": {
        "sizes": (1_000, 2_000),
        "pytest": [
            "--benchmark-max-time=0.0005",
            "--benchmark-min-rounds=1",
            "--benchmark-calibration-precision=1",
        ],
        "rounds": 2,
        "single": {"n": 30, "repeats": 1},
        "growth_rounds": 1,
        "postgresql": {"n": 5, "repeats": 1},
        "concurrency": {"seconds": 0.05, "repeats": 1, "procs": [1, 2]},
        "profile": {"n": 20},
        "flyte_sdk": {"rounds": 1, "calls": 3},
    },
}

PHASES = ("per_op", "single", "postgresql", "concurrency", "profile", "flyte_sdk", "eviction")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _build(job: tuple[str, int]) -> str:
    kind, size = job
    return str(populate.cached(kind, size))


def ensure_databases(sizes: tuple[int, ...]) -> None:
    """Build the missing cached databases, two at a time (one per core)."""
    jobs = [(kind, size) for size in sizes for kind in populate.KINDS]
    missing = [job for job in jobs if not populate.cached_path(*job).exists()]
    if not missing:
        return
    _log(f"building {len(missing)} cached database(s) in {populate.cache_dir()} ...")
    import multiprocessing

    with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_build, missing))


def per_operation(sizes: tuple[int, ...], options: list[str], rounds: int) -> dict[str, Any]:
    """pytest-benchmark over bench_store.py and bench_keys.py; one row per benchmark."""
    with tempfile.TemporaryDirectory(prefix="flytecache-pytest-bench-") as tmp:
        out = Path(tmp) / "benchmarks.json"
        # Started from a pytest-xdist worker (the suite's smoke run), the child must not think
        # it is one: pytest-benchmark disables itself under xdist.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
        env = {
            **inherited,
            "FLYTECACHE_BENCH_SIZES": ",".join(str(s) for s in sizes),
            "FLYTECACHE_BENCH_ROUNDS": str(rounds),
            "FLYTECACHE_BENCH_CACHE": str(populate.cache_dir()),
        }
        command = [
            sys.executable,
            "-m",
            "pytest",
            "benchmarks/bench_store.py",
            "benchmarks/bench_keys.py",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-q",
            "--benchmark-only",
            f"--benchmark-json={out}",
            "--benchmark-columns=median,ops,rounds",
            "--benchmark-sort=name",
            *options,
        ]
        result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SystemExit(
                f"pytest-benchmark failed ({result.returncode}):\n{result.stdout[-6000:]}\n"
                f"{result.stderr[-3000:]}"
            )
        data = json.loads(out.read_text())
    rows = []
    for bench in data["benchmarks"]:
        info = bench.get("extra_info") or {}
        stats = bench["stats"]
        rows.append(
            {
                "name": bench["name"],
                "op": info.get("op", bench["name"]),
                "impl": info.get("impl", ""),
                "size": info.get("size", 0),
                "median_us": stats["median"] * 1e6,
                "mean_us": stats["mean"] * 1e6,
                "stddev_us": stats["stddev"] * 1e6,
                "iqr_us": stats["iqr"] * 1e6,
                "rounds": stats["rounds"],
            }
        )
    return {"options": options, "rounds_for_setup_benchmarks": rounds, "benchmarks": rows}


def flyte_sdk_hits(rounds: int, calls: int) -> dict[str, Any] | None:
    """benchmarks/flyte_sdk.py in its own process (it installs into the SDK and moves HOME);
    ``None`` when the Flyte SDK is not installed."""
    import importlib.util

    if importlib.util.find_spec("flyte") is None:
        _log("  flyte is not installed: skipped (pip install -e '.[flyte]')")
        return None
    command = [sys.executable, "-m", "benchmarks.flyte_sdk", "--rounds", str(rounds)]
    result = subprocess.run(
        [*command, "--calls", str(calls)], cwd=ROOT, capture_output=True, text=True
    )
    if result.returncode != 0:
        raise SystemExit(f"benchmarks.flyte_sdk failed:\n{result.stderr[-3000:]}")
    data: dict[str, Any] = json.loads(result.stdout)
    return data


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--quick", action="store_true", help="the whole matrix, short cells")
    group.add_argument("--smoke", action="store_true", help="tiny inputs (for the test suite)")
    parser.add_argument("--targets", help="concurrency targets (default: all but serve-noop)")
    parser.add_argument(
        "--skip", default="", help=f"comma-separated phases to skip: {','.join(PHASES)}"
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=OUT_DIR,
        help="results/<stamp>.json and docs/ (pages, plots) go here (default: benchmarks/out)",
    )
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    config = MODES[mode]
    skip = {s for s in args.skip.split(",") if s}
    unknown = skip - set(PHASES)
    if unknown:
        parser.error(f"unknown phases {sorted(unknown)}; choose from {', '.join(PHASES)}")
    started = time.perf_counter()
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    results: dict[str, Any] = {
        "meta": {
            "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
            "mode": mode,
            "machine": machine(),
            "revision": revision(),
            "results_file": f"{stamp}.json",
            "phases_s": {},
        }
    }
    phases = results["meta"]["phases_s"]

    def phase(name: str) -> float:
        _log(f"[{time.perf_counter() - started:6.1f} s] {name} ...")
        return time.perf_counter()

    from benchmarks import concurrency, pg_cells, profile_store, report, store_harness, targets
    from benchmarks._postgres import databases

    sizes = tuple(config["sizes"])
    t = phase("databases")
    ensure_databases(sizes)
    phases["databases"] = time.perf_counter() - t
    with contextlib.ExitStack() as stack:
        pg: Any = None
        if {"postgresql", "concurrency"} - skip:
            pg = stack.enter_context(databases())
        if "per_op" not in skip:
            t = phase("per-operation latency (pytest-benchmark)")
            results["per_op"] = per_operation(sizes, config["pytest"], config["rounds"])
            phases["per_op"] = time.perf_counter() - t
        if "single" not in skip:
            t = phase("single process: get/put per CPU-second")
            results["single"] = store_harness.single(**config["single"])
            phases["single"] = time.perf_counter() - t
            t = phase("get latency growth by size, bytes per entry")
            results["growth"] = store_harness.growth(
                (min(sizes), max(sizes)), rounds=config["growth_rounds"]
            )
            results["footprint"] = store_harness.footprint(max(sizes))
            phases["growth"] = time.perf_counter() - t
        if "postgresql" not in skip:
            t = phase("PostgreSQL: flytecache vs raw psycopg")
            results["postgresql"] = pg_cells.run(pg, **config["postgresql"])
            phases["postgresql"] = time.perf_counter() - t
        if "concurrency" not in skip:
            t = phase("processes × workloads × targets")
            measured = (
                args.targets.split(",") if args.targets else list(concurrency.DEFAULT_TARGETS)
            )
            results["concurrency"] = concurrency.run(
                targets=measured, log=_log, pg=pg, **config["concurrency"]
            )
            problems = results["concurrency"]["problems"]
            if problems:
                raise SystemExit("checks after timing failed: " + "; ".join(problems))
            phases["concurrency"] = time.perf_counter() - t
    if "profile" not in skip:
        t = phase("profiles")
        results["profile"] = profile_store.run(**config["profile"])
        phases["profile"] = time.perf_counter() - t
    if "flyte_sdk" not in skip:
        t = phase("a cache hit in Flyte 2 SDK local runs")
        results["flyte_sdk"] = flyte_sdk_hits(**config["flyte_sdk"])
        phases["flyte_sdk"] = time.perf_counter() - t
    if "eviction" not in skip:
        from benchmarks import eviction

        t = phase("size limits with eviction")
        results["eviction"] = eviction.run(mode)
        phases["eviction"] = time.perf_counter() - t
    results["targets"] = targets.evaluate(results)
    results["meta"]["loadavg_end"] = list(os.getloadavg())
    # The page reports the run's duration, so it is taken before rendering (~5 s of plots).
    results["meta"]["duration_s"] = time.perf_counter() - started
    path = args.out_dir / "results" / f"{stamp}.json"
    write_json(path, results)
    phase("report")
    page = report.render(results, args.out_dir / "docs")
    _log(f"[{time.perf_counter() - started:6.1f} s] done: {path} and {page}")
    for target in results["targets"]:
        print(
            f"{target['verdict']:4}  {target['target']:<66} {target['value']:6.2f} "
            f"[{target['low']:.2f}–{target['high']:.2f}]  ({target['measured']})"
        )
    return path


if __name__ == "__main__":
    main()
