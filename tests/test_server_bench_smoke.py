"""The server benchmark harness runs end to end (tiny cells; no timing asserted)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_server_runs(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_server",
            "--seconds",
            "0.2",
            "--clients",
            "1,2",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())
    assert [(r["op"], r["clients"]) for r in rows] == [
        (op, n) for op in ("get", "put", "reserve") for n in (1, 2)
    ]
    for row in rows:
        assert row["server"] > 0 and row["ceiling"] > 0
        assert row["ratio"] == row["server"] / row["ceiling"]
    assert "ratio" in result.stdout
