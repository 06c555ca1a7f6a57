"""Entry times on PostgreSQL follow the database's clock, whatever the host's clock says.

The store samples the database's clock between two readings of the host's monotonic clock and
carries it forward by that clock (``flytecache.store.dbclock``): first the arithmetic with a
fake database and monotonic clock, then a real PostgreSQL with host clocks that are off
(``time.time``/``time.time_ns`` patched, in this process or in spawned ones).
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta

import _workers
import pytest
import sqlalchemy as sa
from _store import in_forked_child, uri_output
from conftest import FakeClock

from flytecache import CacheStore, CatalogClient, StoreSettings
from flytecache.errors import AlreadyExistsError
from flytecache.store import admin
from flytecache.store.cache import database_now
from flytecache.store.dbclock import MAX_DRIFT_PPM, RESAMPLE_NS, DatabaseClock

CTX = multiprocessing.get_context("spawn")
MS = 1_000_000  # nanoseconds
DB_AT_ZERO_NS = 1_800_000_000 * 10**9  # the fake database's time when the monotonic clock reads 0


class FakeHost:
    """A monotonic clock and a database whose clock is ``database_ahead_ns`` ahead of it; each
    query takes the next of ``round_trips`` (1 ms when none is left) and is answered at
    ``position`` of its round trip (0: as it is sent, 1: as the answer arrives)."""

    def __init__(self) -> None:
        self.mono = 5 * 10**9
        self.round_trips: list[int] = []
        self.position = 0.5
        self.reads = 0
        self.database_ahead_ns = DB_AT_ZERO_NS

    def monotonic_ns(self) -> int:
        return self.mono

    def database_us(self) -> int:
        return (self.mono + self.database_ahead_ns) // 1000

    def read(self, timer) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
        self.reads += 1
        rtt = self.round_trips.pop(0) if self.round_trips else MS
        sent = timer()
        self.mono += round(rtt * self.position)
        value = self.database_us()
        self.mono += rtt - round(rtt * self.position)
        return sent, value, timer()


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


@pytest.fixture
def db_clock(host: FakeHost) -> DatabaseClock:
    return DatabaseClock(host.read, monotonic_ns=host.monotonic_ns)


# -- the arithmetic --------------------------------------------------------------------------


def test_now_is_the_sample_plus_the_monotonic_time_since(
    host: FakeHost, db_clock: DatabaseClock
) -> None:
    """Answered at the middle of its round trip, the sample is exact, and stays exact as the
    monotonic clock advances; the error bound grows by the assumed drift."""
    assert db_clock.now_us() == host.database_us()
    assert db_clock.error_us() == 500 + 1  # half a 1 ms round trip, the database's microsecond
    host.mono += 20 * 10**9
    assert db_clock.now_us() == host.database_us()
    assert db_clock.error_us() == 500 + 1 + 20 * MAX_DRIFT_PPM  # 20 s × 500 ppm = 10 ms


@pytest.mark.parametrize("position", [0.0, 1.0])
def test_the_error_is_at_most_half_the_round_trip(
    host: FakeHost, db_clock: DatabaseClock, position: float
) -> None:
    host.position = position  # answered as sent, or as received: the worst cases
    host.round_trips = [4 * MS] * 3
    now = db_clock.now_us()
    assert abs(now - host.database_us()) == 2000 <= db_clock.error_us()


def test_the_first_reading_takes_the_best_of_three(host: FakeHost, db_clock: DatabaseClock) -> None:
    host.position = 0.0
    host.round_trips = [50 * MS, 2 * MS, 10 * MS]  # a new connection's first query is slow
    db_clock.now_us()
    assert host.reads == 3
    sample = db_clock.sample
    assert sample is not None and sample.round_trip_ns == 2 * MS
    assert abs(db_clock.now_us() - host.database_us()) <= 1000
    host.mono += RESAMPLE_NS - 1
    db_clock.now_us()
    assert host.reads == 3  # no query until the sample is due


def test_a_due_sample_is_replaced_unless_the_new_one_is_worse(
    host: FakeHost, db_clock: DatabaseClock
) -> None:
    db_clock.now_us()  # three 1 ms samples
    first = db_clock.sample
    host.mono += RESAMPLE_NS
    host.round_trips = [100 * MS]  # a slow one: 50 ms of error against 15.5 ms
    db_clock.now_us()
    assert host.reads == 4 and db_clock.sample is first
    db_clock.now_us()
    assert host.reads == 4  # the next sampling is still 30 s away, not at every call
    host.mono += RESAMPLE_NS
    db_clock.now_us()  # a fast one replaces it
    assert host.reads == 5 and db_clock.sample is not first
    assert db_clock.error_us() == 501


def test_a_step_of_the_database_clock_is_followed_at_the_next_sample(
    host: FakeHost, db_clock: DatabaseClock
) -> None:
    """A new sample that contradicts the one in use (their bounds do not overlap) is taken
    even when its round trip was slower: the database's clock stepped."""
    db_clock.now_us()
    host.mono += RESAMPLE_NS
    host.round_trips = [100 * MS]
    host.database_ahead_ns += 5 * 10**9  # the database's clock steps 5 s forward
    assert db_clock.now_us() == host.database_us()
    sample = db_clock.sample
    assert sample is not None and sample.round_trip_ns == 100 * MS


def test_an_exact_reading_serves_as_a_sample(host: FakeHost, db_clock: DatabaseClock) -> None:
    host.round_trips = [MS // 10]
    assert db_clock.read_database_us() == (host.mono - MS // 20 + DB_AT_ZERO_NS) // 1000
    assert host.reads == 1 and db_clock.error_us() == 51
    assert db_clock.now_us() == host.database_us()
    assert host.reads == 1


def test_threads_share_one_sampling(host: FakeHost) -> None:
    entered = threading.Event()
    go = threading.Event()

    def slow_read(timer):  # type: ignore[no-untyped-def]
        entered.set()
        go.wait(10)
        return host.read(timer)

    clock = DatabaseClock(slow_read, monotonic_ns=host.monotonic_ns)
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(clock.now_us())) for _ in range(8)]
    threads[0].start()
    assert entered.wait(10)
    for thread in threads[1:]:
        thread.start()
    go.set()
    for thread in threads:
        thread.join(10)
    assert len(results) == 8 and host.reads == 3  # one first sampling (best of three)
    # A due sample: the thread that samples takes the lock, the others go on with the old one.
    host.mono += RESAMPLE_NS
    go.clear()
    entered.clear()
    sampler = threading.Thread(target=clock.now_us)
    sampler.start()
    assert entered.wait(10)
    assert clock.now_us() == host.database_us()  # not blocked
    go.set()
    sampler.join(10)
    assert host.reads == 4


def test_a_forked_child_samples_with_its_own_lock(host: FakeHost) -> None:
    """A fork while a thread is sampling: the child's first reading does not wait for a lock
    that nobody in the child will release."""
    parent = os.getpid()
    go = threading.Event()

    def read(timer):  # type: ignore[no-untyped-def]
        if os.getpid() == parent:
            go.wait(10)
        return host.read(timer)

    clock = DatabaseClock(read, monotonic_ns=host.monotonic_ns)
    sampler = threading.Thread(target=clock.now_us)
    sampler.start()
    try:
        assert in_forked_child(lambda: clock.now_us() == host.database_us(), timeout=20)
    finally:
        go.set()
        sampler.join(10)


# -- on PostgreSQL ---------------------------------------------------------------------------


def _database_us(store: CacheStore) -> int:
    """The database's clock, read directly (whichever clock the store uses)."""
    with store.engine.connect() as conn:
        return int(conn.execute(sa.select(database_now())).scalar_one())


def _times(store: CacheStore, key: str) -> tuple[int, int]:
    meta = store.get(key).metadata
    return (
        meta.created_at.seconds * 10**6 + meta.created_at.nanos // 1000,
        meta.last_updated_at.seconds * 10**6 + meta.last_updated_at.nanos // 1000,
    )


@pytest.fixture
def host_clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """This process's wall clock (``time.time``, ``time.time_ns``), off by the offset in
    microseconds the test puts in the list (0 at first)."""
    offset = [0]
    real_ns = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real_ns() + offset[0] * 1000)
    monkeypatch.setattr(time, "time", lambda: (real_ns() + offset[0] * 1000) / 1e9)
    yield offset


HOUR_US = 3600 * 10**6


def test_a_host_clock_step_after_the_sample_moves_no_entry_time(
    local_pg: str, host_clock: list[int]
) -> None:
    """The host's clock steps an hour forward, then back, after the store sampled the
    database's: entries, the max_age decision, the admin tools and the client all stay on the
    database's time. With ``lease_clock="host"`` the same steps do move them."""
    with (
        CacheStore.open(local_pg) as store,
        CacheStore.open(local_pg, settings=StoreSettings(lease_clock="host")) as by_host,
    ):
        store.put("first", uri_output("s3://b/first"))  # samples the database's clock
        store.put("second", uri_output("s3://b/second"))
        for step in (HOUR_US, -HOUR_US):
            host_clock[0] = step
            key = f"after-{step}"
            before = _database_us(store)
            store.put(key, uri_output("s3://b/x"))
            after = _database_us(store)
            error = store.clock_error_us() + 2
            for written in _times(store, key):
                assert before - error <= written <= after + error
            assert before - error <= store.now_us() <= _database_us(store) + error
            with CatalogClient(local_pg) as client:  # a client opened from the URL, too
                now = client.now()
            now_us = (now - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
            assert abs(now_us - time.time_ns() // 1000) > HOUR_US - 10**6  # the host's is off
            assert before - error <= now_us <= _database_us(store) + error
            # "first" is seconds old by the database's clock, an hour by the host's.
            with pytest.raises(AlreadyExistsError):
                store.put("first", uri_output("s3://b/again"), max_age=timedelta(minutes=30))
            older = admin.EntryFilter(older_than=timedelta(minutes=30))
            assert admin.count_entries(store, older)[0] == 0
            by_host.put(f"host-{step}", uri_output("s3://b/h"))
            assert _times(by_host, f"host-{step}")[1] - after >= step - 1000
            if step > 0:  # an hour ahead, the host's clock finds the database's times old
                assert admin.count_entries(by_host, older)[0] == 3
                by_host.put("second", uri_output("s3://b/again"), max_age=timedelta(minutes=30))


def test_now_and_the_lease_clock_agree(local_pg: str) -> None:
    with CacheStore.open(local_pg) as store:
        assert store.lease_clock == "database"
        for _ in range(20):
            before = store.lease_now_us()
            now = store.now_us()
            after = store.lease_now_us()
            error = store.clock_error_us() + 2
            assert before - error <= now <= after + error


OFFSETS = [timedelta(seconds=-2), timedelta(seconds=2)]


def _skewed(url: str, lease_clock: str) -> list[dict]:
    with CacheStore.open(url) as store:
        for n in range(len(OFFSETS)):
            store.put(f"fresh-{n}", uri_output("s3://b/fresh"))
            store.put(f"old-{n}", uri_output("s3://b/old"))
    with ProcessPoolExecutor(len(OFFSETS), mp_context=CTX) as pool:
        futures = [
            pool.submit(
                _workers.skewed_entry_worker,
                url,
                offset,
                lease_clock,
                f"own-{n}",
                f"fresh-{n}",
                f"old-{n}",
            )
            for n, offset in enumerate(OFFSETS)
        ]
        return [f.result() for f in futures]


def test_skewed_hosts_write_database_times_and_agree_on_max_age(local_pg: str) -> None:
    """Two processes whose host clocks are 2 s behind and 2 s ahead: the entries they write
    carry the database's time, and both judge ``max_age=1.5s`` the database's way: an
    entry 0 s old is kept, one 3 s old replaced."""
    for result, offset in zip(_skewed(local_pg, "database"), OFFSETS, strict=True):
        assert abs(result["skew_us"] - offset // timedelta(microseconds=1)) < 200_000
        error = result["error_us"] + 2
        assert result["created"] == result["updated"]
        assert result["before"] - error <= result["updated"] <= result["after"] + error
        assert (result["fresh"], result["old"]) == ("exists", "replaced")


def test_the_same_skew_with_the_host_clock_moves_entry_times(local_pg: str) -> None:
    """The checks above can fail: with each host's clock deciding, the entries carry the
    skew and the host 2 s ahead replaces the entry that is 0 s old."""
    behind, ahead = _skewed(local_pg, "host")
    for result, offset in ((behind, OFFSETS[0]), (ahead, OFFSETS[1])):
        shift = offset // timedelta(microseconds=1)
        assert result["before"] + shift - 1000 <= result["updated"] <= result["after"] + shift
        assert result["error_us"] == 0
    assert ahead["fresh"] == "replaced"


def test_a_forked_child_keeps_the_sample(local_pg: str) -> None:
    with CacheStore.open(local_pg) as store:
        store.put("parent", uri_output("s3://b/p"))  # samples
        before = _database_us(store)

        def child() -> bool:
            store.put("child", uri_output("s3://b/c"))
            return True

        assert in_forked_child(child)
        after = _database_us(store)
        error = store.clock_error_us() + 2
        for written in _times(store, "child"):
            assert before - error <= written <= after + error


# -- unchanged: SQLite and injected clocks ---------------------------------------------------


FIXED_US = 1_900_000_000_123_456


@pytest.fixture
def fixed_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """This process's wall clock stopped at ``FIXED_US``."""
    monkeypatch.setattr(time, "time_ns", lambda: FIXED_US * 1000)
    monkeypatch.setattr(time, "time", lambda: FIXED_US / 1e6)


def test_sqlite_and_the_host_setting_use_the_host_clock(
    db_path: str, migrated_pg_url: str, fixed_host: None
) -> None:
    settings = StoreSettings(lease_clock="host")
    for url, s in ((db_path, StoreSettings()), (migrated_pg_url, settings)):
        with CacheStore.open(url, settings=s) as store:
            store.put("key", uri_output("s3://b/1"))
            assert _times(store, "key") == (FIXED_US, FIXED_US)
            assert store.now_us() == store.lease_now_us() == FIXED_US
            assert store.clock_error_us() == 0


@pytest.mark.parametrize("lease_clock", ["auto", "database"])
def test_an_injected_clock_still_times_entries(
    migrated_pg_url: str, clock: FakeClock, lease_clock: str
) -> None:
    settings = StoreSettings(lease_clock=lease_clock)  # type: ignore[arg-type]
    with CacheStore.open(migrated_pg_url, settings=settings, clock=clock) as store:
        store.put("key", uri_output("s3://b/1"))
        expected = (clock.now - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
        assert _times(store, "key") == (expected, expected)
        assert store.now_us() == expected
        assert store.clock_error_us() == 0
