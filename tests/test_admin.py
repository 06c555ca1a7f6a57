"""``flytecache.store.admin`` on both backends: the same answers on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _cli import CHECK_ITEMS, as_json, fails, int_literal, new_db, ok, put_inline, put_uri, run
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache import CacheStore
from flytecache.cli import _present as present
from flytecache.errors import InvalidArgumentError, NotFoundError, SchemaError
from flytecache.store import admin, opening
from flytecache.timeutil import iso_utc, us_to_datetime

T0 = datetime(2026, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def us(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    if request.param == "sqlite":
        return new_db(tmp_path)
    return str(request.getfixturevalue("migrated_pg_url"))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(url: str, clock: Clock) -> Iterator[CacheStore]:
    with CacheStore.open(url, clock=clock) as opened:
        yield opened


@pytest.fixture
def populated(store: CacheStore, clock: Clock) -> CacheStore:
    """Entries at T0-100d, T0-40d, T0-2d, T0-1h (inline) and T0; two leases, one expired."""
    for ago, key, ident in (
        (100 * DAY, "old-a", {"project": "alpha", "name": "train", "version": "v1"}),
        (40 * DAY, "old-b", {"project": "beta", "domain": "production", "name": "train"}),
        (2 * DAY, "mid-a", {"project": "alpha", "name": "eval"}),
        (timedelta(0), "new-a", {"project": "alpha", "name": "train", "version": "v2"}),
    ):
        clock.now = T0 - ago
        put_uri(store, key, **ident)
    clock.now = T0 - timedelta(hours=1)
    put_inline(store, "inline", {"x": int_literal(1), "y": int_literal(2)})
    store.get_or_extend_reservation("expired", "owner-a", timedelta(seconds=1))
    clock.now = T0
    store.get_or_extend_reservation("live", "owner-b", timedelta(seconds=5))
    return store


NOW = us(T0)


def test_iter_entries_filters_and_order(populated: CacheStore) -> None:
    def keys(**filters: object) -> list[str]:
        where = admin.EntryFilter(**filters)  # type: ignore[arg-type]
        return [e.key for e in admin.iter_entries(populated, where, now_us=NOW)]

    assert keys() == ["new-a", "inline", "mid-a", "old-b", "old-a"]
    assert keys(project="alpha") == ["new-a", "mid-a", "old-a"]
    assert keys(domain="production") == ["old-b"]
    assert keys(name="train", version="v2") == ["new-a"]
    assert keys(older_than=30 * DAY) == ["old-b", "old-a"]
    assert keys(newer_than=3 * DAY, older_than=timedelta(minutes=30)) == ["inline", "mid-a"]
    # Strict comparisons: an entry exactly 2 days old is neither older nor newer than 2 days.
    assert "mid-a" not in keys(older_than=2 * DAY) and "mid-a" not in keys(newer_than=2 * DAY)
    assert [e.key for e in admin.iter_entries(populated, limit=2, now_us=NOW, page_size=1)] == [
        "new-a",
        "inline",
    ]
    assert list(admin.iter_entries(populated, limit=0)) == []


def test_paging_with_equal_timestamps(store: CacheStore) -> None:
    for i in range(23):  # the fake clock does not move: every last_updated_at is equal
        put_uri(store, f"k{i:02d}")
    listed = [e.key for e in admin.iter_entries(store, page_size=5)]
    assert sorted(listed) == [f"k{i:02d}" for i in range(23)] and len(set(listed)) == 23
    assert len(list(admin.iter_entries(store, limit=12, page_size=5))) == 12


def test_entry_summary_and_detail(populated: CacheStore) -> None:
    entry = next(admin.iter_entries(populated, admin.EntryFilter(project="beta")))
    assert present.entry_json(entry) == {
        "key": "old-b",
        "project": "beta",
        "domain": "production",
        "name": "train",
        "version": "v1",
        "org": "",
        "resource_type": "TASK",
        "created_at": "2025-11-22T00:00:00.000000Z",
        "last_updated_at": "2025-11-22T00:00:00.000000Z",
        "output_uri": "s3://bucket/old-b",
        "inline": False,
        "size": len("s3://bucket/old-b"),
    }
    detail = admin.get_entry(populated, "inline")
    assert detail.entry.inline and detail.key_map == {}
    described = [present.describe_literal(name, raw) for name, raw in detail.outputs or []]
    assert [(o.name, o.type, o.value) for o in described] == [
        ("x", "integer", 1),
        ("y", "integer", 2),
    ]
    assert admin.get_entry(populated, "old-a").outputs is None
    with pytest.raises(NotFoundError):
        admin.get_entry(populated, "nope")


def test_counts_and_deletes(populated: CacheStore) -> None:
    assert admin.count_entries(populated) == (5, sum(e.size for e in admin.iter_entries(populated)))
    result = admin.delete_entries(populated, ["old-a", "nope", "inline", "old-a"])
    assert result.removed == ["old-a", "inline"] and result.missing == ["nope"]
    assert admin.count_entries(populated)[0] == 3
    with pytest.raises(NotFoundError):
        populated.get("inline")


def test_prune_in_batches_and_dry_run(populated: CacheStore) -> None:
    where = admin.EntryFilter(older_than=DAY)
    dry = admin.prune(populated, where, now_us=NOW, dry_run=True)
    assert (dry.entries, dry.batches, dry.dry_run) == (3, 0, True)
    seen: list[tuple[int, int]] = []
    result = admin.prune(
        populated, where, now_us=NOW, batch_size=2, on_batch=lambda *a: seen.append(a)
    )
    assert (result.entries, result.batches) == (3, 2)
    assert result.bytes == dry.bytes == sum(b for _, b in seen)
    assert [n for n, _ in seen] == [2, 1]
    assert [e.key for e in admin.iter_entries(populated)] == ["new-a", "inline"]
    with pytest.raises(InvalidArgumentError, match="older_than"):
        admin.prune(populated, admin.EntryFilter(project="alpha"))


def test_reservations(populated: CacheStore) -> None:
    leases = {r.key: r for r in admin.iter_reservations(populated, now_us=NOW)}
    assert set(leases) == {"expired", "live"}
    live = leases["live"]
    assert live.active and live.expires_in == 15.0 and live.heartbeat_interval == 5_000_000
    assert present.reservation_json(live)["expires_at"] == "2026-01-01T00:00:15.000000Z"
    assert not leases["expired"].active
    assert [r.key for r in admin.iter_reservations(populated, state="active", now_us=NOW)] == [
        "live"
    ]
    assert [r.key for r in admin.iter_reservations(populated, owner="owner-a", now_us=NOW)] == [
        "expired"
    ]
    assert admin.count_reservations(populated, state="expired", now_us=NOW) == 1
    assert admin.get_reservation(populated, "live", now_us=NOW).owner_id == "owner-b"
    with pytest.raises(NotFoundError):
        admin.get_reservation(populated, "nope")
    with pytest.raises(InvalidArgumentError):
        list(admin.iter_reservations(populated, state="stale"))  # type: ignore[arg-type]
    assert admin.gc_reservations(populated, now_us=NOW, dry_run=True) == 1
    assert admin.gc_reservations(populated, now_us=NOW) == 1
    assert [r.key for r in admin.iter_reservations(populated, now_us=NOW)] == ["live"]
    # Exactly at expires_at the lease counts as expired (Flyte's `expires_at <= now`).
    assert admin.gc_reservations(populated, now_us=NOW + 15_000_000) == 1


def test_stats(populated: CacheStore) -> None:
    data = admin.stats(populated, now_us=NOW, top=2)
    assert data["entries"] == 5 and data["entries_inline"] == 1 and data["entries_uri"] == 4
    assert data["reservations"] == {"active": 1, "expired": 1}
    assert data["oldest_last_updated_at"] == "2025-09-23T00:00:00.000000Z"
    assert data["newest_last_updated_at"] == "2026-01-01T00:00:00.000000Z"
    assert data["top_projects"][0]["project"] == "alpha" and len(data["top_projects"]) == 2
    assert data["files"]["database"] > 0
    json.dumps(data)  # JSON-ready


def test_export_import_round_trip(populated: CacheStore, tmp_path: Path) -> None:
    with admin.export_entries(populated, page_size=2) as stream:
        lines = list(stream.lines)
    assert stream.total == 5 and len(lines) == 6
    (tmp_path / "copy").mkdir()
    target = new_db(tmp_path / "copy")
    with CacheStore.open(target) as copy:
        assert admin.import_entries(copy, lines).inserted == 5
        for entry in admin.iter_entries(populated):
            assert copy.get(entry.key) == populated.get(entry.key)
    again = admin.import_entries(populated, lines)
    assert (again.inserted, again.skipped) == (0, 5)
    replaced = admin.import_entries(populated, lines, overwrite=True)
    assert (replaced.inserted, replaced.replaced) == (0, 5)
    assert populated.get("inline").output_literals.literals["y"] == int_literal(2)


def test_import_is_atomic(populated: CacheStore) -> None:
    with admin.export_entries(populated) as stream:
        lines = list(stream.lines)
    admin.delete_entries(populated, ["old-a", "old-b"])
    bad = [*lines, '{"key": "broken"}']
    bad[0] = json.dumps({"format": "flytecache-export", "version": 1})
    with pytest.raises(InvalidArgumentError, match="line 7: missing created_at"):
        admin.import_entries(populated, bad)
    assert admin.count_entries(populated)[0] == 3
    # The connection is clean afterwards: the next import works.
    assert admin.import_entries(populated, lines).inserted == 2


def test_check_database(url: str) -> None:
    engine = opening.open_engine(url)
    try:
        items = {item.name: item.status for item in admin.check_database(engine)}
    finally:
        engine.dispose()
    assert list(items) == CHECK_ITEMS
    sqlite_only = {"filesystem", "permissions", "integrity", "wal"}
    expected_skip = sqlite_only if url.startswith("postgresql") else set()
    assert {name for name, status in items.items() if status == "skip"} == expected_skip
    assert {status for name, status in items.items() if name not in expected_skip} == {"ok"}


def test_postgres_rejects_sqlite_only_operations(migrated_pg_url: str, tmp_path: Path) -> None:
    with CacheStore.open(migrated_pg_url) as store:
        for operation in (
            lambda: admin.backup(store.engine, tmp_path / "b.db"),
            lambda: admin.checkpoint(store.engine),
            lambda: admin.vacuum(store.engine),
            lambda: admin.sqlite_files(store.engine),
        ):
            with pytest.raises(
                InvalidArgumentError, match="SQLite-only; this database is postgresql"
            ):
                operation()
    for command in (["vacuum"], ["checkpoint"], ["db", "backup", str(tmp_path / "b.db")]):
        assert "SQLite-only" in fails(run(migrated_pg_url, *command))
    report = as_json(run(migrated_pg_url, "db", "check", "--json"))
    assert {c["name"]: c["status"] for c in report["checks"]} == {
        "filesystem": "skip",
        "permissions": "skip",
        "connect": "ok",
        "schema": "ok",
        "models": "ok",
        "keys": "ok",
        "integrity": "skip",
        "wal": "skip",
    }


def test_cli_on_postgres(migrated_pg_url: str, tmp_path: Path) -> None:
    with CacheStore.open(migrated_pg_url) as store:
        put_uri(store, "k", project="alpha")
        put_inline(store, "i", {"o": int_literal(3)})
    assert [e["key"] for e in as_json(run(migrated_pg_url, "entries", "ls", "--json"))] == [
        "i",
        "k",
    ]
    dump = tmp_path / "dump.jsonl"
    ok(run(migrated_pg_url, "export", str(dump)))
    (tmp_path / "copy").mkdir()
    sqlite = new_db(tmp_path / "copy")
    ok(run(sqlite, "import", str(dump)))
    assert as_json(run(sqlite, "entries", "show", "i", "--json"))["outputs"][0]["value"] == 3
    assert as_json(run(migrated_pg_url, "stats", "--json"))["entries"] == 2
    assert as_json(run(migrated_pg_url, "db", "current", "--json"))["at_head"] is True


# -- opening and formatting ---------------------------------------------------------------------


def test_open_store_never_creates_a_database(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        opening.open_store(str(path), must_exist=True, migrate=False)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        opening.open_engine(str(path))
    assert not path.exists()
    path.touch()
    with pytest.raises(SchemaError, match="db upgrade"):
        opening.open_store(str(path), must_exist=True, migrate=False)
    opening.open_store(str(path), must_exist=True, migrate=True).close()
    opening.open_store(str(path), must_exist=True, migrate=False).close()


def test_iso_utc() -> None:
    assert iso_utc(None) is None
    assert iso_utc(0) == "1970-01-01T00:00:00.000000Z"
    assert iso_utc(-1) == "1969-12-31T23:59:59.999999Z"
    low = us(datetime(1, 1, 1, tzinfo=UTC))
    assert iso_utc(low) == "0001-01-01T00:00:00.000000Z"
    assert us_to_datetime(us(T0)) == T0


def test_describe_literal_of_an_unset_scalar() -> None:
    from flyteidl2.core import literals_pb2

    literal = literals_pb2.Literal()
    literal.scalar.SetInParent()
    assert present.describe_literal("x", literal.SerializeToString()).type == "scalar"
    assert present.resource_type_name(99) == "99"
    assert present.resource_type_name(None) is None


def test_listings_page_by_page(url: str, store: CacheStore) -> None:
    """PostgreSQL: a paged listing sees the database as it was when it started. SQLite: each
    page is read in its own short transaction (a live view), so a listing read slowly never
    holds checkpoints back; rows deleted meanwhile are not shown, none appears twice."""
    for i in range(10):
        put_uri(store, f"k{i}")
        store.get_or_extend_reservation(f"r{i}", "o")
    with CacheStore.open(url) as writer:
        entries = admin.iter_entries(store, page_size=3)
        leases = admin.iter_reservations(store, page_size=3)
        first_entry, first_lease = next(entries), next(leases)
        for i in range(10):
            writer.delete(f"k{i}")
            writer.release_reservation(f"r{i}", "o")
        put_uri(writer, "later")
        listed = [first_entry.key, *(e.key for e in entries)]
        leased = [first_lease.key, *(r.key for r in leases)]
    if store.is_sqlite:
        assert listed == ["k9", "k8", "k7"]  # the first page; the rest was deleted before read
        assert leased == ["r0", "r1", "r2"]
    else:
        assert listed == [f"k{i}" for i in range(9, -1, -1)]
        assert leased == [f"r{i}" for i in range(10)]
    assert [e.key for e in admin.iter_entries(store)] == ["later"]


def test_a_suspended_sqlite_listing_holds_no_read_transaction(db_path: str) -> None:
    with CacheStore.open(db_path) as store:
        for i in range(10):
            put_uri(store, f"k{i}")
        listing = admin.iter_entries(store, page_size=3)
        assert next(listing).key == "k9"  # suspended inside its first page
        for i in range(10, 20):
            put_uri(store, f"k{i}")
        # A TRUNCATE checkpoint waits for every reader of the WAL: it completes at once.
        result = admin.checkpoint(store.engine, "TRUNCATE")
        assert not result.busy and result.wal_bytes_after == 0
        # The rest of k9..k0; the newer puts sort before the cursor and are not shown.
        assert [e.key for e in listing] == [f"k{i}" for i in range(8, -1, -1)]


def test_a_listing_closed_early_returns_its_connection(url: str) -> None:
    # Closing the store while a listing is suspended must not leak its connection (on
    # PostgreSQL a leaked psycopg connection warns when it is garbage-collected).
    with CacheStore.open(url) as store:
        for i in range(5):
            put_uri(store, f"k{i}")
        listing = admin.iter_entries(store, page_size=2)
        assert next(listing).key == "k4"
        listing.close()
        assert store.engine.pool.checkedout() == 0  # type: ignore[attr-defined]


def test_put_keeps_working_after_admin_reads(store: CacheStore) -> None:
    put_uri(store, "k")
    list(admin.iter_entries(store))
    store.put("k2", cs.CachedOutput(output_uri="s3://x"))
    assert admin.count_entries(store)[0] == 2
