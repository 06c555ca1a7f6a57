"""``flytecache serve --max-entries/--max-size --eviction --delete-blobs --blob-prefix``: a real
server keeps its limit, logs each batch, counts it in /metrics and deletes managed blobs."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from _server_helpers import ServerProcess, get_req, put_req, uri_output
from typer.testing import CliRunner

from flytecache import CacheStore
from flytecache.cli import app as cli_app


def _samples(text: str) -> dict[str, float]:
    return {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_server_evicts_to_its_limit_and_deletes_managed_blobs(tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    blobs.mkdir()
    db = tmp_path / "cache.db"
    with ServerProcess(
        db,
        "--max-entries",
        "20",
        "--eviction",
        "least-recently-used",
        "--delete-blobs",
        "--blob-prefix",
        str(blobs),
        log_path=tmp_path / "server.log",
    ) as server:
        # The start-up line states the limits in force.
        assert "evicting least-recently-used above 20 entries, deleting their blobs" in (
            server.log()
        )
        client = server.client()
        for i in range(60):
            path = blobs / f"{i:02}.pb"
            path.write_bytes(b"z" * 10)
            client.put(put_req(f"k{i:02}", uri_output(str(path))))
            if i >= 1:
                client.get(get_req("k00"))  # read all along: least recently used keeps it
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            values = _samples(httpx.get(server.url + "/metrics").text)
            with CacheStore.open(db) as store, store.engine.connect() as conn:
                count = conn.exec_driver_sql("SELECT count(*) FROM entries").scalar_one()
            if count <= 20 and values.get("flytecache_blobs_deleted_total", 0) >= 40:
                break
            time.sleep(0.1)
        assert count <= 20
        assert values["flytecache_evicted_entries_total"] >= 40
        assert values["flytecache_eviction_batches_total"] >= 1
        assert (
            values["flytecache_blobs_deleted_total"] == values["flytecache_evicted_entries_total"]
        )
        assert (
            values["flytecache_blob_bytes_deleted_total"]
            == 10 * values["flytecache_blobs_deleted_total"]
        )
        assert values["flytecache_blob_delete_failures_total"] == 0
        assert values["flytecache_recency_flushed_total"] >= 1
        assert client.get(get_req("k00")).output.output_uri == str(blobs / "00.pb")
        assert (blobs / "00.pb").exists() and not (blobs / "01.pb").exists()
        assert len(list(blobs.iterdir())) == count
        assert "evicted " in server.log() and "write lock held" in server.log()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--max-size", "1GiB", "--eviction", "none"], "--eviction"),
        (["--max-size", "lots"], "--max-size"),
        (["--max-entries", "0"], "--max-entries"),
        (["--delete-blobs"], "--blob-prefix"),
        (["--eviction", "random"], "--eviction"),
    ],
)
def test_serve_refuses_bad_limits(tmp_path: Path, args: list[str], option: str) -> None:
    result = CliRunner().invoke(cli_app, ["serve", "--db", str(tmp_path / "c.db"), *args])
    assert result.exit_code == 2
    assert option in " ".join(result.stderr.split())
