"""Private by default, clear under operator mistakes (issue 16, part 4), produced for real:
file modes under a loose umask, a database on a read-only mount, ``db downgrade`` under a
running server, and a damaged or cut-off gzip export."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from _cli import fails, ok, put_uri, run
from _server_helpers import ServerProcess, get_req, put_req, uri_output
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache import CacheStore, StoreSettings
from flytecache.config import parse_file_mode
from flytecache.errors import InvalidArgumentError, StorageError
from flytecache.store import migrate


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@contextlib.contextmanager
def _umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


# -- file modes -----------------------------------------------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o000])
def test_new_sqlite_files_are_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    db = tmp_path / "cache.db"
    with _umask(umask):
        with CacheStore.open(db) as store:
            put_uri(store, "k")
            companions = [db, Path(f"{db}-wal"), Path(f"{db}-shm")]
            assert {p.name: _mode(p) for p in companions} == {p.name: 0o600 for p in companions}
        ok(run(str(db), "db", "backup", str(tmp_path / "backup.db")))
        ok(run(str(db), "export", str(tmp_path / "export.jsonl")))
        ok(run(str(db), "export", str(tmp_path / "export.jsonl.gz")))
        ok(run(str(tmp_path / "imported.db"), "import", str(tmp_path / "export.jsonl")))
    for name in ("backup.db", "export.jsonl", "export.jsonl.gz", "imported.db"):
        assert _mode(tmp_path / name) == 0o600, name


def test_file_mode_option_and_variable(tmp_path: Path) -> None:
    with _umask(0o077):  # a mode given explicitly is not narrowed by the umask either
        ok(run(str(tmp_path / "a.db"), "db", "upgrade", "--file-mode", "640"))
        ok(
            run(
                str(tmp_path / "a.db"),
                "db",
                "backup",
                str(tmp_path / "b.db"),
                "--file-mode",
                "0644",
            )
        )
        ok(run(str(tmp_path / "c.db"), "db", "upgrade", FLYTECACHE_FILE_MODE="0o660"))
        with CacheStore.open(tmp_path / "d.db", settings=StoreSettings(file_mode=0o640)) as store:
            put_uri(store, "k")
            assert _mode(Path(f"{tmp_path / 'd.db'}-wal")) == 0o640
    assert _mode(tmp_path / "a.db") == 0o640
    assert _mode(tmp_path / "b.db") == 0o644
    assert _mode(tmp_path / "c.db") == 0o660
    # Existing files keep their mode: flytecache never chmods what the operator made.
    (tmp_path / "e.db").touch(mode=0o644)
    (tmp_path / "e.db").chmod(0o644)
    ok(run(str(tmp_path / "e.db"), "db", "upgrade"))
    assert _mode(tmp_path / "e.db") == 0o644


def test_bad_file_modes_are_refused_before_anything_is_written(tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    for bad in ("999", "rw-------", "7777"):
        result = run(str(db), "db", "upgrade", "--file-mode", bad, COLUMNS="200")
        assert result.exit_code == 2 and "not a file mode" in result.stderr
    result = run(str(db), "db", "upgrade", "--file-mode", "400", COLUMNS="200")
    assert result.exit_code == 2 and "does not let the owner read and write" in result.stderr
    from_variable = run(str(db), "db", "upgrade", FLYTECACHE_FILE_MODE="x", COLUMNS="200")
    assert from_variable.exit_code == 2
    assert "'--file-mode' (env var: 'FLYTECACHE_FILE_MODE'): 'x' is not a file mode" in (
        from_variable.stderr
    )
    assert not db.exists()
    with pytest.raises(InvalidArgumentError, match="does not let the owner"):
        StoreSettings(file_mode=0o200)
    with pytest.raises(InvalidArgumentError, match="permission bits"):
        StoreSettings(file_mode=0o1777)
    assert (
        parse_file_mode("0640")
        == 0o640
        == StoreSettings.from_env({"FLYTECACHE_FILE_MODE": "640"}).file_mode
    )


def test_world_readable_database_is_flagged_by_db_check_and_serve(tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    with CacheStore.open(db) as store:
        put_uri(store, "k")
    report = json.loads(ok(run(str(db), "db", "check", "--json")).stdout)
    assert {c["name"]: c["status"] for c in report["checks"]}["permissions"] == "ok"
    db.chmod(0o644)
    result = ok(run(str(db), "db", "check", "--json"))  # a warning, not a failure
    (item,) = [c for c in json.loads(result.stdout)["checks"] if c["name"] == "permissions"]
    assert item["status"] == "warn"
    # The -wal and -shm files SQLite created since have the database's mode too.
    assert item["detail"] == (
        "readable by every local user: cache.db (0644), cache.db-wal (0644), cache.db-shm "
        f"(0644); run `chmod 600 {db} {db}-wal {db}-shm`"
    )
    with ServerProcess(db, log_path=tmp_path / "server.log") as server:
        log = server.log()
    assert "the database is readable by every local user: cache.db (0644)" in log


# -- read-only storage ----------------------------------------------------------------------


@contextlib.contextmanager
def _read_only_mount(
    where: Path, fill: Callable[[Path], None], kind: str = "tmpfs"
) -> Iterator[Path]:
    """A directory filled by ``fill(directory)`` and then made read-only storage for real:
    a tmpfs remounted read-only, or (``kind="bind"``) a read-only bind mount of a writable
    directory (what a container's read-only volume is). Skipped where mounting is not allowed."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a filesystem needs root")
    where.mkdir()
    source = where.with_name(where.name + "-source")
    if kind == "tmpfs":
        command = ["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(where)]
    else:
        source.mkdir()
        command = ["mount", "--bind", str(source), str(where)]
    mounted = subprocess.run(command, capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount here: {mounted.stderr.strip()}")
    try:
        fill(where)
        options = "remount,ro" if kind == "tmpfs" else "remount,bind,ro"
        remounted = subprocess.run(
            ["mount", "-o", options, str(where)], capture_output=True, text=True
        )
        assert remounted.returncode == 0, remounted.stderr
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def _fill(where: Path) -> None:
    with CacheStore.open(where / "cache.db") as store:
        put_uri(store, "k", project="p", domain="d")
        store.get_or_extend_reservation("lease", "owner")
    assert not Path(f"{where / 'cache.db'}-wal").exists()  # closed cleanly: no WAL left


@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
def test_a_database_on_a_read_only_mount_can_be_read(tmp_path: Path, kind: str) -> None:
    with _read_only_mount(tmp_path / "mnt", _fill, kind) as mnt:
        db = str(mnt / "cache.db")
        with CacheStore.open(db) as store:
            assert store.get("k").output_uri == "s3://bucket/k"
            with pytest.raises(StorageError, match="mounted read-only"):
                store.put("k2", uri_output())
        assert json.loads(ok(run(db, "stats", "--json")).stdout)["entries"] == 1
        assert "k" in ok(run(db, "entries", "ls", "--keys")).stdout.split()
        ok(run(db, "entries", "show", "k"))
        assert "lease" in ok(run(db, "reservations", "ls")).stdout
        assert ok(run(db, "db", "current")).stdout.strip().endswith("(head)")
        report = json.loads(ok(run(db, "db", "check", "--json")).stdout)
        assert report["ok"] is True
        ok(run(db, "export", str(tmp_path / "export.jsonl")))
        result = ok(run(db, "db", "backup", str(tmp_path / "backup.db")))
        assert f"backed up sqlite:///{db} to" in result.stderr  # the path, not a file: URI
        assert "mounted read-only" in fails(run(db, "entries", "rm", "k", "--yes"))
    with CacheStore.open(tmp_path / "backup.db") as copy:
        assert copy.get("k").output_uri == "s3://bucket/k"


def test_a_live_copy_with_its_wal_on_a_read_only_mount_is_read_whole(tmp_path: Path) -> None:
    # A snapshot of a database in use has a -wal holding the latest commits; SQLite reads it
    # from private memory when the storage is read-only (an immutable open would lose them).
    def fill(where: Path) -> None:
        live = where / "live.db"
        with CacheStore.open(live) as store:
            put_uri(store, "old")
            with store.dbapi_connection() as conn:
                conn.execute("PRAGMA wal_autocheckpoint = 0")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                put_uri(store, "in-the-wal")
                (where / "copy").mkdir()
                for suffix in ("", "-wal", "-shm"):
                    shutil.copy(f"{live}{suffix}", where / "copy" / f"cache.db{suffix}")
        assert Path(where / "copy" / "cache.db-wal").stat().st_size > 0

    with _read_only_mount(tmp_path / "mnt", fill) as mnt:
        db = str(mnt / "copy" / "cache.db")
        with CacheStore.open(db) as store:
            assert store.get("in-the-wal").output_uri == "s3://bucket/in-the-wal"
        keys = ok(run(db, "entries", "ls", "--keys")).stdout.split()
        assert sorted(keys) == ["in-the-wal", "old"]


# -- db downgrade under a running server ------------------------------------------------------


@pytest.fixture(params=["sqlite", "postgresql"])
def own_db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A database of the test's own (it is downgraded): SQLite file or a fresh PostgreSQL one."""
    if request.param == "sqlite":
        return str(tmp_path / "cache.db")
    return str(request.getfixturevalue("pg_url"))


def test_downgrade_under_a_running_server(own_db: str, tmp_path: Path) -> None:
    with ServerProcess(own_db, log_path=tmp_path / "server.log") as server:
        client = server.client()
        client.put(put_req("k", uri_output()))
        result = ok(run(own_db, "db", "downgrade", "base", "--yes"))
        warning = result.stderr.splitlines()[0]
        assert warning.startswith("warning: ")
        if own_db.startswith("postgresql"):
            assert "other session" in warning
        else:
            assert f"1 other process has {own_db} open: pid {server.pid} (" in warning
        assert "will fail (a flytecache server answers UNAVAILABLE)" in warning
        for call in (
            lambda: client.get(get_req("k")),
            lambda: client.put(put_req("k2", uri_output())),
            lambda: client.get(get_req("k")),  # now refused before touching the database
        ):
            with pytest.raises(ConnectError) as info:
                call()
            assert info.value.code is Code.UNAVAILABLE
            assert (
                f"the database schema is at (empty), not {migrate.head_revision()}"
                in info.value.message
            )
            assert "changed under the running server" in info.value.message
        health = httpx.get(server.url + "/healthz")
        assert health.status_code == 503 and "changed under" in health.json()["detail"]

        ok(run(own_db, "db", "upgrade"))
        deadline = time.monotonic() + 30
        while True:  # the watch notices the schema is back within a tick
            try:
                client.put(put_req("k3", uri_output()))
                break
            except ConnectError as error:
                assert error.code is Code.UNAVAILABLE
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.1)
        assert client.get(get_req("k3")).output.output_uri == uri_output().output_uri
        log = server.log()
    assert log.count("answering UNAVAILABLE until then") == 1  # once, not per request
    assert "Traceback" not in log
    assert "serving again" in log


def test_downgrade_with_nobody_else_connected_says_nothing_more(tmp_path: Path) -> None:
    db = str(tmp_path / "cache.db")
    ok(run(db, "db", "upgrade"))
    result = ok(run(db, "db", "downgrade", "base", "--yes"))
    assert "warning" not in result.stderr


# -- a damaged export -------------------------------------------------------------------------


def _export(tmp_path: Path) -> bytes:
    db = str(tmp_path / "source.db")
    with CacheStore.open(db) as store:
        for i in range(300):
            store.put(f"k{i}", cs.CachedOutput(output_uri=f"s3://bucket/{i}" + "x" * 200))
    target = tmp_path / "export.jsonl.gz"
    ok(run(db, "export", str(target)))
    return target.read_bytes()


def test_import_of_a_truncated_or_corrupt_gzip_names_the_file(tmp_path: Path) -> None:
    data = _export(tmp_path)
    truncated = tmp_path / "truncated.jsonl.gz"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt = tmp_path / "corrupt.jsonl.gz"
    # The first deflate block given the reserved block type 3. It follows the 10-byte header
    # and, when the FNAME flag is set, the NUL-terminated file name.
    start = data.index(b"\x00", 10) + 1 if data[3] & 0x08 else 10
    corrupt.write_bytes(data[:start] + bytes([data[start] | 0x06]) + data[start + 1 :])
    bad_crc = tmp_path / "crc.jsonl.gz"
    bad_crc.write_bytes(data[:-8] + bytes(b ^ 0xFF for b in data[-8:-4]) + data[-4:])
    db = str(tmp_path / "target.db")
    line = fails(run(db, "import", str(truncated)))
    assert line == (
        f"error: {truncated}: the gzip data ends early (the file is truncated); "
        "nothing was imported"
    )
    for damaged in (corrupt, bad_crc):
        line = fails(run(db, "import", str(damaged)))
        assert line.startswith(f"error: {damaged}: not valid gzip data, the file is damaged (")
        assert line.endswith("); nothing was imported")
    assert not Path(db).exists()  # a failed import leaves no new database behind
