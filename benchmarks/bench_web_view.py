"""Server time of the web view's pages on a populated database (1M entries by default).

Starts ``flytecache serve`` on a private copy of a populated database (benchmarks/populate.py)
and loads each page ``--requests`` times, one after another over one connection, reading the
server's own ``Server-Timing: total`` (request in to response out, store queries and template
rendering included; the network and the client are not). Medians and the 95th percentile per
page; the bound the web view promises is the entries pages' median at or under 50 ms.

    python -m benchmarks.bench_web_view [--size 1000000] [--requests 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
from pathlib import Path
from urllib.parse import quote

from benchmarks._common import TASKS, entry_key
from benchmarks.populate import copy_store

BOUND_MS = 50.0
_TOTAL = re.compile(r"total;dur=([\d.]+)")


def _halfway_cursor(db: Path, size: int) -> str:
    """The listing cursor ``<last_updated_at>.<id>`` of the entry half-way down the list."""
    import sqlite3

    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        updated, row_id = conn.execute(
            "SELECT last_updated_at, id FROM entries ORDER BY last_updated_at DESC, id DESC "
            "LIMIT 1 OFFSET ?",
            (size // 2,),
        ).fetchone()
    finally:
        conn.close()
    return f"{updated}.{row_id}"


def pages(size: int, db: Path) -> dict[str, str]:
    """Name → path of each page measured on the populated database ``db``."""
    middle = size // 2
    task = "workflows.pipeline.task_7"
    return {
        "entries: newest": "/ui/entries",
        "entries: halfway (cursor)": f"/ui/entries?after={_halfway_cursor(db, size)}",
        "entries: one project (every entry)": "/ui/entries?project=flytesnacks",
        "entries: a project with no entries": "/ui/entries?project=nobody",
        "entries: one task": f"/ui/entries?name={task}",
        "entries: project+domain+task": (
            f"/ui/entries?project=flytesnacks&domain=development&name={task}"
        ),
        "entries: older than 30d": "/ui/entries?older=30d",
        "entries: one version, 200 per page": "/ui/entries?version=v42&limit=200",
        "entry": "/ui/entry?key=" + quote(entry_key(middle), safe=""),
        "reservations": "/ui/reservations",
        "reservations: search (no match)": "/ui/reservations?q=nobody-holds-this",
        "overview": "/ui/",
    }


def measure(url: str, paths: dict[str, str], requests: int) -> dict[str, dict[str, float]]:
    """Per page: median, p95 and max of the server's total time in ms over ``requests``."""
    import httpx

    results: dict[str, dict[str, float]] = {}
    with httpx.Client(base_url=url, timeout=120) as client:
        for name, path in paths.items():
            client.get(path).raise_for_status()  # warm: compiled statements, page cache
            times = []
            for _ in range(requests):
                response = client.get(path)
                response.raise_for_status()
                match = _TOTAL.search(response.headers.get("server-timing", ""))
                if match is None:
                    raise SystemExit(f"{path}: no Server-Timing total")
                times.append(float(match.group(1)))
            times.sort()
            results[name] = {
                "median_ms": statistics.median(times),
                "p95_ms": times[max(0, int(len(times) * 0.95) - 1)],
                "max_ms": times[-1],
            }
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="entries in the database")
    parser.add_argument("--requests", type=int, default=30, help="loads per page")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    from benchmarks.bench_server import _Server

    with tempfile.TemporaryDirectory(prefix="flytecache-bench-ui-") as tmp:
        db = copy_store(args.size, Path(tmp))
        server = _Server(
            "flytecache serve",
            [
                sys.executable,
                "-c",
                "import sys; from flytecache.cli import main; sys.argv[0] = 'flytecache'; main()",
                "serve",
                "--db",
                str(db),
                "--port",
                "0",
                "--log-level",
                "warning",
            ],
            Path(tmp) / "server.log",
        )
        try:
            results = measure(server.wait_ready(), pages(args.size, db), args.requests)
        finally:
            server.stop()
    print(f"{args.size:,} entries ({TASKS} tasks), {args.requests} loads per page; server ms")
    print(f"{'page':<38} {'median':>8} {'p95':>8} {'max':>8}")
    for name, row in results.items():
        print(f"{name:<38} {row['median_ms']:>8.1f} {row['p95_ms']:>8.1f} {row['max_ms']:>8.1f}")
    if args.json:
        args.json.write_text(json.dumps({"size": args.size, "pages": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
