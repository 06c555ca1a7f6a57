"""The targets of issue #14, each evaluated from a results document: PASS or MISS.

Every target compares flytecache with a baseline measured in the same run (the limit, diskcache,
the Flyte SDK's cache, raw psycopg) or with the limit's own growth, so the verdict does not
depend on how fast or how busy the machine was. Each carries the median and the min–max of its
per-repeat ratios.
"""

from __future__ import annotations

import math
from typing import Any

from benchmarks._common import spread
from benchmarks._results import cell, paired, per_op_sizes, per_op_us

RESERVE_PROCS = (1, 4, 8)
MIXED_PROCS = 4


def evaluate(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Every issue-14 target with its measured ratio, spread and PASS/MISS."""
    targets: list[dict[str, Any]] = []

    def add(
        key: str, name: str, measured: str, value: dict[str, float], goal: float, *, lower: bool
    ) -> None:
        v = value["median"]
        if math.isnan(v):
            verdict = "n/a"
        else:
            verdict = "PASS" if (v <= goal if lower else v >= goal) else "MISS"
        targets.append(
            {
                "key": key,
                "target": name,
                "measured": measured,
                "value": v,
                "low": value["min"],
                "high": value["max"],
                "goal": goal,
                "direction": "<=" if lower else ">=",
                "verdict": verdict,
            }
        )

    single = results.get("single")
    if single:
        for op, goals in (
            ("put", (("limit", 0.7), ("diskcache", 1.2))),
            ("get", (("limit", 0.7), ("diskcache", 1.2), ("sdk", 2.0))),
        ):
            rates = single[op]["rates"]
            for peer, goal in goals:
                if peer not in single[op]["ratios"]:
                    continue
                add(
                    f"{op}_vs_{peer}",
                    f"{op} ≥ {goal}× {_PEER_NAMES[peer]}",
                    f"{rates['flytecache']['median']:,.0f} vs {rates[peer]['median']:,.0f} "
                    f"{op}s per CPU-second",
                    single[op]["ratios"][peer],
                    goal,
                    lower=False,
                )
    if results.get("concurrency"):
        for n in RESERVE_PROCS:
            ours = cell(results, "flytecache-sqlite", "reserve", n)
            limit = cell(results, "limit-sqlite", "reserve", n)
            add(
                f"reserve_vs_limit_{n}p",
                f"reservation cycle ≥ 0.7× the limit's lease, {n} process{'es' if n > 1 else ''}",
                f"{ours['ops_per_s']:,.0f} vs {limit['ops_per_s']:,.0f} cycles/s"
                if ours and limit
                else "not measured",
                paired(ours, limit),
                0.7,
                lower=False,
            )
        eight = cell(results, "flytecache-sqlite", "reserve", 8)
        add(
            "busy_8p",
            "0 busy errors at 8 processes (reservation cycle)",
            f"{eight['busy']} busy, {eight['errors']} other errors over all repeats"
            if eight
            else "not measured",
            spread([float(eight["busy"] + eight["errors"])] if eight else []),
            0,
            lower=True,
        )
        ours = cell(results, "flytecache-sqlite", "mixed", MIXED_PROCS)
        limit = cell(results, "limit-sqlite", "mixed", MIXED_PROCS)
        add(
            "mixed_vs_limit",
            f"mixed 90 % get / 10 % put ≥ 0.7× the limit, {MIXED_PROCS} processes",
            f"{ours['ops_per_s']:,.0f} vs {limit['ops_per_s']:,.0f} ops/s"
            if ours and limit
            else "not measured",
            paired(ours, limit),
            0.7,
            lower=False,
        )
    footprint = results.get("footprint")
    if footprint:
        ratio = footprint["ratio"]
        add(
            "bytes_per_entry",
            "bytes per entry ≤ 1.2× the limit",
            f"{footprint['flytecache']:,.0f} vs {footprint['limit']:,.0f} bytes "
            f"({footprint['entries']:,} entries, after a checkpoint)",
            {"median": ratio, "min": ratio, "max": ratio},
            1.2,
            lower=True,
        )
    growth = results.get("growth")
    if growth:
        small, big = growth["sizes"]
        ours, limit = growth["growth"]["flytecache"], growth["growth"]["limit"]
        add(
            "get_growth",
            f"get latency growth {small:,} → {big:,} entries ≤ the limit's own",
            f"flytecache ×{ours['median']:.2f}, the limit ×{limit['median']:.2f} "
            "(median per-call latency, interleaved)",
            growth["ratio"],
            1.0,
            lower=True,
        )
    pg = results.get("postgresql")
    if pg and "ratios" in pg:
        for op in ("get", "put", "reserve", "release"):
            rates = pg["rates"][op]
            add(
                f"pg_{op}_vs_psycopg",
                f"PostgreSQL {op} ≥ 0.8× raw psycopg (one statement)",
                f"{rates['flytecache']['median']:,.0f} vs {rates['psycopg']['median']:,.0f} "
                "calls/s (wall clock)",
                pg["ratios"][op],
                0.8,
                lower=False,
            )
    sizes = per_op_sizes(results)
    if sizes:
        key_us = per_op_us(results, "cache_key", "flytecache", 0)
        get_us = per_op_us(results, "get_hit", "flytecache", sizes[0])
        ratio = key_us / get_us
        add(
            "cache_key_vs_get",
            "a 20-input cache_key ≤ 1.5× a store get",
            f"{key_us:.1f} µs vs {get_us:.1f} µs (pytest-benchmark medians, {sizes[0]:,} entries)",
            {"median": ratio, "min": ratio, "max": ratio},
            1.5,
            lower=True,
        )
    _eviction_targets(results.get("eviction"), add)
    return targets


def _eviction_targets(evicting: dict[str, Any] | None, add: Any) -> None:
    """Issue #16: the limit kept while writing past it, and what eviction costs puts and gets."""
    if not evicting:
        return
    for key, backend in (("limit", "SQLite"), ("limit_postgresql", "PostgreSQL")):
        limit = evicting.get(key)
        if not limit or "note" in limit:
            continue
        peak = limit["peak_over_limit"]
        add(
            f"eviction_{key}",
            f"{backend}: payload ≤ 1.1× a {limit['limit_bytes'] // 1024**2} MiB limit at every "
            "sample",
            f"peak {limit['peak_bytes'] / 1024**2:.1f} MiB over {limit['samples']} samples while "
            f"writing {limit['written_bytes'] / 1024**2:.0f} MiB; batches held the write lock "
            f"{limit['batch_ms']['median']:.1f} ms median, {limit['batch_ms']['max']:.1f} ms max",
            {"median": peak, "min": peak, "max": peak},
            1.1,
            lower=True,
        )
    for op, goal, what in (("put", 0.8, "eviction on"), ("get", 0.9, "least-recently-used")):
        cell_ = evicting[op]
        modes = list(cell_["rates"])
        add(
            f"eviction_{op}",
            f"{op} throughput with {what} ≥ {goal}× without",
            " vs ".join(f"{cell_['rates'][m]['median']:,.0f}" for m in modes)
            + f" {op}s/s (CPU ratio {cell_['cpu_ratio']['median']:.2f})",
            cell_["ratio"],
            goal,
            lower=False,
        )


_PEER_NAMES = {
    "limit": "the limit",
    "diskcache": "diskcache",
    "sdk": "the Flyte SDK's local cache",
}
