"""get_or_compute: one computation per key across real processes, takeover after a crash."""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import timedelta
from pathlib import Path

import _catalog
import pytest
from _catalog import literal_map, make_key

from flytecache import CacheStore, CatalogClient
from flytecache.errors import DeadlineExceededError

CTX = multiprocessing.get_context("spawn")


def test_hit_returns_without_computing(store: CacheStore) -> None:
    client = CatalogClient(store)
    client.put(make_key(), literal_map(o=1))
    entry = client.get_or_compute(make_key(), lambda: pytest.fail("must not compute"))
    assert entry.outputs == literal_map(o=1)


def test_miss_computes_stores_and_releases(store: CacheStore) -> None:
    client = CatalogClient(store)
    entry = client.get_or_compute(make_key(), lambda: literal_map(o=7), owner_id="me")
    assert entry.outputs == literal_map(o=7)
    assert client.get(make_key()).outputs == literal_map(o=7)
    # Released: another owner gets the lease at once.
    assert client.get_or_extend_reservation(make_key(), "other").owner_id == "other"


def test_compute_error_releases_and_reraises_then_retry_works(store: CacheStore) -> None:
    client = CatalogClient(store)

    def boom():
        raise RuntimeError("task failed")

    with pytest.raises(RuntimeError, match="task failed"):
        client.get_or_compute(make_key(), boom, owner_id="me")
    assert client.get_or_extend_reservation(make_key(), "other").owner_id == "other"
    client.release_reservation(make_key(), "other")
    assert client.get_or_compute(make_key(), lambda: literal_map(o=1)).outputs == literal_map(o=1)


def test_waiter_times_out_while_another_owner_holds(store: CacheStore) -> None:
    client = CatalogClient(store)
    client.get_or_extend_reservation(make_key(), "holder", timedelta(seconds=10))
    with pytest.raises(DeadlineExceededError, match="holder"):
        client.get_or_compute(
            make_key(),
            lambda: literal_map(o=1),
            poll_interval=timedelta(milliseconds=20),
            timeout=timedelta(milliseconds=200),
        )


def test_six_processes_compute_exactly_once(db_path: str, tmp_path: Path) -> None:
    CacheStore.open(db_path).close()
    log = tmp_path / "computed.log"
    with CTX.Manager() as manager:
        barrier = manager.Barrier(6)
        with ProcessPoolExecutor(6, mp_context=CTX) as pool:
            results = list(
                pool.map(
                    _catalog.compute_worker, [db_path] * 6, [str(log)] * 6, [0.5] * 6, [barrier] * 6
                )
            )
    assert results == [42] * 6
    assert len(log.read_text().splitlines()) == 1


def test_killed_owner_is_taken_over_after_its_lease_expires(db_path: str, tmp_path: Path) -> None:
    CacheStore.open(db_path).close()
    started = tmp_path / "started"
    owner = CTX.Process(target=_catalog.slow_owner, args=(db_path, str(started)))
    owner.start()
    try:
        deadline = time.monotonic() + 60
        while not started.exists():
            assert time.monotonic() < deadline, "the owner never started computing"
            time.sleep(0.02)
        os.kill(owner.pid, signal.SIGKILL)
    finally:
        owner.join()
    log = tmp_path / "computed.log"
    value = _catalog.compute_worker(db_path, str(log), 0.0)
    assert value == 42
    assert len(log.read_text().splitlines()) == 1


def test_processes_compute_exactly_once_through_the_server(cache_server, tmp_path: Path) -> None:
    with CacheStore.open(cache_server.database) as store, store.engine.begin() as conn:
        conn.exec_driver_sql("DELETE FROM entries")
        conn.exec_driver_sql("DELETE FROM reservations")
    log = tmp_path / "computed.log"
    with CTX.Manager() as manager:
        barrier = manager.Barrier(4)
        with ProcessPoolExecutor(4, mp_context=CTX) as pool:
            results = list(
                pool.map(
                    _catalog.compute_worker,
                    [cache_server.url] * 4,
                    [str(log)] * 4,
                    [0.5] * 4,
                    [barrier] * 4,
                )
            )
    assert results == [42] * 4
    assert len(log.read_text().splitlines()) == 1
