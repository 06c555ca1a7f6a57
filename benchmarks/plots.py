"""The figures of ``docs/benchmarks.md``, one point each, drawn with matplotlib's Agg backend.

* ``single`` — one process: gets and puts per CPU-second, flytecache next to its peers;
* ``processes`` — the mixed workload's throughput as processes are added, per deployment;
* ``latency`` — p50 and p99 latency per call of that workload at 4 processes, per deployment.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from benchmarks._results import CONTENDER_LABELS, TARGET_LABELS, cell

COLORS = {
    "flytecache-sqlite": "#1f77b4",
    "serve": "#9467bd",
    "flytecache-postgresql": "#2ca02c",
    "limit-sqlite": "#7f7f7f",
    "limit-postgresql": "#bcbd22",
    "diskcache": "#ff7f0e",
    "serve-noop": "#c5b0d5",
    "flytecache": "#1f77b4",
    "limit": "#7f7f7f",
    "sdk": "#d62728",
}
DEPLOYMENTS = (
    "flytecache-sqlite",
    "serve",
    "flytecache-postgresql",
    "limit-sqlite",
    "diskcache",
)
"""The concurrency targets the user page plots: flytecache three ways, the limit, one peer."""
LATENCY_PROCS = 4


def draw(results: dict[str, Any], img_dir: Path) -> dict[str, str]:
    """Draw every figure the results have data for; returns figure name → file in ``img_dir``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img_dir.mkdir(parents=True, exist_ok=True)
    made: dict[str, str] = {}
    if results.get("single"):
        made["single"] = _save(plt, _single(plt, results["single"]), img_dir, "bench-single.png")
    conc = results.get("concurrency") or {}
    if any(c["workload"] == "mixed" for c in conc.get("cells", [])):
        fig = _processes(plt, results)
        made["processes"] = _save(plt, fig, img_dir, "bench-processes.png")
        fig = _latency(plt, results)
        made["latency"] = _save(plt, fig, img_dir, "bench-latency.png")
    return made


def _save(plt: Any, fig: Any, img_dir: Path, name: str) -> str:
    fig.savefig(img_dir / name, dpi=100)
    plt.close(fig)
    return name


def _single(plt: Any, single: dict[str, Any]) -> Any:
    """Horizontal bars: calls per CPU-second of get and put, a bar per contender, min–max."""
    ops = [("get", "get (hit)"), ("put", "put (new key)")]
    names = [n for n in ("flytecache", "limit", "diskcache", "sdk") if n in single["get"]["rates"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), sharey=True)
    for ax, (op, title) in zip(axes, ops, strict=True):
        rates = single[op]["rates"]
        ys = list(range(len(names)))[::-1]
        values = [rates[n]["median"] / 1000 for n in names]
        low = [(rates[n]["median"] - rates[n]["min"]) / 1000 for n in names]
        high = [(rates[n]["max"] - rates[n]["median"]) / 1000 for n in names]
        ax.barh(
            ys,
            values,
            xerr=[low, high],
            color=[COLORS[n] for n in names],
            capsize=3,
        )
        for y, v, n in zip(ys, values, names, strict=True):
            ax.text(rates[n]["max"] / 1000, y, f"  {v:,.0f}k", va="center", fontsize=8)
        ax.set_yticks(ys, [CONTENDER_LABELS[n] for n in names])
        ax.set_title(title)
        ax.set_xlabel("thousand calls per CPU-second (higher is better)")
        ax.set_xlim(0, max(rates[n]["max"] for n in names) / 1000 * 1.3)
        ax.grid(True, axis="x", alpha=0.3)
    fig.suptitle("One process on SQLite: what a call costs (bars: median; whiskers: min–max)")
    fig.tight_layout()
    return fig


def _targets(results: dict[str, Any]) -> list[str]:
    active = results["concurrency"]["targets"]
    return [t for t in DEPLOYMENTS if t in active]


def _processes(plt: Any, results: dict[str, Any]) -> Any:
    """ops/s of the mixed workload by processes, a line per deployment (log scale)."""
    procs = results["concurrency"]["procs"]
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for target in _targets(results):
        ys = [cell(results, target, "mixed", n) for n in procs]
        ax.plot(
            procs,
            [y["ops_per_s"] if y else math.nan for y in ys],
            marker="o",
            label=TARGET_LABELS[target],
            color=COLORS[target],
            linestyle="--" if target.startswith("limit") else "-",
        )
    ax.set_title("90 % get / 10 % put, all processes on one database")
    ax.set_xlabel("processes (2 CPU cores)")
    ax.set_xticks(procs)
    ax.set_yscale("log")
    ax.set_ylabel("operations per second, all processes (log)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    return fig


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}" if value >= 1 else f"{value:.2g}"


def latency_procs(results: dict[str, Any]) -> int:
    """The process count the latency figure shows: LATENCY_PROCS, or the most measured below."""
    procs = results["concurrency"]["procs"]
    return LATENCY_PROCS if LATENCY_PROCS in procs else max(procs)


def _latency(plt: Any, results: dict[str, Any]) -> Any:
    """p50 and p99 ms per call of the mixed workload at 4 processes (log scale)."""
    import numpy as np
    from matplotlib.patches import Patch

    n = latency_procs(results)
    targets = [t for t in _targets(results) if cell(results, t, "mixed", n)]
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    xs = np.arange(len(targets))
    width = 0.38
    for offset, field, alpha, hatch in (
        (-width / 2, "p50_ms", 1.0, ""),
        (width / 2, "p99_ms", 0.35, "//"),
    ):
        values = [cell(results, t, "mixed", n)[field] for t in targets]
        ax.bar(
            xs + offset,
            values,
            width,
            color=[COLORS[t] for t in targets],
            alpha=alpha,
            hatch=hatch,
            edgecolor="black",
            linewidth=0.5,
        )
        for x, v in zip(xs + offset, values, strict=True):
            ax.text(x, v, _ms(v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(xs, [TARGET_LABELS[t].replace(" (", "\n(") for t in targets], fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("milliseconds per call (log, lower is better)")
    ax.set_title(f"Latency per call, 90 % get / 10 % put, {n} processes at once")
    ax.legend(
        handles=[
            Patch(facecolor="#666666", edgecolor="black", label="median (p50)"),
            Patch(
                facecolor="#666666",
                alpha=0.35,
                hatch="//",
                edgecolor="black",
                label="99th percentile (p99)",
            ),
        ],
        fontsize=8,
        frameon=False,
        loc="upper left",
    )
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    return fig
