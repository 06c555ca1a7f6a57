"""Mutual exclusion through the server: 8 client processes, one server and then two servers."""

from __future__ import annotations

import itertools
import multiprocessing
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import _server_helpers
import pytest
from _server_helpers import ServerProcess

CTX = multiprocessing.get_context("spawn")
CLIENTS = 8
KEYS = [f"hot-{i}/x=+" for i in range(3)]


@pytest.fixture(scope="module")
def pool() -> Iterator[ProcessPoolExecutor]:
    with ProcessPoolExecutor(CLIENTS, mp_context=CTX) as executor:
        # Warm the workers (imports) so the race starts together.
        list(executor.map(time.sleep, [0] * CLIENTS))
        yield executor


def _race(pool: ProcessPoolExecutor, urls: list[str], seconds: float) -> list[dict[str, Any]]:
    start_at = time.time() + 0.5
    futures = [
        pool.submit(_server_helpers.lease_worker, urls, f"owner-{n}", KEYS, start_at, seconds, n)
        for n in range(CLIENTS)
    ]
    return [f.result(timeout=120) for f in futures]


def _assert_no_overlap(results: list[dict[str, Any]]) -> int:
    by_key: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    wins = 0
    for result in results:
        assert result["errors"] == [], f"{result['owner']}: {result['errors'][:3]}"
        for key, start, end, overran in result["held"]:
            wins += 1
            if not overran:
                by_key[key].append((start, end, result["owner"]))
    for key, intervals in by_key.items():
        intervals.sort()
        for (s1, e1, o1), (s2, e2, o2) in itertools.pairwise(intervals):
            assert e1 < s2 or o1 == o2, f"{o1} and {o2} both held {key}: {(s1, e1)} {(s2, e2)}"
    return wins


def test_leases_never_overlap_through_one_server(pool: ProcessPoolExecutor, tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "cache.db", log_path=tmp_path / "log") as server:
        results = _race(pool, [server.url], seconds=2)
    wins = _assert_no_overlap(results)
    assert wins > 30, wins  # the race really happened (a loaded CI machine gets ~100)
    assert sum(1 for r in results if r["held"]) >= CLIENTS // 2


def test_leases_never_overlap_through_two_servers_on_one_file(
    pool: ProcessPoolExecutor, tmp_path: Path
) -> None:
    db = tmp_path / "cache.db"
    with (
        ServerProcess(db, log_path=tmp_path / "log-a") as first,
        ServerProcess(db, log_path=tmp_path / "log-b") as second,
    ):
        assert first.database == second.database
        results = _race(pool, [first.url, second.url], seconds=2)
    wins = _assert_no_overlap(results)
    assert wins > 30, wins
    assert sum(1 for r in results if r["held"]) >= CLIENTS // 2


def test_leases_never_overlap_through_two_servers_on_one_postgres(
    pool: ProcessPoolExecutor, tmp_path: Path, migrated_pg_url: str
) -> None:
    with (
        ServerProcess(migrated_pg_url, log_path=tmp_path / "log-a") as first,
        ServerProcess(migrated_pg_url, log_path=tmp_path / "log-b") as second,
    ):
        results = _race(pool, [first.url, second.url], seconds=2)
    wins = _assert_no_overlap(results)
    assert wins > 30, wins
    assert sum(1 for r in results if r["held"]) >= CLIENTS // 2


def test_leases_never_overlap_through_two_workers_on_one_file(
    pool: ProcessPoolExecutor, tmp_path: Path
) -> None:
    with ServerProcess(
        tmp_path / "cache.db", "--workers", "2", log_path=tmp_path / "log"
    ) as server:
        results = _race(pool, [server.url], seconds=2)
    wins = _assert_no_overlap(results)
    assert wins > 30, wins
    assert sum(1 for r in results if r["held"]) >= CLIENTS // 2
