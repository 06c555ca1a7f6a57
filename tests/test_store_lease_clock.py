"""One clock for leases on PostgreSQL: the database's decides, whatever the hosts' clocks say.

Each process plays a host whose clock is off by a fixed offset: the store's injected clock.
With ``lease_clock="database"`` that clock decides nothing about leases; with ``"host"`` it
decides everything, and a skew larger than a lease lets a process take a live lease over.
"""

from __future__ import annotations

import multiprocessing
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from datetime import UTC, datetime, timedelta

import _workers
import pytest
from _store import uri_output
from conftest import FakeClock
from typer.testing import CliRunner

from flytecache import CacheStore, StoreSettings
from flytecache.cli import app
from flytecache.errors import InvalidArgumentError
from flytecache.store import admin

CTX = multiprocessing.get_context("spawn")
HB = timedelta(seconds=10)
LEASE = HB * 3  # the default grace multiplier
US = timedelta(microseconds=1)


def _us(lease) -> int:  # type: ignore[no-untyped-def]
    return int(lease.expires_at.seconds * 10**6 + lease.expires_at.nanos // 1000)


class Skewed:
    """A host clock off the real one by ``offset``."""

    def __init__(self, offset: timedelta) -> None:
        self.offset = offset

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


# -- the setting -----------------------------------------------------------------------------


def test_setting_is_validated_and_read_from_the_environment() -> None:
    assert StoreSettings().lease_clock == "auto"
    with pytest.raises(InvalidArgumentError, match=r"lease_clock must be 'auto', 'database'"):
        StoreSettings(lease_clock="wall")  # type: ignore[arg-type]
    env = {"FLYTECACHE_LEASE_CLOCK": " Database "}
    assert StoreSettings.from_env(env).lease_clock == "database"
    with pytest.raises(InvalidArgumentError, match="lease_clock must be"):
        StoreSettings.from_env({"FLYTECACHE_LEASE_CLOCK": "ntp"})


def test_sqlite_has_only_the_host_clock(tmp_path, clock: FakeClock) -> None:
    path = tmp_path / "cache.db"
    for setting in ("auto", "host"):
        with CacheStore.open(path, settings=StoreSettings(lease_clock=setting)) as store:
            assert store.lease_clock == "host"
    path.unlink()
    with pytest.raises(InvalidArgumentError, match=r"lease_clock='database' needs PostgreSQL"):
        CacheStore.open(path, settings=StoreSettings(lease_clock="database"))
    assert not path.exists()  # refused before anything was created


@pytest.mark.parametrize(
    ("setting", "injected", "expected"),
    [
        ("auto", False, "database"),
        ("auto", True, "host"),  # a test's fake clock keeps deciding
        ("database", True, "database"),  # an injected clock then times entries only
        ("database", False, "database"),
        ("host", False, "host"),
    ],
)
def test_which_clock_decides_on_postgresql(
    migrated_pg_url: str, clock: FakeClock, setting: str, injected: bool, expected: str
) -> None:
    settings = StoreSettings(lease_clock=setting)  # type: ignore[arg-type]
    with CacheStore.open(
        migrated_pg_url, settings=settings, clock=clock if injected else None
    ) as store:
        assert store.lease_clock == expected


# -- the database's clock decides, the host's is ignored ------------------------------------


def test_leases_carry_the_database_time_not_the_injected_clock(local_pg: str) -> None:
    """The injected clock (a day ahead) times entries only; every lease time, and every
    expiry judgement of the admin tools, is the database's."""
    clock = FakeClock(datetime.now(UTC) + timedelta(days=1))
    settings = StoreSettings(lease_clock="database")
    with CacheStore.open(local_pg, settings=settings, clock=clock) as store:
        store.put("entry", uri_output("s3://b/1"))
        assert store.get("entry").metadata.last_updated_at.ToDatetime(UTC) == clock.now
        before = store.lease_now_us()
        lease = store.get_or_extend_reservation("key", "A", HB)
        after = store.lease_now_us()
        assert before + LEASE // US <= _us(lease) <= after + LEASE // US
        again = store.get_or_extend_reservation("key", "B", HB)  # the holder's lease, as stored
        assert (again.owner_id, _us(again)) == ("A", _us(lease))
        # The admin tools judge expiry by the same clock: a host clock a day ahead would
        # call the lease expired and gc would delete it from under its holder.
        assert admin.get_reservation(store, "key").active
        assert admin.gc_reservations(store) == 0
        assert store.get_or_extend_reservation("key", "B", HB).owner_id == "A"


@pytest.mark.parametrize("lease_clock", ["database", "host"])
def test_a_host_clock_ahead_by_more_than_a_lease(local_pg: str, lease_clock: str) -> None:
    """Two replicas, one's clock ahead of the other's by more than a lease: with the host
    clock the fast one takes a live lease over at once (two holders); with the database's it
    gets the holder's lease back."""
    settings = StoreSettings(lease_clock=lease_clock)  # type: ignore[arg-type]
    with (
        CacheStore.open(local_pg, settings=settings, clock=Skewed(timedelta(0))) as a,
        CacheStore.open(local_pg, settings=settings, clock=Skewed(LEASE * 2)) as fast,
    ):
        assert a.get_or_extend_reservation("key", "A", HB).owner_id == "A"
        taken = fast.get_or_extend_reservation("key", "B", HB).owner_id
    assert taken == ("A" if lease_clock == "database" else "B")


# -- the acceptance scenario -----------------------------------------------------------------

OFFSETS = [timedelta(seconds=-2 + 4 * n / 7) for n in range(8)]  # -2 s .. +2 s


def _run(url: str, lease_clock: str, seconds: float) -> list[dict]:
    keys = ["hot-0", "hot-1", "hot-2"]
    with CTX.Manager() as manager, ProcessPoolExecutor(8, mp_context=CTX) as pool:
        start = manager.Barrier(len(OFFSETS), timeout=120)
        futures = [
            pool.submit(
                _workers.skewed_lease_worker, url, n, offset, keys, start, seconds, lease_clock
            )
            for n, offset in enumerate(OFFSETS)
        ]
        return [f.result() for f in futures]


def _overlaps(results: list[dict]) -> list[tuple]:
    by_key: dict[str, list[tuple[int, int, str, str]]] = defaultdict(list)
    for result in results:
        for key, start, end, owner, how in result["intervals"]:
            by_key[key].append((start, end, owner, how))
    found = []
    for key, intervals in by_key.items():
        intervals.sort()
        for i, b in enumerate(intervals):
            found += [(key, a, b) for a in intervals[:i] if a[1] > b[0] and a[2] != b[2]]
    return found


def _outcomes(results: list[dict]) -> dict[str, int]:
    total: dict[str, int] = defaultdict(int)
    for result in results:
        for name, count in result["outcomes"].items():
            total[name] += count
    return total


def test_skewed_replicas_never_overlap_with_the_database_clock(local_pg: str) -> None:
    """8 processes × 3 threads, three hot keys, 50–200 ms heartbeats, host clocks from −2 s
    to +2 s: no two owners ever believe they hold one key at once, including across the
    takeovers of leases their holders abandoned."""
    results = _run(local_pg, "database", seconds=3)
    for result, offset in zip(results, OFFSETS, strict=True):
        assert result["lease_clock"] == "database"
        assert abs(result["skew_us"] - offset // US) < 200_000  # the skew was in force
    assert _overlaps(results) == []
    outcomes = _outcomes(results)
    # The race really happened, including takeovers of crashed holders' expired leases
    # (where a host clock ahead would have taken over early).
    assert sum(len(r["intervals"]) for r in results) > 20
    assert outcomes["taken_over"] > 0 and outcomes["held_by_other"] > 100, outcomes


def test_the_same_skew_with_the_host_clock_produces_overlaps(local_pg: str) -> None:
    """The audit above can see a double holder: with each host's clock deciding, a process
    ahead by up to 4 s takes over leases of 150–600 ms that are still live."""
    results = _run(local_pg, "host", seconds=1)
    assert all(result["lease_clock"] == "host" for result in results)
    assert _overlaps(results)


def test_serve_refuses_the_database_clock_on_sqlite(tmp_path) -> None:
    db = tmp_path / "cache.db"
    result = CliRunner().invoke(app, ["serve", "--db", str(db), "--lease-clock", "database"])
    assert result.exit_code == 1
    assert "lease_clock='database' needs PostgreSQL" in result.output
    assert not db.exists()
