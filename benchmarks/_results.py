"""Reading a results document: the lookups and display names targets, plots and page share.

A results document is what ``benchmarks.run`` writes to ``benchmarks/results/<stamp>.json``.
"""

from __future__ import annotations

from typing import Any

from benchmarks._common import median

FC_PG = "flytecache-postgresql"

TARGET_LABELS = {
    "flytecache-sqlite": "flytecache (SQLite)",
    "raw-sqlite3": "raw sqlite3",
    "diskcache": "diskcache",
    "flytecache-postgresql": "flytecache (PostgreSQL)",
    "serve": "flytecache serve",
    "serve-noop": "no-op server (ceiling)",
}
"""Concurrency targets as the page and the legends name them."""

OP_LABELS = {
    "get_hit": "get (hit)",
    "get_miss": "get (miss)",
    "put_new": "put (new key)",
    "put_overwrite": "put (overwrite)",
    "reserve_new": "reserve (new lease)",
    "reserve_extend": "reserve (extend own)",
    "reserve_held": "reserve (held by other)",
    "release": "release",
    "lease_cycle": "reserve + release",
    "client_get": "CatalogClient.get (key + get)",
    "cache_key": "cache_key (20 inputs)",
}
"""Per-operation benchmarks, in the order the page lists them."""


def cell(results: dict[str, Any], target: str, op: str, level: str, procs: int) -> Any:
    """The concurrency cell of ``target`` doing ``op`` at ``level`` contention, or None."""
    for found in results.get("concurrency", {}).get("cells", []):
        if (found["target"], found["op"], found["contention"], found["procs"]) == (
            target,
            op,
            level,
            procs,
        ):
            return found
    return None


def paired_ratio(a: Any, b: Any, field: str = "samples") -> float:
    """Median of per-repeat ratios (cells measured back to back), NaN if either is missing."""
    if a is None or b is None:
        return float("nan")
    pairs = [x / y for x, y in zip(a[field], b[field], strict=False) if y]
    return median(pairs)


def per_op_us(results: dict[str, Any], op: str, impl: str, size: int) -> float:
    """The median µs per call of a per-operation benchmark, NaN if it was not run."""
    for row in (results.get("per_op") or {}).get("benchmarks", []):
        if (row["op"], row["impl"], row["size"]) == (op, impl, size):
            return float(row["median_us"])
    return float("nan")


def per_op_sizes(results: dict[str, Any]) -> list[int]:
    """The database sizes the per-operation benchmarks ran at, smallest first."""
    rows = (results.get("per_op") or {}).get("benchmarks", [])
    return sorted({r["size"] for r in rows if r["size"]})
