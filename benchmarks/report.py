"""Render the benchmark pages and plots from a results document.

    python -m benchmarks.report [RESULTS.json] [--docs DIR]   # re-render (default: the latest
                                                             # run, into benchmarks/out/docs)
    python -m benchmarks.report --publish                    # make bench-publish

Two pages: ``benchmarks.md`` for a user choosing a deployment (what to expect, next to the
peers, three plots) and ``benchmarks-details.md`` for contributors (targets with verdicts,
every cell, profiles). Their text is hand-written Markdown in ``benchmarks/templates/``; this
module fills the ``$placeholders`` (``string.Template``) with the run's numbers and tables.

``--publish`` renders the latest run in ``benchmarks/out/results/`` into ``docs/`` and keeps
its JSON as the one published run in ``benchmarks/results/``. Nothing else writes to tracked
files.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from collections.abc import Iterable
from pathlib import Path
from string import Template
from typing import Any

from benchmarks import plots, targets
from benchmarks._common import OUT_DIR, RESULTS_DIR, ROOT
from benchmarks._results import (
    CONTENDER_LABELS,
    OP_LABELS,
    TARGET_LABELS,
    WORKLOAD_LABELS,
    cell,
    per_op_sizes,
    per_op_us,
)

DOCS = ROOT / "docs"
TEMPLATES = Path(__file__).resolve().parent / "templates"
IMG = "img"
PAGES = ("benchmarks.md", "benchmarks-details.md")

_FIGURE = re.compile(r"!\[[^\]]*\]\(" + IMG + r"/([^)]+)\)")


def _fill(name: str, values: dict[str, Any]) -> str:
    """Template ``name`` with every placeholder filled; a missing or unused value is an error."""
    template = Template((TEMPLATES / f"{name}.tmpl").read_text())
    wanted = set(template.get_identifiers())
    if wanted != set(values):
        raise ValueError(
            f"{name}.tmpl: placeholders {sorted(wanted)} do not match the values {sorted(values)}"
        )
    page = template.substitute(values)
    return re.sub(r"\n{3,}", "\n\n", page).strip("\n") + "\n"


# -- formatting -------------------------------------------------------------------------------


def _table(header: list[str], rows: Iterable[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _nan(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _fmt(value: Any, digits: int = 0) -> str:
    return "–" if _nan(value) else f"{value:,.{digits}f}"


def _sig(value: float) -> str:
    """Two or three significant digits, for ratios and latencies of any size."""
    if _nan(value):
        return "–"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) >= 1 else f"{value:.2g}"


def _spread(s: dict[str, float], digits: int = 2) -> str:
    if _nan(s["median"]):
        return "–"
    if s["min"] == s["max"]:
        return f"{s['median']:.{digits}f}"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}–{s['max']:.{digits}f}]"


def _rate(s: dict[str, float]) -> str:
    return f"{s['median']:,.0f} [{s['min']:,.0f}–{s['max']:,.0f}]"


# -- the user's page --------------------------------------------------------------------------


def _single_table(results: dict[str, Any]) -> str:
    single = results.get("single")
    if not single:
        return "_Not measured in this run._"
    names = list(single["get"]["rates"])
    rows = []
    for name in names:
        row = [CONTENDER_LABELS[name]]
        for op in ("get", "put"):
            rate = single[op]["rates"][name]["median"]
            row += [_sig(1e6 / rate), f"{rate:,.0f}"]
        rows.append(row)
    header = [
        "",
        "get (hit): µs of CPU",
        "gets per CPU-second",
        "put (new key): µs of CPU",
        "puts per CPU-second",
    ]
    note = ""
    if single.get("sdk_backend") is None:
        note = "\n\n_The Flyte SDK is not installed: its cache was not measured._"
    return _table(header, rows) + note


def _sdk_hit(results: dict[str, Any]) -> str:
    sdk = results.get("flyte_sdk")
    if not sdk:
        return ""
    per_call = sdk["per_call"]
    return (
        "In a Flyte 2 SDK local run (`flyte.run`), a task whose result is cached takes "
        f"**{per_call['flytecache']['median_us']:,.0f} µs** per call with flytecache installed "
        f"(`flyte_sdk.install`) and {per_call['sdk']['median_us']:,.0f} µs with the SDK's own "
        f"cache; the same task uncached takes {per_call['uncached']['median_us']:,.0f} µs. Most "
        "of a call is the SDK's own controller (wall clock, median of "
        f"{len(per_call['sdk']['rounds'])} rounds of {sdk['calls_per_round']} calls)."
    )


def _postgresql_user(results: dict[str, Any]) -> str:
    pg = results.get("postgresql")
    if not pg:
        return ""
    if "ratios" not in pg:
        return f"_PostgreSQL: {pg['note']}._"
    rows = []
    for op, label in (
        ("get", "get (hit)"),
        ("put", "put (new key)"),
        ("reserve", "reserve (new lease)"),
        ("release", "release"),
    ):
        rates = pg["rates"][op]
        ours, raw = rates["flytecache"]["median"], rates["psycopg"]["median"]
        rows.append([label, _sig(1e6 / ours), _sig(1e6 / raw), _sig(pg["ratios"][op]["median"])])
    return (
        "On PostgreSQL (a local server, same machine) a call waits for the server, so it is "
        "timed by the wall clock, in µs per call:\n\n"
        + _table(
            ["operation", "flytecache", "raw psycopg, one statement", "flytecache's speed ÷ it"],
            rows,
        )
    )


def _large(results: dict[str, Any]) -> str:
    growth, fp = results.get("growth"), results.get("footprint")
    if not growth or not fp:
        return ""
    small, big = growth["sizes"]
    ours, limit = growth["median_us"]["flytecache"], growth["median_us"]["limit"]
    return (
        f"**Large caches.** At {big:,} entries a get (hit, random key) takes "
        f"{ours[str(big)]:.0f} µs against {ours[str(small)]:.0f} µs at {small:,} (the limit: "
        f"{limit[str(big)]:.0f} against {limit[str(small)]:.0f} µs; wall clock, medians): "
        "a lookup walks deeper B-trees whose pages no longer fit in SQLite's page cache. "
        f"An entry takes {fp['flytecache']:,.0f} bytes on disk "
        f"({fp['flytecache'] * 1_000_000 / 1e9:.1f} GB per million entries), "
        f"the limit {fp['limit']:,.0f}, diskcache {fp['diskcache']:,.0f}."
    )


def _deployments_table(results: dict[str, Any]) -> str:
    conc = results.get("concurrency")
    if not conc:
        return "_Not measured in this run._"
    procs = conc["procs"]
    mid = plots.latency_procs(results)
    rows = []
    for target in conc["targets"]:
        mixed = [cell(results, target, "mixed", n) for n in procs]
        at = cell(results, target, "mixed", mid)
        put = cell(results, target, "put", mid)
        reserve = cell(results, target, "reserve", mid)
        rows.append(
            [
                TARGET_LABELS[target],
                *[_fmt(c["ops_per_s"]) if c else "–" for c in mixed],
                f"{_sig(at['p50_ms'])} · {_sig(at['p99_ms'])}" if at else "–",
                _fmt(put["ops_per_s"]) if put else "–",
                _fmt(reserve["ops_per_s"]) if reserve else "–",
            ]
        )
    header = [
        "",
        *[f"90/10 ops/s, {n} proc" for n in procs],
        f"90/10 latency p50 · p99 ms, {mid} procs",
        f"puts/s (new keys), {mid} procs",
        f"reservation cycles/s (10 hot keys), {mid} procs",
    ]
    notes = "".join(
        f"\n\n_{TARGET_LABELS.get(t, t)}: {note}._" for t, note in conc.get("notes", {}).items()
    )
    return _table(header, rows) + notes


# -- the contributor's page -------------------------------------------------------------------


def _targets_table(evaluated: list[dict[str, Any]]) -> str:
    rows = []
    for t in evaluated:
        if t["key"] == "busy_8p":
            shown = _fmt(t["value"])
        else:
            # A third decimal where two would round a miss onto its goal.
            digits = 3 if abs(t["value"] - t["goal"]) < 0.005 else 2
            shown = _fmt(t["value"], digits)
            if not (t["low"] == t["high"] or _nan(t["low"])):
                shown += f" [{t['low']:.2f}–{t['high']:.2f}]"
        goal = f"{t['direction']} {t['goal']:g}"
        rows.append([t["target"], t["measured"], shown, goal, f"**{t['verdict']}**"])
    return _table(["target", "measured", "ratio [min–max]", "goal", "verdict"], rows, "llrll")


def _single_detail(results: dict[str, Any]) -> str:
    single = results.get("single")
    if not single:
        return "_not run_"
    rows = []
    for op in ("get", "put"):
        r = single[op]
        for name, rate in r["rates"].items():
            ratio = "–" if name == "flytecache" else _spread(r["ratios"][name])
            rows.append([op, CONTENDER_LABELS[name], _rate(rate), ratio])
    header = ["op", "contender", "calls per CPU-second [min–max]", "flytecache ÷ it [min–max]"]
    return _table(header, rows, "llrr")


def _postgresql_detail(results: dict[str, Any]) -> str:
    pg = results.get("postgresql")
    if not pg:
        return "_not run_"
    if "ratios" not in pg:
        return f"_{pg['note']}._"
    rows = []
    for op, by in pg["rates"].items():
        rows.append([op, _rate(by["flytecache"]), _rate(by["psycopg"]), _spread(pg["ratios"][op])])
    intro = (
        f"Blocks of {pg['n']:,} calls, {pg['repeats']} repeats, {pg['version']}; "
        "1,000 entries in each database.\n\n"
    )
    header = ["op", "flytecache calls/s", "raw psycopg calls/s", "ratio [min–max]"]
    return intro + _table(header, rows, "lrrr")


def _growth(results: dict[str, Any]) -> str:
    growth = results.get("growth")
    if not growth:
        return "_not run_"
    small, big = growth["sizes"]
    rows = []
    for name in ("flytecache", "limit"):
        us = growth["median_us"][name]
        rows.append(
            [
                CONTENDER_LABELS[name],
                _fmt(us[str(small)], 1),
                _fmt(us[str(big)], 1),
                _spread(growth["growth"][name]),
            ]
        )
    intro = (
        f"Median µs per get (hit, uniformly random keys), all four databases open at once and "
        f"timed in alternating blocks of {growth['block']} calls, {growth['rounds']} rounds; "
        "growth per round, median [min–max].\n\n"
    )
    header = ["", f"µs @ {small:,}", f"µs @ {big:,}", "growth [min–max]"]
    return intro + _table(header, rows)


def _footprint(results: dict[str, Any]) -> str:
    fp = results.get("footprint")
    if not fp:
        return ""
    rows = [
        [CONTENDER_LABELS[name], _fmt(fp[name])] for name in ("flytecache", "limit", "diskcache")
    ]
    intro = (
        f"Bytes per entry: file size ÷ {fp['entries']:,} entries (with their 10 % leases), "
        "after a checkpoint.\n\n"
    )
    return intro + _table(["", "bytes per entry"], rows)


def _concurrency_detail(results: dict[str, Any]) -> str:
    conc = results.get("concurrency")
    if not conc:
        return "_not run_"
    procs = conc["procs"]
    parts = []
    for workload in conc["workloads"]:
        rows = []
        for target in conc["targets"]:
            found = [cell(results, target, workload, n) for n in procs]
            if not any(found):
                continue
            latency = " / ".join(
                f"{c['p50_ms']:.2f}·{c['p99_ms']:.1f}·{c['max_ms']:.0f}" if c else "–"
                for c in found
            )
            errors = sum(c["busy"] for c in found if c)
            other = sum(c["errors"] for c in found if c)
            shown = f"{errors}" + (f" (+{other} other)" if other else "")
            rows.append(
                [
                    TARGET_LABELS[target],
                    *[_fmt(c["ops_per_s"]) if c else "–" for c in found],
                    latency,
                    shown,
                ]
            )
        header = ["target", *[f"{n} proc" for n in procs], "latency by procs", "busy"]
        parts.append(
            f"**{WORKLOAD_LABELS[workload]}** — ops/s by processes\n\n"
            + _table(header, rows, "l" + "r" * len(procs) + "lr")
        )
    notes = [f"> {TARGET_LABELS.get(t, t)}: {n}" for t, n in conc.get("notes", {}).items()]
    return "\n\n".join(parts + notes)


def _per_op(results: dict[str, Any]) -> str:
    per_op = results.get("per_op")
    if not per_op:
        return "_not run_"
    rows_in = per_op["benchmarks"]
    sizes = per_op_sizes(results)
    ops = [op for op in OP_LABELS if any(r["op"] == op and r["size"] for r in rows_in)]
    header = ["operation"]
    for s in sizes:
        header += [f"flytecache {s:,}", f"limit {s:,}", f"diskcache {s:,}"]
    rows = []
    for op in ops:
        row = [OP_LABELS[op]]
        for s in sizes:
            row += [
                _fmt(per_op_us(results, op, impl, s), 1)
                for impl in ("flytecache", "limit", "diskcache")
            ]
        rows.append(row)
    keys = [r for r in rows_in if r["op"] == "cache_key"]
    key_line = ""
    if keys:
        key_line = "\n\n`cache_key` for a 20-input task (no database): " + ", ".join(
            f"{r['impl']} {_fmt(r['median_us'], 1)} µs" for r in keys
        )
    return "Median µs per call.\n\n" + _table(header, rows) + key_line


def _profile(results: dict[str, Any]) -> str:
    prof = results.get("profile")
    if not prof:
        return "_not run_"
    pages = prof["wal_pages_per_put"]
    parts = [
        "Pages written per put (WAL frames per commit, puts into the 1k database): "
        + ", ".join(f"{CONTENDER_LABELS[k]} **{v:.1f}**" for k, v in pages.items())
        + "."
    ]
    cost = prof.get("statement_cost_us")
    if cost:  # absent from results older than the measurement
        ours, bare, limit = (
            cost["flytecache"],
            cost["flytecache without secondary indexes"],
            cost["limit"],
        )

        def us(cell: dict[str, float]) -> str:
            return f"**{cell['median']:.1f}** [{cell['min']:.1f}–{cell['max']:.1f}]"

        parts.append(
            "A put's statement alone (CPU µs, run raw through `sqlite3` with its parameters "
            "built beforehand, interleaved blocks, median [min–max]): flytecache "
            f"{us(ours)}, the same schema without its two secondary indexes {us(bare)}, the "
            f"limit {us(limit)}. On the statement alone the limit ÷ flytecache is "
            f"{limit['median'] / ours['median']:.2f} with the indexes and "
            f"{limit['median'] / bare['median']:.2f} without them."
        )
    for op in ("get", "put"):
        rows = [
            [
                f"`{r['function']}`",
                f"{r['calls']:,}",
                f"{r['own_share']:.0%}",
                f"{r['cumulative_share']:.0%}",
            ]
            for r in prof["profile"][op]
        ]
        parts.append(
            f"cProfile of `CacheStore.{op}`, top functions by own time:\n\n"
            + _table(["function", "calls", "own", "cumulative"], rows)
        )
    return "\n\n".join(parts)


def _sdk_run(results: dict[str, Any]) -> str:
    sdk = results.get("flyte_sdk")
    if not sdk:
        return "_not run (the Flyte SDK is not installed, or the phase was skipped)_"
    rows = [
        [name, _fmt(v["median_us"], 0), f"{_fmt(v['min_us'])}–{_fmt(v['max_us'])}"]
        for name, v in sdk["per_call"].items()
    ]
    return (
        f"µs per call of a cached child task awaited {sdk['calls_per_round']} times inside one "
        "`flyte.run` (wall clock; `uncached` is the same child with caching disabled).\n\n"
        + _table(["cache", "median µs", "min–max"], rows)
    )


# -- rendering --------------------------------------------------------------------------------


def _common(results: dict[str, Any]) -> dict[str, Any]:
    meta = results["meta"]
    m = meta["machine"]
    conc = results.get("concurrency") or {}
    pg = results.get("postgresql") or {}
    return {
        "made_by": "make bench-quick" if meta["mode"] == "quick" else "make bench",
        "mode": meta["mode"],
        "revision": meta.get("revision", "unknown"),
        "single_repeats": (results.get("single") or {}).get("repeats", "–"),
        "conc_repeats": conc.get("repeats", "–"),
        "pg_version": pg.get("version", "").removeprefix("postgres (PostgreSQL) ") or "(not run)",
        "_m": m,
    }


def render(results: dict[str, Any], docs_dir: Path, results_path: str | None = None) -> Path:
    """Write both pages and the plots into ``docs_dir``; returns the user page's path."""
    evaluated = results.get("targets") or targets.evaluate(results)
    drawn = plots.draw(results, docs_dir / IMG)
    meta = results["meta"]
    common = _common(results)
    m = common.pop("_m")
    conc = results.get("concurrency") or {}
    single = results.get("single") or {}
    user = _fill(
        "benchmarks.md",
        {
            **common,
            "date": meta["timestamp"][:10],
            "single_table": _single_table(results),
            "sdk_hit": _sdk_hit(results),
            "postgresql": _postgresql_user(results),
            "large": _large(results),
            "deployments_table": _deployments_table(results),
            "cpu_model": m["cpu_model"],
            "nproc": m["nproc"],
            "platform": m["platform"],
            "python": m["python"],
            "sqlite": m["sqlite"],
            "protobuf": m["protobuf"],
            "diskcache": m["diskcache"],
            "psycopg": m["psycopg"],
            "loadavg_start": f"{m['loadavg'][0]:.1f}",
            "loadavg_end": f"{meta.get('loadavg_end', [math.nan])[0]:.1f}",
        },
    )
    details = _fill(
        "benchmarks-details.md",
        {
            "made_by": common["made_by"],
            "mode": common["mode"],
            "revision": common["revision"],
            "single_repeats": common["single_repeats"],
            "conc_repeats": common["conc_repeats"],
            "duration_s": f"{meta.get('duration_s', math.nan):.0f}",
            "timestamp": meta["timestamp"],
            "results_path": results_path or f"benchmarks/out/results/{meta['results_file']}",
            "targets": _targets_table(evaluated),
            "get_n": f"{single.get('n_get', 0):,}",
            "put_n": f"{single.get('n_put', 0):,}",
            "sdk_backend": single.get("sdk_backend") or "not installed",
            "single_detail": _single_detail(results),
            "postgresql_detail": _postgresql_detail(results),
            "growth": _growth(results),
            "footprint": _footprint(results),
            "seconds": f"{conc.get('seconds', math.nan):g}",
            "concurrency_detail": _concurrency_detail(results),
            "per_op": _per_op(results),
            "profile": _profile(results),
            "sdk_run": _sdk_run(results),
        },
    )
    docs_dir.mkdir(parents=True, exist_ok=True)
    for name, page in zip(PAGES, (user, details), strict=True):
        missing = sorted(set(_FIGURE.findall(page)) - set(drawn.values()))
        if missing and results.get("concurrency") and results.get("single"):
            raise ValueError(f"{name} shows figures that were not drawn: {missing}")
        (docs_dir / name).write_text(page)
    return docs_dir / PAGES[0]


def latest(results_dir: Path = OUT_DIR / "results") -> Path:
    """The newest results document in ``results_dir``."""
    found = sorted(results_dir.glob("*.json"))
    if not found:
        raise SystemExit(f"no results in {results_dir}: run `make bench-quick` first")
    return found[-1]


def publish(source: Path) -> Path:
    """Render ``source`` into docs/ and keep it as the one published run in benchmarks/results/."""
    results = json.loads(source.read_text())
    if results["meta"]["mode"] == "smoke":
        raise SystemExit(f"{source} is a smoke run: its numbers mean nothing")
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    kept = RESULTS_DIR / source.name
    for old in RESULTS_DIR.glob("*.json"):
        if old.resolve() != source.resolve():  # re-rendering the published run keeps it
            old.unlink()
    if kept.resolve() != source.resolve():
        shutil.copyfile(source, kept)
    for stale in (DOCS / IMG).glob("bench-*.png"):
        stale.unlink()
    return render(results, DOCS, str(kept.relative_to(ROOT)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, nargs="?", help="default: the latest run")
    parser.add_argument("--docs", type=Path, default=OUT_DIR / "docs")
    parser.add_argument(
        "--publish", action="store_true", help="render into docs/ and keep the JSON (tracked)"
    )
    args = parser.parse_args(argv)
    source = args.results or latest()
    if args.publish:
        print(publish(source))
        return
    print(render(json.loads(source.read_text()), args.docs))


if __name__ == "__main__":
    main()
