"""The server benchmark harness runs end to end (tiny cells; no timing asserted)."""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

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
        assert row["server"] > 0 and row["ceiling"] > 0 and row["limit"] > 0
        assert len(row["server_runs"]) == len(row["ceiling_runs"]) == len(row["limit_runs"]) == 2
        for name, (a, b) in {
            "ratio": ("server", "ceiling"),
            "limit_vs_ceiling": ("limit", "ceiling"),
            "server_vs_limit": ("server", "limit"),
        }.items():
            ratios = [x / y for x, y in zip(row[f"{a}_runs"], row[f"{b}_runs"], strict=True)]
            assert row[f"{name}_runs"] == ratios
            assert row[name] == statistics.median(ratios)
    assert "ratio" in result.stdout and "server/limit" in result.stdout


def test_limit_service_answers_like_the_server(tmp_path: Path) -> None:
    """The limit's CacheService scopes keys and answers per SPEC, as bench_server relies on."""
    from connectrpc.code import Code
    from connectrpc.errors import ConnectError
    from flyteidl2.cacheservice import cacheservice_pb2 as cs
    from flyteidl2.cacheservice.v2 import cacheservice_pb2 as v2

    from benchmarks._common import typical_output
    from benchmarks.limit import Limit
    from benchmarks.limit_service import LimitCacheService

    ident = v2.Identifier(org="o", project="proj", domain="dev")

    async def calls(service: LimitCacheService) -> None:
        def get(key: str) -> Any:
            request = v2.GetCacheRequest(base_request=cs.GetCacheRequest(key=key), identifier=ident)
            return service.get(request, None)

        def put(key: str, output: cs.CachedOutput, overwrite: bool = False) -> Any:
            base = cs.PutCacheRequest(
                key=key, output=output, overwrite=cs.OverwriteOutput(overwrite=overwrite)
            )
            return service.put(v2.PutCacheRequest(base_request=base, identifier=ident), None)

        def delete(key: str) -> Any:
            base = cs.DeleteCacheRequest(key=key)
            request = v2.DeleteCacheRequest(base_request=base, identifier=ident)
            return service.delete(request, None)

        def reserve(key: str, owner: str, heartbeat: int = 0) -> Any:
            base = cs.GetOrExtendReservationRequest(key=key, owner_id=owner)
            base.heartbeat_interval.seconds = heartbeat
            request = v2.GetOrExtendReservationRequest(base_request=base, identifier=ident)
            return service.get_or_extend_reservation(request, None)

        def release(key: str, owner: str) -> Any:
            base = cs.ReleaseReservationRequest(key=key, owner_id=owner)
            request = v2.ReleaseReservationRequest(base_request=base, identifier=ident)
            return service.release_reservation(request, None)

        async def code_of(call: Any) -> Code | None:
            try:
                await call
            except ConnectError as error:
                return error.code
            return None

        assert await code_of(get("k")) is Code.NOT_FOUND
        await put("k", typical_output(1))
        assert await code_of(put("k", typical_output(2))) is Code.ALREADY_EXISTS
        assert (await get("k")).output == typical_output(1)
        await put("k", typical_output(2), overwrite=True)
        assert (await get("k")).output == typical_output(2)
        await delete("k")
        assert await code_of(delete("k")) is Code.NOT_FOUND

        mine = (await reserve("r", "a", heartbeat=2)).reservation
        assert (mine.key, mine.owner_id, mine.heartbeat_interval.seconds) == (
            "reservation:proj-dev-r",
            "a",
            2,
        )
        extended = (await reserve("r", "a")).reservation  # no heartbeat: the default, 10 s
        assert extended.heartbeat_interval.seconds == 10
        assert extended.expires_at.ToMicroseconds() > mine.expires_at.ToMicroseconds()
        held = (await reserve("r", "b")).reservation  # the holder's lease, unchanged
        assert (held.owner_id, held.expires_at) == ("a", extended.expires_at)
        await release("r", "b")  # not the holder: nothing happens
        assert (await reserve("r", "b")).reservation.owner_id == "a"
        await release("r", "a")
        assert (await reserve("r", "b")).reservation.owner_id == "b"

    with Limit.open(tmp_path / "limit.db") as limit:
        asyncio.run(calls(LimitCacheService(limit)))
        assert limit.get("proj-dev-k") is None and limit.count("kv", "") == 0
        assert limit.holder("proj-dev-r") is not None and limit.count("lease", "proj-dev-") == 1


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
