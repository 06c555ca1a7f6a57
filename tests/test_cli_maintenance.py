"""``flytecache stats``, ``vacuum`` and ``checkpoint``.

``stats`` runs on both backends; ``vacuum`` and ``checkpoint`` are SQLite-only and say so on
PostgreSQL.
"""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from _cli import (
    BACKENDS,
    Clock,
    as_json,
    fails,
    inline_size,
    int_literal,
    is_postgres,
    new_db,
    new_db_on,
    ok,
    open_store,
    put_inline,
    put_uri,
    run,
)
from _store import RAW_LEASE
from flyteidl2.core import literals_pb2

from flytecache.store.keyhash import key_hash


@pytest.fixture(params=BACKENDS)
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on each backend."""
    return new_db_on(request.param, request, tmp_path)


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A migrated, empty SQLite file (for the SQLite-only commands)."""
    return new_db(tmp_path)


def test_stats_json(any_db: str) -> None:
    db = any_db
    clock = Clock()
    with open_store(db, clock) as store:
        clock.at(timedelta(days=10))
        for i in range(3):
            put_uri(store, f"a{i}", project="alpha", name="train")
        put_uri(store, "b0", project="beta", domain="production", name="eval")
        clock.at(timedelta(0))
        put_inline(store, "i0", {"x": int_literal(1), "y": int_literal(2)})
        store.get_or_extend_reservation("live", "o")
        clock.at(timedelta(hours=1))
        store.get_or_extend_reservation("old-1", "o")
        store.get_or_extend_reservation("old-2", "o")
    data = as_json(run(db, "stats", "--json"))
    inline_bytes = inline_size({"x": int_literal(1), "y": int_literal(2)})
    uri_bytes = sum(len(f"s3://bucket/{k}") for k in ("a0", "a1", "a2", "b0"))
    assert data["entries"] == 5
    assert data["entries_inline"] == 1 and data["entries_uri"] == 4
    assert data["payload_bytes"] == uri_bytes + inline_bytes
    assert data["reservations"] == {"active": 1, "expired": 2}
    assert data["oldest_last_updated_at"] < data["newest_last_updated_at"]
    files = data["files"]
    if is_postgres(db):
        assert data["dialect"] == "postgresql"
        assert data["database"] == db  # no password in the test URL to hide
        assert set(files) == {"database"} and files["database"] > 0  # pg_database_size
    else:
        assert data["dialect"] == "sqlite" and data["database"] == f"sqlite:///{db}"
        assert files["database"] == os.path.getsize(db) and files["free_bytes"] >= 0
        assert {"wal", "shm"} <= set(files)
    assert data["top_projects"][0] == {
        "project": "alpha",
        "entries": 3,
        "bytes": sum(len(f"s3://bucket/a{i}") for i in range(3)),
    }
    assert [row["domain"] for row in data["top_domains"]] == ["development", "", "production"]
    assert data["top_tasks"][0]["name"] == "train" and data["top_tasks"][0]["entries"] == 3
    assert len(as_json(run(db, "stats", "--json", "--top", "1"))["top_tasks"]) == 1


def test_stats_of_an_empty_database(any_db: str) -> None:
    data = as_json(run(any_db, "stats", "--json"))
    assert data["entries"] == 0 and data["payload_bytes"] == 0
    assert data["oldest_last_updated_at"] is None
    assert data["reservations"] == {"active": 0, "expired": 0}
    assert data["top_projects"] == []


def test_stats_for_people(any_db: str) -> None:
    with open_store(any_db) as store:
        put_uri(store, "k", project="alpha")
    out = ok(run(any_db, "stats", COLUMNS="200")).stdout
    for fragment in ("entries", "1 (0 inline, 1 URI)", "reservations", "top projects", "alpha"):
        assert fragment in out
    assert ("size" in out) if is_postgres(any_db) else ("WAL" in out)


def test_vacuum_gives_space_back(db: str) -> None:
    with open_store(db) as store:
        for i in range(300):
            put_inline(store, f"k{i}", {"blob": _big_literal()})
    ok(run(db, "entries", "prune", "--older-than", "0s", "--yes"))
    before = as_json(run(db, "stats", "--json"))["files"]
    assert before["free_bytes"] > 1_000_000
    result = ok(run(db, "vacuum"))
    assert "vacuumed:" in result.stderr
    after = as_json(run(db, "stats", "--json"))["files"]
    assert after["free_bytes"] == 0
    assert after["database"] + after["wal"] < (before["database"] + before["wal"]) / 4
    ok(run(db, "db", "check"))


def _big_literal() -> literals_pb2.Literal:
    literal = int_literal(0)
    literal.scalar.primitive.string_value = "x" * 4000
    return literal


def test_checkpoint_truncates_the_wal(db: str) -> None:
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("select count(*) from entries").fetchone()  # keeps the WAL file alive
    try:
        with open_store(db) as store:
            for i in range(200):
                put_uri(store, f"k{i}")
        assert os.path.getsize(f"{db}-wal") > 0
        result = ok(run(db, "checkpoint"))
        assert "checkpointed" in result.stderr and "-> 0 B" in result.stderr
        assert os.path.getsize(f"{db}-wal") == 0
    finally:
        holder.close()


def test_checkpoint_blocked_by_a_reader_exits_1(db: str) -> None:
    writer = sqlite3.connect(db, isolation_level=None)
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        writer.execute(RAW_LEASE, ("a", key_hash("a")))
        reader.execute("BEGIN")
        reader.execute("select count(*) from reservations").fetchone()  # pins a snapshot
        writer.execute(RAW_LEASE, ("b", key_hash("b")))
        line = fails(run(db, "checkpoint", FLYTECACHE_BUSY_TIMEOUT="100ms"))
        assert "could not complete" in line
    finally:
        reader.close()
        writer.close()


@pytest.mark.parametrize(
    ("command", "instead"),
    [
        (["vacuum"], "autovacuum reclaims space"),
        (["checkpoint"], "the server checkpoints on its own"),
        (["db", "backup", "backup.db"], "pg_dump"),
    ],
    ids=["vacuum", "checkpoint", "db backup"],
)
def test_sqlite_only_commands_say_so_on_postgresql(
    migrated_pg_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    command: list[str],
    instead: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store(migrated_pg_url) as store:
        put_uri(store, "k")
    line = fails(run(migrated_pg_url, *command))
    name = command[-2] if command[0] == "db" else command[0]
    assert line.startswith(f"error: {name} is SQLite-only; this database is postgresql: ")
    assert instead in line
    assert list(tmp_path.iterdir()) == []  # no backup file (or partial) was written
    with open_store(migrated_pg_url) as store:
        assert store.get("k").output_uri == "s3://bucket/k"
    # Refused before connecting: the answer does not depend on the server being up.
    down = sa.make_url(migrated_pg_url).set(port=1).render_as_string(hide_password=False)
    assert fails(run(down, *command)) == line
