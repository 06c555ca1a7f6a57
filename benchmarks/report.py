"""Write ``docs/benchmarks.md`` and its plots from a results document.

    python -m benchmarks.report benchmarks/results/<timestamp>.json

The page's text is hand-written Markdown in ``benchmarks/templates/``: ``benchmarks.md.tmpl``
is the page, ``sections.md.tmpl`` and ``misses.md.tmpl`` hold the blocks shown when a phase
ran or a target was missed. This module only fills their ``$placeholders`` (``string.Template``)
with the run's numbers and generated tables. ``benchmarks.run`` calls :func:`render` at the end
of every run; this entry point re-renders the page from a saved run (e.g. after editing the
text) without measuring again.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from string import Template
from typing import Any

from benchmarks import plots, targets
from benchmarks._common import ROOT
from benchmarks._results import (
    FC_PG,
    OP_LABELS,
    TARGET_LABELS,
    cell,
    paired_ratio,
    per_op_sizes,
    per_op_us,
)

DOCS = ROOT / "docs"
TEMPLATES = Path(__file__).resolve().parent / "templates"
IMG = "img"

_BLOCK = re.compile(r"^<!-- block: (\w+) -->\n", re.MULTILINE)
_FIGURE = re.compile(r"!\[[^\]]*\]\(" + IMG + r"/([^)]+)\)")


# -- templates --------------------------------------------------------------------------------


def _blocks(name: str) -> dict[str, Template]:
    """The named blocks of ``templates/<name>.md.tmpl`` (the text before the first is notes)."""
    parts = _BLOCK.split((TEMPLATES / f"{name}.md.tmpl").read_text())
    return {
        block: Template(text.strip("\n"))
        for block, text in zip(parts[1::2], parts[2::2], strict=True)
    }


def _fill(template: Template, where: str, values: dict[str, Any]) -> str:
    """``template`` with every placeholder filled; a missing or unused value is an error."""
    wanted = set(template.get_identifiers())
    if wanted != set(values):
        raise ValueError(
            f"{where}: placeholders {sorted(wanted)} do not match the values {sorted(values)}"
        )
    return template.substitute(values)


def _section(block: str, **values: Any) -> str:
    return _fill(_blocks("sections")[block], f"sections.md.tmpl, block {block}", values)


def _miss(block: str, **values: Any) -> str:
    return _fill(_blocks("misses")[block], f"misses.md.tmpl, block {block}", values)


# -- generated Markdown -----------------------------------------------------------------------


def _table(header: list[str], rows: Iterable[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(marks) + " |"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _fmt(value: float, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _targets_table(evaluated: list[dict[str, Any]]) -> str:
    rows = []
    for t in evaluated:
        shown = _fmt(t["value"], 0 if t["key"] == "busy_8p" else 2)
        goal = f"{t['direction']} {t['goal']:g}"
        rows.append([t["target"], t["measured"], shown, goal, f"**{t['verdict']}**"])
    return _table(["target", "measured", "ratio", "goal", "verdict"], rows, "llrll")


def _machine(results: dict[str, Any]) -> dict[str, Any]:
    meta = results["meta"]
    m = meta["machine"]
    versions = results.get("concurrency", {}).get("versions", {})
    return {
        "revision": meta.get("revision", "unknown"),
        "cpu_model": m["cpu_model"],
        "nproc": m["nproc"],
        "platform": m["platform"],
        "python": m["python"],
        "sqlite": m["sqlite"],
        "sqlalchemy": m["sqlalchemy"],
        "protobuf": m["protobuf"],
        "diskcache": m["diskcache"],
        "psycopg": m["psycopg"],
        "postgresql_version": f", {versions['postgresql']}" if versions.get("postgresql") else "",
        "loadavg_start": ", ".join(f"{x:.2f}" for x in m["loadavg"]),
        "loadavg_end": ", ".join(f"{x:.2f}" for x in meta["loadavg_end"]),
    }


def _single(results: dict[str, Any]) -> str:
    single = results.get("single")
    if not single:
        return _section("not_run")
    rows = []
    for op in ("get", "put"):
        r = single[op]
        for impl, value in r["rates"].items():
            ratio = "1.00" if impl == "flytecache" else _fmt(r["ratios"][impl], 2)
            rows.append([op, impl, _fmt(value), ratio])
    header = ["op", "implementation", "ops/s", "flytecache ÷ it"]
    return _section(
        "single",
        get_n=f"{single['get']['n']:,}",
        put_n=f"{single['put']['n']:,}",
        repeats=single["get"]["repeats"],
        table=_table(header, rows, "llrr"),
    )


def _scaling(results: dict[str, Any]) -> str:
    scaling = results.get("scaling")
    if not scaling:
        return _section("not_run")
    small, big = scaling["sizes"]
    rows = []
    for op in ("get_hit", "put_new"):
        a, b = scaling["ops"][op][str(small)], scaling["ops"][op][str(big)]
        rows.append(
            [
                OP_LABELS[op],
                _fmt(a["median_us"], 1),
                _fmt(b["median_us"], 1),
                _fmt(b["median_us"] / a["median_us"], 2),
                _fmt(a["mean_us"], 1),
                _fmt(b["mean_us"], 1),
                f"{a['calls']:,}",
            ]
        )
    header = [
        "operation",
        f"median µs @{small:,}",
        f"median µs @{big:,}",
        "ratio",
        f"mean µs @{small:,}",
        f"mean µs @{big:,}",
        "calls per size",
    ]
    return _section("scaling", table=_table(header, rows))


def _concurrency_table(results: dict[str, Any], op: str, level: str) -> str:
    procs = results["concurrency"]["procs"]
    rows: list[list[str]] = []
    for target in results["concurrency"]["targets"]:
        found = [cell(results, target, op, level, n) for n in procs]
        if not any(found):
            continue
        latency = " / ".join(
            f"{c['p50_ms']:.2f}·{c['p99_ms']:.1f}·{c['max_ms']:.0f}" if c else "–" for c in found
        )
        busy = str(sum(c["busy"] for c in found if c))
        if any(c and c["errors"] for c in found):
            busy += f" (+{sum(c['errors'] for c in found if c)} other)"
        rates = [_fmt(c["ops_per_s"]) if c else "–" for c in found]
        rows.append([TARGET_LABELS[target], *rates, latency, busy])
    header = ["target", *[f"{n} proc" for n in procs], "latency by procs", "busy"]
    return _table(header, rows, "l" + "r" * len(procs) + "lr")


def _concurrency(results: dict[str, Any]) -> str:
    conc = results.get("concurrency")
    if not conc:
        return _section("not_run")
    notes = [
        _section("concurrency_note", target=TARGET_LABELS.get(target, target), note=note)
        for target, note in conc.get("notes", {}).items()
    ]
    return _section(
        "concurrency",
        seconds=f"{conc['seconds']:g}",
        repeats=conc["repeats"],
        notes="\n\n".join(notes),
        **{
            f"{op}_{level}": _concurrency_table(results, op, level)
            for op in ("put", "reserve")
            for level in ("hot", "distinct")
        },
    )


def _postgresql(results: dict[str, Any]) -> str:
    conc = results.get("concurrency")
    if not conc or FC_PG not in conc["targets"]:
        return _section(
            "postgresql_not_run", note=(conc or {}).get("notes", {}).get(FC_PG, "not run")
        )
    rows = []
    for op in ("put", "reserve"):
        for level in ("hot", "distinct"):
            for n in (1, 4, 8):
                sq = cell(results, "flytecache-sqlite", op, level, n)
                pg = cell(results, FC_PG, op, level, n)
                if not sq or not pg:
                    continue
                rows.append(
                    [
                        op,
                        level,
                        str(n),
                        _fmt(sq["ops_per_s"]),
                        _fmt(pg["ops_per_s"]),
                        _fmt(paired_ratio(pg, sq), 2),
                        f"{sq['p99_ms']:.1f} / {pg['p99_ms']:.1f}",
                    ]
                )
    header = ["op", "keys", "procs", "SQLite ops/s", "PostgreSQL ops/s", "PG ÷ SQLite"]
    return _table([*header, "p99 ms SQLite / PG"], rows, "lllrrrr")


def _server(results: dict[str, Any]) -> str:
    conc = results.get("concurrency")
    if not conc or "serve" not in conc["targets"]:
        return _section("not_run")
    rows = []
    for op in ("put", "reserve"):
        for level in ("hot", "distinct"):
            for n in conc["procs"]:
                real = cell(results, "serve", op, level, n)
                noop = cell(results, "serve-noop", op, level, n)
                if not real or not noop:
                    continue
                rows.append(
                    [
                        op,
                        level,
                        str(n),
                        _fmt(real["requests_per_s"]),
                        _fmt(noop["requests_per_s"]),
                        _fmt(paired_ratio(real, noop, "requests_samples"), 2),
                    ]
                )
    return _table(["op", "keys", "clients", "serve req/s", "no-op req/s", "ratio"], rows, "lllrrr")


def _per_op(results: dict[str, Any]) -> str:
    per_op = results.get("per_op")
    if not per_op:
        return _section("not_run")
    rows_in = per_op["benchmarks"]
    sizes = per_op_sizes(results)
    ops = [op for op in OP_LABELS if any(r["op"] == op and r["size"] for r in rows_in)]
    header = ["operation"]
    for s in sizes:
        header += [f"flytecache {s:,}", f"raw {s:,}", f"diskcache {s:,}"]
    header += [f"÷raw @{sizes[0]:,}", f"{sizes[-1]:,} ÷ {sizes[0]:,}"]
    rows = []
    for op in ops:
        row = [OP_LABELS[op]]
        for s in sizes:
            row += [
                _fmt(per_op_us(results, op, impl, s), 1)
                for impl in ("flytecache", "raw", "diskcache")
            ]
        ours = per_op_us(results, op, "flytecache", sizes[0])
        raw = per_op_us(results, op, "raw", sizes[0])
        row.append(_fmt(raw / ours, 2))
        row.append(_fmt(per_op_us(results, op, "flytecache", sizes[-1]) / ours, 2))
        rows.append(row)
    parsed = [r for r in rows_in if r["impl"] == "diskcache+parse"]
    keys = [r for r in rows_in if r["op"] == "cache_key"]
    return _section(
        "per_op",
        table=_table(header, rows),
        parsed=_section(
            "per_op_parsed",
            latencies=", ".join(f"{_fmt(r['median_us'], 1)} µs at {r['size']:,}" for r in parsed),
        )
        if parsed
        else "",
        cache_key=_section(
            "per_op_cache_key",
            latencies=", ".join(f"{r['impl']} {_fmt(r['median_us'], 1)} µs" for r in keys),
        )
        if keys
        else "",
    )


def _profile(results: dict[str, Any]) -> str:
    prof = results.get("profile")
    if not prof:
        return _section("not_run")
    b = prof["breakdown"]
    breakdown = _table(
        ["call", "total", "SQL on a raw connection", "protobuf ↔ rows", "the rest"],
        [
            [
                "get (hit)",
                _fmt(b["get"]["total"], 1),
                _fmt(b["get"]["sql"], 1),
                _fmt(b["get"]["rows_to_protobuf"], 1),
                _fmt(b["get"]["other"], 1),
            ],
            [
                "put (new)",
                _fmt(b["put"]["total"], 1),
                _fmt(b["put"]["sql"], 1),
                _fmt(b["put"]["protobuf_to_rows"], 1),
                _fmt(b["put"]["other"], 1),
            ],
        ],
    )
    profiles = {
        f"{op}_profile": _table(
            ["function", "calls", "own", "cumulative"],
            [
                [
                    f"`{r['function']}`",
                    f"{r['calls']:,}",
                    f"{r['own_share']:.0%}",
                    f"{r['cumulative_share']:.0%}",
                ]
                for r in prof["profile"][op]
            ],
        )
        for op in ("get", "put")
    }
    variant = prof.get("schema_variant")
    return _section(
        "profile",
        breakdown=breakdown,
        flytecache_pages=f"{prof['wal_pages_per_put']['flytecache']:.1f}",
        diskcache_pages=f"{prof['wal_pages_per_put']['diskcache']:.1f}",
        schema_variant=_schema_variant(variant) if variant else "",
        **profiles,
    )


def _schema_variant(variant: dict[str, Any]) -> str:
    r, p = variant["rates"], variant["pages_per_put"]
    header = ["", "today's schema (raw)", "one-blob variant (raw)", "diskcache", "pages/put"]
    rows = [
        [
            "put (new)",
            _fmt(r["put_today"]),
            _fmt(r["put_variant"]),
            _fmt(r["put_diskcache"]),
            f"{p['today']:.1f} → {p['variant']:.1f}",
        ],
        [
            "get (hit) → CachedOutput",
            _fmt(r["get_today"]),
            _fmt(r["get_variant"]),
            _fmt(r["get_diskcache"]) + " (bytes)",
            "",
        ],
    ]
    return _section("schema_variant", table=_table(header, rows))


# -- what limits each missed target -----------------------------------------------------------


def _misses(results: dict[str, Any], evaluated: list[dict[str, Any]]) -> str:
    """Each missed target with the analysis of what limits it, in this run's numbers."""
    missed = [t for t in evaluated if t["verdict"] == "MISS"]
    if not missed:
        return _miss("none_missed")
    return "\n\n".join(
        _miss(
            "missed",
            target=t["target"],
            value=f"{t['value']:.2f}",
            analysis=_analysis(results, t["key"]),
        )
        for t in missed
    )


def _analysis(results: dict[str, Any], key: str) -> str:
    prof = results.get("profile") or {}
    b = prof.get("breakdown", {})
    pages = prof.get("wal_pages_per_put", {})
    single = results.get("single", {})
    if key == "put_vs_diskcache" and single:
        rates = single["put"]["rates"]
        ours, raw, dc = (1e6 / rates[k] for k in ("flytecache", "raw", "diskcache"))
        return _miss(
            key,
            diskcache_us=f"{dc:.0f}",
            raw_us=f"{raw:.0f}",
            raw_share=f"{raw / dc:.2f}",
            flytecache_us=f"{ours:.0f}",
            flytecache_pages=f"{pages.get('flytecache', math.nan):.1f}",
            diskcache_pages=f"{pages.get('diskcache', math.nan):.1f}",
            own_us=f"{ours - raw:.0f}",
            protobuf_us=f"{b.get('put', {}).get('protobuf_to_rows', math.nan):.0f}",
            other_us=f"{b.get('put', {}).get('other', math.nan):.0f}",
        )
    if key == "get_vs_diskcache" and single:
        rates = single["get"]["rates"]
        return _miss(
            key,
            raw_share=f"{rates['raw'] / rates['diskcache']:.2f}",
            protobuf_us=f"{b.get('get', {}).get('rows_to_protobuf', math.nan):.1f}",
            sql_us=f"{b.get('get', {}).get('sql', math.nan):.1f}",
            parse_share=f"{rates['diskcache+parse'] / rates['diskcache']:.2f}",
            other_us=f"{b.get('get', {}).get('other', math.nan):.1f}",
        )
    if key in ("get_hit_scaling", "put_new_scaling"):
        op = key.removesuffix("_scaling")
        sizes = per_op_sizes(results)
        raw_note = ""
        if len(sizes) > 1:
            lo = per_op_us(results, op, "raw", sizes[0])
            hi = per_op_us(results, op, "raw", sizes[-1])
            raw_note = _miss(
                "latency_scaling_raw",
                small_us=f"{lo:.1f}",
                big_us=f"{hi:.1f}",
                ratio=f"{hi / lo:.2f}",
            )
            raw_note += "\n"
        return _miss("latency_scaling", raw=raw_note)
    if key in ("get_vs_raw", "reserve_vs_diskcache", "server_vs_ceiling", "busy_8p"):
        return _miss(key)
    return _miss("unexplained")


# -- the page ---------------------------------------------------------------------------------


def render(results: dict[str, Any], docs_dir: Path = DOCS) -> Path:
    """Write ``benchmarks.md`` and the plots into ``docs_dir``; returns the page's path."""
    evaluated = results.get("targets") or targets.evaluate(results)
    drawn = plots.draw(results, docs_dir / IMG)
    meta = results["meta"]
    page = _fill(
        Template((TEMPLATES / "benchmarks.md.tmpl").read_text()),
        "benchmarks.md.tmpl",
        {
            "made_by": "make bench-quick" if meta["mode"] == "quick" else "make bench",
            "mode": meta["mode"],
            "duration_s": f"{meta['duration_s']:.0f}",
            "timestamp": meta["timestamp"],
            "results_file": meta["results_file"],
            "targets": _targets_table(evaluated),
            **_machine(results),
            "single": _single(results),
            "scaling": _scaling(results),
            "concurrency": _concurrency(results),
            "postgresql": _postgresql(results),
            "server": _server(results),
            "per_op": _per_op(results),
            "profile": _profile(results),
            "misses": _misses(results, evaluated),
        },
    )
    # Optional blocks that were left out leave runs of blank lines behind.
    page = re.sub(r"\n{3,}", "\n\n", page).strip("\n") + "\n"
    missing = sorted(set(_FIGURE.findall(page)) - set(drawn.values()))
    if missing:
        raise ValueError(f"the page shows figures that were not drawn: {missing}")
    docs_dir.mkdir(parents=True, exist_ok=True)
    path = docs_dir / "benchmarks.md"
    path.write_text(page)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("--docs", type=Path, default=DOCS)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    print(render(results, args.docs))


if __name__ == "__main__":
    main()
