"""SQLite file maintenance: file sizes, online backup, WAL checkpoint, VACUUM."""

from __future__ import annotations

import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from flytecache.errors import (
    InvalidArgumentError,
    StorageBusyError,
)
from flytecache.store.admin._base import check_output_path, require_sqlite
from flytecache.store.driver_errors import translate_errors
from flytecache.store.engine import read_connection
from flytecache.store.filesystem import create_private_file, lock_holders
from flytecache.store.urls import is_sqlite


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
    engine: Engine,
    dest: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    file_mode: int = 0o600,
) -> BackupResult:
    """Copy a SQLite database to ``dest`` with SQLite's online backup API.

    The copy is one backup step under one read snapshot, so it is consistent even while other
    processes write (WAL readers never block writers). That read transaction lasts as long as
    the copy (disk speed: about a second per few hundred MiB), and checkpoints cannot pass it
    meanwhile, so the WAL grows by what is written during the copy and shrinks after. It is
    written next to ``dest`` with permission bits ``file_mode`` (whatever the umask), renamed
    into place, and left in rollback-journal mode so the backup is a single file.
    """
    source = require_sqlite(engine.url, "backup")
    path = Path(dest).expanduser().absolute()
    if path.exists() and path.resolve() == source.resolve():
        raise InvalidArgumentError("the backup must not overwrite the database itself")
    check_output_path(path, overwrite=overwrite, what="the backup")
    partial = path.with_name(f".{path.name}.partial-{os.getpid()}")
    started = time.monotonic()
    try:
        partial.unlink(missing_ok=True)
        create_private_file(partial, file_mode)
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
    """Outcome of a WAL checkpoint."""

    busy: bool
    """True when readers or a writer kept the checkpoint from completing."""
    wal_frames: int
    """Frames (pages) the WAL held when the checkpoint started."""
    checkpointed_frames: int
    """How many of them are now in the database file (also those an earlier automatic
    checkpoint had copied)."""
    wal_bytes_before: int
    wal_bytes_after: int


def checkpoint(engine: Engine, mode: str = "TRUNCATE") -> CheckpointResult:
    """Checkpoint the WAL into the database (``TRUNCATE`` also empties the WAL file).

    A ``PASSIVE`` pass runs first in every mode: it copies what it can without waiting, and it
    is the one that says how many frames the WAL held (a successful ``TRUNCATE`` reports
    zeros, having emptied the WAL).
    """
    require_sqlite(engine.url, "checkpoint")
    mode = mode.upper()
    if mode not in ("PASSIVE", "FULL", "RESTART", "TRUNCATE"):
        raise InvalidArgumentError(f"unknown checkpoint mode {mode!r}", field="mode")
    before = sqlite_files(engine)["wal"]
    with translate_errors():
        raw = engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None
            busy, frames, done = _wal_checkpoint(driver, "PASSIVE")
            if mode != "PASSIVE":
                busy, later_frames, later_done = _wal_checkpoint(driver, mode)
                if busy:
                    frames, done = later_frames, later_done
                elif later_frames:
                    # FULL/RESTART report the WAL as they left it: all of it copied.
                    frames = done = max(frames, later_frames)
                else:
                    done = frames  # TRUNCATE emptied the WAL: everything was copied
        finally:
            raw.close()
    return CheckpointResult(
        busy=bool(busy),
        wal_frames=frames,
        checkpointed_frames=done,
        wal_bytes_before=before,
        wal_bytes_after=sqlite_files(engine)["wal"],
    )


def _wal_checkpoint(driver: Any, mode: str) -> tuple[int, int, int]:
    busy, frames, done = _raw_wal_checkpoint(driver, mode)
    # -1: another connection was checkpointing, or not in WAL mode (a read-only engine).
    return busy, max(frames, 0), max(done, 0)


def _raw_wal_checkpoint(driver: Any, mode: str) -> tuple[int, int, int]:
    row = driver.execute(f"PRAGMA wal_checkpoint({mode})").fetchone()
    busy, frames, done = (int(v) for v in row)
    return busy, frames, done


@dataclass(frozen=True, slots=True)
class WalState:
    """The WAL as one ``PASSIVE`` checkpoint left it (see :func:`wal_state`)."""

    wal_bytes: int
    """Size of the ``-wal`` file."""
    frames: int | None
    """Frames (pages) in the WAL; ``None`` when unknown: another connection was
    checkpointing at that moment, or the database is not in WAL mode (opened read-only)."""
    checkpointed: int | None
    """Frames of the WAL already copied into the database; fewer than ``frames`` means a
    reader still needs the rest (or a writer was appending)."""

    @property
    def complete(self) -> bool:
        """Whether every frame is known to be in the database (the WAL can restart)."""
        return (
            self.frames is not None
            and self.checkpointed is not None
            and self.checkpointed >= self.frames
        )


def wal_state(engine: Engine) -> WalState:
    """Run one ``PASSIVE`` checkpoint (copies what no reader needs; never waits, never blocks
    a writer) and say how far it got, with the ``-wal`` file's size (SQLite only)."""
    require_sqlite(engine.url, "checkpoint")
    with translate_errors():
        raw = engine.raw_connection()
        try:
            _busy, frames, done = _raw_wal_checkpoint(raw.driver_connection, "PASSIVE")
        finally:
            raw.close()
    known = frames >= 0 and done >= 0
    return WalState(
        wal_bytes=sqlite_files(engine)["wal"],
        frames=frames if known else None,
        checkpointed=done if known else None,
    )


def truncate_wal_if_idle(engine: Engine, limit: int) -> bool:
    """Empty a ``-wal`` file larger than ``limit`` bytes whose frames are all in the database,
    without waiting: whether it was emptied.

    SQLite cuts the WAL back (``journal_size_limit``) only when the next write transaction
    restarts it; an idle database would keep the size a pinned reader made it grow to. This
    ``TRUNCATE`` checkpoint runs with no busy timeout, so it holds the write lock for an
    instant or gives up at once when a writer or a reader of the old frames is active.
    """
    path = require_sqlite(engine.url, "checkpoint")
    try:
        if Path(f"{path}-wal").stat().st_size <= limit:
            return False
    except OSError:
        return False
    with translate_errors():
        raw = engine.raw_connection()
        try:
            driver = raw.driver_connection
            assert driver is not None
            (timeout,) = driver.execute("PRAGMA busy_timeout").fetchone()
            driver.execute("PRAGMA busy_timeout = 0")
            try:
                busy, _frames, _done = _wal_checkpoint(driver, "TRUNCATE")
            except sqlite3.OperationalError:
                busy = 1  # "database is locked": a writer is active, try at the next tick
            finally:
                driver.execute(f"PRAGMA busy_timeout = {int(timeout)}")
        finally:
            raw.close()
    return not busy


def other_connections(engine: Engine) -> str | None:
    """Who else has the database open, said for a person (``"2 other processes have …
    open: pid 41 (flytecache serve …)"``), or ``None`` when nobody does or it cannot be known.

    SQLite: the processes holding SQLite's shared-memory lock on the file (Linux). PostgreSQL:
    the other sessions on the same database, from ``pg_stat_activity``.
    """
    if is_sqlite(engine):
        path = require_sqlite(engine.url, "checkpoint")
        holders = lock_holders(path, readers=False)
        if not holders:
            return None
        names = ", ".join(str(holder) for holder in holders[:5])
        count = len(holders)
        who = "1 other process has" if count == 1 else f"{count} other processes have"
        return f"{who} {path} open: {names}"
    with read_connection(engine) as conn:
        count, clients = conn.exec_driver_sql(
            "SELECT count(*), string_agg(DISTINCT coalesce(nullif(application_name, ''), "
            "host(client_addr), 'local'), ', ') FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend'"
        ).one()
    if not count:
        return None
    return f"{count} other session{'s' if count > 1 else ''} on the database ({clients})"


def blocking_readers_hint(engine: Engine) -> str:
    """A sentence for an operator whose checkpoint a reader holds back: which processes are
    inside a read transaction on the database (from the kernel's lock table, on Linux), or how
    to find them."""
    path = require_sqlite(engine.url, "checkpoint")
    readers = lock_holders(path, readers=True)
    if readers:
        names = ", ".join(str(reader) for reader in readers[:5])
        more = f" and {len(readers) - 5} more" if len(readers) > 5 else ""
        return (
            f"a read transaction is open in {names}{more}; checkpoints cannot pass it, so the "
            "WAL grows until it ends (end it, or stop that process)"
        )
    if readers is not None:
        return "other connections were reading or writing; retry when the cache is quieter"
    return (
        "a long read transaction may be holding it back; list the processes that have the "
        f"database open with `fuser -v {path} {path}-wal` or `lsof {path}`"
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
