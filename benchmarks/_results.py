"""Reading a results document: the lookups and display names targets, plots and pages share.

A results document is what ``benchmarks.run`` writes to ``benchmarks/out/results/<stamp>.json``
(``make bench-publish`` copies the one it publishes to ``benchmarks/results/``).
"""

from __future__ import annotations

from typing import Any

from benchmarks._common import spread

TARGET_LABELS = {
    "flytecache-sqlite": "flytecache library (SQLite)",
    "limit-sqlite": "the limit (SQLite)",
    "diskcache": "diskcache",
    "flytecache-postgresql": "flytecache library (PostgreSQL)",
    "limit-postgresql": "raw psycopg (PostgreSQL)",
    "serve": "flytecache serve (SQLite)",
    "serve-noop": "no-op server (ceiling)",
}
"""Concurrency targets as the pages and the legends name them."""

CONTENDER_LABELS = {
    "flytecache": "flytecache (SQLite)",
    "limit": "the limit (SQLite)",
    "diskcache": "diskcache",
    "sdk": "Flyte 2 SDK local cache",
    "psycopg": "raw psycopg",
}
"""Single-process contenders as the pages and legends name them."""

WORKLOAD_LABELS = {
    "reserve": "reservation cycle, 10 hot keys",
    "mixed": "90 % get / 10 % put",
    "put": "put, new keys",
}

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
"""Per-operation benchmarks, in the order the details page lists them."""


def cell(results: dict[str, Any], target: str, workload: str, procs: int) -> Any:
    """The concurrency cell of ``target`` running ``workload`` on ``procs`` processes, or None."""
    for found in (results.get("concurrency") or {}).get("cells", []):
        if (found["target"], found["workload"], found["procs"]) == (target, workload, procs):
            return found
    return None


def paired(a: Any, b: Any, field: str = "samples") -> dict[str, float]:
    """Median and min–max of per-repeat ratios a/b (cells measured back to back)."""
    if a is None or b is None:
        return spread([])
    return spread([x / y for x, y in zip(a[field], b[field], strict=False) if y])


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
