"""Where a SQLite file may live and who else has it open: network filesystems are refused (WAL
locking is unsafe there), read-only storage is detected so a file on it can still be read,
new files are created private, and the processes holding SQLite's locks are named."""

from __future__ import annotations

import contextlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import URL

from flytecache.config import StoreSettings
from flytecache.errors import InvalidArgumentError
from flytecache.store.urls import is_sqlite, sqlite_file

__all__ = [
    "LockHolder",
    "check_sqlite_path",
    "create_private_file",
    "lock_holders",
    "loose_permissions",
    "network_filesystem_type",
    "on_read_only_storage",
    "sqlite_unopenable_directory",
]

# Filesystem types on which SQLite's POSIX/WAL shared-memory locking is unreliable.
_NETWORK_FS = {
    "nfs",
    "nfs4",
    "cifs",
    "smb",
    "smb2",
    "smb3",
    "smbfs",
    "9p",
    "afs",
    "ceph",
    "glusterfs",
    "lustre",
    "gpfs",
    "ncpfs",
    "coda",
    "davfs",
    "fuse.sshfs",
    "fuse.glusterfs",
    "fuse.cephfs",
    "fuse.s3fs",
    "fuse.gcsfuse",
    "fuse.rclone",
    "fuse.davfs",
    "fuse.juicefs",
    "fuse.goofys",
    "fuse.mountpoint-s3",
    "fuse.blobfuse",
    "fuse.blobfuse2",
    "fuse.smbnetfs",
    "fuse.curlftpfs",
}


def on_read_only_storage(path: Path) -> bool:
    """Whether the filesystem holding ``path`` is mounted read-only (``ST_RDONLY``): a
    read-only bind mount, a remounted volume, a snapshot; permission bits do not count."""
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


def sqlite_unopenable_directory(url: URL) -> bool:
    """Whether a SQLite file exists but its directory refuses the WAL companion files: the
    directory is read-only, or the storage is mounted read-only.

    That is the one case a read-only engine (``read_only=True``) is used for. A ``-wal`` file
    left on read-only storage is read by SQLite itself (from private memory), so such a
    database is opened the ordinary way.
    """
    if not is_sqlite(url) or not url.database:
        return False
    path = Path(url.database)
    wal = path.with_name(path.name + "-wal")
    if not path.is_file() or wal.exists():
        return False
    if on_read_only_storage(path):
        return True
    probe = path.with_name(f".{path.name}.flytecache-probe-{os.getpid()}")
    try:
        probe.touch(exist_ok=False)
    except OSError:
        return True
    probe.unlink(missing_ok=True)
    return False


def network_filesystem_type(path: Path, mounts_file: str = "/proc/self/mounts") -> str | None:
    """The network filesystem type ``path`` lives on, or None if local (or unknown)."""
    try:
        with open(mounts_file, encoding="utf-8") as fh:
            mounts = [line.split() for line in fh]
    except OSError:
        return None
    target = str(path.resolve())
    best, best_type = "", ""
    for fields in mounts:
        if len(fields) < 3:
            continue
        mount_point = fields[1].replace("\\040", " ")
        if (
            target == mount_point
            or target.startswith(mount_point.rstrip("/") + "/")
            or mount_point == "/"
        ) and len(mount_point) >= len(best):
            best, best_type = mount_point, fields[2]
    return best_type if best_type.lower() in _NETWORK_FS else None


def check_sqlite_path(url: URL, settings: StoreSettings, mounts_file: str) -> None:
    """Refuse a SQLite ``url`` whose directory is missing, that names a directory, or that lives
    on a network filesystem (unless ``settings.allow_network_filesystem``)."""
    assert url.database is not None
    path = sqlite_file(url)
    if not path.parent.is_dir():
        raise InvalidArgumentError(
            f"cannot open database {path}: directory {path.parent} does not exist", field="url"
        )
    if path.exists() and path.is_dir():
        raise InvalidArgumentError(f"cannot open database {path}: it is a directory", field="url")
    fstype = network_filesystem_type(path.parent, mounts_file)
    if fstype and not settings.allow_network_filesystem:
        raise InvalidArgumentError(
            f"refusing to open {path}: it is on a network filesystem ({fstype}) where SQLite's "
            "WAL locking is unsafe and concurrent writers can corrupt it. Put the database on a "
            "local disk, use PostgreSQL, or set allow_network_filesystem=True "
            "(FLYTECACHE_ALLOW_NETWORK_FILESYSTEM=1) if you accept the risk.",
            field="url",
            fstype=fstype,
        )


def create_private_file(path: Path, mode: int) -> bool:
    """Create ``path`` empty with exactly ``mode`` (the umask does not apply); whether it was
    created (False: it already existed).

    An empty file is a valid empty SQLite database; SQLite gives the ``-wal`` and ``-shm``
    files it creates later the database file's mode, so this decides all three.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    except FileExistsError:
        return False
    try:
        os.fchmod(fd, mode)  # os.open's mode is filtered by the umask
    finally:
        os.close(fd)
    return True


def loose_permissions(path: Path) -> list[tuple[Path, int]]:
    """The database and companion files at ``path`` that others (not owner, not group) may
    read, with their permission bits: ``[(path, 0o644), …]``; missing files are skipped."""
    found: list[tuple[Path, int]] = []
    for candidate in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(candidate.stat().st_mode)
        except OSError:
            continue
        if mode & stat.S_IROTH:
            found.append((candidate, mode))
    return found


# SQLite's WAL-index locks are byte locks on the -shm file, from offset 120: the write lock,
# the checkpointer, recovery, then five read marks (a process reading through the WAL holds
# one of these); byte 128 (the "DMS" lock) is held shared by every connection while it is open.
_SHM_READ_BYTES = range(123, 128)
_SHM_OPEN_BYTE = 128


@dataclass(frozen=True, slots=True)
class LockHolder:
    """Another process holding one of SQLite's locks on a database."""

    pid: int
    command: str
    """Its command line, shortened (empty when it cannot be read)."""

    def __str__(self) -> str:
        return f"pid {self.pid} ({self.command})" if self.command else f"pid {self.pid}"


def lock_holders(
    path: Path, *, readers: bool, locks_file: str = "/proc/locks"
) -> list[LockHolder] | None:
    """Other processes with the SQLite database at ``path`` open (``readers=False``), or only
    those inside a read transaction that reads through the WAL (``readers=True``); ``None``
    when that cannot be known (no ``/proc/locks``: not Linux; no ``-shm`` file).

    Reads the kernel's lock table, so it takes no lock itself and sees processes of any user;
    processes in another PID namespace (a container) show as the kernel numbers them there.
    """
    shm = Path(f"{path}-shm")
    try:
        info = shm.stat()
        with open(locks_file, encoding="ascii", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    wanted = _SHM_READ_BYTES if readers else range(_SHM_OPEN_BYTE, _SHM_OPEN_BYTE + 1)
    me = os.getpid()
    pids: set[int] = set()
    for line in lines:
        fields = line.split()
        # "1: POSIX  ADVISORY  READ 25979 fe:00:2416817 128 128"; "->" marks a waiter.
        if len(fields) < 8 or fields[1] != "POSIX" or fields[2] == "->":
            continue
        try:
            pid = int(fields[4])
            major, minor, inode_text = fields[5].split(":")
            device = os.makedev(int(major, 16), int(minor, 16))
            inode = int(inode_text)
            start = int(fields[6])
            end = int(fields[7]) if fields[7] != "EOF" else 2**63
        except (ValueError, IndexError):
            continue
        if pid == me or pid <= 0 or (device, inode) != (info.st_dev, info.st_ino):
            continue
        if any(start <= byte <= end for byte in wanted):
            pids.add(pid)
    return [LockHolder(pid, _command_of(pid)) for pid in sorted(pids)]


def _command_of(pid: int) -> str:
    with contextlib.suppress(OSError):
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        # One line whatever the arguments hold (a `python -c` script has newlines).
        text = " ".join(raw.replace(b"\0", b" ").decode(errors="replace").split())
        return text if len(text) <= 80 else text[:77] + "..."
    return ""
