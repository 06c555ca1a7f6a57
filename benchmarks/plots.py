"""The figures of ``docs/benchmarks.md``: throughput and latency by processes, latency by size.

Drawn with matplotlib's Agg backend (no display needed) into ``docs/img/``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks._results import OP_LABELS, TARGET_LABELS, cell, per_op_sizes, per_op_us

COLORS = {
    "flytecache-sqlite": "#1f77b4",
    "raw-sqlite3": "#7f7f7f",
    "diskcache": "#ff7f0e",
    "flytecache-postgresql": "#2ca02c",
    "serve": "#9467bd",
    "serve-noop": "#c5b0d5",
}


def draw(results: dict[str, Any], img_dir: Path) -> dict[str, str]:
    """Draw every figure the results have data for; returns figure name → file in ``img_dir``.

    Names: ``throughput-put``, ``throughput-reserve``, ``latency`` (concurrency) and ``size``
    (per-operation latency by database size).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    conc = results.get("concurrency") or {}
    cells = conc.get("cells", [])
    if cells:
        procs = conc.get("procs", [])
        levels = sorted({c["contention"] for c in cells})
        targets = [t for t in conc.get("targets", []) if any(c["target"] == t for c in cells)]
        for op in ("put", "reserve"):
            if any(c["op"] == op for c in cells):
                fig = _throughput(plt, results, op, targets, levels, procs)
                made[f"throughput-{op}"] = _save(plt, fig, img_dir, f"bench-throughput-{op}.png")
        ops = [op for op in ("put", "reserve") if any(c["op"] == op for c in cells)]
        fig = _latency(plt, results, ops, targets, levels, procs)
        made["latency"] = _save(plt, fig, img_dir, "bench-latency.png")
    sizes = per_op_sizes(results)
    if sizes:
        made["size"] = _save(plt, _by_size(plt, results, sizes), img_dir, "bench-size.png")
    return made


def _save(plt: Any, fig: Any, img_dir: Path, name: str) -> str:
    fig.savefig(img_dir / name, dpi=90)
    plt.close(fig)
    return name


def _keys(level: str) -> str:
    return "10 hot keys" if level == "hot" else "distinct keys"


def _throughput(
    plt: Any,
    results: dict[str, Any],
    op: str,
    targets: list[str],
    levels: list[str],
    procs: list[int],
) -> Any:
    """ops/s by processes, one panel per contention level, one line per target (log scale)."""
    fig, axes = plt.subplots(1, len(levels), figsize=(5.2 * len(levels), 3.8), squeeze=False)
    for ax, level in zip(axes[0], levels, strict=True):
        for target in targets:
            ys = [cell(results, target, op, level, n) for n in procs]
            if not any(ys):
                continue
            ax.plot(
                procs,
                [y["ops_per_s"] if y else math.nan for y in ys],
                marker="o",
                label=TARGET_LABELS[target],
                color=COLORS[target],
                linestyle="--" if target in ("raw-sqlite3", "serve-noop") else "-",
            )
        ax.set_title(f"{op}: {_keys(level)}")
        ax.set_xlabel("processes")
        ax.set_xticks(procs)
        ax.set_yscale("log")
        ax.set_ylabel("ops/s (log)")
        ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def _latency(
    plt: Any,
    results: dict[str, Any],
    ops: list[str],
    targets: list[str],
    levels: list[str],
    procs: list[int],
) -> Any:
    """p99 (solid) and p50 (dotted) by processes: a row per op, a column per contention level."""
    fig, axes = plt.subplots(
        len(ops), len(levels), figsize=(5.2 * len(levels), 3.4 * len(ops)), squeeze=False
    )
    for row, op in enumerate(ops):
        for col, level in enumerate(levels):
            ax = axes[row][col]
            for target in targets:
                ys = [cell(results, target, op, level, n) for n in procs]
                if not any(ys):
                    continue
                color = COLORS[target]
                ax.plot(
                    procs,
                    [y["p99_ms"] if y else math.nan for y in ys],
                    marker="o",
                    color=color,
                    label=f"{TARGET_LABELS[target]} p99",
                )
                ax.plot(
                    procs,
                    [y["p50_ms"] if y else math.nan for y in ys],
                    marker=".",
                    linestyle=":",
                    color=color,
                )
            ax.set_title(f"{op} latency: {_keys(level)}")
            ax.set_xlabel("processes")
            ax.set_xticks(procs)
            ax.set_yscale("log")
            ax.set_ylabel("ms (log); solid p99, dotted p50")
            ax.grid(True, which="both", alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))
    return fig


def _by_size(plt: Any, results: dict[str, Any], sizes: list[int]) -> Any:
    """Median µs per call by database size, a panel per operation, flytecache and its peers."""
    ops = ["get_hit", "get_miss", "put_new", "put_overwrite", "reserve_new", "release"]
    fig, axes = plt.subplots(1, len(ops), figsize=(2.6 * len(ops), 3.4), squeeze=False)
    for ax, op in zip(axes[0], ops, strict=True):
        for impl, color, style in (
            ("flytecache", COLORS["flytecache-sqlite"], "-"),
            ("raw", COLORS["raw-sqlite3"], "--"),
            ("diskcache", COLORS["diskcache"], "-"),
        ):
            ys = [per_op_us(results, op, impl, s) for s in sizes]
            if all(math.isnan(y) for y in ys):
                continue
            ax.plot(sizes, ys, marker="o", color=color, linestyle=style, label=impl)
        ax.set_xscale("log")
        ax.set_title(OP_LABELS[op], fontsize=9)
        ax.set_xlabel("entries")
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("median µs per call")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
