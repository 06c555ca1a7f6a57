"""The performance targets: each one evaluated from a results document, PASS or MISS.

A target compares flytecache with a baseline measured in the same run (raw sqlite3, diskcache,
the server's no-op ceiling) or with itself at another database size, so the verdict does not
depend on how fast or how busy the machine was.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks._common import median
from benchmarks._results import FC_PG, cell, paired_ratio, per_op_sizes, per_op_us


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every issue-7 target with its measured value, ratio and PASS/MISS."""
    targets: list[dict[str, Any]] = []

    def add(key: str, name: str, measured: str, value: float, goal: float, *, lower: bool) -> None:
        if math.isnan(value):
            verdict = "n/a"
        else:
            verdict = "PASS" if (value <= goal if lower else value >= goal) else "MISS"
        targets.append(
            {
                "key": key,
                "target": name,
                "measured": measured,
                "value": value,
                "goal": goal,
                "direction": "<=" if lower else ">=",
                "verdict": verdict,
            }
        )

    single = results.get("single", {})
    if single:
        put, get = single["put"], single["get"]
        rates = put["rates"]
        add(
            "put_vs_raw",
            "put ≥ 0.5× raw sqlite3",
            f"{rates['flytecache']:,.0f} vs {rates['raw']:,.0f} puts/s",
            put["ratios"]["raw"],
            0.5,
            lower=False,
        )
        add(
            "put_vs_diskcache",
            "put ≥ 1.0× diskcache.Cache.set",
            f"{rates['flytecache']:,.0f} vs {rates['diskcache']:,.0f} puts/s",
            put["ratios"]["diskcache"],
            1.0,
            lower=False,
        )
        rates = get["rates"]
        add(
            "get_vs_raw",
            "get (hit) ≥ 0.35× raw sqlite3",
            f"{rates['flytecache']:,.0f} vs {rates['raw']:,.0f} gets/s",
            get["ratios"]["raw"],
            0.35,
            lower=False,
        )
        add(
            "get_vs_diskcache",
            "get (hit) ≥ 0.8× diskcache.Cache.get",
            f"{rates['flytecache']:,.0f} vs {rates['diskcache']:,.0f} gets/s",
            get["ratios"]["diskcache"],
            0.8,
            lower=False,
        )
    if results.get("concurrency"):
        ours = cell(results, "flytecache-sqlite", "reserve", "hot", 4)
        what = "reservation, 4 processes × 10 hot keys"
        for peer, key, name, goal in (
            ("raw-sqlite3", "reserve_vs_raw", f"{what} ≥ 0.5× raw", 0.5),
            ("diskcache", "reserve_vs_diskcache", f"{what} ≥ 1.0× diskcache.Lock", 1.0),
        ):
            other = cell(results, peer, "reserve", "hot", 4)
            measured = (
                f"{ours['ops_per_s']:,.0f} vs {other['ops_per_s']:,.0f} cycles/s"
                if ours and other
                else "not measured"
            )
            add(key, name, measured, paired_ratio(ours, other), goal, lower=False)
    scaling = results.get("scaling")
    if scaling:
        small, big = scaling["sizes"]
        for op, label in (("get_hit", "get"), ("put_new", "put")):
            a = scaling["ops"][op][str(small)]["median_us"]
            b = scaling["ops"][op][str(big)]["median_us"]
            add(
                f"{op}_scaling",
                f"{label} latency at {big:,} entries ≤ 1.5× at {small:,}",
                f"median {b:.1f} µs vs {a:.1f} µs (interleaved)",
                b / a,
                1.5,
                lower=True,
            )
    elif results.get("per_op"):
        sizes = per_op_sizes(results)
        if sizes:
            small, big = sizes[0], sizes[-1]
            for op, label in (("get_hit", "get"), ("put_new", "put")):
                a = per_op_us(results, op, "flytecache", small)
                b = per_op_us(results, op, "flytecache", big)
                add(
                    f"{op}_scaling",
                    f"{label} latency at {big:,} entries ≤ 1.5× at {small:,}",
                    f"{b:.1f} µs vs {a:.1f} µs",
                    b / a if a == a and b == b and small != big else float("nan"),
                    1.5,
                    lower=True,
                )
    if results.get("concurrency"):
        cells = [
            c
            for c in results["concurrency"]["cells"]
            if c["procs"] == 8 and c["target"] in ("flytecache-sqlite", FC_PG, "serve")
        ]
        busy = sum(c["busy"] for c in cells)
        other = sum(c["errors"] for c in cells)
        add(
            "busy_8p",
            "0 busy errors at 8 processes",
            f"{busy} busy, {other} other errors in {len(cells)} cells "
            "(flytecache on SQLite and PostgreSQL, serve; all repeats)"
            if cells
            else "not measured",
            float(busy + other) if cells else float("nan"),
            0,
            lower=True,
        )
        ratios = []
        for c in results["concurrency"]["cells"]:
            if c["target"] != "serve":
                continue
            ceiling = cell(results, "serve-noop", c["op"], c["contention"], c["procs"])
            if ceiling:
                ratio = paired_ratio(c, ceiling, "requests_samples")
                ratios.append((ratio, c["op"], c["contention"], c["procs"]))
        if ratios:
            worst = min(ratios)
            per_op = ", ".join(
                f"{op} {median([r[0] for r in ratios if r[1] == op]):.2f}"
                for op in ("put", "reserve")
                if any(r[1] == op for r in ratios)
            )
            add(
                "server_vs_ceiling",
                f"server ≥ 0.6× its no-op ceiling (median of {len(ratios)} cells)",
                f"requests/s; median by op: {per_op}; "
                f"worst cell {worst[1]}/{worst[2]} ×{worst[3]}: {worst[0]:.2f}",
                median([r[0] for r in ratios]),
                0.6,
                lower=False,
            )
    return targets
