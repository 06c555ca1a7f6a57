"""``entries prune --to-size/--to-count`` (oldest first, live leases kept, ``--dry-run``,
``--json``) and ``--delete-blobs`` with real local files and fsspec's in-memory filesystem."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import fsspec
import pytest
from _cli import BACKENDS, Clock, as_json, fails, new_db_on, open_store, put_uri, run

DAY = timedelta(days=1)


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_db_on(request.param, request, tmp_path)


def uri(n: int) -> str:
    return f"s3://bucket/{n:04}"  # 16 bytes: entries.size of a URI entry is its length


@pytest.fixture
def twenty(db: str) -> str:
    """Twenty URI entries e00 (oldest) .. e19, 16 payload bytes each; e01 holds a live lease."""
    clock = Clock()
    with open_store(db, clock) as store:
        for i in range(20):
            clock.at((30 - i) * DAY)
            put_uri(store, f"e{i:02}", uri(i))
        clock.at(timedelta(0))
        store.get_or_extend_reservation("e01", "worker", timedelta(seconds=10))
    return db


def prune(db: str, *args: str, **env: str) -> Any:
    """``entries prune ARGS --yes --json``: its report."""
    return as_json(run(db, "entries", "prune", *args, "--yes", "--json", **env))


def keys(db: str) -> list[str]:
    return sorted(e["key"] for e in as_json(run(db, "entries", "ls", "--json", "--limit", "0")))


def test_prune_to_size_dry_run_then_for_real(twenty: str) -> None:
    dry = as_json(run(twenty, "entries", "prune", "--to-size", "160", "--dry-run", "--json"))
    assert (dry["entries"], dry["bytes"], dry["dry_run"]) == (10, 160, True)
    assert len(keys(twenty)) == 20
    result = run(
        twenty, "entries", "prune", "--to-size", "160", "--batch-size", "3", "--yes", "--json"
    )
    report = as_json(result)
    assert (report["entries"], report["bytes"], report["batches"]) == (10, 160, 4)
    assert "removed 10 entries (160 B)" in result.stderr
    # The oldest went, except e01 whose key has a live reservation.
    assert keys(twenty) == ["e01", *(f"e{i:02}" for i in range(11, 20))]


def test_prune_to_count(twenty: str) -> None:
    report = prune(twenty, "--to-count", "5")
    assert report["entries"] == 15
    assert keys(twenty) == ["e01", "e16", "e17", "e18", "e19"]
    again = prune(twenty, "--to-count", "5")
    assert again["entries"] == 0 and again["batches"] == 0


def test_prune_to_size_and_count_together_satisfies_both(twenty: str) -> None:
    report = prune(twenty, "--to-size", "1KiB", "--to-count", "18")
    assert report["entries"] == 2  # 1 KiB holds all 20; 18 entries is the binding limit


def test_prune_least_recently_used_uses_recorded_reads(db: str) -> None:
    from flytecache import CacheStore, StoreSettings

    settings = StoreSettings(max_entries=1000, eviction="least-recently-used")
    clock = Clock()
    with CacheStore.open(db, settings=settings, clock=clock) as store:
        for i in range(4):
            clock.at((10 - i) * DAY)
            put_uri(store, f"e{i}", uri(i))
        clock.at(DAY)
        store.get("e0")  # flushed when the store closes
    report = prune(db, "--to-count", "2", "--eviction", "least-recently-used")
    assert report["entries"] == 2 and keys(db) == ["e0", "e3"]


@pytest.mark.parametrize(
    "args",
    [
        ("--to-size", "1k", "--older-than", "1d"),
        (),
        ("--to-count", "1", "--project", "p"),
        ("--to-count", "1", "--delete-blobs"),
        ("--older-than", "1d", "--eviction", "least-recently-used"),
    ],
    ids=repr,
)
def test_prune_usage_errors(twenty: str, args: tuple[str, ...]) -> None:
    fails(run(twenty, "entries", "prune", *args, "--yes"), code=2)


@pytest.mark.parametrize(
    ("prefix", "says"),
    [
        ("/", "whole file system"),
        ("", "non-empty"),
        ("/tmp/x/../../", "'..'"),
        ("nosuchscheme://bucket/cache/", "nosuchscheme"),  # no fsspec backend for it
    ],
)
def test_blob_prefixes_that_cannot_be_honoured_stop_the_prune_before_anything_goes(
    twenty: str, prefix: str, says: str
) -> None:
    line = fails(
        run(
            twenty,
            "entries",
            "prune",
            "--to-count",
            "0",
            "--delete-blobs",
            "--blob-prefix",
            prefix,
            "--yes",
        ),
        code=2,
    )
    assert says in line
    assert len(keys(twenty)) == 20


def test_prune_rejects_a_bad_size(twenty: str) -> None:
    result = run(twenty, "entries", "prune", "--to-size", "lots")
    assert result.exit_code == 2 and "not a size" in result.stderr


def test_delete_blobs_local_files_and_a_failure(db: str, tmp_path: Path) -> None:
    blobs = tmp_path / "blobs"
    outside = tmp_path / "outside"
    clock = Clock()
    with open_store(db, clock) as store:
        for i in range(4):
            path = blobs / f"run-{i}" / "outputs.pb"
            path.parent.mkdir(parents=True)
            path.write_bytes(b"x" * 100 * (i + 1))
            clock.at((10 - i) * DAY)
            target = f"file://{path}" if i % 2 else str(path.parent)
            put_uri(store, f"e{i}", target)
        clock.at(5 * DAY)
        put_uri(store, "gone", str(blobs / "never-written"))
        clock.at(4 * DAY)
        outside.write_bytes(b"keep")
        put_uri(store, "outside", str(outside))
    args = ("entries", "prune", "--older-than", "3d", "--delete-blobs", "--blob-prefix", str(blobs))
    dry = run(db, *args, "--dry-run", "--json")
    preview = as_json(dry)
    # Counted, not measured: the missing blob is among the five it would try.
    assert (preview["entries"], preview["dry_run"]) == (6, True)
    assert preview["blobs"] == {"deleted": 5, "bytes": 0, "failed": [], "outside_prefixes": 1}
    assert "would delete up to 5 blobs under the prefixes; would leave 1 blob outside" in (
        dry.stderr
    )
    assert len(list(blobs.rglob("outputs.pb"))) == 4  # nothing touched
    result = run(db, *args, "--yes", "--json")
    report = as_json(result)
    assert report["entries"] == 6
    # e0 and e2 are directories, e1 and e3 files: 100 + 200 + 300 + 400 bytes freed.
    assert report["blobs"]["deleted"] == 4 and report["blobs"]["bytes"] == 1000
    assert report["blobs"]["failed"] == [
        {"uri": str(blobs / "never-written"), "error": "does not exist"}
    ]
    assert "could not delete blob" in result.stderr
    assert report["blobs"]["outside_prefixes"] == 1
    assert "deleted 4 blobs (1000 B); left 1 blob outside the prefixes" in result.stderr
    assert sorted(p.name for p in blobs.iterdir()) == ["run-1", "run-3"]  # empty dirs stay
    assert not any(blobs.rglob("outputs.pb"))
    assert outside.read_bytes() == b"keep"  # not under a managed prefix


def test_delete_blobs_memory_filesystem_by_size_and_env_prefixes(db: str) -> None:
    fs = fsspec.filesystem("memory")
    clock = Clock()
    with open_store(db, clock) as store:
        for i in range(5):
            fs.pipe(f"/flyte/cache/{i}/outputs.pb", b"y" * 10)
            clock.at((10 - i) * DAY)
            put_uri(store, f"e{i}", f"memory://flyte/cache/{i}/outputs.pb")
    dry = prune(
        db,
        "--to-count",
        "2",
        "--delete-blobs",
        "--dry-run",
        FLYTECACHE_BLOB_PREFIXES="memory://flyte/cache",
    )
    assert dry["blobs"] == {"deleted": 3, "bytes": 0, "failed": [], "outside_prefixes": 0}
    assert len(fs.find("/flyte/cache")) == 5
    report = prune(
        db, "--to-count", "2", "--delete-blobs", FLYTECACHE_BLOB_PREFIXES="memory://flyte/cache"
    )
    assert report["entries"] == 3
    assert report["blobs"] == {"deleted": 3, "bytes": 30, "failed": [], "outside_prefixes": 0}
    assert sorted(fs.find("/flyte/cache")) == [
        "/flyte/cache/3/outputs.pb",
        "/flyte/cache/4/outputs.pb",
    ]
    fs.rm("/flyte", recursive=True)


def test_a_target_missed_because_of_live_leases_is_said(twenty: str) -> None:
    dry = run(twenty, "entries", "prune", "--to-count", "0", "--dry-run")
    assert "would remove 19 entries" in dry.stderr
    assert "1 entry (16 B) would remain: 1 entry over --to-count 0." in dry.stderr
    result = run(twenty, "entries", "prune", "--to-count", "0", "--yes")
    assert result.exit_code == 0
    assert "removed 19 entries (304 B)" in result.stderr
    assert "1 entry (16 B) remains: 1 entry over --to-count 0." in result.stderr
    assert "live reservation are kept" in result.stderr
    reached = run(twenty, "entries", "prune", "--to-count", "1", "--yes")
    assert "over --to-count" not in reached.stderr
    report = as_json(run(twenty, "entries", "prune", "--to-size", "1", "--yes", "--json"))
    assert (report["remaining_entries"], report["remaining_bytes"]) == (1, 16)


def test_ctrl_c_reports_what_the_committed_batches_removed(tmp_path: Path) -> None:
    """A real SIGINT to a real ``flytecache entries prune`` process, mid-prune."""
    import os
    import signal
    import subprocess
    import sys

    from _cli import bulk_insert, new_db
    from _store import query, wait_until

    db = new_db(tmp_path)
    total = 20_000
    bulk_insert(db, total, updated_us=1_700_000_000_000_000)
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "flytecache", "entries", "prune", "--db", db),
            *("--to-count", "0", "--batch-size", "50", "--yes"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: query(db, "SELECT count(*) FROM entries")[0][0] < total - 20)
        os.kill(proc.pid, signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, stderr
    left = query(db, "SELECT count(*) FROM entries")[0][0]
    assert 0 < left < total
    reported = int(stderr.split("interrupted: removed ")[1].split()[0].replace(",", ""))
    # The prune stops after the batch in flight is committed and counted: exact.
    assert reported == total - left, stderr
    assert "running the prune again continues" in stderr
