"""Operator queries: statistics, listing, pruning, export/import, checks and maintenance.

Everything here is portable SQLAlchemy Core on the mapped tables and runs on SQLite and
PostgreSQL alike. The few SQLite-only operations (integrity check, WAL checkpoint, VACUUM, online
backup) check the dialect first and raise :class:`~flytecache.errors.InvalidArgumentError` on
another database. Functions take an ``Engine`` or a :class:`~flytecache.store.CacheStore` and
return plain dataclasses or dicts, never ORM rows. Writes run in write transactions
(``BEGIN IMMEDIATE`` on SQLite); bulk deletes run in bounded batches so that concurrent writers
never wait long for the lock.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import sqlite3
import time
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, cast

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from flytecache.config import StoreSettings
from flytecache.errors import (
    AlreadyExistsError,
    FlyteCacheError,
    InvalidArgumentError,
    NotFoundError,
    StorageBusyError,
)
from flytecache.store import migrate
from flytecache.store.cache import CacheStore
from flytecache.store.driver_errors import translate_errors
from flytecache.store.engine import read_connection, write_connection
from flytecache.store.filesystem import network_filesystem_type
from flytecache.store.models import ENTRY_DATA_COLUMNS, Entry, Output, Reservation
from flytecache.store.opening import describe_url
from flytecache.store.urls import is_sqlite
from flytecache.timeutil import (
    MAX_TS_SECONDS,
    MIN_TS_SECONDS,
    US,
    system_now_us,
    timedelta_to_us,
    us_to_datetime,
)
from flytecache.validation import check_storable, check_text

__all__ = [
    "EXPORT_FORMAT",
    "EXPORT_VERSION",
    "BackupResult",
    "CheckItem",
    "CheckpointResult",
    "DeleteResult",
    "EntryDetail",
    "EntryFilter",
    "EntrySummary",
    "ExportStream",
    "ImportResult",
    "OutputInfo",
    "PruneResult",
    "ReservationInfo",
    "VacuumResult",
    "backup",
    "check_database",
    "checkpoint",
    "count_entries",
    "count_reservations",
    "delete_entries",
    "describe_literal",
    "export_entries",
    "gc_reservations",
    "get_entry",
    "get_reservation",
    "import_entries",
    "iso_utc",
    "iter_entries",
    "iter_reservations",
    "prune",
    "require_sqlite",
    "resource_type_name",
    "sqlite_files",
    "stats",
    "vacuum",
]

Target = Engine | CacheStore

EXPORT_FORMAT = "flytecache-export"
EXPORT_VERSION = 1
"""Version of the JSON Lines export format this code writes (and the only one it reads)."""

BATCH = 500
"""Rows per write transaction for bulk deletes and per statement for import staging."""

_E = cast(sa.Table, Entry.__table__)
_O = cast(sa.Table, Output.__table__)
_R = cast(sa.Table, Reservation.__table__)

_ENTRY_COLUMNS = ENTRY_DATA_COLUMNS
_MIN_US = MIN_TS_SECONDS * US
_MAX_US = MAX_TS_SECONDS * US + US - 1
_SHORT_TEXT = 255  # project, domain and org are VARCHAR(255) on PostgreSQL
_SMALL_VALUE = 200  # longest string (in characters) shown as an output's value


# -- opening ----------------------------------------------------------------------------------


def _engine(target: Target) -> Engine:
    return target.engine if isinstance(target, CacheStore) else target


def _now(target: Target, now_us: int | None) -> int:
    if now_us is not None:
        return now_us
    return target.now_us() if isinstance(target, CacheStore) else system_now_us()


_POSTGRES_INSTEAD = {
    "backup": "back it up with pg_dump (or `flytecache export`)",
    "checkpoint": "the server checkpoints on its own (or run CHECKPOINT as a superuser)",
    "vacuum": "autovacuum reclaims space (or run VACUUM on the server)",
}


def require_sqlite(target: Engine | URL, operation: str) -> Path:
    """The SQLite file behind ``target``; InvalidArgumentError naming ``operation`` otherwise.

    Takes a URL too, so that commands can refuse before connecting to another database.
    """
    url = target.url if isinstance(target, Engine) else target
    if not is_sqlite(url):
        instead = _POSTGRES_INSTEAD.get(operation, "use the database server's own tools")
        raise InvalidArgumentError(
            f"{operation} is SQLite-only; this database is {url.get_backend_name()}: {instead}",
            field="db",
        )
    return Path(str(url.database))


@contextlib.contextmanager
def _snapshot(engine: Engine) -> Iterator[sa.Connection]:
    """A read transaction whose statements all see one snapshot.

    SQLite's read transactions already do; PostgreSQL's default READ COMMITTED takes a new
    snapshot per statement, so a paged listing or export could skip or repeat rows that a
    concurrent writer changes between pages. REPEATABLE READ holds one snapshot, and a
    read-only transaction there never fails with a serialization error.
    """
    with read_connection(engine) as conn:
        if not is_sqlite(engine):
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield conn


# -- formatting -------------------------------------------------------------------------------


def iso_utc(us: int | None) -> str | None:
    """Microseconds since the epoch as ISO-8601 UTC (``2026-01-01T00:00:00.123456Z``)."""
    if us is None:
        return None
    return us_to_datetime(us).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


# -- entries ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """Which entries a listing or prune selects; ``None`` fields do not filter.

    Ages compare ``last_updated_at`` with now, strictly: ``older_than=30d`` selects entries
    last written more than 30 days ago, ``newer_than=1h`` those written less than an hour ago.
    """

    project: str | None = None
    domain: str | None = None
    name: str | None = None
    version: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None

    def clauses(self, now_us: int) -> list[sa.ColumnElement[bool]]:
        """SQL conditions for this filter, with ages measured from ``now_us``."""
        where: list[sa.ColumnElement[bool]] = []
        for column in ("project", "domain", "name", "version"):
            value = getattr(self, column)
            if value is not None:
                where.append(_E.c[column] == value)
        if self.older_than is not None:
            where.append(_E.c.last_updated_at < now_us - timedelta_to_us(self.older_than))
        if self.newer_than is not None:
            where.append(_E.c.last_updated_at > now_us - timedelta_to_us(self.newer_than))
        return where


@dataclass(frozen=True, slots=True)
class EntrySummary:
    """One entry's columns (timestamps in microseconds since the epoch, UTC)."""

    key: str
    resource_type: int | None
    project: str
    domain: str
    name: str
    version: str
    org: str
    created_at: int
    last_updated_at: int
    output_uri: str | None
    size: int
    """Payload bytes: serialized inline literals, or the URI's length."""

    @property
    def inline(self) -> bool:
        """Whether the outputs are stored inline (no URI)."""
        return self.output_uri is None

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO-8601 UTC strings)."""
        return {
            "key": self.key,
            "project": self.project,
            "domain": self.domain,
            "name": self.name,
            "version": self.version,
            "org": self.org,
            "resource_type": resource_type_name(self.resource_type),
            "created_at": iso_utc(self.created_at),
            "last_updated_at": iso_utc(self.last_updated_at),
            "output_uri": self.output_uri,
            "inline": self.inline,
            "size": self.size,
        }


@dataclass(frozen=True, slots=True)
class OutputInfo:
    """One inline output, described for people: its literal type, size and (small) value."""

    name: str
    type: str
    size: int
    value: Any = None
    """The value of a small scalar (int, float, bool, short string, URI...), else None."""
    hash: str = ""

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "size": self.size,
            "value": self.value,
        }
        if self.hash:
            data["hash"] = self.hash
        return data


@dataclass(frozen=True, slots=True)
class EntryDetail:
    """An entry with its key map and (when inline) a description of each output."""

    entry: EntrySummary
    key_map: dict[str, str]
    outputs: list[OutputInfo] | None
    """None when the outputs live at ``entry.output_uri``."""

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data = self.entry.as_json()
        data["key_map"] = self.key_map
        data["outputs"] = None if self.outputs is None else [o.as_json() for o in self.outputs]
        return data


def resource_type_name(value: int | None) -> str | None:
    """The ``flyteidl2.core.ResourceType`` name of ``value`` (``TASK``...), or None."""
    if value is None:
        return None
    from flyteidl2.core import identifier_pb2

    try:
        return str(identifier_pb2.ResourceType.Name(value))
    except ValueError:
        return str(value)


_SUMMARY_COLUMNS = (
    _E.c.key,
    _E.c.resource_type,
    _E.c.project,
    _E.c.domain,
    _E.c.name,
    _E.c.version,
    _E.c.org,
    _E.c.created_at,
    _E.c.last_updated_at,
    _E.c.output_uri,
    _E.c.size,
)


def _summary(row: Any) -> EntrySummary:
    return EntrySummary(
        key=row.key,
        resource_type=row.resource_type,
        project=row.project,
        domain=row.domain,
        name=row.name,
        version=row.version,
        org=row.org,
        created_at=row.created_at,
        last_updated_at=row.last_updated_at,
        output_uri=row.output_uri,
        size=row.size,
    )


def iter_entries(
    target: Target,
    where: EntryFilter | None = None,
    *,
    limit: int | None = None,
    now_us: int | None = None,
    page_size: int = BATCH,
) -> Generator[EntrySummary, None, None]:
    """Entries matching ``where``, most recently updated first, streamed page by page.

    One read transaction (a consistent snapshot); keyset pagination on
    ``(last_updated_at, id)`` keeps memory constant however many entries there are. The
    generator holds a pooled connection until it is exhausted or closed: close it
    (``contextlib.closing``) when you stop early, before closing the store.
    """
    if limit is not None and limit <= 0:
        return
    engine = _engine(target)
    clauses = (where or EntryFilter()).clauses(_now(target, now_us))
    remaining = limit
    with _snapshot(engine) as conn:
        after: tuple[int, int] | None = None
        while True:
            size = page_size if remaining is None else min(page_size, remaining)
            query = sa.select(_E.c.id, *_SUMMARY_COLUMNS).where(*clauses)
            if after is not None:
                query = query.where(
                    sa.or_(
                        _E.c.last_updated_at < after[0],
                        sa.and_(_E.c.last_updated_at == after[0], _E.c.id < after[1]),
                    )
                )
            rows = conn.execute(
                query.order_by(_E.c.last_updated_at.desc(), _E.c.id.desc()).limit(size)
            ).all()
            for row in rows:
                yield _summary(row)
            if len(rows) < size:
                return
            if remaining is not None:
                remaining -= len(rows)
                if remaining <= 0:
                    return
            after = (rows[-1].last_updated_at, rows[-1].id)


def count_entries(
    target: Target, where: EntryFilter | None = None, *, now_us: int | None = None
) -> tuple[int, int]:
    """(number of entries, payload bytes) matching ``where``."""
    clauses = (where or EntryFilter()).clauses(_now(target, now_us))
    with read_connection(_engine(target)) as conn:
        row = conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(_E.c.size), 0)).where(*clauses)
        ).one()
    return int(row[0]), int(row[1])


def get_entry(target: Target, key: str) -> EntryDetail:
    """One entry with its key map and described outputs; NotFoundError if there is none."""
    check_text(key, "key")
    with _snapshot(_engine(target)) as conn:
        row = conn.execute(
            sa.select(_E.c.id, _E.c.key_map, *_SUMMARY_COLUMNS).where(_E.c.key == key)
        ).one_or_none()
        if row is None:
            raise NotFoundError(f'cache entry "{key}" not found', key=key)
        outputs: list[OutputInfo] | None = None
        if row.output_uri is None:
            outputs = [
                describe_literal(name, bytes(literal))
                for name, literal in conn.execute(
                    sa.select(_O.c.name, _O.c.literal)
                    .where(_O.c.entry_id == row.id)
                    .order_by(_O.c.name)
                )
            ]
    try:
        key_map = json.loads(row.key_map) if row.key_map else {}
    except ValueError:
        key_map = {"(unreadable)": row.key_map}
    return EntryDetail(entry=_summary(row), key_map=key_map, outputs=outputs)


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What :func:`delete_entries` removed."""

    removed: list[str]
    missing: list[str]
    bytes: int


def delete_entries(target: Target, keys: Iterable[str]) -> DeleteResult:
    """Delete the entries under ``keys`` (and their outputs) in one write transaction."""
    wanted = list(dict.fromkeys(check_text(k, "key") for k in keys))
    removed: set[str] = set()
    total = 0
    with write_connection(_engine(target)) as conn:
        for start in range(0, len(wanted), BATCH):
            chunk = wanted[start : start + BATCH]
            for key, size in conn.execute(
                sa.delete(_E).where(_E.c.key.in_(chunk)).returning(_E.c.key, _E.c.size)
            ):
                removed.add(key)
                total += size
    return DeleteResult(
        removed=[k for k in wanted if k in removed],
        missing=[k for k in wanted if k not in removed],
        bytes=total,
    )


@dataclass(frozen=True, slots=True)
class PruneResult:
    """What :func:`prune` removed (or would remove, with ``dry_run``)."""

    entries: int
    bytes: int
    batches: int
    dry_run: bool
    longest_batch_seconds: float = 0.0
    """Longest time one batch held the write lock."""

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "entries": self.entries,
            "bytes": self.bytes,
            "batches": self.batches,
            "dry_run": self.dry_run,
            "longest_batch_seconds": round(self.longest_batch_seconds, 6),
        }


def prune(
    target: Target,
    where: EntryFilter,
    *,
    now_us: int | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH,
    on_batch: Callable[[int, int], None] | None = None,
) -> PruneResult:
    """Delete the entries matching ``where`` (which must set ``older_than``) in batches.

    Each batch of ``batch_size`` entries is its own short write transaction, and after each
    the pruner sleeps about as long as it held the lock, so concurrent writers (whose busy
    handlers poll for the lock) get in between batches instead of waiting for the whole prune.
    The age cut-off is fixed when the prune starts: entries written meanwhile are never touched.
    ``on_batch(entries, bytes)`` is called after each batch (for progress bars).
    """
    if where.older_than is None:
        raise InvalidArgumentError("prune needs an age (older_than)", field="older_than")
    if batch_size < 1:
        raise InvalidArgumentError("batch_size must be at least 1", field="batch_size")
    now = _now(target, now_us)
    if dry_run:
        count, size = count_entries(target, where, now_us=now)
        return PruneResult(entries=count, bytes=size, batches=0, dry_run=True)
    engine = _engine(target)
    clauses = where.clauses(now)
    victims = sa.select(_E.c.id).where(*clauses).limit(batch_size)
    statement = sa.delete(_E).where(_E.c.id.in_(victims)).returning(_E.c.size)
    entries = total = batches = 0
    longest = 0.0
    while True:
        with write_connection(engine) as conn:
            started = time.monotonic()
            sizes = conn.execute(statement).scalars().all()
        held = time.monotonic() - started
        if not sizes:
            break
        batches += 1
        longest = max(longest, held)
        entries += len(sizes)
        removed = int(sum(sizes))
        total += removed
        if on_batch is not None:
            on_batch(len(sizes), removed)
        # Writers poll for the lock with backoff; leaving it free about half the time lets them
        # in between batches, so their wait is bounded by one batch, not the whole prune.
        time.sleep(min(max(held, 0.002), 0.05))
    return PruneResult(
        entries=entries, bytes=total, batches=batches, dry_run=False, longest_batch_seconds=longest
    )


# -- outputs ----------------------------------------------------------------------------------


def describe_literal(name: str, raw: bytes) -> OutputInfo:
    """Describe a serialized ``flyteidl2.core.Literal``: its type, size and a small value."""
    from flyteidl2.core import literals_pb2
    from google.protobuf.message import DecodeError

    literal = literals_pb2.Literal()
    try:
        literal.ParseFromString(raw)
    except DecodeError:
        return OutputInfo(name=name, type="(undecodable)", size=len(raw))
    kind, value = _describe(literal)
    return OutputInfo(name=name, type=kind, size=len(raw), value=value, hash=literal.hash)


def _describe(literal: Any) -> tuple[str, Any]:
    kind = literal.WhichOneof("value")
    if kind == "scalar":
        return _describe_scalar(literal.scalar)
    if kind == "collection":
        return f"collection[{len(literal.collection.literals)}]", None
    if kind == "map":
        return f"map[{len(literal.map.literals)}]", None
    if kind == "offloaded_metadata":
        return "offloaded", literal.offloaded_metadata.uri
    return "empty", None


def _describe_scalar(scalar: Any) -> tuple[str, Any]:
    kind = scalar.WhichOneof("value")
    if kind == "primitive":
        primitive = scalar.primitive
        which = primitive.WhichOneof("value")
        if which == "integer":
            return "integer", int(primitive.integer)
        if which == "float_value":
            return "float", _json_float(primitive.float_value)
        if which == "string_value":
            text = primitive.string_value
            return "string", text if len(text) <= _SMALL_VALUE else None
        if which == "boolean":
            return "boolean", bool(primitive.boolean)
        if which == "datetime":
            return "datetime", primitive.datetime.ToJsonString()
        if which == "duration":
            return "duration", primitive.duration.ToJsonString()
        return "primitive", None
    if kind == "blob":
        return "blob", scalar.blob.uri
    if kind == "binary":
        tag = scalar.binary.tag
        return (f"binary({tag})" if tag else "binary"), None
    if kind == "schema":
        return "schema", scalar.schema.uri
    if kind == "none_type":
        return "none", None
    if kind == "error":
        return "error", scalar.error.message
    if kind == "generic":
        from google.protobuf.json_format import MessageToDict

        small = scalar.generic.ByteSize() <= _SMALL_VALUE
        return "struct", MessageToDict(scalar.generic) if small else None
    if kind == "structured_dataset":
        return "structured_dataset", scalar.structured_dataset.uri
    if kind == "union":
        inner, value = _describe(scalar.union.value)
        return f"union[{inner}]", value
    return "scalar", None


# -- reservations -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReservationInfo:
    """One lease (times in microseconds since the epoch) as seen at ``now``."""

    key: str
    owner_id: str
    heartbeat_interval: int
    """Microseconds."""
    expires_at: int
    created_at: int
    updated_at: int
    previous_owner: str | None
    now: int

    @property
    def active(self) -> bool:
        """Whether the lease is live (others must wait)."""
        return self.expires_at > self.now

    @property
    def expires_in(self) -> float:
        """Seconds until expiry (negative once expired)."""
        return (self.expires_at - self.now) / US

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict (timestamps as ISO-8601 UTC, durations in seconds)."""
        return {
            "key": self.key,
            "owner_id": self.owner_id,
            "active": self.active,
            "expires_at": iso_utc(self.expires_at),
            "expires_in": self.expires_in,
            "heartbeat_interval": self.heartbeat_interval / US,
            "created_at": iso_utc(self.created_at),
            "updated_at": iso_utc(self.updated_at),
            "previous_owner": self.previous_owner,
        }


ReservationState = Literal["all", "active", "expired"]


def _reservation_clauses(
    state: ReservationState, owner: str | None, now: int
) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if state == "active":
        where.append(_R.c.expires_at > now)
    elif state == "expired":
        where.append(_R.c.expires_at <= now)
    elif state != "all":
        raise InvalidArgumentError(f"unknown reservation state {state!r}", field="state")
    if owner is not None:
        where.append(_R.c.owner_id == owner)
    return where


def _reservation(row: Any, now: int) -> ReservationInfo:
    return ReservationInfo(
        key=row.key,
        owner_id=row.owner_id,
        heartbeat_interval=row.heartbeat_interval,
        expires_at=row.expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        previous_owner=row.previous_owner,
        now=now,
    )


def iter_reservations(
    target: Target,
    *,
    state: ReservationState = "all",
    owner: str | None = None,
    now_us: int | None = None,
    limit: int | None = None,
    page_size: int = BATCH,
) -> Generator[ReservationInfo, None, None]:
    """Leases ordered by key, streamed page by page in one read transaction.

    Like :func:`iter_entries`, close the generator when you stop early.
    """
    if limit is not None and limit <= 0:
        return
    now = _now(target, now_us)
    clauses = _reservation_clauses(state, owner, now)
    remaining = limit
    with _snapshot(_engine(target)) as conn:
        after: str | None = None
        while True:
            size = page_size if remaining is None else min(page_size, remaining)
            query = sa.select(_R).where(*clauses)
            if after is not None:
                query = query.where(_R.c.key > after)
            rows = conn.execute(query.order_by(_R.c.key).limit(size)).all()
            for row in rows:
                yield _reservation(row, now)
            if len(rows) < size:
                return
            if remaining is not None:
                remaining -= len(rows)
                if remaining <= 0:
                    return
            after = rows[-1].key


def get_reservation(target: Target, key: str, *, now_us: int | None = None) -> ReservationInfo:
    """The lease on ``key``; NotFoundError if there is none."""
    check_text(key, "key")
    now = _now(target, now_us)
    with read_connection(_engine(target)) as conn:
        row = conn.execute(sa.select(_R).where(_R.c.key == key)).one_or_none()
    if row is None:
        raise NotFoundError(f'no reservation on "{key}"', key=key)
    return _reservation(row, now)


def count_reservations(
    target: Target,
    *,
    state: ReservationState = "all",
    owner: str | None = None,
    now_us: int | None = None,
) -> int:
    """How many leases match."""
    clauses = _reservation_clauses(state, owner, _now(target, now_us))
    with read_connection(_engine(target)) as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(*clauses)).scalar_one())


def gc_reservations(
    target: Target, *, now_us: int | None = None, batch_size: int = BATCH, dry_run: bool = False
) -> int:
    """Delete expired leases (``expires_at <= now``) in batches; return how many."""
    now = _now(target, now_us)
    if dry_run:
        return count_reservations(target, state="expired", now_us=now)
    expired = _R.c.expires_at <= now
    victims = sa.select(_R.c.key).where(expired).limit(batch_size)
    # The outer condition re-checks expiry under the write lock, so a lease extended between
    # the listing and the delete is never removed.
    statement = sa.delete(_R).where(_R.c.key.in_(victims), expired)
    removed = 0
    while True:
        with write_connection(_engine(target)) as conn:
            count = conn.execute(statement).rowcount
        removed += count
        if count < batch_size:
            return removed


# -- statistics -------------------------------------------------------------------------------


def sqlite_files(target: Target) -> dict[str, int]:
    """Sizes in bytes of the SQLite database, its WAL and its shared-memory index."""
    path = require_sqlite(_engine(target), "file sizes")

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


def stats(target: Target, *, now_us: int | None = None, top: int = 5) -> dict[str, Any]:
    """Counts, sizes and the biggest projects/domains/tasks, as a JSON-ready dict."""
    engine = _engine(target)
    now = _now(target, now_us)
    inline = sa.func.coalesce(sa.func.sum(sa.case((_E.c.output_uri.is_(None), 1), else_=0)), 0)
    active = sa.func.coalesce(sa.func.sum(sa.case((_R.c.expires_at > now, 1), else_=0)), 0)
    with _snapshot(engine) as conn:
        totals = conn.execute(
            sa.select(
                sa.func.count(),
                inline,
                sa.func.coalesce(sa.func.sum(_E.c.size), 0),
                sa.func.min(_E.c.last_updated_at),
                sa.func.max(_E.c.last_updated_at),
            ).select_from(_E)
        ).one()
        leases = conn.execute(sa.select(sa.func.count(), active).select_from(_R)).one()
        groups: dict[str, list[dict[str, Any]]] = {}
        for label, columns in (
            ("projects", (_E.c.project,)),
            ("domains", (_E.c.domain,)),
            ("tasks", (_E.c.project, _E.c.domain, _E.c.name)),
        ):
            count = sa.func.count().label("entries")
            rows = conn.execute(
                sa.select(*columns, count, sa.func.coalesce(sa.func.sum(_E.c.size), 0))
                .group_by(*columns)
                .order_by(count.desc(), *columns)
                .limit(top)
            ).all()
            groups[label] = [
                {
                    **{c.name: row[i] for i, c in enumerate(columns)},
                    "entries": int(row[len(columns)]),
                    "bytes": int(row[len(columns) + 1]),
                }
                for row in rows
            ]
        storage: dict[str, Any]
        if is_sqlite(engine):
            pragma = {
                name: int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())
                for name in ("page_size", "page_count", "freelist_count")
            }
            storage = {
                **sqlite_files(engine),
                "free_bytes": pragma["page_size"] * pragma["freelist_count"],
            }
        else:
            storage = {
                "database": int(
                    conn.execute(
                        sa.select(sa.func.pg_database_size(sa.func.current_database()))
                    ).scalar_one()
                )
            }
    entries, inline_count = int(totals[0]), int(totals[1])
    return {
        "database": describe_url(engine),
        "dialect": engine.dialect.name,
        "entries": entries,
        "entries_inline": inline_count,
        "entries_uri": entries - inline_count,
        "payload_bytes": int(totals[2]),
        "oldest_last_updated_at": iso_utc(totals[3]),
        "newest_last_updated_at": iso_utc(totals[4]),
        "reservations": {"active": int(leases[1]), "expired": int(leases[0]) - int(leases[1])},
        "files": storage,
        "top_projects": groups["projects"],
        "top_domains": groups["domains"],
        "top_tasks": groups["tasks"],
    }


# -- export / import --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ExportStream:
    """An export in progress: the header, the entry count and the lines (without newlines).

    Iterate :attr:`lines` once; the first line is the header.
    """

    header: dict[str, Any]
    total: int
    lines: Iterator[str]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@contextlib.contextmanager
def export_entries(target: Target, *, page_size: int = BATCH) -> Iterator[ExportStream]:
    """Export every entry as JSON Lines (inline outputs base64-encoded), streamed.

    A context manager: everything is read in one read transaction (a consistent snapshot that
    does not block writers) with keyset pagination on ``id``, so memory stays constant.
    """
    from flytecache import __version__

    with _snapshot(_engine(target)) as conn:
        total = int(conn.execute(sa.select(sa.func.count()).select_from(_E)).scalar_one())
        header = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "flytecache": __version__,
            "schema": migrate.current_revision(conn),
            "exported_at": iso_utc(system_now_us()),
            "entries": total,
            "timestamps": "microseconds since the Unix epoch, UTC",
            "outputs": "base64 of each serialized flyteidl2.core.Literal",
        }
        yield ExportStream(header=header, total=total, lines=_export_lines(conn, header, page_size))


def _export_lines(conn: sa.Connection, header: dict[str, Any], page_size: int) -> Iterator[str]:
    yield _dumps(header)
    after = 0
    while True:
        rows = conn.execute(
            sa.select(_E).where(_E.c.id > after).order_by(_E.c.id).limit(page_size)
        ).all()
        if not rows:
            return
        first, after = rows[0].id, rows[-1].id
        outputs: dict[int, dict[str, str]] = {}
        for entry_id, name, literal in conn.execute(
            sa.select(_O.c.entry_id, _O.c.name, _O.c.literal)
            .where(_O.c.entry_id.between(first, after))
            .order_by(_O.c.entry_id, _O.c.name)
        ):
            outputs.setdefault(entry_id, {})[name] = base64.b64encode(bytes(literal)).decode()
        for row in rows:
            record = {column: row._mapping[column] for column in _ENTRY_COLUMNS}
            record["key_map"] = json.loads(row.key_map) if row.key_map else {}
            record["outputs"] = outputs.get(row.id, {}) if row.output_uri is None else None
            yield _dumps(record)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did (or, with ``dry_run``, would do)."""

    entries: int
    """Entries in the file."""
    inserted: int
    """New keys."""
    replaced: int
    """Existing keys overwritten (``overwrite=True``)."""
    skipped: int
    """Existing keys left alone (``overwrite=False``)."""
    dry_run: bool

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "entries": self.entries,
            "inserted": self.inserted,
            "replaced": self.replaced,
            "skipped": self.skipped,
            "dry_run": self.dry_run,
        }


_STAGE_META = sa.MetaData()
_STAGE = sa.Table(
    "flytecache_import_entries",
    _STAGE_META,
    sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("resource_type", sa.Integer),
    sa.Column("project", sa.Text, nullable=False),
    sa.Column("domain", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("org", sa.Text, nullable=False),
    sa.Column("key_map", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("last_updated_at", sa.BigInteger, nullable=False),
    sa.Column("output_uri", sa.Text),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("existing", sa.Boolean, nullable=False, default=False),
    prefixes=["TEMPORARY"],
)
_STAGE_OUTPUTS = sa.Table(
    "flytecache_import_outputs",
    _STAGE_META,
    sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("literal", sa.LargeBinary, nullable=False),
    prefixes=["TEMPORARY"],
)
# Created with the table: the merge joins and the duplicate check look keys up.
sa.Index("ix_flytecache_import_entries_key", _STAGE.c.key)

_OPTIONAL_TEXT = ("project", "domain", "name", "version", "org")
_SHORT_NAMES = frozenset(("project", "domain", "org"))
_KNOWN_FIELDS = frozenset((*_ENTRY_COLUMNS, "outputs"))


class _BadLine(Exception):
    pass


def _storable(value: str, name: str, *, nul_ok: bool) -> str:
    """``value`` if the database can store it (:func:`check_storable`), else a
    :class:`_BadLine` naming ``name``."""
    try:
        return check_storable(value, name, nul_ok=nul_ok)
    except InvalidArgumentError as error:
        raise _BadLine(error.message) from None


def _text(record: dict[str, Any], name: str, *, nul_ok: bool, limit: int | None = None) -> str:
    value = record.get(name, "")
    if not isinstance(value, str):
        raise _BadLine(f"{name} must be a string")
    if limit is not None and len(value) > limit:
        raise _BadLine(f"{name} is longer than {limit} characters")
    return _storable(value, name, nul_ok=nul_ok)


def _timestamp(record: dict[str, Any], name: str) -> int:
    if name not in record:
        raise _BadLine(f"missing {name}")
    value = record[name]
    if type(value) is not int:
        raise _BadLine(f"{name} must be an integer (microseconds since the epoch)")
    if not _MIN_US <= value <= _MAX_US:
        raise _BadLine(f"{name} {value} is out of range")
    return value


def _parse_entry(
    record: Any, *, nul_ok: bool = True
) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """Validate one decoded entry line; return its column values and inline outputs.

    ``nul_ok=False`` (PostgreSQL) rejects NUL characters in the text columns.
    """
    from flyteidl2.core import literals_pb2
    from google.protobuf.message import DecodeError

    if not isinstance(record, dict):
        raise _BadLine("expected a JSON object")
    unknown = sorted(set(record) - _KNOWN_FIELDS)
    if unknown:
        raise _BadLine(f"unknown field {unknown[0]!r}")
    if "key" not in record:
        raise _BadLine("missing key")
    try:
        key = check_text(record["key"], "key")
    except InvalidArgumentError as error:
        raise _BadLine(str(error)) from None
    row: dict[str, Any] = {"key": key}
    resource_type = record.get("resource_type")
    if resource_type is not None and (
        type(resource_type) is not int or not 0 <= resource_type < 2**31
    ):
        raise _BadLine("resource_type must be a non-negative integer or null")
    row["resource_type"] = resource_type
    for name in _OPTIONAL_TEXT:
        limit = _SHORT_TEXT if name in _SHORT_NAMES else None
        row[name] = _text(record, name, nul_ok=nul_ok, limit=limit)
    key_map = record.get("key_map", {})
    if not isinstance(key_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in key_map.items()
    ):
        raise _BadLine("key_map must be an object of strings")
    for item in key_map.items():
        for text in item:
            # Stored as JSON with \u escapes, so NUL is fine on every backend.
            _storable(text, "key_map", nul_ok=True)
    row["key_map"] = json.dumps(key_map, sort_keys=True) if key_map else "{}"
    row["created_at"] = _timestamp(record, "created_at")
    row["last_updated_at"] = _timestamp(record, "last_updated_at")
    size = record.get("size", 0)
    if type(size) is not int or size < 0:
        raise _BadLine("size must be a non-negative integer")
    uri = record.get("output_uri")
    outputs = record.get("outputs")
    literals: list[tuple[str, bytes]] = []
    if uri is not None:
        if outputs is not None:
            raise _BadLine("an entry has either output_uri or outputs, not both")
        if not isinstance(uri, str) or not uri:
            raise _BadLine("output_uri must be a non-empty string")
        row["output_uri"] = _storable(uri, "output_uri", nul_ok=nul_ok)
        row["size"] = len(uri.encode("utf-8"))
    else:
        if not isinstance(outputs, dict):
            raise _BadLine("an entry needs output_uri or an outputs object")
        for name, encoded in outputs.items():
            _storable(name, f"output name {name!r}", nul_ok=nul_ok)
            if not isinstance(encoded, str):
                raise _BadLine(f"outputs[{name!r}] must be a base64 string")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise _BadLine(f"outputs[{name!r}] is not valid base64") from None
            try:
                literals_pb2.Literal().ParseFromString(raw)
            except DecodeError:
                raise _BadLine(f"outputs[{name!r}] is not a serialized Literal") from None
            literals.append((name, raw))
        row["output_uri"] = None
        row["size"] = sum(len(raw) for _, raw in literals)
    return row, literals


def _parse_header(line_no: int, record: Any) -> dict[str, Any]:
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        raise InvalidArgumentError(
            f"line {line_no}: not a flytecache export (the first line must be a header with "
            f'"format": "{EXPORT_FORMAT}")',
            line=line_no,
        )
    version = record.get("version")
    if version != EXPORT_VERSION or type(version) is not int:
        raise InvalidArgumentError(
            f"line {line_no}: unsupported export version {version!r} "
            f"(this flytecache reads version {EXPORT_VERSION})",
            line=line_no,
        )
    entries = record.get("entries")
    if entries is not None and (type(entries) is not int or entries < 0):
        raise InvalidArgumentError(
            f"line {line_no}: header field entries must be a non-negative integer",
            line=line_no,
        )
    return record


def _stage(
    conn: sa.Connection,
    lines: Iterable[bytes | str],
    progress: Callable[[int, int | None], None] | None,
) -> int:
    """Validate every line and copy the entries into the staging tables; return the count."""
    expected: int | None = None
    header_seen = False
    entries = 0
    nul_ok = conn.dialect.name == "sqlite"
    rows: list[dict[str, Any]] = []
    outputs: list[dict[str, Any]] = []

    def flush() -> None:
        if rows:
            conn.execute(sa.insert(_STAGE), rows)
            rows.clear()
        if outputs:
            conn.execute(sa.insert(_STAGE_OUTPUTS), outputs)
            outputs.clear()

    line_no = 0
    for line_no, raw_line in enumerate(lines, start=1):
        try:
            text = raw_line.decode("utf-8") if isinstance(raw_line, bytes) else raw_line
            record = json.loads(text)
        except UnicodeDecodeError:
            raise InvalidArgumentError(f"line {line_no}: not UTF-8 text", line=line_no) from None
        except ValueError as error:
            if not text.strip():
                raise InvalidArgumentError(f"line {line_no}: empty line", line=line_no) from None
            raise InvalidArgumentError(
                f"line {line_no}: not valid JSON ({error})", line=line_no
            ) from None
        if not header_seen:
            expected = _parse_header(line_no, record).get("entries")
            header_seen = True
            if progress is not None:
                progress(0, expected)
            continue
        try:
            row, literals = _parse_entry(record, nul_ok=nul_ok)
        except _BadLine as error:
            raise InvalidArgumentError(f"line {line_no}: {error}", line=line_no) from None
        row["line"] = line_no
        row["existing"] = False
        rows.append(row)
        outputs.extend({"line": line_no, "name": n, "literal": v} for n, v in literals)
        entries += 1
        if len(rows) >= BATCH or len(outputs) >= BATCH:
            flush()
            if progress is not None:
                progress(entries, expected)
    flush()
    if not header_seen:
        raise InvalidArgumentError("the input is empty; expected a flytecache export", line=0)
    if expected is not None and entries != expected:
        raise InvalidArgumentError(
            f"line {line_no}: the header announces {expected} entries but the file has "
            f"{entries} (truncated or edited?)",
            line=line_no,
        )
    if progress is not None:
        progress(entries, expected)
    return entries


def import_entries(
    target: Target,
    lines: Iterable[bytes | str],
    *,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> ImportResult:
    """Import a JSON Lines export: all of it, or (on any bad line) nothing.

    Every line is validated and copied into temporary staging tables first, outside any write
    lock; a bad line raises :class:`InvalidArgumentError` naming its line number and nothing is
    written. The entries are then merged in one short write transaction with set-based SQL.
    Existing keys are skipped (and counted) unless ``overwrite``, so re-importing the same file
    changes nothing. ``progress(done, total)`` is called while staging.
    """
    engine = _engine(target)
    with translate_errors(), engine.connect() as conn:
        # Staging writes only to temporary tables: a deferred BEGIN takes no lock on the
        # database, so concurrent writers are not held up while the file is read.
        conn.execution_options(flytecache_begin="DEFERRED")
        try:
            with conn.begin():
                _STAGE_META.drop_all(conn, checkfirst=True)
                _STAGE_META.create_all(conn)
            with conn.begin():
                entries = _stage(conn, lines, progress)
            with conn.begin():
                duplicate = conn.execute(
                    sa.select(_STAGE.c.key, sa.func.min(_STAGE.c.line), sa.func.max(_STAGE.c.line))
                    .group_by(_STAGE.c.key)
                    .having(sa.func.count() > 1)
                    .order_by(sa.func.max(_STAGE.c.line))
                    .limit(1)
                ).one_or_none()
            if duplicate is not None:
                raise InvalidArgumentError(
                    f"line {duplicate[2]}: duplicate key {duplicate[0]!r} "
                    f"(first on line {duplicate[1]})",
                    line=duplicate[2],
                )
            existing = sa.exists().where(_E.c.key == _STAGE.c.key)
            if dry_run:
                with conn.begin():
                    present = int(
                        conn.execute(
                            sa.select(sa.func.count()).select_from(_STAGE).where(existing)
                        ).scalar_one()
                    )
                return _import_result(entries, present, overwrite, dry_run=True)
            conn.execution_options(flytecache_begin="IMMEDIATE")
            with conn.begin():
                if not is_sqlite(engine):
                    # BEGIN IMMEDIATE's equivalent: no put may add a key between the "existing"
                    # marking below and the insert (writers wait, up to lock_timeout, for the
                    # short set-based merge).
                    conn.exec_driver_sql("LOCK TABLE entries IN SHARE ROW EXCLUSIVE MODE")
                present = conn.execute(
                    sa.update(_STAGE).where(existing).values(existing=True)
                ).rowcount
                if overwrite:
                    conn.execute(
                        sa.delete(_E).where(
                            _E.c.key.in_(sa.select(_STAGE.c.key).where(_STAGE.c.existing))
                        )
                    )
                wanted = sa.true() if overwrite else _STAGE.c.existing == sa.false()
                conn.execute(
                    sa.insert(_E).from_select(
                        _ENTRY_COLUMNS,
                        sa.select(*(_STAGE.c[c] for c in _ENTRY_COLUMNS)).where(wanted),
                    )
                )
                conn.execute(
                    sa.insert(_O).from_select(
                        ("entry_id", "name", "literal"),
                        sa.select(_E.c.id, _STAGE_OUTPUTS.c.name, _STAGE_OUTPUTS.c.literal)
                        .select_from(
                            _STAGE_OUTPUTS.join(
                                _STAGE, _STAGE.c.line == _STAGE_OUTPUTS.c.line
                            ).join(_E, _E.c.key == _STAGE.c.key)
                        )
                        .where(wanted),
                    )
                )
            return _import_result(entries, present, overwrite, dry_run=False)
        finally:
            try:
                conn.execution_options(flytecache_begin="DEFERRED")
                if conn.in_transaction():
                    conn.rollback()
                with conn.begin():
                    _STAGE_META.drop_all(conn, checkfirst=True)
            except Exception:
                # Never hand a connection with leftover staging tables back to the pool.
                conn.invalidate()


def _import_result(entries: int, present: int, overwrite: bool, *, dry_run: bool) -> ImportResult:
    return ImportResult(
        entries=entries,
        inserted=entries - present,
        replaced=present if overwrite else 0,
        skipped=0 if overwrite else present,
        dry_run=dry_run,
    )


# -- checks -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckItem:
    """One item of ``db check``: ``status`` is ``ok``, ``warn``, ``fail`` or ``skip``."""

    name: str
    status: Literal["ok", "warn", "fail", "skip"]
    detail: str

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {"name": self.name, "status": self.status, "detail": self.detail}


def check_database(
    engine: Engine,
    *,
    max_wal_bytes: int = 128 * 1024**2,
    quick: bool = False,
    settings: StoreSettings | None = None,
) -> list[CheckItem]:
    """Run every health check; a failing check never stops the others.

    Items, in this order: ``filesystem`` (not a network filesystem), ``connect``, ``schema``
    (at head), ``models`` (the models match the migrations), ``integrity`` (``PRAGMA
    integrity_check`` or ``quick_check``, plus ``foreign_key_check``) and ``wal`` (WAL file at
    most ``max_wal_bytes``). The same items on every backend, so scripts can rely on them:
    ``filesystem``, ``integrity`` and ``wal`` are SQLite-only and reported as ``skip`` (not
    applicable) on PostgreSQL, whose server looks after its own storage.
    """
    settings = settings or StoreSettings()
    items: list[CheckItem] = []
    sqlite = is_sqlite(engine)
    not_applicable = f"not applicable: SQLite-only (this database is {engine.dialect.name})"

    def run(name: str, check: Callable[[], CheckItem]) -> CheckItem:
        try:
            item = check()
        except FlyteCacheError as error:
            item = CheckItem(name, "fail", str(error))
        items.append(item)
        return item

    def connect() -> CheckItem:
        with read_connection(engine) as conn:
            conn.exec_driver_sql("SELECT 1")
        return CheckItem("connect", "ok", describe_url(engine))

    def filesystem() -> CheckItem:
        path = Path(str(engine.url.database))
        fstype = network_filesystem_type(path.parent)
        if fstype is None:
            return CheckItem("filesystem", "ok", "local filesystem")
        if settings.allow_network_filesystem:
            return CheckItem(
                "filesystem", "warn", f"network filesystem ({fstype}), allowed by settings"
            )
        return CheckItem(
            "filesystem",
            "fail",
            f"{path} is on a network filesystem ({fstype}) where SQLite locking is unsafe",
        )

    def sqlite_only(name: str, check: Callable[[], CheckItem]) -> None:
        if sqlite:
            run(name, check)
        else:
            items.append(CheckItem(name, "skip", not_applicable))

    sqlite_only("filesystem", filesystem)
    if run("connect", connect).status != "ok":
        for name in ("schema", "models", "integrity", "wal"):
            reason = not_applicable if name in ("integrity", "wal") and not sqlite else None
            items.append(CheckItem(name, "skip", reason or "cannot connect"))
        return items

    head = migrate.head_revision()

    def schema() -> CheckItem:
        with read_connection(engine) as conn:
            current = migrate.current_revision(conn)
        if current == head:
            return CheckItem("schema", "ok", f"at head {head}")
        return CheckItem(
            "schema",
            "fail",
            f"at {current or '(empty)'}, head is {head}; run `flytecache db upgrade`",
        )

    def models() -> CheckItem:
        diffs = migrate.check_models_match(engine)
        if not diffs:
            return CheckItem("models", "ok", "models match the migrations")
        shown = "; ".join(str(d) for d in diffs[:3])
        return CheckItem("models", "fail", f"{len(diffs)} difference(s): {shown}")

    def integrity() -> CheckItem:
        pragma = "quick_check" if quick else "integrity_check"
        with read_connection(engine) as conn:
            # Rows may hold several newline-separated problems under a "*** in database" title.
            problems = [
                line.strip()
                for row in conn.exec_driver_sql(f"PRAGMA {pragma}")
                for line in str(row[0]).splitlines()
                if line.strip() not in ("", "ok") and not line.startswith("***")
            ]
            orphans = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            return CheckItem("integrity", "fail", f"{problems[0]}{more}")
        if orphans:
            return CheckItem(
                "integrity",
                "fail",
                f"{len(orphans)} row(s) violate foreign keys, e.g. {orphans[0]}",
            )
        return CheckItem("integrity", "ok", f"{pragma}: ok")

    def wal() -> CheckItem:
        size = sqlite_files(engine)["wal"]
        if size > max_wal_bytes:
            return CheckItem(
                "wal",
                "fail",
                f"WAL is {size} bytes (limit {max_wal_bytes}); a reader may be blocking "
                "checkpoints: run `flytecache checkpoint`",
            )
        return CheckItem("wal", "ok", f"{size} bytes")

    schema_ok = run("schema", schema).status == "ok"
    if schema_ok:
        run("models", models)
    else:
        items.append(CheckItem("models", "skip", "schema is not at head"))
    sqlite_only("integrity", integrity)
    sqlite_only("wal", wal)
    return items


# -- SQLite maintenance -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BackupResult:
    """Where a backup went and how big it is."""

    path: str
    bytes: int
    seconds: float


def backup(
    target: Target, dest: str | os.PathLike[str], *, overwrite: bool = False
) -> BackupResult:
    """Copy a SQLite database to ``dest`` with SQLite's online backup API.

    The copy is one backup step under one read snapshot, so it is consistent even while other
    processes write (WAL readers never block writers). It is written next to ``dest`` and
    renamed into place, and left in rollback-journal mode so the backup is a single file.
    """
    engine = _engine(target)
    source = require_sqlite(engine, "backup")
    path = Path(dest).expanduser().absolute()
    if path.exists() and path.resolve() == source.resolve():
        raise InvalidArgumentError("the backup must not overwrite the database itself")
    if path.is_dir():
        raise InvalidArgumentError(f"cannot write the backup to {path}: it is a directory")
    if path.exists() and not overwrite:
        raise AlreadyExistsError(f"{path} already exists (pass --overwrite to replace it)")
    if not path.parent.is_dir():
        raise InvalidArgumentError(
            f"cannot write the backup to {path}: directory {path.parent} does not exist"
        )
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


def checkpoint(target: Target, mode: str = "TRUNCATE") -> CheckpointResult:
    """Checkpoint the WAL into the database (``TRUNCATE`` also empties the WAL file)."""
    engine = _engine(target)
    require_sqlite(engine, "checkpoint")
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


def vacuum(target: Target) -> VacuumResult:
    """Rebuild the SQLite file to reclaim free pages, then checkpoint so the file shrinks.

    VACUUM holds the write lock while it runs; concurrent writers wait (up to their busy
    timeout), so run it when the cache is quiet.
    """
    engine = _engine(target)
    require_sqlite(engine, "vacuum")
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
