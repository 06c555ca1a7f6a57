"""Opening and closing a ``CacheStore``: paths and URLs, network filesystems, the schema check,
the injected clock, and what a closed store does."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from _store import check_error, inline_output, int_literal, lease_rows, query, ts, uri_output

from flytecache import CacheStore, StoreSettings
from flytecache.errors import FlyteCacheError, InvalidArgumentError, SchemaError
from flytecache.store import ReservationOutcome
from flytecache.store.engine import create_store_engine
from flytecache.store.migrate import head_revision
from flytecache.store.urls import normalize_url

# -- Opening: URLs, paths and network filesystems -----------------------------------------------


def test_open_plain_path_and_sqlite_url_reach_the_same_file(db_path: str, clock):
    with CacheStore.open(db_path, clock=clock) as by_path:
        by_path.put("k", uri_output("s3://b/o"))
        assert by_path.is_sqlite
    assert Path(db_path).is_file()
    with CacheStore.open(f"sqlite:///{db_path}", clock=clock) as by_url:
        assert by_url.get("k").output_uri == "s3://b/o"
    with CacheStore.open(Path(db_path), clock=clock) as by_pathlike:
        assert by_pathlike.get("k").output_uri == "s3://b/o"


@pytest.mark.parametrize(
    "url",
    [
        "mysql://x",
        "mysql://user:pw@host/db",
        "",
        "   ",
        ":memory:",
        "sqlite://",
        "sqlite:///:memory:",
    ],
)
def test_open_refuses_unsupported_or_in_memory_urls(url: str):
    with pytest.raises(InvalidArgumentError) as info:
        CacheStore.open(url)
    check_error(info.value, "INVALID_ARGUMENT")


def test_open_in_a_missing_directory_is_invalid_argument(tmp_path: Path):
    missing = tmp_path / "does" / "not" / "exist" / "cache.db"
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        CacheStore.open(str(missing))
    assert not missing.parent.exists()


def test_open_a_directory_is_invalid_argument(tmp_path: Path):
    with pytest.raises(InvalidArgumentError, match="directory"):
        CacheStore.open(str(tmp_path))


def _fake_mounts(tmp_path: Path, fstype: str) -> str:
    # Fault injection: an NFS mount cannot be created in the sandbox, so we hand the engine a
    # fake /proc/self/mounts in which the test directory is a network mount.
    mounts = tmp_path / "mounts"
    mounts.write_text(
        "/dev/sda1 / ext4 rw,relatime 0 0\n"
        f"fileserver:/export/cache {tmp_path.resolve()} {fstype} rw,relatime,vers=4.2 0 0\n"
    )
    return str(mounts)


@pytest.mark.parametrize("fstype", ["nfs4", "nfs", "cifs", "fuse.sshfs"])
def test_network_filesystem_is_refused(tmp_path: Path, fstype: str):
    mounts = _fake_mounts(tmp_path, fstype)
    url = normalize_url(str(tmp_path / "cache.db"))
    with pytest.raises(InvalidArgumentError, match="network filesystem") as info:
        create_store_engine(url, StoreSettings(), mounts_file=mounts)
    assert fstype in str(info.value)
    assert "allow_network_filesystem" in str(info.value)
    assert not (tmp_path / "cache.db").exists()


def test_network_filesystem_allowed_when_asked(tmp_path: Path):
    mounts = _fake_mounts(tmp_path, "nfs4")
    url = normalize_url(str(tmp_path / "cache.db"))
    engine = create_store_engine(
        url, StoreSettings(allow_network_filesystem=True), mounts_file=mounts
    )
    try:
        with engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    finally:
        engine.dispose()


def test_local_filesystem_in_fake_mounts_is_allowed(tmp_path: Path):
    mounts = _fake_mounts(tmp_path, "ext4")
    engine = create_store_engine(
        normalize_url(str(tmp_path / "cache.db")), StoreSettings(), mounts_file=mounts
    )
    engine.dispose()


# -- Schema -------------------------------------------------------------------------------------


def test_newer_unknown_schema_revision_is_a_schema_error(db_path: str):
    CacheStore.open(db_path).close()
    with contextlib.closing(sqlite3.connect(db_path)) as conn, conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffffffff'")
    for migrate in (True, False):
        with pytest.raises(SchemaError) as info:
            CacheStore.open(db_path, migrate=migrate)
        check_error(info.value, "FAILED_PRECONDITION")
        assert "ffffffff" in str(info.value)
        assert head_revision() in str(info.value)
    # Nothing was "migrated" over the unknown schema.
    assert query(db_path, "SELECT version_num FROM alembic_version") == [("ffffffff",)]


def test_empty_database_without_migrate_is_a_schema_error(db_path: str):
    with contextlib.closing(sqlite3.connect(db_path)) as conn:
        conn.execute("CREATE TABLE scratch (x)")
        conn.execute("DROP TABLE scratch")
    with pytest.raises(SchemaError, match=re.escape("flytecache db upgrade")) as info:
        CacheStore.open(db_path, migrate=False)
    assert head_revision() in str(info.value)
    assert query(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'") == []
    # With migrate (the default) the same file is brought to head.
    with CacheStore.open(db_path) as migrated:
        migrated.put("k", uri_output("s3://b/o"))
    assert query(db_path, "SELECT version_num FROM alembic_version") == [(head_revision(),)]


def test_open_at_head_without_migrate_works(db_path: str):
    CacheStore.open(db_path).close()
    with CacheStore.open(db_path, migrate=False) as opened:
        opened.put("k", uri_output("s3://b/o"))
        assert opened.get("k").output_uri == "s3://b/o"


def test_a_file_that_is_not_a_database_is_a_flytecache_error(db_path: str):
    Path(db_path).write_bytes(b"this is not a SQLite database, just text" * 100)
    with pytest.raises(FlyteCacheError):
        CacheStore.open(db_path)


# -- Clock --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_now", [datetime(2026, 1, 1), "2026-01-01T00:00:00Z", 1_767_225_600], ids=str
)
def test_clock_must_return_an_aware_datetime(db_path: str, bad_now: Any):
    with CacheStore.open(db_path, clock=lambda: bad_now) as bad:
        with pytest.raises(InvalidArgumentError) as info:
            bad.put("k", uri_output("s3://b/o"))
        check_error(info.value, "INVALID_ARGUMENT")
        assert info.value.field == "clock"
        with pytest.raises(InvalidArgumentError):
            bad.get_or_extend_reservation("k", "owner", with_outcome=True)
    assert query(db_path, "SELECT count(*) FROM entries") == [(0,)]
    assert lease_rows(db_path) == []


def test_clock_in_another_time_zone_is_converted_to_utc(db_path: str, clock):
    from datetime import timezone

    tz = timezone(timedelta(hours=-5, minutes=-30))
    with CacheStore.open(db_path, clock=lambda: clock.now.astimezone(tz)) as shifted:
        shifted.put("k", uri_output("s3://b/o"))
        assert shifted.get("k").metadata.last_updated_at == ts(clock.now)


def test_clock_must_be_callable(db_path: str):
    with pytest.raises(InvalidArgumentError):
        CacheStore.open(db_path, clock=datetime.now(UTC))  # type: ignore[arg-type]


# -- Lifecycle ----------------------------------------------------------------------------------


def test_closed_store_refuses_every_operation(db_path: str, clock):
    opened = CacheStore.open(db_path, clock=clock)
    opened.put("k", uri_output("s3://b/o"))
    opened.close()
    opened.close()  # idempotent
    calls = [
        lambda: opened.get("k"),
        lambda: opened.put("k2", uri_output("s3://b/o")),
        lambda: opened.delete("k"),
        lambda: opened.get_or_extend_reservation("k", "owner", with_outcome=True),
        lambda: opened.get_or_extend_reservation("k", "owner"),
        lambda: opened.release_reservation("k", "owner"),
        lambda: opened.release_reservation("k", "owner"),
    ]
    for call in calls:
        with pytest.raises(FlyteCacheError, match="closed"):
            call()


def test_context_manager_closes(db_path: str):
    with CacheStore.open(db_path) as opened:
        pass
    with pytest.raises(FlyteCacheError, match="closed"):
        opened.get("k")


def test_data_survives_reopen(db_path: str, clock):
    with CacheStore.open(db_path, clock=clock) as first:
        first.put("k", inline_output({"a": int_literal(1)}))
        first.get_or_extend_reservation("r", "owner-a", with_outcome=True)
    with CacheStore.open(db_path, clock=clock) as second:
        assert dict(second.get("k").output_literals.literals) == {"a": int_literal(1)}
        assert (
            second.get_or_extend_reservation("r", "owner-b", with_outcome=True)[1]
            is ReservationOutcome.HELD_BY_OTHER
        )


def test_created_or_nothing_removes_only_what_the_failed_block_created(tmp_path: Path) -> None:
    from flytecache.store.opening import created_or_nothing

    target = tmp_path / "new" / "dir" / "cache.db"
    with pytest.raises(RuntimeError), created_or_nothing(target):
        CacheStore.open(target).close()
        raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    # Another process wrote to the new database meanwhile: it is kept, with its directory.
    with pytest.raises(RuntimeError), created_or_nothing(target):
        with CacheStore.open(target) as store:
            store.put("theirs", uri_output("s3://b/1"))
        raise RuntimeError
    assert target.exists()
    # An existing database is never removed, even when empty; success removes nothing.
    with CacheStore.open(target) as store:
        store.delete("theirs")
    with pytest.raises(RuntimeError), created_or_nothing(target):
        raise RuntimeError
    assert target.exists()
    other = tmp_path / "ok" / "cache.db"
    with created_or_nothing(other):
        CacheStore.open(other).close()
    assert other.exists()
