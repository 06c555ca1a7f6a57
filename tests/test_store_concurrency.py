"""Mutual exclusion and durability under real concurrent processes on one SQLite file."""

from __future__ import annotations

import itertools
import multiprocessing
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor

import _workers

from flytecache import CacheStore

CTX = multiprocessing.get_context("spawn")


def _assert_no_overlap(results: list[dict]) -> int:
    by_key: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    wins = 0
    for result in results:
        assert result["busy"] == 0, f"{result['owner']} saw StorageBusyError"
        for key, start, end, overran in result["held"]:
            wins += 1
            if not overran:
                by_key[key].append((start, end, result["owner"]))
    for key, intervals in by_key.items():
        intervals.sort()
        for (s1, e1, o1), (s2, e2, o2) in itertools.pairwise(intervals):
            assert e1 < s2 or o1 == o2, f"{o1} and {o2} both held {key}: {(s1, e1)} {(s2, e2)}"
    return wins


def test_leases_never_overlap_across_processes(db_url: str) -> None:
    db_path = db_url
    CacheStore.open(db_path).close()
    keys = [f"hot-{i}" for i in range(5)]
    with ProcessPoolExecutor(8, mp_context=CTX) as pool:
        futures = [
            pool.submit(_workers.lease_worker, db_path, f"owner-{n}", keys, 500, n)
            for n in range(8)
        ]
        results = [f.result() for f in futures]
    wins = _assert_no_overlap(results)
    assert wins > 100  # the race really happened


def test_puts_from_many_processes_are_all_readable(db_url: str) -> None:
    db_path = db_url
    CacheStore.open(db_path).close()
    with ProcessPoolExecutor(8, mp_context=CTX) as pool:
        busy = list(
            pool.map(_workers.put_worker, [db_path] * 8, [f"p{n}" for n in range(8)], [500] * 8)
        )
    assert busy == [0] * 8
    with CacheStore.open(db_path) as store:
        for n in range(8):
            for i in range(500):
                out = store.get(f"p{n}-{i}")
                assert out.output_literals.literals["o"].scalar.primitive.string_value == (
                    f"p{n}-{i}"
                )


def test_many_processes_open_a_brand_new_postgres_database_at_once(pg_url: str) -> None:
    with CTX.Manager() as manager:
        barrier = manager.Barrier(8)
        with ProcessPoolExecutor(8, mp_context=CTX) as pool:
            results = list(pool.map(_workers.open_worker, [pg_url] * 8, [barrier] * 8))
    assert results == ["ok"] * 8
    with CacheStore.open(pg_url, migrate=False) as store, store.engine.connect() as conn:
        assert conn.exec_driver_sql("select count(*) from alembic_version").scalar() == 1


def test_many_processes_open_a_brand_new_file_at_once(tmp_path) -> None:
    path = str(tmp_path / "new.db")
    with CTX.Manager() as manager:
        barrier = manager.Barrier(8)
        with ProcessPoolExecutor(8, mp_context=CTX) as pool:
            results = list(pool.map(_workers.open_worker, [path] * 8, [barrier] * 8))
    assert results == ["ok"] * 8
    import sqlite3

    with sqlite3.connect(path) as conn:
        assert conn.execute("select count(*) from alembic_version").fetchone() == (1,)
    conn.close()


def test_gets_see_whole_versions_while_a_payload_moves_between_row_and_outputs(
    db_url: str,
) -> None:
    """A get of a spilled payload takes two statements; a writer that makes the entry inline,
    spilled again or deleted between them never shows a reader half of a change."""
    from flytecache.errors import NotFoundError
    from flytecache.store.codec import SPILL_BYTES

    with CacheStore.open(db_url) as store:
        manager = CTX.Manager()
        started = manager.Event()
        with ProcessPoolExecutor(1, mp_context=CTX) as pool:
            writer = pool.submit(_workers.flip_worker, db_url, "flip", 3_000, started)
            assert started.wait(60)
            seen = defaultdict(int)
            while not writer.done():
                try:
                    value = store.get("flip").output_literals.literals["o"]
                except NotFoundError:
                    seen["absent"] += 1
                    continue
                text = value.scalar.primitive.string_value
                version = int(text.split(":")[0])
                # Each version is whole: its size class is the one it was written with.
                assert version % 3 != 2
                assert len(text) == (SPILL_BYTES * 2 if version % 3 == 1 else 10), version
                seen["spilled" if version % 3 == 1 else "inline"] += 1
            assert writer.result() == 3_000
        manager.shutdown()
    assert seen["spilled"] and seen["inline"]  # both paths were read while the writer ran
