"""The server benchmark harness runs end to end (tiny cells; no timing asserted)."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_bench_server_runs(tmp_path: Path) -> None:
    out = tmp_path / "rows.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_server",
            # Each client's loop sends its first request before it checks the clock, so even
            # a 50 ms cell measures at least one request per client: enough for a smoke run.
            "--seconds",
            "0.05",
            "--clients",
            "1,2",
            "--rounds",
            "2",
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
        assert len(row["server_runs"]) == len(row["ceiling_runs"]) == 2
        ratios = [s / c for s, c in zip(row["server_runs"], row["ceiling_runs"], strict=True)]
        assert row["ratio_runs"] == ratios
        assert row["ratio"] == statistics.median(ratios)
    assert "ratio" in result.stdout


def test_concurrency_smoke_server_and_ceiling() -> None:
    from benchmarks import concurrency

    results = concurrency.run(
        seconds=0.1, repeats=1, procs=[2], targets=["serve", "serve-noop"], log=lambda _: None
    )
    assert results["problems"] == []
    assert {(c["target"], c["workload"]) for c in results["cells"]} == {
        (t, workload) for t in ("serve", "serve-noop") for workload in concurrency.WORKLOADS
    }
    for cell in results["cells"]:
        assert cell["requests_per_s"] >= cell["ops_per_s"] > 0
        assert cell["errors"] == cell["busy"] == 0, cell["first_error"]


def test_concurrency_smoke_postgresql() -> None:
    from benchmarks import concurrency
    from benchmarks._postgres import find_bindir

    if find_bindir() is None:
        pytest.skip("no PostgreSQL binaries on this machine")
    results = concurrency.run(
        seconds=0.05,
        repeats=1,
        procs=[2],
        targets=["flytecache-postgresql", "limit-postgresql"],
        log=lambda _: None,
    )
    assert results["targets"] == ["flytecache-postgresql", "limit-postgresql"], results["notes"]
    assert results["problems"] == []
    assert len(results["cells"]) == 2 * len(concurrency.WORKLOADS)
    for cell in results["cells"]:
        assert cell["ops_per_s"] > 0
        assert cell["errors"] == 0, cell["first_error"]


def test_bench_stacks_runs(tmp_path: Path) -> None:
    out = tmp_path / "stacks.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "benchmarks.bench_stacks",
            "--stacks",
            "uvicorn-h11,hypercorn,flytecache",
            "--seconds",
            "0.05",  # at least one request per cell, as above
            "--rounds",
            "1",
            "--clients",
            "1",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rows = json.loads(out.read_text())["rows"]
    assert {row["stack"] for row in rows} == {"uvicorn-h11", "hypercorn", "flytecache"}
    for row in rows:
        assert row["min"] <= row["median"] <= row["max"] and row["median"] > 0
