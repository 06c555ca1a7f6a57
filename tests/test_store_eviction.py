"""Size limits with eviction (SPEC §9) on both backends: the limit holds while writing far past
it, reserved keys stay, least-recently-used order is honoured, reads never write, and a
SIGKILL in the middle of a batch loses nothing."""

from __future__ import annotations

import os
import signal
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _store import query, wait_until
from conftest import FakeClock
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2

from flytecache import CacheStore, StoreSettings
from flytecache.errors import NotFoundError, StorageBusyError
from flytecache.store import eviction, evictor

SIZE = 1_000


def output(n: int = SIZE) -> cs.CachedOutput:
    literals = literals_pb2.LiteralMap()
    literals.literals["o"].scalar.binary.value = os.urandom(n)
    return cs.CachedOutput(output_literals=literals)


ONE = len(output().output_literals.SerializeToString())
"""The payload bytes (``entries.size``) of one ``output()``."""


@pytest.fixture
def no_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Evict only when the test says so (``run_once``): no background thread."""
    monkeypatch.setattr(evictor.Evictor, "_start", lambda self: None)


def limited(url: str, clock: FakeClock | None = None, **settings: Any) -> CacheStore:
    return CacheStore.open(url, clock=clock, settings=StoreSettings(**settings))


def keys(store: CacheStore) -> set[str]:
    return {row[0] for row in query(store, "SELECT key FROM entries")}


def fill(store: CacheStore, clock: FakeClock | None, names: list[str]) -> None:
    for name in names:
        store.put(name, output())
        if clock is not None:
            clock.advance(timedelta(seconds=1))


@pytest.mark.usefixtures("no_thread")
def test_limit_holds_oldest_go_first(db_url: str, clock: FakeClock) -> None:
    with limited(db_url, clock, max_size_bytes=20 * ONE) as store:
        assert store.evictor is not None
        fill(store, clock, [f"k{i:03}" for i in range(100)])
        assert store.evictor.run_once() is True
        entries, size = eviction.totals(store)
        # Down to the low-water mark (90 % of 20 entries), newest kept.
        assert size <= 20 * ONE * eviction.LOW_WATER
        assert keys(store) == {f"k{i:03}" for i in range(100 - entries, 100)}
        assert store.evictor.run_once() is None  # under the limit: nothing to do
        stats = store.evictor.stats.snapshot()
        assert stats["evicted_entries"] == 100 - entries
        assert stats["evicted_bytes"] == (100 - entries) * ONE
        assert stats["eviction_batches"] >= 1


@pytest.mark.usefixtures("no_thread")
def test_entry_count_limit(db_url: str, clock: FakeClock) -> None:
    with limited(db_url, clock, max_entries=10) as store:
        fill(store, clock, [f"k{i:03}" for i in range(30)])
        assert store.evictor is not None
        store.evictor.run_once()
        assert keys(store) == {f"k{i:03}" for i in range(21, 30)}  # 9 = 90 % of 10


def test_background_evictor_keeps_the_limit_while_writing_past_it(db_url: str) -> None:
    limit = 50 * ONE
    with limited(db_url, max_size_bytes=limit) as store:
        for i in range(1000):  # 20x the limit
            store.put(f"k{i}", output())
        assert store.evictor is not None
        deadline = time.monotonic() + 30
        while eviction.totals(store)[1] > limit and time.monotonic() < deadline:
            time.sleep(0.05)
        assert eviction.totals(store)[1] <= limit
        assert store.get("k999").output_literals.literals["o"].scalar.binary.value
        assert store.evictor.stats.snapshot()["evicted_entries"] >= 900


@pytest.mark.usefixtures("no_thread")
def test_live_reservations_keep_their_entries_expired_ones_do_not(
    db_url: str, clock: FakeClock
) -> None:
    with limited(db_url, clock, max_entries=10) as store:
        fill(store, clock, ["live", "expired", "free"])
        store.get_or_extend_reservation("live", "worker-a", timedelta(seconds=10))
        store.get_or_extend_reservation("expired", "worker-b", timedelta(seconds=1))
        clock.advance(timedelta(seconds=5))  # worker-b's lease (3 s) has expired
        fill(store, clock, [f"k{i:03}" for i in range(20)])
        assert store.evictor is not None
        store.evictor.run_once()
        remaining = keys(store)
        assert "live" in remaining
        assert "expired" not in remaining and "free" not in remaining
        assert len(remaining) == 9


@pytest.mark.usefixtures("no_thread")
def test_scoped_reservations_protect_scoped_entries(db_url: str, clock: FakeClock) -> None:
    # What the server and the CatalogClient store: both scope entries and leases alike.
    from flytecache.scoping import Scope, ScopedStore

    with limited(db_url, clock, max_entries=2) as store:
        scoped = ScopedStore(store)
        scope = Scope(project="p", domain="d")
        scoped.put(scope, "old", output())
        clock.advance(timedelta(seconds=1))
        lease = scoped.get_or_extend_reservation(scope, "old", "me")
        assert lease.key == "reservation:p-d-old"
        fill(store, clock, ["a", "b", "c"])
        assert store.evictor is not None
        store.evictor.run_once()
        assert scoped.get(scope, "old")
        assert keys(store) == {"p-d-old"}  # 2 x 90 % = 1 entry left: the reserved one


@pytest.mark.usefixtures("no_thread")
def test_everything_reserved_evicts_nothing(db_url: str, clock: FakeClock) -> None:
    with limited(db_url, clock, max_entries=1) as store:
        fill(store, clock, ["a", "b"])
        for key in ("a", "b"):
            store.get_or_extend_reservation(key, "me")
        assert store.evictor is not None
        assert store.evictor.run_once() is False
        assert keys(store) == {"a", "b"}


@pytest.mark.usefixtures("no_thread")
def test_least_recently_used_order(db_url: str, clock: FakeClock) -> None:
    with limited(db_url, clock, max_entries=10, eviction="least-recently-used") as store:
        names = [f"k{i}" for i in range(10)]
        fill(store, clock, names)
        for name in ("k0", "k1"):
            store.get(name)
            clock.advance(timedelta(seconds=1))
        fill(store, clock, ["n0", "n1", "n2"])  # 13 entries: 4 must go to reach 9
        assert store.evictor is not None
        store.evictor.run_once()
        # The unread oldest went first; k0 and k1, read after k9's put, rank between k9
        # and n0.
        assert keys(store) == {"k6", "k7", "k8", "k9", "k0", "k1", "n0", "n1", "n2"}


@pytest.mark.usefixtures("no_thread")
def test_least_recently_stored_ignores_reads(db_url: str, clock: FakeClock) -> None:
    with limited(db_url, clock, max_entries=10) as store:
        fill(store, clock, [f"k{i}" for i in range(10)])
        store.get("k0")
        fill(store, clock, ["n0"])
        assert store.evictor is not None
        assert store.evictor.hits is None  # nothing recorded
        store.evictor.run_once()
        assert "k0" not in keys(store) and "k1" not in keys(store)


@pytest.mark.usefixtures("no_thread")
def test_reads_never_write_recency_is_flushed_in_batches(
    db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evictor, "FLUSH_BATCH", 7)
    with limited(db_url, clock, max_entries=1000, eviction="least-recently-used") as store:
        names = [f"k{i:02}" for i in range(20)]
        fill(store, clock, names)
        for name in names:
            store.get(name)
        store.get(names[0])  # read again: one pending time per key, the latest
        assert query(store, "SELECT count(*) FROM entries WHERE accessed_at IS NOT NULL") == [(0,)]
        assert store.evictor is not None
        transactions: list[int] = []
        real = store.pool.transaction

        def counting(*, write: bool) -> object:
            transactions.append(write)
            return real(write=write)

        monkeypatch.setattr(store.pool, "transaction", counting)
        assert store.evictor.flush_hits() == 20
        assert transactions == [True, True, True]  # 20 keys, 7 per transaction
        now = store.now_us()
        assert query(store, "SELECT count(*) FROM entries WHERE accessed_at = " + str(now)) == [
            (20,)
        ]
        assert store.evictor.flush_hits() == 0


@pytest.mark.usefixtures("no_thread")
def test_pending_reads_are_bounded(
    db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(evictor, "MAX_PENDING_HITS", 3)
    with limited(db_url, clock, max_entries=1000, eviction="least-recently-used") as store:
        fill(store, clock, ["a", "b", "c", "d"])
        for name in ("a", "b", "c", "d", "a"):
            store.get(name)
        assert store.evictor is not None and store.evictor.hits is not None
        assert set(store.evictor.hits) == {"a", "b", "c"}
        assert store.evictor.stats.snapshot()["recency_dropped"] == 1


def test_no_limit_no_evictor(db_url: str) -> None:
    with CacheStore.open(db_url) as store:
        assert store.evictor is None
        store.put("k", output())
        store.get("k")
        assert query(store, "SELECT accessed_at FROM entries") == [(None,)]


@pytest.mark.usefixtures("no_thread")
def test_a_batch_rechecks_victims_touched_after_they_were_chosen(
    db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with limited(db_url, clock, max_entries=2) as store:
        fill(store, clock, ["a", "b", "c"])
        real = store.pool.fetchall
        rewritten = []

        def rewrite_after_choosing(sql: object, params: dict[str, object]) -> object:
            rows = real(sql, params)  # type: ignore[arg-type]
            if "limit" in params and not rewritten:
                rewritten.append(True)
                store.put("a", output(), overwrite=True)  # now the newest
            return rows

        monkeypatch.setattr(store.pool, "fetchall", rewrite_after_choosing)
        assert store.evictor is not None
        store.evictor.run_once()
        assert "a" in keys(store)
        assert keys(store) <= {"a", "c"}


def _evict_until_killed(url: str, marker: Path) -> None:
    """Child: evict with a batch that stops after its DELETE, before COMMIT."""

    def stop_in_batch(rows: list[object]) -> None:
        marker.write_text("\n".join(str(row[0]) for row in rows))
        time.sleep(60)

    eviction._in_batch = stop_in_batch  # type: ignore[assignment]
    with CacheStore.open(url, settings=StoreSettings(max_entries=10)) as store:
        assert store.evictor is not None
        store.evictor.run_once()


def test_sigkill_during_an_eviction_batch_loses_nothing(
    db_url: str, tmp_path: Path, no_thread: None
) -> None:
    with CacheStore.open(db_url) as store:
        written = {f"k{i:03}": output() for i in range(50)}
        for key, value in written.items():
            store.put(key, value)
    marker = tmp_path / "in-batch"
    pid = os.fork()
    if pid == 0:  # child: never return into the test runner
        try:
            _evict_until_killed(db_url, marker)
        finally:
            os._exit(0)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    victims = marker.read_text().split()
    assert len(victims) == 41  # chosen and deleted, not committed
    # Five minutes from now: the killed evictor's lease (30 s) has expired by then.
    clock = FakeClock(datetime.now(UTC) + timedelta(minutes=5))
    with CacheStore.open(db_url, clock=clock) as store:
        # Every entry is intact, the batch's victims included (its transaction never
        # committed); nothing else was touched.
        assert keys(store) == set(written)
        for key, value in written.items():
            assert store.get(key).output_literals == value.output_literals
        # The killed evictor's lease expires like any other; then eviction works again.
        result = eviction.evict(store, max_entries=10, wait=timedelta(seconds=5))
        assert result.entries == 40 and len(keys(store)) == 10


@pytest.mark.usefixtures("no_thread")
def test_a_second_evictor_waits_for_the_lease(db_url: str, clock: FakeClock) -> None:
    with limited(db_url, clock, max_entries=5) as store:
        fill(store, clock, [f"k{i}" for i in range(10)])
        store.get_or_extend_reservation(eviction.LEASE_KEY, "someone-else")
        assert store.evictor is not None
        assert store.evictor.run_once() is False  # another evictor holds the lease
        assert len(keys(store)) == 10
        clock.advance(timedelta(minutes=1))
        assert store.evictor.run_once() is True
        assert len(keys(store)) == 4


def test_plan_counts_what_evict_removes(db_url: str, clock: FakeClock) -> None:
    with CacheStore.open(db_url, clock=clock) as store:
        fill(store, clock, [f"k{i:02}" for i in range(30)])
        store.get_or_extend_reservation("k00", "me")
        planned = eviction.plan(store, max_bytes=10 * ONE)
        assert (planned.entries, planned.bytes, planned.dry_run) == (20, 20 * ONE, True)
        assert len(keys(store)) == 30
        done = eviction.evict(store, max_bytes=10 * ONE, batch_size=7)
        assert (done.entries, done.bytes, done.batches) == (20, 20 * ONE, 3)
        assert done.remaining_bytes == 10 * ONE and "k00" in keys(store)
        with pytest.raises(NotFoundError):
            store.get("k01")


@pytest.mark.usefixtures("no_thread")
def test_a_flush_rewrites_read_times_older_than_the_resolution_only(
    db_url: str, clock: FakeClock
) -> None:
    with limited(db_url, clock, max_entries=10, eviction="least-recently-used") as store:
        evictor = store.evictor
        assert evictor is not None
        assert evictor._resolution_us == 0  # before any eviction: every read is written
        fill(store, clock, [f"k{i:02}" for i in range(12)])
        evictor.run_once()  # victims 1..3 s older than now: resolution a tenth of that
        assert 0 < evictor._resolution_us <= 1_000_000
        evictor._resolution_us = 10_000_000
        store.get("k11")
        evictor.flush_hits()
        first = query(store, "SELECT accessed_at FROM entries WHERE key = 'k11'")
        clock.advance(timedelta(seconds=5))
        store.get("k11")
        evictor.flush_hits()  # within the resolution: not rewritten
        assert query(store, "SELECT accessed_at FROM entries WHERE key = 'k11'") == first
        clock.advance(timedelta(seconds=6))
        store.get("k11")
        evictor.flush_hits()
        assert query(store, "SELECT accessed_at FROM entries WHERE key = 'k11'") == [
            (store.now_us(),)
        ]


def _write_with_a_limit(url: str, name: str, count: int) -> None:
    """Child: a store of its own with a limit (and so an evictor thread), putting ``count``."""
    with CacheStore.open(url, settings=StoreSettings(max_entries=50)) as store:
        for i in range(count):
            store.put(f"{name}-{i:04}", output(100))


def test_processes_sharing_a_database_keep_the_limit_without_over_evicting(
    db_url: str,
) -> None:
    CacheStore.open(db_url).close()
    pids = []
    for name in ("a", "b", "c"):
        pid = os.fork()
        if pid == 0:  # child: never return into the test runner
            code = 1
            try:
                _write_with_a_limit(db_url, name, 300)
                code = 0
            finally:
                os._exit(code)
        pids.append(pid)
    lowest = None
    with CacheStore.open(db_url) as store:
        running = set(pids)
        while running:
            count = eviction.totals(store)[0]
            if count > 50 or lowest is not None:
                # Once past the limit, racing evictors never take it below the low-water mark
                # (one evictor at a time; a round stops at its target).
                lowest = count if lowest is None else min(lowest, count)
            for pid in list(running):
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    assert os.waitstatus_to_exitcode(status) == 0
                    running.discard(pid)
            time.sleep(0.01)
    assert lowest is not None and lowest >= 45
    with limited(db_url, max_entries=50) as store:
        assert store.evictor is not None
        store.evictor.run_once()  # the writers' last puts may have come after their last round
        assert 45 <= eviction.totals(store)[0] <= 50


def test_a_prune_that_loses_the_eviction_lease_stops(
    db_url: str, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flytecache.errors import StorageBusyError

    # Check the lease after every batch (not every third of its time).
    monkeypatch.setattr(eviction.EvictionLease, "keep", lambda self: self.acquire() is None)
    with CacheStore.open(db_url, clock=clock) as store:
        fill(store, clock, [f"k{i}" for i in range(10)])

        def steal(*_: object) -> None:
            clock.advance(timedelta(minutes=1))  # our lease has expired: another evictor's now
            store.get_or_extend_reservation(eviction.LEASE_KEY, "another-evictor")

        with pytest.raises(StorageBusyError, match="took the eviction lease over"):
            eviction.evict(store, max_entries=0, batch_size=2, on_batch=steal)
        assert len(keys(store)) == 8  # the one batch before the loss
        holder = store.get_or_extend_reservation(eviction.LEASE_KEY, "me")
        assert holder.owner_id == "another-evictor"  # not released by the loser


def test_nowait_puts_never_wait_for_the_eviction_turn(tmp_path: Path) -> None:
    """The server's event loop puts through ``nowait()``: while this process's evictor holds
    the write turn, such a put is refused at once (and writes nothing) instead of waiting."""
    with limited(str(tmp_path / "c.db"), max_size_bytes=100 * ONE) as store:
        loop_store = store.nowait()
        evictor = store.evictor
        assert evictor is not None
        # An eviction batch is writing:
        with evictor.gate, pytest.raises(StorageBusyError, match="eviction batch"):
            loop_store.put("refused", output())
        with pytest.raises(NotFoundError):
            store.get("refused")
        loop_store.put("later", output())  # the turn is free again
        assert store.get("later").output_literals == loop_store.get("later").output_literals


def test_nowait_puts_go_elsewhere_when_eviction_is_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where a put would wait for the evictor (backpressure), ``nowait()`` refuses it before
    writing. Simulated (``behind`` patched): a real evictor catches up too fast to be caught
    behind deterministically."""
    with limited(str(tmp_path / "c.db"), max_size_bytes=100 * ONE) as store:
        monkeypatch.setattr(evictor.Evictor, "behind", lambda self: True)
        with pytest.raises(StorageBusyError, match="behind"):
            store.nowait().put("refused", output())
        with pytest.raises(NotFoundError):
            store.get("refused")
        store.put("waits", output())  # a put that may wait is never refused for it


def test_reserved_entries_over_the_limit_do_not_switch_eviction_off(tmp_path: Path) -> None:
    """Entries whose keys hold live leases may alone pass the limit; the others must still go
    promptly. (A round that found only reserved entries used to pause a whole tick, during
    which unthrottled puts ran the count to many times the limit.)"""
    with limited(str(tmp_path / "c.db"), max_entries=20) as store:
        for n in range(30):
            store.get_or_extend_reservation(f"held-{n}", "owner", timedelta(seconds=60))
            store.put(f"held-{n}", output(10))
        peak = 0
        for n in range(3_000):
            store.put(f"free-{n}", output(10))
            if n % 25 == 0:
                peak = max(peak, query(store, "SELECT count(*) FROM entries")[0][0])
        assert peak < 30 + 1_000, peak  # a tick's worth of puts went to ~3,000
        wait_until(lambda: query(store, "SELECT count(*) FROM entries")[0][0] == 30)
        assert keys(store) == {f"held-{n}" for n in range(30)}  # the leases kept theirs
