"""``flytecache db``: upgrade, downgrade, current, history, check and backup.

The schema commands run on both backends, each PostgreSQL test on its own fresh database (they
change the schema). The SQLite-only check items are skipped on PostgreSQL; ``db backup`` is
SQLite-only (tested in test_cli_maintenance.py).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from _cli import (
    BACKENDS,
    CHECK_ITEMS,
    as_json,
    connect,
    fails,
    int_literal,
    is_postgres,
    new_db,
    ok,
    open_store,
    put_inline,
    put_uri,
    run,
    table_names,
)
from _store import RAW_LEASE
from typer.testing import Result

from flytecache.store.keyhash import key_hash

HEAD = "0004_key_hash"
SQLITE_ONLY = ("filesystem", "permissions", "integrity", "wal")


@pytest.fixture(params=BACKENDS)
def empty(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database with no schema yet: a SQLite path with no file, or an empty PostgreSQL one."""
    if request.param == "sqlite":
        return str(tmp_path / "new.db")
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture(params=BACKENDS)
def any_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated database of its own on each backend (the tests may downgrade it)."""
    if request.param == "sqlite":
        return new_db(tmp_path)
    url = str(request.getfixturevalue("pg_url"))
    open_store(url).close()
    return url


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A migrated SQLite file (for the SQLite-only checks and backups)."""
    return new_db(tmp_path)


def test_upgrade_creates_and_is_idempotent(empty: str) -> None:
    path = empty
    if is_postgres(path):  # the database exists, without tables
        assert as_json(run(path, "db", "current", "--json"))["current"] is None
    else:
        assert "does not exist" in fails(run(path, "db", "current"))
    result = ok(run(path, "db", "upgrade"))
    assert result.stdout == ""
    assert f"is at revision {HEAD}" in result.stderr
    ok(run(path, "db", "upgrade", "head"))
    assert as_json(run(path, "db", "current", "--json")) == {
        "current": HEAD,
        "head": HEAD,
        "at_head": True,
    }


def test_upgrade_to_a_named_revision_and_an_unknown_one(empty: str) -> None:
    path = empty
    assert "nope" in fails(run(path, "db", "upgrade", "nope"))
    if not is_postgres(path):
        assert not Path(path).exists()  # a typo creates no empty database file
    ok(run(path, "db", "upgrade", HEAD))
    assert "nope" in fails(run(path, "db", "upgrade", "nope"))  # alembic's own message
    assert ok(run(path, "db", "current")).stdout == f"{HEAD} (head)\n"
    assert "nope" in fails(run(path, "db", "upgrade", "nope"))


def test_downgrade_to_base_and_back(any_db: str) -> None:
    db = any_db
    with open_store(db) as store:
        put_uri(store, "k")
    assert {"entries", "outputs", "reservations", "alembic_version"} <= table_names(db)
    result = ok(run(db, "db", "downgrade", "base", "--yes"))
    assert result.stderr.endswith("is at revision (empty)\n")
    assert ok(run(db, "db", "current")).stdout == "(none) (empty)\n"
    assert as_json(run(db, "db", "current", "--json"))["at_head"] is False
    assert table_names(db) <= {"alembic_version"}
    assert "db upgrade" in fails(run(db, "entries", "ls"))
    ok(run(db, "db", "upgrade"))
    assert ok(run(db, "db", "current")).stdout.startswith(HEAD)
    assert as_json(run(db, "entries", "ls", "--json")) == []


def test_current_says_when_a_newer_flytecache_wrote_the_database(db: str) -> None:
    with connect(db) as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0099_future'")
    line = ok(run(db, "db", "current")).stdout
    assert line == f"0099_future (newer than this flytecache knows; its head is {HEAD})\n"
    with connect(db) as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '0003_accessed_at'")
    assert ok(run(db, "db", "current")).stdout == f"0003_accessed_at (behind head {HEAD})\n"


def test_downgrade_needs_a_revision_and_an_existing_database(tmp_path: Path) -> None:
    assert run(str(tmp_path / "x.db"), "db", "downgrade").exit_code == 2
    assert "does not exist" in fails(run(str(tmp_path / "x.db"), "db", "downgrade", "base", "-y"))


def test_history(any_db: str) -> None:
    db = any_db
    rows = as_json(run(db, "db", "history", "--json"))
    assert rows[0] == {
        "revision": HEAD,
        "down_revision": "0003_accessed_at",
        "message": rows[0]["message"],
        "head": True,
        "current": True,
    }
    assert "key_hash" in rows[0]["message"] and "accessed_at" in rows[1]["message"]
    assert "payload" in rows[2]["message"]
    assert rows[-1]["revision"] == "0001_initial" and rows[-1]["down_revision"] is None
    assert "initial schema" in rows[-1]["message"]
    text = ok(run(db, "db", "history")).stdout
    assert f"0003_accessed_at -> {HEAD} (head, current)" in text
    ok(run(db, "db", "downgrade", "base", "--yes"))
    assert as_json(run(db, "db", "history", "--json"))[0]["current"] is False


def test_history_without_a_database(tmp_path: Path) -> None:
    # Without a database the history is still the code's, with no "current" mark.
    missing = str(tmp_path / "none.db")
    assert as_json(run(missing, "db", "history", "--json"))[0]["current"] is False
    assert not Path(missing).exists()


def _checks(result: Result) -> dict[str, str]:
    return {c["name"]: c["status"] for c in json.loads(result.stdout)["checks"]}


def test_check_passes_on_a_healthy_database(any_db: str) -> None:
    db = any_db
    with open_store(db) as store:
        put_uri(store, "k")
        put_inline(store, "i", {"o": int_literal(1)})
    report = as_json(run(db, "db", "check", "--json"))
    assert report["ok"] is True
    # The same items, in the same order, on both backends.
    assert [c["name"] for c in report["checks"]] == CHECK_ITEMS
    details = {c["name"]: c["detail"] for c in report["checks"]}
    assert details["schema"] == f"at head {HEAD}"
    assert details["models"] == "models match the migrations"
    if is_postgres(db):
        assert _checks_of(report) == {
            "filesystem": "skip",
            "permissions": "skip",
            "connect": "ok",
            "schema": "ok",
            "models": "ok",
            "keys": "ok",
            "integrity": "skip",
            "wal": "skip",
        }
        for name in SQLITE_ONLY:
            assert details[name] == "not applicable: SQLite-only (this database is postgresql)"
        # The SQLite-only options are accepted and change nothing.
        text = ok(run(db, "db", "check", "--quick", "--max-wal", "1", COLUMNS="200")).stdout
        assert "not applicable: SQLite-only" in text and "quick_check" not in text
    else:
        assert set(_checks_of(report).values()) == {"ok"}
        text = ok(run(db, "db", "check", "--quick")).stdout
        assert "quick_check: ok" in text


def _checks_of(report: dict[str, list[dict[str, str]]]) -> dict[str, str]:
    return {c["name"]: c["status"] for c in report["checks"]}


def test_check_fails_on_an_old_schema(any_db: str) -> None:
    db = any_db
    ok(run(db, "db", "downgrade", "base", "--yes"))
    result = run(db, "db", "check", "--json")
    line = fails(result)
    assert line.startswith("error: db check failed: schema (schema: at (empty), head is")
    checks = _checks(result)
    assert checks["models"] == "skip"
    assert [name for name, status in checks.items() if status == "fail"] == ["schema"]


def test_check_fails_on_corruption(db: str) -> None:
    with open_store(db) as store:
        for i in range(2000):
            put_uri(store, f"key-{i:05d}")
    conn = sqlite3.connect(db)
    root, page_size = conn.execute(
        "select rootpage, (select page_size from pragma_page_size) from sqlite_master "
        "where name = 'ix_entries_last_updated_at'"
    ).fetchone()
    conn.close()
    with open(db, "r+b") as fh:  # overwrite the cells of an index page
        fh.seek(root * page_size - 600)
        fh.write(b"\x07" * 600)
    result = run(db, "db", "check")
    line = fails(result)
    assert line.startswith("error: db check failed: integrity (integrity: ")
    assert "fail" in result.stdout


def test_check_fails_when_rows_do_not_carry_their_keys_hash(any_db: str) -> None:
    """As a file migrated by another hash would be (written here by SQL)."""
    db = any_db
    with open_store(db) as store:
        put_uri(store, "k")
        put_uri(store, "j")
        store.get_or_extend_reservation("k", "owner")
        assert as_json(run(db, "db", "check", "--json"))["ok"] is True
        with store.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE entries SET key_hash = key_hash + 1 WHERE key = 'j'")
    result = run(db, "db", "check", "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    keys = next(c for c in report["checks"] if c["name"] == "keys")
    assert report["ok"] is False and keys["status"] == "fail"
    assert keys["detail"].startswith("1 of 3 sampled rows hold a key_hash that is not their key")
    assert "flytecache db downgrade 0003_accessed_at" in keys["detail"]


def test_check_fails_on_a_large_wal(db: str) -> None:
    holder = sqlite3.connect(db, isolation_level=None)  # keeps the WAL from being removed
    try:
        holder.execute(RAW_LEASE, ("k", key_hash("k")))
        assert Path(f"{db}-wal").stat().st_size > 0
        result = run(db, "db", "check", "--max-wal", "1")
        assert "wal" in fails(result)
        assert "flytecache checkpoint" in result.stderr
        ok(run(db, "db", "check", "--max-wal", "1GiB"))
    finally:
        holder.close()
    assert run(db, "db", "check", "--max-wal", "lots").exit_code == 1


def test_check_names_a_network_filesystem(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("filesystem", "admin.checks"):
        monkeypatch.setattr(f"flytecache.store.{module}.network_filesystem_type", lambda *_: "nfs4")
    assert "network filesystem (nfs4)" in fails(run(db, "entries", "ls"))
    result = run(db, "db", "check", "--json")
    assert "filesystem" in fails(result)
    assert _checks(result)["filesystem"] == "fail"
    allowed = run(db, "db", "check", "--json", FLYTECACHE_ALLOW_NETWORK_FILESYSTEM="1")
    assert _checks(ok(allowed))["filesystem"] == "warn"


def test_check_fails_when_models_drift(any_db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "flytecache.store.migrate.check_models_match", lambda _e: [("add_column", "entries", "x")]
    )
    line = fails(run(any_db, "db", "check"))
    assert line == (
        "error: db check failed: models (models: 1 difference(s): ('add_column', 'entries', 'x'))"
    )


def test_check_fails_when_a_table_is_missing_on_postgresql(pg_url: str) -> None:
    # A real drift, not a patched one: the schema is stamped at head but a table was dropped.
    open_store(pg_url).close()
    with connect(pg_url) as conn:
        conn.exec_driver_sql("DROP TABLE reservations")
    result = run(pg_url, "db", "check", "--json")
    assert "models" in fails(result)
    assert _checks(result)["models"] == "fail" and _checks(result)["schema"] == "ok"


def test_check_when_postgresql_is_unreachable() -> None:
    url = "postgresql+psycopg://nobody@127.0.0.1:1/nothing"
    result = run(url, "db", "check", "--json")
    line = fails(result)
    assert line.startswith("error: db check failed: connect (connect: database unavailable: ")
    assert _checks(result) == {
        "filesystem": "skip",
        "permissions": "skip",
        "connect": "fail",
        "schema": "skip",
        "models": "skip",
        "keys": "skip",
        "integrity": "skip",
        "wal": "skip",
    }


def test_check_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"junk" * 1000)
    path.chmod(0o600)
    result = run(str(path), "db", "check", "--json")
    assert "connect" in fails(result)
    assert _checks(result) == {
        "filesystem": "ok",
        "permissions": "ok",
        "connect": "fail",
        "schema": "skip",
        "models": "skip",
        "keys": "skip",
        "integrity": "skip",
        "wal": "skip",
    }


def test_backup(db: str, tmp_path: Path) -> None:
    with open_store(db) as store:
        put_uri(store, "k")
        put_inline(store, "i", {"o": int_literal(7)})
    target = tmp_path / "backup.db"
    result = ok(run(db, "db", "backup", str(target), "--json"))
    info = json.loads(result.stdout)
    assert info["path"] == str(target) and info["bytes"] == target.stat().st_size
    assert "backed up" in result.stderr
    # A single self-contained file in rollback-journal mode, no leftovers next to it.
    assert sqlite3.connect(target).execute("pragma journal_mode").fetchone()[0] == "delete"
    assert sorted(
        p.name for p in tmp_path.iterdir() if p.name.startswith((".backup", "backup"))
    ) == ["backup.db"]
    ok(run(str(target), "db", "check"))
    with open_store(str(target)) as copy:
        assert copy.get("k").output_uri == "s3://bucket/k"
        assert copy.get("i").output_literals.literals["o"].scalar.primitive.integer == 7
    assert "already exists" in fails(run(db, "db", "backup", str(target)))
    with open_store(db) as store:
        put_uri(store, "later")
    ok(run(db, "db", "backup", str(target), "--overwrite"))
    with open_store(str(target)) as copy:
        assert copy.get("later")


def test_backup_refuses_bad_targets(db: str, tmp_path: Path) -> None:
    assert "must not overwrite the database" in fails(run(db, "db", "backup", db, "--overwrite"))
    assert "does not exist" in fails(run(db, "db", "backup", str(tmp_path / "no" / "b.db")))
    assert "directory" in fails(run(db, "db", "backup", str(tmp_path)))
    assert "does not exist" in fails(run(str(tmp_path / "none.db"), "db", "backup", "b.db"))
