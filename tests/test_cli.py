"""The ``flytecache`` CLI as a whole: help, lazy imports, exit codes, errors, --db handling, docs.

The helpers the ``test_cli_*`` modules share live in ``_cli.py``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _cli import (
    Clock,
    as_json,
    connect,
    fails,
    new_db,
    ok,
    open_store,
    put_uri,
    run,
    runner,
)

from flytecache.cli import app

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> str:
    """A migrated, empty SQLite database file."""
    return new_db(tmp_path)


@pytest.fixture
def tty(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pretend stdin is a terminal, so destructive commands ask instead of refusing."""
    monkeypatch.setattr("flytecache.cli._common.stdin_is_tty", lambda: True)
    yield


# -- help and imports --------------------------------------------------------------------------

COMMANDS = [
    [],
    ["db"],
    ["db", "upgrade"],
    ["db", "downgrade"],
    ["db", "current"],
    ["db", "history"],
    ["db", "check"],
    ["db", "backup"],
    ["entries"],
    ["entries", "ls"],
    ["entries", "show"],
    ["entries", "rm"],
    ["entries", "prune"],
    ["reservations"],
    ["reservations", "ls"],
    ["reservations", "release"],
    ["reservations", "gc"],
    ["export"],
    ["import"],
    ["stats"],
    ["vacuum"],
    ["checkpoint"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "flytecache")
def test_help(command: list[str]) -> None:
    result = ok(runner.invoke(app, [*command, "--help"]))
    assert "Usage" in result.stdout
    is_group = len(command) < 2 and command[:1] in ([], ["db"], ["entries"], ["reservations"])
    if not is_group:
        assert "--db" in result.stdout
        assert "--verbose" in result.stdout


def test_every_listing_has_json() -> None:
    for command in (
        ["entries", "ls"],
        ["entries", "show"],
        ["reservations", "ls"],
        ["stats"],
        ["db", "history"],
        ["db", "check"],
        ["db", "current"],
    ):
        assert "--json" in ok(runner.invoke(app, [*command, "--help"])).stdout, command


def _imported_modules(code: str) -> set[str]:
    out = subprocess.run(
        [PYTHON, "-c", f"{code}\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


HEAVY = ("sqlalchemy", "alembic", "flyteidl2", "google.protobuf", "rich", "connectrpc", "uvicorn")


def _heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in {h.split(".")[0] for h in HEAVY})


def test_cli_modules_import_nothing_heavy() -> None:
    # Load flytecache.cli without running flytecache/__init__.py (which re-exports CacheStore),
    # to check the CLI modules' own imports.
    modules = _imported_modules(
        "import importlib.util, sys, types\n"
        "spec = importlib.util.find_spec('flytecache')\n"
        "pkg = types.ModuleType('flytecache')\n"
        "pkg.__path__ = list(spec.submodule_search_locations)\n"
        "sys.modules['flytecache'] = pkg\n"
        "import flytecache.cli"
    )
    assert "flytecache.cli.entries" in modules
    assert _heavy(modules) == []


def test_import_flytecache_cli_does_not_import_sqlalchemy() -> None:
    assert "sqlalchemy" not in _imported_modules("import flytecache")
    assert "sqlalchemy" not in _imported_modules("import flytecache.cli")


def test_console_script_help_runs() -> None:
    result = subprocess.run(
        [
            PYTHON,
            "-c",
            "import sys; from flytecache.cli import main; sys.argv[1:] = ['--help']; main()",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
    assert "entries" in result.stdout


# -- errors and exit codes ---------------------------------------------------------------------


def test_missing_database_is_not_created(tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    for command in (
        ["entries", "ls"],
        ["stats"],
        ["reservations", "ls"],
        ["db", "current"],
        ["db", "check"],
        ["export", "-"],
        ["vacuum"],
    ):
        line = fails(run(str(path), *command))
        assert "does not exist" in line and "db upgrade" in line, (command, line)
    assert not path.exists()
    assert list(tmp_path.iterdir()) == []


def test_bad_db_paths_give_one_line(tmp_path: Path) -> None:
    assert "does not exist" in fails(run("/nonexistent/x.db", "entries", "ls"))
    in_a_file = tmp_path / "a-file"
    in_a_file.write_text("")
    # `db upgrade` creates a missing directory, so only an impossible one is an error.
    assert "cannot create the directory" in fails(run(str(in_a_file / "x.db"), "db", "upgrade"))
    assert "directory" in fails(run(str(tmp_path), "entries", "ls"))
    assert "unsupported database" in fails(run("mysql://u@h/db", "stats"))
    assert "non-empty" in fails(run(None, "stats", "--db", ""))
    garbage = tmp_path / "garbage.db"
    garbage.write_bytes(b"this is not a database" * 100)
    assert "not a SQLite database" in fails(run(str(garbage), "entries", "ls"))


def test_unreachable_or_refused_postgresql_gives_one_line(migrated_pg_url: str) -> None:
    url = sa.make_url(migrated_pg_url)
    unreachable = url.set(port=1).render_as_string(hide_password=False)
    assert "database unavailable" in fails(run(unreachable, "entries", "ls"))
    stranger = url.set(username="nobody").render_as_string(hide_password=False)
    assert 'role "nobody" does not exist' in fails(run(stranger, "stats"))
    missing = url.set(database="no_such_db").render_as_string(hide_password=False)
    assert 'database "no_such_db" does not exist' in fails(run(missing, "db", "upgrade"))


def test_postgresql_password_is_never_printed(migrated_pg_url: str) -> None:
    # The test server trusts local connections, so any password is accepted (and ignored).
    url = sa.make_url(migrated_pg_url).set(password="s3cret").render_as_string(hide_password=False)
    assert "s3cret" in url
    results = [
        run(url, "db", "upgrade"),
        run(url, "db", "check", "--json"),
        run(url, "db", "check"),
        run(url, "stats", "--json"),
        run(url, "stats"),
        run(url, "entries", "show", "nope"),
        run(url, "vacuum"),
    ]
    assert '"postgresql+psycopg://flytecache:***@' in results[3].stdout
    for result in results:
        assert "s3cret" not in result.stdout + result.stderr


def test_db_option_overrides_env(db: str, tmp_path: Path) -> None:
    with open_store(db) as store:
        put_uri(store, "k")
    result = run(str(tmp_path / "other.db"), "entries", "ls", "--json", "--db", db)
    assert [e["key"] for e in as_json(result)] == ["k"]


def test_database_behind_head_is_a_schema_error(db: str) -> None:
    ok(run(db, "db", "downgrade", "base", "--yes"))
    line = fails(run(db, "entries", "ls"))
    assert "db upgrade" in line


def test_error_types_exit_1(db: str, tmp_path: Path) -> None:
    # NotFoundError
    assert 'cache entry "nope" not found' in fails(run(db, "entries", "show", "nope"))
    # InvalidArgumentError
    assert "key must not be empty" in fails(run(db, "entries", "show", ""))
    # AlreadyExistsError
    ok(run(db, "db", "backup", str(tmp_path / "b.db")))
    assert "already exists" in fails(run(db, "db", "backup", str(tmp_path / "b.db")))
    # OSError on a file the command reads
    assert "No such file" in fails(run(db, "import", str(tmp_path / "missing.jsonl")))


def test_busy_database_exits_1(db: str) -> None:
    with open_store(db) as store:
        put_uri(store, "k")
    holder = sqlite3.connect(db, isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        line = fails(run(db, "entries", "rm", "k", "--yes", FLYTECACHE_BUSY_TIMEOUT="50ms"))
        assert "locked" in line
    finally:
        holder.execute("ROLLBACK")
        holder.close()


def test_busy_postgresql_exits_1(migrated_pg_url: str) -> None:
    db = migrated_pg_url
    with open_store(db) as store:
        put_uri(store, "k")
    with connect(db) as holder:  # holds the lock until the block ends
        # EXCLUSIVE blocks writers but not plain reads.
        holder.exec_driver_sql("LOCK TABLE entries IN EXCLUSIVE MODE")
        for command in (["entries", "rm", "k"], ["entries", "prune", "--older-than", "0s"]):
            line = fails(run(db, *command, "--yes", FLYTECACHE_BUSY_TIMEOUT="50ms"))
            assert line.startswith("error: database busy (") and "retry" in line, line
        assert [e["key"] for e in as_json(run(db, "entries", "ls", "--json"))] == ["k"]
    with open_store(db) as store:
        assert store.get("k")


def test_usage_errors_exit_2(db: str) -> None:
    assert run(db, "entries", "ls", "--no-such-option").exit_code == 2
    assert run(db, "entries", "prune").exit_code == 2  # --older-than is required
    result = run(db, "entries", "prune", "--older-than", "soon")
    assert result.exit_code == 2
    assert "not a duration" in result.stderr
    assert run(db, "entries", "ls", "--limit", "-1").exit_code == 2
    assert run(db, "db", "downgrade").exit_code == 2
    assert run(db, "nosuchcommand").exit_code == 2


def test_unexpected_errors_are_one_line_unless_verbose(
    db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("kaput\nsecond line")

    monkeypatch.setattr("flytecache.store.admin.stats", boom)
    line = fails(run(db, "stats"))
    assert line.startswith("error: unexpected RuntimeError: kaput second line")
    assert line.endswith("(run with --verbose for the traceback)")
    result = run(db, "stats", "--verbose")
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)


def test_verbose_reraises_flytecache_errors(db: str) -> None:
    from flytecache.errors import NotFoundError

    result = run(db, "entries", "show", "nope", "-v")
    assert result.exit_code == 1
    assert isinstance(result.exception, NotFoundError)
    result = run(db, "entries", "show", "nope", FLYTECACHE_VERBOSE="1")
    assert isinstance(result.exception, NotFoundError)


def test_errors_exit_1_in_a_real_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            PYTHON,
            "-c",
            "from flytecache.cli import main; main()",
            "entries",
            "ls",
            "--db",
            str(tmp_path / "none.db"),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: database ")


# -- confirmation --------------------------------------------------------------------------------


def test_destructive_commands_refuse_without_yes_off_a_terminal(db: str) -> None:
    with open_store(db, Clock().at(timedelta(days=40))) as store:
        put_uri(store, "old")
        store.get_or_extend_reservation("lease", "someone")
    for command in (
        ["entries", "rm", "old"],
        ["entries", "prune", "--older-than", "30d"],
        ["reservations", "gc"],
        ["db", "downgrade", "base"],
    ):
        line = fails(run(db, *command), code=2)
        assert "refusing to" in line and "--yes" in line, command
    with open_store(db) as store:
        assert store.get("old").output_uri
    assert as_json(run(db, "reservations", "ls", "--json"))


@pytest.mark.usefixtures("tty")
def test_destructive_commands_ask_on_a_terminal(db: str) -> None:
    with open_store(db, Clock().at(timedelta(days=40))) as store:
        put_uri(store, "a")
        put_uri(store, "b")
        store.get_or_extend_reservation("lease", "someone")
    declined = run(db, "entries", "rm", "a", input="n\n")
    assert declined.exit_code == 1
    assert "Remove 1 entry?" in declined.stderr
    assert "aborted" in declined.stderr
    ok(run(db, "entries", "rm", "a", input="y\n"))
    prompt = run(db, "entries", "prune", "--older-than", "30d", input="y\n")
    assert "Remove 1 entry (" in ok(prompt).stderr
    assert "removed 1 entry" in prompt.stderr
    assert ok(run(db, "reservations", "gc", input="y\n")).stderr.endswith(
        "removed 1 expired reservation\n"
    )
    assert run(db, "db", "downgrade", "base", input="n\n").exit_code == 1
    assert ok(run(db, "db", "current")).stdout.startswith("0004_key_hash")
    ok(run(db, "db", "downgrade", "base", input="y\n"))
    assert ok(run(db, "db", "current")).stdout.startswith("(none)")


# -- docs ----------------------------------------------------------------------------------------


def test_cli_reference_is_up_to_date() -> None:
    from flytecache.cli import _docs

    expected = _docs.render()
    assert (ROOT / "docs" / "cli.md").read_text(encoding="utf-8") == expected, (
        "docs/cli.md is stale: run `.venv/bin/python -m flytecache.cli._docs`"
    )
    for command in ("db backup", "entries prune", "reservations gc", "export", "checkpoint"):
        assert f"`flytecache {command}`" in expected


def _readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Common commands", 1)[1]
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M)
    commands = []
    for block in blocks:
        for line in block.splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["flytecache"] and not any("<" in w for w in words):
                commands.append(words[1:])
    return commands


def test_readme_common_commands_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    commands = _readme_commands()
    assert len(commands) >= 10
    (tmp_path / "other").mkdir()
    for args in commands:
        if args[:1] == ["serve"]:
            continue
        result = runner.invoke(app, args, env={"FLYTECACHE_DB": str(tmp_path / "flytecache.db")})
        assert result.exit_code == 0, (args, result.stderr)
    assert os.path.exists(tmp_path / "flytecache.db")


# -- formatting helpers --------------------------------------------------------------------------


def test_human_formats() -> None:
    from flytecache.cli import _common

    assert [_common.human_seconds(s) for s in (0.25, 12, 65, 3600, 3660, 90000, 86400)] == [
        "0.2s",
        "12s",
        "1m 5s",
        "1h",
        "1h 1m",
        "1d 1h",
        "1d",
    ]
    assert _common.human_age(0, 3_000_000) == "3s ago"
    assert _common.human_age(5_000_000, 0) == "in 5s"
    assert [_common.human_bytes(n) for n in (0, 1023, 1536, 5 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 GiB",
    ]
    assert _common.human_time(0) == "1970-01-01 00:00:00Z" and _common.human_time(None) == "-"
    assert _common.plural(1, "entry", "entries") == "1 entry"
    assert _common.plural(0, "entry", "entries") == "0 entries"
