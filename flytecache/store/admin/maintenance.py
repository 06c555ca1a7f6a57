"""SQLite file maintenance: file sizes, online backup, WAL checkpoint, VACUUM."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from flytecache.errors import (
    InvalidArgumentError,
    StorageBusyError,
)
from flytecache.store.admin._base import check_output_path, require_sqlite
from flytecache.store.driver_errors import translate_errors


def sqlite_files(engine: Engine) -> dict[str, int]:
    """Sizes in bytes of the SQLite database, its WAL and its shared-memory index."""
    path = require_sqlite(engine.url, "file sizes")

    def size(p: Path) -> int:
        try:
            return p.stat().st_size
        except OSError:
            return 0

    return {
        "database": size(path),
        "wal": size(Path(f"{path}-wal")),
        "shm": size(Path(f"{path}-shm")),
    }


@dataclass(frozen=True, slots=True)
class BackupResult:
    """Where a backup went and how big it is."""

    path: str
    bytes: int
    seconds: float


def backup(
    engine: Engine, dest: str | os.PathLike[str], *, overwrite: bool = False
) -> BackupResult:
    """Copy a SQLite database to ``dest`` with SQLite's online backup API.

    The copy is one backup step under one read snapshot, so it is consistent even while other
    processes write (WAL readers never block writers). It is written next to ``dest`` and
    renamed into place, and left in rollback-journal mode so the backup is a single file.
    """
    source = require_sqlite(engine.url, "backup")
    path = Path(dest).expanduser().absolute()
    if path.exists() and path.resolve() == source.resolve():
        raise InvalidArgumentError("the backup must not overwrite the database itself")
    check_output_path(path, overwrite=overwrite, what="the backup")
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    started = time.monotonic()
    try:
        with translate_errors():
            raw = engine.raw_connection()
            try:
                copy = sqlite3.connect(partial, isolation_level=None)
                try:
                    # pages=-1 copies everything in one step, i.e. under one read snapshot;
                    # stepping page by page would restart whenever another process writes.
                    raw.driver_connection.backup(copy, pages=-1)  # type: ignore[union-attr]
                    copy.execute("PRAGMA journal_mode = DELETE")
                finally:
                    copy.close()
            finally:
                raw.close()
        os.replace(partial, path)
    finally:
        for leftover in (partial, Path(f"{partial}-journal"), Path(f"{partial}-wal")):
            leftover.unlink(missing_ok=True)
    return BackupResult(str(path), path.stat().st_size, time.monotonic() - started)


@dataclass(frozen=True, slots=True)
class CheckpointResult:
    """Outcome of ``PRAGMA wal_checkpoint``."""

    busy: bool
    """True when readers or a writer kept the checkpoint from completing."""
    wal_frames: int
    checkpointed_frames: int
    wal_bytes_before: int
    wal_bytes_after: int


def checkpoint(engine: Engine, mode: str = "TRUNCATE") -> CheckpointResult:
    """Checkpoint the WAL into the database (``TRUNCATE`` also empties the WAL file)."""
    require_sqlite(engine.url, "checkpoint")
    mode = mode.upper()
    if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
        raise InvalidArgumentError(f"unknown checkpoint mode {mode!r}", field="mode")
    before = sqlite_files(engine)["wal"]
    with translate_errors():
        raw = engine.raw_connection()
        try:
            row = raw.driver_connection.execute(  # type: ignore[union-attr]
                f"PRAGMA wal_checkpoint({mode})"
            ).fetchone()
        finally:
            raw.close()
    busy, frames, done = (int(v) for v in row)
    return CheckpointResult(
        busy=bool(busy),
        wal_frames=frames,
        checkpointed_frames=done,
        wal_bytes_before=before,
        wal_bytes_after=sqlite_files(engine)["wal"],
    )


@dataclass(frozen=True, slots=True)
class VacuumResult:
    """Database file size before and after ``VACUUM`` (after a WAL checkpoint)."""

    bytes_before: int
    bytes_after: int
    checkpoint: CheckpointResult | None = field(default=None)


def vacuum(engine: Engine) -> VacuumResult:
    """Rebuild the SQLite file to reclaim free pages, then checkpoint so the file shrinks.

    VACUUM holds the write lock while it runs; concurrent writers wait (up to their busy
    timeout), so run it when the cache is quiet.
    """
    require_sqlite(engine.url, "vacuum")
    before = sqlite_files(engine)
    with translate_errors():
        raw = engine.raw_connection()
        try:
            # VACUUM cannot run inside a transaction; the driver is in autocommit mode.
            raw.driver_connection.execute("VACUUM")  # type: ignore[union-attr]
        finally:
            raw.close()
    result = checkpoint(engine)
    if result.busy:
        raise StorageBusyError(
            "VACUUM finished but the WAL checkpoint could not complete (readers are active); "
            "the file shrinks at the next checkpoint"
        )
    return VacuumResult(
        bytes_before=before["database"] + before["wal"],
        bytes_after=sqlite_files(engine)["database"],
        checkpoint=result,
    )
