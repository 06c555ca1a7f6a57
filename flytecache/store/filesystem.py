"""Where a SQLite file may live: network filesystems are refused (WAL locking is unsafe there),
and a file in a read-only directory is detected so it can still be read."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.engine import URL

from flytecache.config import StoreSettings
from flytecache.errors import InvalidArgumentError
from flytecache.store.urls import is_sqlite

__all__ = ["check_sqlite_path", "network_filesystem_type", "sqlite_unopenable_directory"]

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


def sqlite_unopenable_directory(url: URL) -> bool:
    """Whether a SQLite file exists but its directory refuses the WAL companion files.

    That is the one case a read-only engine (``read_only=True``) is used for.
    """
    if not is_sqlite(url) or not url.database:
        return False
    path = Path(url.database)
    wal = path.with_name(path.name + "-wal")
    if not path.is_file() or wal.exists():
        return False
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
    path = Path(url.database.removeprefix("file:").split("?")[0])
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
