"""A WAL that cannot run away: a real second process holding a read transaction open while the
store (or a real `flytecache serve`) keeps writing.

SQLite cannot checkpoint past the oldest open read transaction; these tests pin one for real
and check what flytecache promises around it: the WAL holds only what the reader pins, the
server publishes the condition and warns naming the reader, and once the reader ends the file
is cut back to ``wal_size_limit``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from _cli import run
from _server_helpers import ServerProcess, get_req, put_req, uri_output

from flytecache import CacheStore, StoreSettings
from flytecache.store import admin

MiB = 1024 * 1024
LIMIT = 256 * 1024  # small, so that a test's few thousand puts outgrow it
PAYLOAD = "s3://bucket/" + "x" * 230  # ~250 B entries, as in the reported reproduction

_READER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("SELECT count(*) FROM entries").fetchone()  # the snapshot is taken here
print("pinned", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
conn.close()
"""


class Reader:
    """Another process inside one read transaction on the database until :meth:`end`."""

    def __init__(self, db: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _READER, str(db)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        assert self.proc.stdout.readline().strip() == "pinned"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def end(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            assert self.proc.wait(30) == 0
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()


@pytest.fixture
def reader_factory() -> Iterator[type[Reader]]:
    started: list[Reader] = []

    class Tracked(Reader):
        def __init__(self, db: Path) -> None:
            super().__init__(db)
            started.append(self)

    yield Tracked
    for reader in started:
        if reader.proc.poll() is None:
            reader.proc.kill()
            reader.proc.wait(10)
        reader.end()


def _wal(db: Path) -> int:
    wal = Path(f"{db}-wal")
    return wal.stat().st_size if wal.exists() else 0


def _frame_bytes(store: CacheStore) -> int:
    with store.dbapi_connection() as conn:
        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
    return int(page_size) + 24  # each WAL frame: a 24-byte header and one page


def test_a_pinned_reader_bounds_the_wal_and_it_shrinks_after(
    tmp_path: Path, reader_factory: type[Reader]
) -> None:
    db = tmp_path / "cache.db"
    settings = StoreSettings(wal_size_limit=LIMIT)
    with CacheStore.open(db, settings=settings) as store:
        for i in range(200):
            store.put(f"before-{i}", uri_output(PAYLOAD))
        reader = reader_factory(db)
        pinned_at = admin.wal_state(store.engine)
        assert pinned_at.complete  # nothing before the reader's snapshot is left behind
        for i in range(3000):
            store.put(f"during-{i}", uri_output(PAYLOAD))
        held = admin.wal_state(store.engine)
        # What the reader pins, and only that, stays in the WAL: every frame up to its
        # snapshot was copied into the database; everything written since is kept for it.
        assert held.checkpointed == pinned_at.frames
        assert held.frames > pinned_at.frames
        assert held.wal_bytes == 32 + held.frames * _frame_bytes(store)
        assert held.wal_bytes > 4 * LIMIT
        assert not admin.truncate_wal_if_idle(store.engine, LIMIT)  # the reader needs it

        reader.end()
        store.put("after-1", uri_output(PAYLOAD))  # its commit runs the automatic checkpoint
        store.put("after-2", uri_output(PAYLOAD))  # restarts the WAL, cut to the limit
        assert _wal(db) <= LIMIT
        assert store.get("during-2999").output_uri == PAYLOAD


def test_db_check_and_checkpoint_name_the_reader(
    tmp_path: Path, reader_factory: type[Reader]
) -> None:
    db = tmp_path / "cache.db"
    with CacheStore.open(db, settings=StoreSettings(wal_size_limit=LIMIT)) as store:
        store.put("k", uri_output(PAYLOAD))
        reader = reader_factory(db)
        for i in range(2000):
            store.put(f"k{i}", uri_output(PAYLOAD))
        size = _wal(db)
        assert size > LIMIT
        check = run(str(db), "db", "check", "--json", "--max-wal", str(size - 1))
        assert check.exit_code == 1
        (wal_item,) = [c for c in _json(check.stdout)["checks"] if c["name"] == "wal"]
        assert wal_item["status"] == "fail"
        assert f"a read transaction is open in pid {reader.pid} (" in wal_item["detail"]
        warn = run(str(db), "db", "check", "--json", FLYTECACHE_WAL_SIZE_LIMIT=str(LIMIT))
        (wal_item,) = [c for c in _json(warn.stdout)["checks"] if c["name"] == "wal"]
        assert wal_item["status"] == "warn" and f"pid {reader.pid}" in wal_item["detail"]

        # SQLite's busy handler would wait the default 5 s for the reader before giving up;
        # the outcome (busy, the reader named) is the same after a short wait.
        busy = run(str(db), "checkpoint", FLYTECACHE_BUSY_TIMEOUT="100ms")
        assert busy.exit_code == 1
        assert f"a read transaction is open in pid {reader.pid}" in busy.stderr
        reader.end()
        done = run(str(db), "checkpoint")
        assert done.exit_code == 0, done.stderr
        # Not "checkpointed 0 frames": the frames the WAL held, and the sizes.
        assert re.search(
            r"checkpointed: all \d+ frames of the WAL are in the database", done.stderr
        )
        assert done.stderr.rstrip().endswith("-> 0 B")
        assert _wal(db) == 0


def _json(text: str) -> Any:
    return json.loads(text)


def _metric(text: str, name: str) -> float:
    match = re.search(rf"^{name} (\S+)$", text, re.M)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


def test_server_reports_and_warns_about_a_pinned_reader(
    tmp_path: Path, reader_factory: type[Reader]
) -> None:
    db = tmp_path / "cache.db"
    with ServerProcess(
        db,
        "--wal-size-limit",
        str(LIMIT),
        "--wal-blocked-warning",
        "2s",
        log_path=tmp_path / "server.log",
    ) as server:
        client = server.client()
        client.put(put_req("first", uri_output(PAYLOAD)))
        reader = reader_factory(db)
        puts = 0
        deadline = time.monotonic() + 60
        while "WAL checkpoints blocked" not in server.log():
            # Keep writing, as a busy cache would, until the warning comes.
            for _ in range(100):
                client.put(put_req(f"k{puts}", uri_output(PAYLOAD)))
                puts += 1
            assert time.monotonic() < deadline, server.log()
        warning = next(line for line in server.log().splitlines() if "blocked for" in line)
        assert f"a read transaction is open in pid {reader.pid} (" in warning
        assert "grows with every write" in warning
        metrics = httpx.get(server.url + "/metrics").text
        assert _metric(metrics, "flytecache_wal_bytes") > LIMIT
        assert _metric(metrics, "flytecache_wal_checkpoints_blocked_total") >= 1
        assert _metric(metrics, "flytecache_wal_checkpoint_blocked_seconds") >= 2

        reader.end()
        # No more writes needed: the watch empties a WAL whose frames are all copied.
        while _metric(httpx.get(server.url + "/metrics").text, "flytecache_wal_bytes") > LIMIT:
            assert time.monotonic() < deadline + 30, server.log()
            time.sleep(0.1)
        assert _wal(db) <= LIMIT
        while "WAL checkpoints pass again" not in server.log():
            assert time.monotonic() < deadline + 30, server.log()
            time.sleep(0.1)
        metrics = httpx.get(server.url + "/metrics").text
        assert _metric(metrics, "flytecache_wal_checkpoint_blocked_seconds") == 0
        assert client.get(get_req(f"k{puts - 1}")).output.output_uri == PAYLOAD
