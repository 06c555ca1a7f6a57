"""A cache hit in a Flyte 2 SDK local run: flytecache against the SDK's own local cache.

    python -m benchmarks.flyte_sdk [--rounds 7] [--calls 300]

One parent task awaits the same cached child ``calls`` times (every call after the first is a
hit) and times the loop from inside the task, so ``flyte.run``'s own set-up is not counted.
Contenders, interleaved in rotating order each round: ``sdk`` (the SDK's stock SQLite cache),
``flytecache`` (``flyte_sdk.install`` on a SQLite file), and ``uncached`` (the same child with
caching disabled: the controller's per-call cost with a trivial task body, for reference).
Prints JSON: per contender the median and min/max of the per-call microseconds over rounds, and
the ratio flytecache / sdk (lower is faster). Runs with HOME in a temporary directory.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

CONTENDERS = ("sdk", "flytecache", "uncached")


def run(rounds: int = 7, calls: int = 300) -> dict[str, Any]:
    """Measure in this process (it changes HOME and installs/uninstalls the integration)."""
    with tempfile.TemporaryDirectory(prefix="flytecache-bench-sdk-") as tmp:
        os.environ["HOME"] = tmp
        return _measure(rounds, calls, os.path.join(tmp, "flytecache.db"))


def _measure(rounds: int, calls: int, db: str) -> dict[str, Any]:
    import flyte

    from flytecache.integrations import flyte_sdk

    env = flyte.TaskEnvironment(name="bench")

    @env.task(cache="auto")
    async def cached(x: int) -> int:
        return x * x

    @env.task(cache="disable")
    async def uncached(x: int) -> int:
        return x * x

    @env.task
    async def loop(calls: int, cache: bool) -> float:
        child = cached if cache else uncached
        await child(x=7)  # the first call may be a miss
        started = time.perf_counter()
        for _ in range(calls):
            await child(x=7)
        return (time.perf_counter() - started) / calls * 1e6

    flyte.init()
    per_call: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    try:
        for round_index in range(rounds):
            shift = round_index % len(CONTENDERS)
            for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
                if name == "flytecache":
                    flyte_sdk.install(db)
                else:
                    flyte_sdk.uninstall()
                result = flyte.run(loop, calls=calls, cache=name != "uncached")
                per_call[name].append(float(result.outputs()[0]))
    finally:
        flyte_sdk.uninstall()
    summary = {
        name: {
            "median_us": statistics.median(values),
            "min_us": min(values),
            "max_us": max(values),
            "rounds": values,
        }
        for name, values in per_call.items()
    }
    return {
        "calls_per_round": calls,
        "per_call": summary,
        "ratio_flytecache_vs_sdk": summary["flytecache"]["median_us"] / summary["sdk"]["median_us"],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args(argv)
    results = run(rounds=args.rounds, calls=args.calls)
    json.dump(results, sys.stdout, indent=2)
    print()
    return results


if __name__ == "__main__":
    main()
