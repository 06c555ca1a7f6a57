"""Settings: frozen, validated dataclasses from code, CLI flags or ``FLYTECACHE_*`` variables."""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any, Literal

from flytecache.errors import InvalidArgumentError

__all__ = [
    "StoreSettings",
    "check_blob_prefix",
    "check_file_mode",
    "parse_duration",
    "parse_file_mode",
    "parse_size",
]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h|d|w)?\s*$")
_DURATION_UNITS = {
    "us": timedelta(microseconds=1),
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
    "w": timedelta(weeks=1),
}
_SIZE = re.compile(
    r"^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib|t|tb|tib)?\s*$", re.IGNORECASE
)
_SIZE_UNITS = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4}
LEASE_CLOCKS = ("auto", "database", "host")
EVICTION_POLICIES = ("least-recently-stored", "least-recently-used", "none")
Eviction = Literal["least-recently-stored", "least-recently-used", "none"]


def parse_duration(text: str | float | timedelta, *, name: str = "duration") -> timedelta:
    """Parse ``90s``, ``15m``, ``12h``, ``30d``, ``2w``, ``250ms`` or a bare number of seconds."""
    if isinstance(text, timedelta):
        return text
    if isinstance(text, int | float) and not isinstance(text, bool):
        return timedelta(seconds=text)
    match = _DURATION.match(str(text))
    if not match:
        raise InvalidArgumentError(
            f"{name}: {text!r} is not a duration (examples: 90s, 15m, 12h, 30d, 2w)", field=name
        )
    number, unit = match.groups()
    return float(number) * _DURATION_UNITS[unit or "s"]


def parse_size(text: str | int, *, name: str = "size") -> int:
    """Parse a byte size: ``16MiB``, ``512k``, ``1.5GiB``, ``1048576``, as
    :func:`format_size` prints them. Units are binary whatever their spelling: ``10GB``,
    ``10G`` and ``10GiB`` are all 10 × 1024³ bytes; a fraction of a unit is rounded down to
    whole bytes, and a fraction of a byte is refused. Raises :class:`InvalidArgumentError`."""
    if isinstance(text, int) and not isinstance(text, bool):
        return text
    match = _SIZE.match(str(text))
    if not match:
        raise InvalidArgumentError(
            f"{name}: {text!r} is not a size (examples: 16MiB, 512k, 1.5GiB)", field=name
        )
    number, unit = match.groups()
    scale = _SIZE_UNITS[(unit or "b")[0].lower()]
    if "." not in number:
        return int(number) * scale
    if scale == 1:
        raise InvalidArgumentError(
            f"{name}: {text!r} is not a whole number of bytes (write 1.5KiB, not 1536.5)",
            field=name,
        )
    return int(Decimal(number) * scale)


def format_size(size: int) -> str:
    """A byte count as people read it, the one way flytecache prints sizes: ``275 B``,
    ``1.5 KiB``, ``883.3 MiB`` (the inverse of :func:`parse_size`; JSON output keeps bytes)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


_FILE_MODE = re.compile(r"^\s*(?:0o?)?([0-7]{3})\s*$")


def parse_file_mode(text: str | int, *, name: str = "file mode") -> int:
    """Parse permission bits written in octal, as ``chmod`` takes them: ``600``, ``0640``,
    ``0o644`` (an ``int`` is taken as it is and checked)."""
    if isinstance(text, int) and not isinstance(text, bool):
        return check_file_mode(text, name=name)
    match = _FILE_MODE.match(str(text))
    if not match:
        raise InvalidArgumentError(
            f"{name}: {text!r} is not a file mode (three octal digits, as for chmod: 600, 640)",
            field=name,
        )
    return check_file_mode(int(match.group(1), 8), name=name)


def check_file_mode(mode: int, *, name: str = "file_mode") -> int:
    """``mode`` if it is permission bits the owner can read and write (``0o600`` at least);
    :class:`InvalidArgumentError` otherwise (SQLite must write its own files)."""
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise InvalidArgumentError(
            f"{name} must be permission bits such as 0o600, got {mode!r}", field=name
        )
    if mode & 0o600 != 0o600:
        raise InvalidArgumentError(
            f"{name} {mode:04o} does not let the owner read and write the database; "
            "use 600 or wider",
            field=name,
        )
    return mode


def check_blob_prefix(prefix: object, *, name: str = "blob_prefixes") -> str:
    """``prefix`` if flytecache may delete blobs below it: a non-empty local path or URI that
    names something below a file system's root (``/data/outputs``, ``s3://bucket/cache/``),
    without ``..`` segments. :class:`InvalidArgumentError` otherwise: ``/``, ``file:///`` or
    ``s3://`` would let any URI a client stores be deleted."""
    if not isinstance(prefix, str) or not prefix.strip():
        raise InvalidArgumentError(
            f"{name}: a blob prefix must be a non-empty path or URI, got {prefix!r}", field=name
        )
    scheme, sep, rest = prefix.partition("://")
    path = rest if sep else prefix
    if not sep or scheme == "file":
        path = path.lstrip("/") if path.startswith("/") else path
    segments = [part for part in path.split("/") if part not in ("", ".")]
    if ".." in segments:
        raise InvalidArgumentError(
            f"{name}: {prefix!r} has a '..' segment; give the directory it means", field=name
        )
    if not segments:
        raise InvalidArgumentError(
            f"{name}: {prefix!r} is a whole file system; name the directory (or bucket and "
            "folder) that holds the cached outputs",
            field=name,
        )
    return prefix


def _env_bool(value: str, name: str) -> bool:
    lowered = value.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off", ""}:
        return False
    raise InvalidArgumentError(f"{name}: {value!r} is not a boolean (use true/false)")


def _env_int(value: str, name: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise InvalidArgumentError(f"{name}: {value!r} is not an integer", field=name) from None


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """How a :class:`~flytecache.CacheStore` behaves; every value is checked at construction.

    Defaults are Flyte's (``max_heartbeat`` 10 s, ``grace_multiplier`` 3) and SQLite's safe
    multi-process settings (WAL, ``synchronous=NORMAL``, a 5 s busy timeout).
    """

    max_heartbeat: timedelta = timedelta(seconds=10)
    """Upper bound (and default) of a reservation's heartbeat interval."""
    grace_multiplier: float = 3
    """A lease expires ``heartbeat × grace_multiplier`` after its last extension."""
    busy_timeout: timedelta = timedelta(seconds=5)
    """How long an operation waits for the database write lock before ``StorageBusyError``."""
    synchronous: Literal["NORMAL", "FULL"] = "NORMAL"
    """SQLite durability: NORMAL survives process crashes, FULL also power loss (slower)."""
    allow_network_filesystem: bool = False
    """Open SQLite files on NFS/SMB/network FUSE anyway (WAL locking is unsafe there)."""
    pool_size: int = 5
    """Connections kept open per process (PostgreSQL; SQLite keeps one per thread in use)."""
    max_overflow: int = 10
    """Extra connections a busy process may open beyond ``pool_size`` (PostgreSQL)."""
    pool_timeout: timedelta = timedelta(seconds=30)
    """How long a call waits for a connection when ``pool_size + max_overflow`` are all busy
    (PostgreSQL) before ``StorageBusyError``."""
    wal_size_limit: int = 64 * 1024**2
    """Bytes the SQLite ``-wal`` file is cut back to after each complete checkpoint
    (``PRAGMA journal_size_limit``). It can exceed this only while a reader pins old data."""
    file_mode: int = 0o600
    """Permission bits of the SQLite files flytecache creates (the database, whose mode its
    ``-wal`` and ``-shm`` inherit, backups, exports), whatever the umask. Existing files keep
    theirs."""
    lease_clock: Literal["auto", "database", "host"] = "auto"
    """Which clock decides leases (the "now" an expiry is compared with and extended from) and,
    unless a clock is injected, entry times (``created_at``, ``last_updated_at``, ``max_age``
    and the admin tools' entry ages): the name predates the entries and is kept.
    ``database``: PostgreSQL's. Lease statements read it themselves, so replicas with skewed
    host clocks never hold one lease twice; entry times come from a sample of it carried
    forward by the host's monotonic clock (no extra round trip per put; off by at most half
    the sample's round trip plus the drift since, re-sampled every 30 s). An injected clock
    then decides only entry times. ``host``: the store's clock (injected, else the system's),
    as on SQLite. ``auto``: ``database`` on PostgreSQL unless a clock is injected (a test's
    fake clock keeps deciding), ``host`` on SQLite. ``database`` on SQLite is refused at open:
    SQLite has no clock of its own, every process reads its one host's (see
    docs/operations.md, Clocks)."""
    max_size_bytes: int | None = None
    """Limit on the entries' payload bytes (the sum of ``entries.size``, what ``flytecache stats``
    reports as ``payload_bytes``); above it the store evicts (see ``eviction``). None: no
    limit, and puts cost exactly what they cost without this feature."""
    max_entries: int | None = None
    """Limit on the number of entries; None: no limit."""
    eviction: Eviction = "least-recently-stored"
    """Which entries go first when a limit is passed: ``least-recently-stored`` (oldest
    ``last_updated_at``), ``least-recently-used`` (oldest of the last put and the last get,
    recorded in memory and flushed in batches) or ``none`` (never evict; refused together
    with a limit, which it would silently ignore). Used only with a limit."""
    delete_blobs: bool = False
    """When eviction or ``entries prune`` removes an entry whose output URI is under one of
    ``blob_prefixes``, delete that blob too (through fsspec, after the row's removal is
    committed). Off by default: flytecache then never deletes a blob."""
    blob_prefixes: tuple[str, ...] = ()
    """The URI prefixes whose blobs flytecache may delete (``s3://bucket/flyte-cache/``,
    ``/data/outputs``); ``delete_blobs`` needs at least one."""

    def __post_init__(self) -> None:
        for name in ("max_heartbeat", "busy_timeout", "pool_timeout"):
            value = getattr(self, name)
            if not isinstance(value, timedelta):
                raise InvalidArgumentError(f"{name} must be a timedelta, got {value!r}", field=name)
            if value <= timedelta(0):
                raise InvalidArgumentError(f"{name} must be positive, got {value}", field=name)
        if isinstance(self.grace_multiplier, bool) or not isinstance(
            self.grace_multiplier, int | float
        ):
            raise InvalidArgumentError(
                f"grace_multiplier must be a number, got {self.grace_multiplier!r}",
                field="grace_multiplier",
            )
        if not 0 < self.grace_multiplier <= 1000:
            raise InvalidArgumentError(
                f"grace_multiplier must be in (0, 1000], got {self.grace_multiplier}",
                field="grace_multiplier",
            )
        if self.synchronous not in ("NORMAL", "FULL"):
            raise InvalidArgumentError(
                f"synchronous must be 'NORMAL' or 'FULL', got {self.synchronous!r}",
                field="synchronous",
            )
        if not isinstance(self.allow_network_filesystem, bool):
            raise InvalidArgumentError(
                "allow_network_filesystem must be a bool", field="allow_network_filesystem"
            )
        for name in ("pool_size", "max_overflow"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidArgumentError(
                    f"{name} must be a non-negative integer, got {value!r}", field=name
                )
        if self.pool_size < 1:
            raise InvalidArgumentError(
                f"pool_size must be at least 1, got {self.pool_size}", field="pool_size"
            )
        if (
            isinstance(self.wal_size_limit, bool)
            or not isinstance(self.wal_size_limit, int)
            or self.wal_size_limit < 0
        ):
            raise InvalidArgumentError(
                "wal_size_limit must be a non-negative number of bytes, "
                f"got {self.wal_size_limit!r}",
                field="wal_size_limit",
            )
        check_file_mode(self.file_mode)
        if self.lease_clock not in LEASE_CLOCKS:
            raise InvalidArgumentError(
                f"lease_clock must be 'auto', 'database' or 'host', got {self.lease_clock!r}",
                field="lease_clock",
            )
        self._check_limits()

    def _check_limits(self) -> None:
        for name in ("max_size_bytes", "max_entries"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise InvalidArgumentError(
                    f"{name} must be a positive integer, got {value!r} (leave it unset for no "
                    "limit)",
                    field=name,
                )
        if self.eviction not in EVICTION_POLICIES:
            raise InvalidArgumentError(
                "eviction must be 'least-recently-stored', 'least-recently-used' or 'none', "
                f"got {self.eviction!r}",
                field="eviction",
            )
        if self.eviction == "none" and self.limited:
            raise InvalidArgumentError(
                "eviction='none' never evicts, so a max_size_bytes/max_entries limit would be "
                "ignored: choose a policy or drop the limit",
                field="eviction",
            )
        if not isinstance(self.delete_blobs, bool):
            raise InvalidArgumentError("delete_blobs must be a bool", field="delete_blobs")
        if not isinstance(self.blob_prefixes, tuple):
            raise InvalidArgumentError(
                f"blob_prefixes must be a tuple of URI prefixes, got {self.blob_prefixes!r}",
                field="blob_prefixes",
            )
        for prefix in self.blob_prefixes:
            check_blob_prefix(prefix)
        if self.delete_blobs and not self.blob_prefixes:
            raise InvalidArgumentError(
                "delete_blobs needs blob_prefixes: the URI prefixes flytecache may delete under",
                field="blob_prefixes",
            )

    @property
    def limited(self) -> bool:
        """Whether a size or entry-count limit is set (then the store evicts)."""
        return self.max_size_bytes is not None or self.max_entries is not None

    def replace(self, **changes: Any) -> StoreSettings:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> StoreSettings:
        """Build settings from ``FLYTECACHE_*`` variables; explicit ``overrides`` win.

        Variables: ``FLYTECACHE_MAX_HEARTBEAT``, ``FLYTECACHE_GRACE_MULTIPLIER``,
        ``FLYTECACHE_BUSY_TIMEOUT``, ``FLYTECACHE_SYNCHRONOUS``,
        ``FLYTECACHE_ALLOW_NETWORK_FILESYSTEM``, ``FLYTECACHE_POOL_SIZE``,
        ``FLYTECACHE_MAX_OVERFLOW``, ``FLYTECACHE_POOL_TIMEOUT``, ``FLYTECACHE_WAL_SIZE_LIMIT``
        (a size: ``64MiB``), ``FLYTECACHE_FILE_MODE`` (octal: ``600``, ``0640``),
        ``FLYTECACHE_LEASE_CLOCK`` (``auto``, ``database`` or ``host``),
        ``FLYTECACHE_MAX_SIZE_BYTES`` (a size: ``10GiB``), ``FLYTECACHE_MAX_ENTRIES``,
        ``FLYTECACHE_EVICTION`` (``least-recently-stored``, ``least-recently-used`` or
        ``none``), ``FLYTECACHE_DELETE_BLOBS`` (true/false), ``FLYTECACHE_BLOB_PREFIXES``
        (comma-separated URI prefixes). An empty limit variable means no limit.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            var = "FLYTECACHE_" + field.name.upper()
            if var not in env:
                continue
            raw = env[var]
            if field.name in ("max_heartbeat", "busy_timeout", "pool_timeout"):
                values[field.name] = parse_duration(raw, name=var)
            elif field.name == "grace_multiplier":
                try:
                    values[field.name] = float(raw)
                except ValueError:
                    raise InvalidArgumentError(f"{var}: {raw!r} is not a number") from None
            elif field.name == "synchronous":
                values[field.name] = raw.strip().upper()
            elif field.name in ("lease_clock", "eviction"):
                values[field.name] = raw.strip().lower()
            elif field.name == "max_size_bytes":
                values[field.name] = parse_size(raw, name=var) if raw.strip() else None
            elif field.name == "max_entries":
                values[field.name] = _env_int(raw, var) if raw.strip() else None
            elif field.name == "blob_prefixes":
                values[field.name] = tuple(p.strip() for p in raw.split(",") if p.strip())
            elif field.name in ("allow_network_filesystem", "delete_blobs"):
                values[field.name] = _env_bool(raw, var)
            elif field.name == "wal_size_limit":
                values[field.name] = parse_size(raw, name=var)
            elif field.name == "file_mode":
                values[field.name] = parse_file_mode(raw, name=var)
            else:
                values[field.name] = _env_int(raw, var)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
