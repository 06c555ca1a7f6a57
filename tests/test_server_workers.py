"""``serve --workers N``: N processes on one port and one database, supervised by the parent."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
from _server_helpers import ServerProcess, get_req, put_req, uri_output
from _store import wait_until

from flytecache.server.workers import WriteLock


def _children(pid: int) -> set[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    if not path.exists():
        pytest.skip("needs Linux /proc children lists")
    return {int(child) for child in path.read_text().split()}


def test_workers_serve_one_port_replace_the_dead_and_stop_cleanly(tmp_path: Path) -> None:
    with ServerProcess(
        tmp_path / "cache.db", "--workers", "2", log_path=tmp_path / "server.log"
    ) as server:
        assert "with 2 workers" in server.log()
        wait_until(lambda: len(_children(server.pid)) == 2)
        workers = _children(server.pid)
        # Every new connection may land on either worker: all see one database.
        for n in range(40):
            client = server.client()
            client.put(put_req(f"w-{n}", uri_output(f"s3://{n}")))
            assert server.client().get(get_req(f"w-{n}")).output.output_uri == f"s3://{n}"
            client.close()

        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(_children(server.pid) - {victim}) == 2)
        assert "starting another" in server.log()
        assert server.client().get(get_req("w-0")).output.output_uri == "s3://0"

        survivors = _children(server.pid)
        assert server.stop() == 0
        for pid in survivors:
            assert (
                not Path(f"/proc/{pid}").exists()
                or "zombie" in Path(f"/proc/{pid}/status").read_text()
            )
        assert "all workers stopped" in server.log()


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "cache.db", "--workers", "2", log_path=tmp_path / "log")
    with server:
        wait_until(lambda: len(_children(server.pid)) == 2)
        workers = _children(server.pid)
        server.kill()  # SIGKILL: the supervisor cannot pass anything on
        wait_until(lambda: not any(Path(f"/proc/{pid}").exists() for pid in workers))
        assert "supervising process" in server.log()


def test_the_write_lock_is_tried_without_waiting_while_another_holds_it(tmp_path: Path) -> None:
    db = tmp_path / "cache.db"
    db.touch()
    # Two descriptors contend like two workers: flock locks belong to the open file.
    mine, other = WriteLock(str(db)), WriteLock(str(db))
    try:
        with other:
            assert not mine.acquire_nowait()
        assert mine.acquire_nowait()
        assert not other.acquire_nowait()
        mine.release()
        assert other.acquire_nowait()
        other.release()
    finally:
        mine.close()
        other.close()
