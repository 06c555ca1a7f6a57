"""``flytecache db``: upgrade, downgrade, current, history, check and backup."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from test_cli import as_json, fails, int_literal, new_db, ok, open_store, put_inline, put_uri, run
from typer.testing import Result

HEAD = "0001_initial"


@pytest.fixture
def db(tmp_path: Path) -> str:
    return new_db(tmp_path)


def test_upgrade_creates_and_is_idempotent(tmp_path: Path) -> None:
    path = str(tmp_path / "new.db")
    result = ok(run(path, "db", "upgrade"))
    assert result.stdout == ""
    assert f"is at revision {HEAD}" in result.stderr
    ok(run(path, "db", "upgrade", "head"))
    assert as_json(run(path, "db", "current", "--json")) == {
        "current": HEAD,
        "head": HEAD,
        "at_head": True,
    }


def test_upgrade_to_a_named_revision_and_an_unknown_one(tmp_path: Path) -> None:
    path = str(tmp_path / "new.db")
    ok(run(path, "db", "upgrade", HEAD))
    assert ok(run(path, "db", "current")).stdout == f"{HEAD} (head)\n"
    assert "nope" in fails(run(path, "db", "upgrade", "nope"))


def test_downgrade_to_base_and_back(db: str) -> None:
    with open_store(db) as store:
        put_uri(store, "k")
    ok(run(db, "db", "downgrade", "base", "--yes"))
    assert ok(run(db, "db", "current")).stdout == "(none) (empty)\n"
    assert as_json(run(db, "db", "current", "--json"))["at_head"] is False
    tables = {r[0] for r in sqlite3.connect(db).execute("select name from sqlite_master")}
    assert "entries" not in tables
    ok(run(db, "db", "upgrade"))
    assert ok(run(db, "db", "current")).stdout.startswith(HEAD)


def test_downgrade_needs_a_revision_and_an_existing_database(tmp_path: Path) -> None:
    assert run(str(tmp_path / "x.db"), "db", "downgrade").exit_code == 2
    assert "does not exist" in fails(run(str(tmp_path / "x.db"), "db", "downgrade", "base", "-y"))


def test_history(db: str, tmp_path: Path) -> None:
    rows = as_json(run(db, "db", "history", "--json"))
    assert rows[0] == {
        "revision": HEAD,
        "down_revision": None,
        "message": rows[0]["message"],
        "head": True,
        "current": True,
    }
    assert "initial schema" in rows[0]["message"]
    text = ok(run(db, "db", "history")).stdout
    assert f"<base> -> {HEAD} (head, current)" in text
    # Without a database the history is still the code's, with no "current" mark.
    missing = str(tmp_path / "none.db")
    assert as_json(run(missing, "db", "history", "--json"))[0]["current"] is False
    assert not Path(missing).exists()
    ok(run(db, "db", "downgrade", "base", "--yes"))
    assert as_json(run(db, "db", "history", "--json"))[0]["current"] is False


def _checks(result: Result) -> dict[str, str]:
    return {c["name"]: c["status"] for c in json.loads(result.stdout)["checks"]}


def test_check_passes_on_a_healthy_database(db: str) -> None:
    with open_store(db) as store:
        put_uri(store, "k")
        put_inline(store, "i", {"o": int_literal(1)})
    report = as_json(run(db, "db", "check", "--json"))
    assert report["ok"] is True
    assert {c["name"]: c["status"] for c in report["checks"]} == {
        "filesystem": "ok",
        "connect": "ok",
        "schema": "ok",
        "models": "ok",
        "integrity": "ok",
        "wal": "ok",
    }
    text = ok(run(db, "db", "check", "--quick")).stdout
    assert "quick_check: ok" in text


def test_check_fails_on_an_old_schema(db: str) -> None:
    ok(run(db, "db", "downgrade", "base", "--yes"))
    result = run(db, "db", "check", "--json")
    line = fails(result)
    assert line.startswith("error: db check failed: schema (schema: at (empty), head is")
    assert _checks(result)["models"] == "skip"


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


def test_check_fails_on_a_large_wal(db: str) -> None:
    holder = sqlite3.connect(db, isolation_level=None)  # keeps the WAL from being removed
    try:
        holder.execute("insert into reservations values ('k', 'o', 1, 1, 1, 1, null)")
        assert Path(f"{db}-wal").stat().st_size > 0
        result = run(db, "db", "check", "--max-wal", "1")
        assert "wal" in fails(result)
        assert "flytecache checkpoint" in result.stderr
        ok(run(db, "db", "check", "--max-wal", "1GiB"))
    finally:
        holder.close()
    assert run(db, "db", "check", "--max-wal", "lots").exit_code == 1


def test_check_names_a_network_filesystem(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("engine", "admin"):
        monkeypatch.setattr(f"flytecache.store.{module}.network_filesystem_type", lambda *_: "nfs4")
    assert "network filesystem (nfs4)" in fails(run(db, "entries", "ls"))
    result = run(db, "db", "check", "--json")
    assert "filesystem" in fails(result)
    assert _checks(result)["filesystem"] == "fail"
    allowed = run(db, "db", "check", "--json", FLYTECACHE_ALLOW_NETWORK_FILESYSTEM="1")
    assert _checks(ok(allowed))["filesystem"] == "warn"


def test_check_fails_when_models_drift(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "flytecache.store.migrate.check_models_match", lambda _e: [("add_column", "entries", "x")]
    )
    assert "models" in fails(run(db, "db", "check"))


def test_check_on_a_file_that_is_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    path.write_bytes(b"junk" * 1000)
    result = run(str(path), "db", "check", "--json")
    assert "connect" in fails(result)
    assert _checks(result) == {
        "filesystem": "ok",
        "connect": "fail",
        "schema": "skip",
        "models": "skip",
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
