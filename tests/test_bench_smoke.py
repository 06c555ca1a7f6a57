"""A tiny run of each benchmark harness so they cannot rot (no timing is asserted)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks import bench_keys, concurrency, report, store_harness
from benchmarks import run as bench_run
from benchmarks._common import RESULTS_DIR, typical_output
from benchmarks.limit import KvLimit


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    # Populated databases go to a temporary folder, not the repository's benchmarks/.cache.
    cache = tmp_path_factory.getbasetemp() / "bench-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("FLYTECACHE_BENCH_CACHE", str(cache))


def test_store_harness_smoke() -> None:
    results = store_harness.run(repeats=1, n=50)
    assert set(results) == {"put", "get"}
    assert set(results["get"]["rates"]) == {"flytecache", "raw", "diskcache", "diskcache+parse"}
    assert set(results["put"]["rates"]) == {"flytecache", "raw", "diskcache"}
    for numbers in results.values():
        assert all(rate > 0 for rate in numbers["rates"].values())
        assert all(ratio > 0 for ratio in numbers["ratios"].values())


def test_key_cost_harness_smoke() -> None:
    results = bench_keys.run(repeats=1, n=5)
    assert set(results["us"]) == set(bench_keys.IMPLS)
    assert set(results["ratios"]) == set(bench_keys.RATIOS)
    for row in [*results["us"].values(), *results["ratios"].values()]:
        assert row["min"] <= row["median"] <= row["max"]
        assert len(row["samples"]) == 1


def test_limit_answers_like_a_store(tmp_path: Path) -> None:
    limit = KvLimit(tmp_path / "limit.db")
    try:
        assert limit.get("k") is None
        limit.put("k", typical_output(1))
        limit.put("k", typical_output(2))
        assert limit.get("k") == typical_output(2)
        assert limit.acquire("l", "a", now_us=0, expires_us=10)
        assert limit.acquire("l", "a", now_us=5, expires_us=20)  # extended by its holder
        assert not limit.acquire("l", "b", now_us=19, expires_us=30)
        assert limit.acquire("l", "b", now_us=20, expires_us=30)  # taken over once expired
        limit.release("l", "a")  # not the holder: nothing happens
        assert not limit.acquire("l", "a", now_us=21, expires_us=40)
        limit.release("l", "b")
        assert limit.acquire("l", "a", now_us=21, expires_us=40)
    finally:
        limit.close()


def test_runner_smoke_writes_results_and_page(tmp_path: Path) -> None:
    """Per-operation suites (pytest-benchmark), single-process harness, profiles, report."""
    path = bench_run.main(
        [
            "--smoke",
            "--skip",
            "concurrency,flyte_sdk",
            "--results-dir",
            str(tmp_path),
            "--docs-dir",
            str(tmp_path / "docs"),
        ]
    )
    results = json.loads(path.read_text())
    ops = {(r["op"], r["impl"]) for r in results["per_op"]["benchmarks"]}
    for op in ("get_hit", "get_miss", "put_new", "put_overwrite", "lease_cycle"):
        assert {(op, "flytecache"), (op, "raw"), (op, "diskcache")} <= ops
    for op in ("reserve_new", "reserve_extend", "reserve_held", "release", "client_get"):
        assert (op, "flytecache") in ops
    assert ("cache_key", "flytecache") in ops
    assert {t["key"] for t in results["targets"]} >= {"put_vs_raw", "get_vs_diskcache"}
    assert results["profile"]["wal_pages_per_put"]["flytecache"] > 0
    page = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "## Summary: the performance targets" in page
    assert "![latency by database size](img/bench-size.png)" in page
    assert (tmp_path / "docs" / "img" / "bench-size.png").stat().st_size > 0


def test_report_fills_every_block_from_a_saved_run(tmp_path: Path) -> None:
    """The smoke run skips phases; a saved full run shows every section and every analysis."""
    saved = sorted(RESULTS_DIR.glob("*.json"))
    if not saved:
        pytest.skip("no saved run in benchmarks/results")
    results = json.loads(saved[-1].read_text())
    for target in results["targets"]:
        target["verdict"] = "MISS"
    page = report.render(results, tmp_path / "docs").read_text()
    assert "_not run_" not in page
    assert page.count("** — measured ") == len(results["targets"])
    assert "## Misses: what limits them" in page
    figures = re.findall(r"!\[[^\]]*\]\(img/([^)]+)\)", page)
    assert len(figures) == 4
    for name in figures:
        assert (tmp_path / "docs" / "img" / name).stat().st_size > 0


def test_concurrency_smoke_library(tmp_path: Path) -> None:
    results = concurrency.run(
        seconds=0.05,
        repeats=1,
        procs=[1, 2],
        targets=["flytecache-sqlite", "raw-sqlite3", "diskcache"],
        log=lambda _: None,
    )
    assert results["problems"] == []
    cells = {(c["target"], c["op"], c["contention"], c["procs"]) for c in results["cells"]}
    assert len(cells) == 3 * 2 * 2 * 2
    for cell in results["cells"]:
        assert cell["ops_per_s"] > 0
        assert cell["p50_ms"] <= cell["p99_ms"] <= cell["max_ms"]
        assert cell["errors"] == 0, cell["first_error"]


def test_flyte_sdk_hit_harness_smoke() -> None:
    pytest.importorskip("flyte")
    results = bench_run.flyte_sdk_hits(rounds=1, calls=3)
    assert results is not None
    assert set(results["per_call"]) == {"sdk", "flytecache", "uncached"}
    assert all(row["median_us"] > 0 for row in results["per_call"].values())
