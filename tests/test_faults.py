"""Faults produced for real: a full disk, read-only and damaged database files."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2

from flytecache import CacheStore
from flytecache.errors import FlyteCacheError, ResourceExhaustedError, StorageError


def _blob_output(size: int, seed: int) -> cs.CachedOutput:
    literals = literals_pb2.LiteralMap()
    literals.literals["o"].scalar.binary.value = bytes([seed % 256]) * size
    return cs.CachedOutput(output_literals=literals)


@contextlib.contextmanager
def small_filesystem(tmp_path: Path, size: str = "3m") -> Iterator[Path]:
    """A real, tiny tmpfs (needs root); skips where mounting is not allowed."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount_point)],
        capture_output=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_disk_full_is_resource_exhausted_and_recoverable(tmp_path: Path) -> None:
    with small_filesystem(tmp_path) as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * 1024 * 1024)  # room we can give back later
        with CacheStore.open(str(disk / "cache.db")) as store:
            written = []
            with pytest.raises(ResourceExhaustedError) as info:
                for i in range(10_000):
                    store.put(f"k{i}", _blob_output(32 * 1024, i))
                    written.append(i)
            assert info.value.code == "RESOURCE_EXHAUSTED"
            assert "full" in str(info.value)
            assert written, "the disk filled before anything was written"
            # Everything acknowledged before the failure is intact.
            for i in written:
                assert (
                    store.get(f"k{i}").output_literals == _blob_output(32 * 1024, i).output_literals
                )
            filler.unlink()
            store.put("after", _blob_output(1024, 1))
            assert store.get("after").output_literals.literals["o"].scalar.binary.value[:1] == b"\1"


def test_page_limit_is_resource_exhausted(sqlite_store: CacheStore) -> None:
    """The same fault via SQLite's own size cap (works without root)."""
    with sqlite_store.dbapi_connection() as conn:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        conn.execute(f"PRAGMA max_page_count = {pages + 8}")
    with pytest.raises(ResourceExhaustedError):
        for i in range(1000):
            sqlite_store.put(f"k{i}", _blob_output(16 * 1024, i))


def test_garbage_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"this is not a database, just text " * 200)
    with pytest.raises(StorageError) as info:
        CacheStore.open(str(path))
    assert "db check" in str(info.value)


def test_truncated_file_is_a_clear_error(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    with CacheStore.open(str(good)) as store:
        for i in range(200):
            store.put(f"k{i}", _blob_output(2048, i))
    with contextlib.closing(__import__("sqlite3").connect(good)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    truncated = tmp_path / "truncated.db"
    data = good.read_bytes()
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(FlyteCacheError) as info, CacheStore.open(str(truncated)) as store:
        for i in range(200):
            store.get(f"k{i}")
    assert "db check" in str(info.value) or "damaged" in str(info.value)


def test_read_only_file_fails_on_write_and_still_reads(tmp_path: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr not available")
    path = tmp_path / "ro.db"
    with CacheStore.open(str(path)) as store:
        store.put("k", cs.CachedOutput(output_uri="s3://b/k"))
    # Root ignores permission bits; the immutable attribute stops root too.
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("filesystem does not support the immutable attribute")
    try:
        with CacheStore.open(str(path)) as store:
            assert store.get("k").output_uri == "s3://b/k"
            with pytest.raises(StorageError, match="read-only"):
                store.put("k2", cs.CachedOutput(output_uri="s3://b/k2"))
            assert store.get("k").output_uri == "s3://b/k"
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=False)


def test_read_only_directory_still_reads_and_fails_writes_clearly(tmp_path: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr not available")
    directory = tmp_path / "read only dir"
    directory.mkdir()
    path = directory / "cache.db"
    with CacheStore.open(str(path)) as store:
        store.put("k", cs.CachedOutput(output_uri="s3://b/k"))
    # The immutable attribute stops root too (permission bits do not).
    if subprocess.run(["chattr", "+i", str(directory)], capture_output=True).returncode != 0:
        pytest.skip("filesystem does not support the immutable attribute")
    try:
        with CacheStore.open(str(path)) as store:
            assert store.get("k").output_uri == "s3://b/k"
            with pytest.raises(StorageError, match="read-only"):
                store.put("k2", cs.CachedOutput(output_uri="s3://b/k2"))
            with pytest.raises(StorageError, match="read-only"):
                store.get_or_extend_reservation("k", "owner")
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=False)
