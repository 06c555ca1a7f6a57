"""``flytecache reservations``: ls, release and gc."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _cli import BACKENDS, Clock, as_json, fails, new_db_on, ok, open_store, run
from test_cli_listing import flyte_key, reads_as

from flytecache import CacheStore
from flytecache.cli import _present as present


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Two live leases (owners a and b) and two expired ones (owners a and c)."""
    path = new_db_on(request.param, request, tmp_path)
    clock = Clock()
    with open_store(path, clock) as store:
        clock.at(timedelta(hours=1))
        store.get_or_extend_reservation("old-1", "owner-a", timedelta(seconds=5))
        clock.at(timedelta(minutes=2))
        store.get_or_extend_reservation("old-2", "owner-c", timedelta(seconds=5))
        clock.at(timedelta(seconds=0))
        store.get_or_extend_reservation("live-1", "owner-a", timedelta(seconds=4))
        store.get_or_extend_reservation("live-2", "owner-b")
    return path


def _keys(result) -> list[str]:
    return [lease["key"] for lease in as_json(result)]


def test_ls_json(db: str) -> None:
    leases = as_json(run(db, "reservations", "ls", "--json"))
    assert [lease["key"] for lease in leases] == ["live-1", "live-2", "old-1", "old-2"]
    live = leases[0]
    assert {"key", "owner_id", "expires_at", "heartbeat_interval", "active"} <= set(live)
    assert live["owner_id"] == "owner-a" and live["active"] is True
    assert live["heartbeat_interval"] == 4.0
    expires = datetime.fromisoformat(live["expires_at"])
    assert timedelta(seconds=0) < expires - datetime.now(UTC) <= timedelta(seconds=12)
    assert 0 < live["expires_in"] <= 12
    assert leases[1]["heartbeat_interval"] == 10.0  # absent heartbeat → max_heartbeat
    old = leases[2]
    assert old["active"] is False and old["expires_in"] < -3000
    assert old["previous_owner"] is None and old["created_at"].endswith("Z")


def test_ls_filters(db: str) -> None:
    assert _keys(run(db, "reservations", "ls", "--json", "--active")) == ["live-1", "live-2"]
    assert _keys(run(db, "reservations", "ls", "--json", "--expired")) == ["old-1", "old-2"]
    assert _keys(run(db, "reservations", "ls", "--json", "--owner", "owner-a")) == [
        "live-1",
        "old-1",
    ]
    assert _keys(run(db, "reservations", "ls", "--json", "--expired", "--owner", "owner-c")) == [
        "old-2"
    ]
    assert _keys(run(db, "reservations", "ls", "--json", "--owner", "nobody")) == []
    assert _keys(run(db, "reservations", "ls", "--json", "--limit", "3")) == [
        "live-1",
        "live-2",
        "old-1",
    ]


def test_ls_active_and_expired_are_exclusive(db: str) -> None:
    result = run(db, "reservations", "ls", "--active", "--expired")
    assert fails(result, code=2) == "error: --active and --expired are mutually exclusive"


def test_ls_for_people(db: str) -> None:
    out = ok(run(db, "reservations", "ls", COLUMNS="200")).stdout
    assert "owner-a" in out and "live-1" in out
    assert "expires in " in out
    assert "expired 1h ago" in out or "expired 59m" in out
    assert "expired 1m 4" in out  # old-2: taken 2 minutes ago for 15s
    empty = ok(run(db, "reservations", "ls", "--owner", "nobody"))
    assert empty.stdout == "" and "no reservations" in empty.stderr


def test_ls_piped_table_keys_and_jsonl(db: str) -> None:
    lines = ok(run(db, "reservations", "ls")).stdout.splitlines()
    assert [line.split("\t")[:2] for line in lines] == [
        ["live-1", "owner-a"],
        ["live-2", "owner-b"],
        ["old-1", "owner-a"],
        ["old-2", "owner-c"],
    ]  # no header
    assert all(len(line.split("\t")) == 5 for line in lines)
    table = ok(run(db, "reservations", "ls", "--table", COLUMNS="80")).stdout.splitlines()
    assert table[0].split() == ["key", "owner", "state", "heartbeat", "held", "since"]
    assert len(table) == 5
    assert ok(run(db, "reservations", "ls", "--keys", "--expired")).stdout == "old-1\nold-2\n"
    listed = as_json(run(db, "reservations", "ls", "--json"))
    jsonl = ok(run(db, "reservations", "ls", "--jsonl")).stdout.splitlines()
    assert [json.loads(line)["key"] for line in jsonl] == [lease["key"] for lease in listed]
    assert fails(run(db, "reservations", "ls", "--keys", "--jsonl"), code=2) == (
        "error: --keys and --jsonl cannot be used together"
    )


@pytest.mark.parametrize("backend", BACKENDS)
def test_ls_long_keys_at_80_columns(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    path = new_db_on(backend, request, tmp_path)
    with open_store(path) as store:
        for i in range(40):
            key = "reservation:" + flyte_key(i)
            store.get_or_extend_reservation(key, f"flyte-executor-{i % 3}-a1b2c3d4e5f6")
    # In the database's order (its collation's, on PostgreSQL).
    keys = [lease["key"] for lease in as_json(run(path, "reservations", "ls", "--json"))]
    assert sorted(keys) == sorted("reservation:" + flyte_key(i) for i in range(40))
    table = ok(run(path, "reservations", "ls", "--table", COLUMNS="80")).stdout
    header, *lines = table.splitlines()
    assert header.startswith("key ") and len(lines) == 40
    assert all(len(line) <= 80 for line in [header, *lines])
    shown = [line.split()[0] for line in lines]
    assert len(set(shown)) == 40
    assert all(reads_as(short, key) for short, key in zip(shown, keys, strict=True))
    wide = ok(run(path, "reservations", "ls", "--wide", COLUMNS="80")).stdout.splitlines()
    assert [line.split()[0] for line in wide[1:]] == keys
    assert ok(run(path, "reservations", "ls", "--keys")).stdout.splitlines() == keys


@pytest.mark.parametrize("backend", BACKENDS)
def test_ls_held_since_restarts_on_take_over_only(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, clock
) -> None:
    """``created_at`` ("held since") is when the current owner first took the lease: another
    owner taking it over starts it afresh, the same owner extending it (even late) keeps it."""
    path = new_db_on(backend, request, tmp_path)

    def held_since() -> tuple[str, datetime]:
        [lease] = as_json(run(path, "reservations", "ls", "--json"))
        return lease["owner_id"], datetime.fromisoformat(lease["created_at"])

    hb = timedelta(seconds=1)  # the lease lasts 3 s after each claim
    with CacheStore.open(path, clock=clock) as store:
        first = clock.now
        store.get_or_extend_reservation("k", "owner-a", hb)
        clock.advance(timedelta(seconds=2))
        store.get_or_extend_reservation("k", "owner-a", hb)
        assert held_since() == ("owner-a", first)
        clock.advance(timedelta(minutes=1))  # owner-a's lease expired, and it comes back
        store.get_or_extend_reservation("k", "owner-a", hb)
        assert held_since() == ("owner-a", first)
        taken = clock.advance(timedelta(seconds=3))
        store.get_or_extend_reservation("k", "owner-b", hb)
        assert held_since() == ("owner-b", taken)
        clock.advance(timedelta(seconds=1))
        store.get_or_extend_reservation("k", "owner-b", hb)
        assert held_since() == ("owner-b", taken)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ls_counts_a_lease_expired_exactly_at_its_expiry(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str, clock
) -> None:
    """At ``expires_at == now`` ``ls`` lists the lease as expired, the same instant the store
    lets another owner take it over. Driven through ``admin.iter_reservations``, which ``ls``
    calls, because only the store's injected clock can land on that microsecond."""
    from flytecache.store import admin

    path = new_db_on(backend, request, tmp_path)
    with CacheStore.open(path, clock=clock) as store:

        def listed(state: admin.ReservationState) -> list[str]:
            return [lease.key for lease in admin.iter_reservations(store, state=state)]

        store.get_or_extend_reservation("k", "owner-a", timedelta(seconds=1))
        clock.advance(timedelta(seconds=3, microseconds=-1))
        [lease] = admin.iter_reservations(store)
        assert present.reservation_json(lease)["active"] is True
        assert (listed("active"), listed("expired")) == (["k"], [])
        clock.advance(timedelta(microseconds=1))
        [lease] = admin.iter_reservations(store)
        assert lease.expires_at == store.now_us()
        assert (
            present.reservation_json(lease)["active"] is False
            and present.reservation_json(lease)["expires_in"] == 0
        )
        assert (listed("active"), listed("expired")) == ([], ["k"])
        assert store.get_or_extend_reservation("k", "owner-b").owner_id == "owner-b"


def test_release(db: str) -> None:
    result = ok(run(db, "reservations", "release", "live-1", "--owner", "owner-a"))
    assert 'released the reservation on "live-1" held by "owner-a"' in result.stderr
    assert _keys(run(db, "reservations", "ls", "--json", "--active")) == ["live-2"]
    with open_store(db) as store:
        taken = store.get_or_extend_reservation("live-1", "owner-z")
    assert taken.owner_id == "owner-z"


def test_release_someone_elses_or_no_lease(db: str) -> None:
    line = fails(run(db, "reservations", "release", "live-2", "--owner", "owner-a"))
    assert 'held by "owner-b", not "owner-a"' in line and "expires in" in line
    line = fails(run(db, "reservations", "release", "ghost", "--owner", "owner-a"))
    assert 'no reservation on "ghost"' in line
    assert len(as_json(run(db, "reservations", "ls", "--json"))) == 4
    assert run(db, "reservations", "release", "live-2").exit_code == 2  # --owner is required


def test_gc(db: str) -> None:
    dry = ok(run(db, "reservations", "gc", "--dry-run", "--json"))
    assert as_json(dry) == {"removed": 2, "dry_run": True}
    assert "would remove 2 expired reservations" in dry.stderr
    assert len(as_json(run(db, "reservations", "ls", "--json"))) == 4
    result = ok(run(db, "reservations", "gc", "--yes", "--json"))
    assert as_json(result) == {"removed": 2, "dry_run": False}
    assert _keys(run(db, "reservations", "ls", "--json")) == ["live-1", "live-2"]
    # Nothing left to collect: no confirmation needed.
    assert "removed 0 expired reservations" in ok(run(db, "reservations", "gc")).stderr


@pytest.mark.parametrize("backend", BACKENDS)
def test_gc_in_batches(request: pytest.FixtureRequest, tmp_path: Path, backend: str) -> None:
    from flytecache.store import admin

    path = new_db_on(backend, request, tmp_path)
    clock = Clock().at(timedelta(hours=1))
    with open_store(path, clock) as store:
        for i in range(1234):
            store.get_or_extend_reservation(f"k{i}", "o")
        clock.at(timedelta(0))
        store.get_or_extend_reservation("live", "o")
        assert admin.gc_reservations(store, batch_size=100) == 1234
        assert [r.key for r in admin.iter_reservations(store)] == ["live"]
