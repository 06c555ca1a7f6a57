"""Does the web view cost the RPC path anything? benchmarks/bench_server.py, interleaved.

Runs the server benchmark ``--rounds`` times with ``flytecache serve`` started with the web
view (the default) and ``--rounds`` times without it (``FLYTECACHE_UI=false``), alternating,
and prints per cell the median requests/s of each with the spread (min–max), the ratio of
the medians, and the medians of server/ceiling (bench_server's no-op server measured in the
same round: it cancels what other load on the machine does to a round). Nobody browses
meanwhile: this measures what serving the view costs an RPC that does not use it (the route
check, the app's construction, memory), which should be nothing.

    python -m benchmarks.bench_ui_overhead [--rounds 5] [--seconds 2] [--clients 1,4]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from benchmarks.bench_server import run


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--ops", default="get,put,reserve")
    args = parser.parse_args(argv)
    clients = [int(c) for c in args.clients.split(",")]
    ops = args.ops.split(",")
    samples: dict[tuple[str, int, str], list[float]] = {}
    ratios: dict[tuple[str, int, str], list[float]] = {}
    previous = os.environ.get("FLYTECACHE_UI")
    try:
        for round_ in range(args.rounds):
            # Alternate which goes first, so a drift over the run hits both alike.
            order = ("true", "false") if round_ % 2 == 0 else ("false", "true")
            for ui in order:
                os.environ["FLYTECACHE_UI"] = ui
                print(f"round {round_ + 1}/{args.rounds}, web view {ui}", flush=True)
                with tempfile.TemporaryDirectory(prefix="flytecache-bench-ui-") as tmp:
                    for row in run(args.seconds, clients, ops, Path(tmp), with_limit=False):
                        key = (row["op"], row["clients"], ui)
                        samples.setdefault(key, []).append(row["server"])
                        ratios.setdefault(key, []).append(row["ratio"])
    finally:
        if previous is None:
            os.environ.pop("FLYTECACHE_UI", None)
        else:
            os.environ["FLYTECACHE_UI"] = previous
    print(
        f"\n{'op':<8} {'clients':>7} {'with view':>22} {'without view':>22} {'ratio':>6}"
        f" {'/ceiling with':>14} {'without':>8}"
    )
    for op in ops:
        for n in clients:
            with_ui, without = samples[(op, n, "true")], samples[(op, n, "false")]
            a, b = statistics.median(with_ui), statistics.median(without)
            print(
                f"{op:<8} {n:>7} {a:>9,.0f} ({min(with_ui):,.0f}–{max(with_ui):,.0f})"
                f" {b:>9,.0f} ({min(without):,.0f}–{max(without):,.0f}) {a / b:>6.3f}"
                f" {statistics.median(ratios[(op, n, 'true')]):>14.2f}"
                f" {statistics.median(ratios[(op, n, 'false')]):>8.2f}"
            )


if __name__ == "__main__":
    main()
