"""A tiny run of each benchmark harness so they cannot rot (no timing is asserted)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from benchmarks import bench_keys, concurrency, report, store_harness
from benchmarks import run as bench_run
from benchmarks._common import RESULTS_DIR, ROOT, typical_output
from benchmarks.limit import KvLimit, Limit


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    # Populated databases go to a temporary folder, not the repository's benchmarks/.cache.
    cache = tmp_path_factory.getbasetemp() / "bench-cache"
    cache.mkdir(exist_ok=True)
    monkeypatch.setenv("FLYTECACHE_BENCH_CACHE", str(cache))


def _tracked_changes() -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "docs", "benchmarks"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_limit_semantics(tmp_path: Path) -> None:
    """The limit is a cache: get what was put, keep or overwrite; a lease is exclusive."""
    with Limit.open(tmp_path / "limit.db") as limit:
        assert limit.get("k") is None
        assert limit.put("k", typical_output(1))
        assert not limit.put("k", typical_output(2))
        assert limit.get("k") == typical_output(1)
        assert limit.put("k", typical_output(2), overwrite=True)
        assert limit.get("k") == typical_output(2)
        assert limit.acquire("lease", "a")
        assert limit.acquire("lease", "a")  # extends its own
        assert not limit.acquire("lease", "b")
        assert not limit.release("lease", "b")
        assert limit.release("lease", "a")
        assert limit.acquire("lease", "b")
        assert not limit.acquire("lease", "a", ttl_us=1)
        assert limit.acquire("expired", "a", ttl_us=-1)
        assert limit.acquire("expired", "b")  # an expired lease is taken over


def test_store_harness_smoke() -> None:
    results = store_harness.single(n=30, repeats=1)
    expected = {"flytecache", "limit", "diskcache"}
    assert expected <= set(results["get"]["rates"]) == set(results["put"]["rates"])
    for op in ("get", "put"):
        assert all(r["median"] > 0 for r in results[op]["rates"].values())
        assert all(r["median"] > 0 for r in results[op]["ratios"].values())


def test_eviction_harness_smoke() -> None:
    from benchmarks import eviction

    results = eviction.run("smoke")
    limit = results["limit"]
    assert limit["samples"] > 0 and limit["evicted_entries"] > 0
    assert limit["final_bytes"] <= limit["limit_bytes"]
    for cell in ("put", "get"):
        assert results[cell]["ratio"]["median"] > 0 and results[cell]["cpu_ratio"]["median"] > 0


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


def test_runner_smoke_writes_results_and_pages_outside_the_repository(tmp_path: Path) -> None:
    """Every phase but the multi-process one and the SDK run; nothing tracked is written."""
    before = _tracked_changes()
    path = bench_run.main(
        ["--smoke", "--skip", "concurrency,flyte_sdk", "--out-dir", str(tmp_path)]
    )
    assert path.parent == tmp_path / "results"
    results = json.loads(path.read_text())
    ops = {(r["op"], r["impl"]) for r in results["per_op"]["benchmarks"]}
    for op in ("get_hit", "get_miss", "put_new", "put_overwrite", "lease_cycle"):
        assert {(op, "flytecache"), (op, "limit"), (op, "diskcache")} <= ops
    for op in ("reserve_new", "reserve_extend", "reserve_held", "release"):
        assert {(op, "flytecache"), (op, "limit")} <= ops
    assert ("cache_key", "flytecache") in ops
    keys = {t["key"] for t in results["targets"]}
    assert {"put_vs_limit", "get_vs_diskcache", "bytes_per_entry", "get_growth"} <= keys
    assert results["footprint"]["limit"] > 0
    assert results["profile"]["wal_pages_per_put"]["limit"] > 0
    cost = results["profile"]["statement_cost_us"]
    assert set(cost) == {"flytecache", "flytecache without secondary indexes", "limit"}
    assert all(0 < cell["min"] <= cell["median"] <= cell["max"] for cell in cost.values())
    docs = tmp_path / "docs"
    assert "# Benchmarks: what to expect" in (docs / "benchmarks.md").read_text()
    assert "## Targets (issue #14)" in (docs / "benchmarks-details.md").read_text()
    assert (docs / "img" / "bench-single.png").stat().st_size > 0
    assert _tracked_changes() == before


def test_report_renders_the_published_run(tmp_path: Path) -> None:
    """The published run renders both pages, every figure drawn and every section filled."""
    saved = sorted(RESULTS_DIR.glob("*.json"))
    if not saved:
        pytest.skip("no published run in benchmarks/results")
    results = json.loads(saved[-1].read_text())
    page = report.render(results, tmp_path / "docs").read_text()
    details = (tmp_path / "docs" / "benchmarks-details.md").read_text()
    assert "_not run_" not in details
    assert details.count("**PASS**") + details.count("**MISS**") == len(results["targets"])
    figures = re.findall(r"!\[[^\]]*\]\(img/([^)]+)\)", page)
    assert len(figures) == 3
    for name in figures:
        assert (tmp_path / "docs" / "img" / name).stat().st_size > 0


def test_publishing_the_published_run_again_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-rendering the kept run (after a template change) must not delete it first."""
    saved = sorted(RESULTS_DIR.glob("*.json"))
    if not saved:
        pytest.skip("no published run in benchmarks/results")
    results_dir = tmp_path / "benchmarks" / "results"
    results_dir.mkdir(parents=True)
    kept = results_dir / saved[-1].name
    shutil.copyfile(saved[-1], kept)
    (results_dir / "19990101T000000Z.json").write_text("{}")  # an older one: replaced
    monkeypatch.setattr(report, "ROOT", tmp_path)
    monkeypatch.setattr(report, "RESULTS_DIR", results_dir)
    monkeypatch.setattr(report, "DOCS", tmp_path / "docs")
    report.publish(kept)
    assert sorted(results_dir.iterdir()) == [kept]
    assert json.loads(kept.read_text()) == json.loads(saved[-1].read_text())
    assert (tmp_path / "docs" / "benchmarks-details.md").exists()


def test_concurrency_smoke_library(tmp_path: Path) -> None:
    results = concurrency.run(
        seconds=0.05,
        repeats=1,
        procs=[1, 2],
        targets=["flytecache-sqlite", "limit-sqlite", "diskcache"],
        log=lambda _: None,
    )
    assert results["problems"] == []
    cells = {(c["target"], c["workload"], c["procs"]) for c in results["cells"]}
    assert len(cells) == 3 * 3 * 2
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
