"""CacheStore: Flyte's cache semantics (entries and reservations) on SQLite or PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from datetime import timedelta
from enum import Enum
from typing import Any, Literal, Self, cast, overload

import sqlalchemy as sa
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import identifier_pb2, literals_pb2
from google.protobuf.timestamp_pb2 import Timestamp
from sqlalchemy.engine import URL, Engine

from flytecache.config import StoreSettings
from flytecache.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    StorageError,
)
from flytecache.store.models import ENTRY_DATA_COLUMNS, Entry, Output, Reservation
from flytecache.store.pool import HotPool, Sql
from flytecache.store.urls import dialect_insert, is_sqlite
from flytecache.timeutil import (
    Clock,
    make_now_us,
    timedelta_to_us,
    timestamp_to_us,
    us_to_duration,
    us_to_timestamp,
)
from flytecache.validation import MAX_KEY_BYTES, check_storable, check_text

__all__ = ["MAX_KEY_BYTES", "CacheStore", "ReservationOutcome"]

_MIN_BIGINT = -(2**63)
_MAX_BIGINT = 2**63 - 1


class ReservationOutcome(Enum):
    """What a get-or-extend call did (for metrics and logs)."""

    ACQUIRED = "acquired"
    EXTENDED = "extended"
    TAKEN_OVER = "taken_over"
    HELD_BY_OTHER = "held_by_other"


class Statements:
    """The store's hot-path statements: portable Core, compiled once for the engine's dialect."""

    def __init__(self, engine: Engine) -> None:
        e = cast(sa.Table, Entry.__table__)
        o = cast(sa.Table, Output.__table__)
        r = cast(sa.Table, Reservation.__table__)
        b = sa.bindparam
        insert = dialect_insert(engine)

        self.get = Sql.compile(
            sa.select(
                e.c.id,
                e.c.resource_type,
                e.c.project,
                e.c.domain,
                e.c.name,
                e.c.version,
                e.c.org,
                e.c.key_map,
                e.c.created_at,
                e.c.last_updated_at,
                e.c.output_uri,
                o.c.name,
                o.c.literal,
                e.c.metadata_pb,
            )
            .select_from(e.outerjoin(o, o.c.entry_id == e.c.id))
            .where(e.c.key == b("key")),
            engine,
        )

        values: dict[str, Any] = {
            name: b(name) for name in ("writes", "metadata_pb", *ENTRY_DATA_COLUMNS)
        }
        upsert = insert(e).values(values)
        excluded = upsert.excluded
        self.put = Sql.compile(
            upsert.on_conflict_do_update(
                index_elements=[e.c.key],
                set_={
                    **{c: excluded[c] for c in values if c not in ("key", "created_at", "writes")},
                    "writes": e.c.writes + sa.literal_column("1"),
                    # The writer's created_at wins; otherwise the first write's is kept.
                    "created_at": sa.func.coalesce(
                        b("request_created_at", type_=sa.BigInteger), e.c.created_at
                    ),
                },
                # Overwrite when asked, or when the existing entry is older than max_age
                # (strict: an entry exactly max_age old is still fresh).
                where=sa.or_(
                    b("overwrite", type_=sa.Boolean),
                    e.c.last_updated_at < b("expired_before", type_=sa.BigInteger),
                ),
            ).returning(e.c.id, e.c.writes),
            engine,
        )
        self.delete_outputs = Sql.compile(sa.delete(o).where(o.c.entry_id == b("entry_id")), engine)
        self.insert_output = Sql.compile(
            sa.insert(o).values(entry_id=b("entry_id"), name=b("name"), literal=b("literal")),
            engine,
        )
        self.delete_entry = Sql.compile(sa.delete(e).where(e.c.key == b("key")), engine)

        lease = insert(r).values(
            key=b("key"),
            owner_id=b("owner_id"),
            heartbeat_interval=b("heartbeat_interval"),
            expires_at=b("expires_at"),
            created_at=b("now"),
            updated_at=b("now"),
            previous_owner=sa.null(),
        )
        ex = lease.excluded
        self.reserve = Sql.compile(
            lease.on_conflict_do_update(
                index_elements=[r.c.key],
                set_={
                    "owner_id": ex.owner_id,
                    "heartbeat_interval": ex.heartbeat_interval,
                    "expires_at": ex.expires_at,
                    "updated_at": ex.updated_at,
                    "created_at": sa.case(
                        (r.c.owner_id == ex.owner_id, r.c.created_at), else_=ex.created_at
                    ),
                    "previous_owner": r.c.owner_id,
                },
                # The requester may extend its own lease (live or expired) or take over an
                # expired one; a live lease of another owner is left alone (no row returned).
                where=sa.or_(r.c.owner_id == ex.owner_id, r.c.expires_at <= ex.updated_at),
            ).returning(r.c.previous_owner),
            engine,
        )
        self.holder = Sql.compile(
            sa.select(r.c.owner_id, r.c.heartbeat_interval, r.c.expires_at).where(
                r.c.key == b("key")
            ),
            engine,
        )
        self.release = Sql.compile(
            sa.delete(r).where(r.c.key == b("key"), r.c.owner_id == b("owner_id")), engine
        )


class CacheStore:
    """Flyte's cache (entries) and reservations (leases) on one database.

    Open with :meth:`open`; every method is one transaction, safe to call from many threads
    and processes at once. Types are the ``flyteidl2.cacheservice.cacheservice_pb2`` messages.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        settings: StoreSettings,
        clock: Clock | None = None,
    ) -> None:
        self._engine = engine
        self._settings = settings
        self._now_us = make_now_us(clock)
        self._clock = clock
        self._sql = Statements(engine)
        self._pool = HotPool(
            engine,
            keep=max(settings.pool_size, 8) if is_sqlite(engine) else settings.pool_size,
            limit=settings.pool_size + settings.max_overflow,
            wait=settings.pool_timeout.total_seconds(),
        )
        self._closed = False
        self._max_heartbeat_us = timedelta_to_us(settings.max_heartbeat)
        self._grace = settings.grace_multiplier

    # -- lifecycle -----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        url_or_path: str | os.PathLike[str],
        *,
        settings: StoreSettings | None = None,
        clock: Clock | None = None,
        migrate: bool = True,
    ) -> CacheStore:
        """Open (and by default create or migrate) the database at ``url_or_path``.

        ``url_or_path`` is a file path, ``sqlite:///path`` or ``postgresql+psycopg://...``.
        ``clock`` returns an aware datetime; every timestamp the store writes or compares comes
        from it (default: the system clock). With ``migrate=False`` a database that is not at
        the current schema raises :class:`~flytecache.errors.SchemaError`.
        """
        from flytecache.store.opening import open_store

        return open_store(url_or_path, settings=settings, clock=clock, migrate=migrate)

    def close(self) -> None:
        """Close every connection this store opened (idempotent)."""
        if not self._closed:
            self._closed = True
            self._pool.close()
            self._engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"CacheStore({self.url.render_as_string(hide_password=True)!r})"

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for admin tools and migrations)."""
        return self._engine

    @property
    def url(self) -> URL:
        """The database URL."""
        return self._engine.url

    @property
    def statements(self) -> Statements:
        """The compiled SQL of the hot path, by operation (``get``, ``put_entry``, ``reserve``,
        ``holder``, ``release``...): each has ``.text``, the SQL string the driver runs, and
        ``.args(params)``, its parameters in the driver's form.

        For benchmarks and diagnostics that run or inspect the store's own statements; the set
        of statements follows the schema and is not a stable API.
        """
        return self._sql

    @contextlib.contextmanager
    def dbapi_connection(self) -> Iterator[Any]:
        """A raw DB-API connection from the store's own pool, returned to it afterwards.

        It has every setting the store's connections have (PRAGMAs on SQLite), and while held
        it counts against ``pool_size + max_overflow``. For tests and benchmarks that must see
        or occupy what the store uses; raises
        :class:`~flytecache.errors.StorageBusyError` when no connection frees up within
        ``pool_timeout``.
        """
        self._check_open()
        conn = self._pool.acquire()
        try:
            yield conn
        finally:
            self._pool.release(conn)

    @property
    def settings(self) -> StoreSettings:
        """The settings in force."""
        return self._settings

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite."""
        return is_sqlite(self._engine)

    def now_us(self) -> int:
        """The store clock, in microseconds since the epoch."""
        return self._now_us()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")

    # -- entries -------------------------------------------------------------------------

    def get(self, key: str) -> cs.CachedOutput:
        """The entry stored under ``key``; :class:`NotFoundError` if there is none."""
        check_text(key, "key")
        self._check_open()
        rows = self._pool.fetchall(self._sql.get, {"key": key})
        if not rows:
            raise NotFoundError(f'cache entry "{key}" not found', key=key)
        if rows[0][13] is None:
            return _cached_output(rows)
        return _assemble_cached_output(rows)

    def put(
        self,
        key: str,
        output: cs.CachedOutput,
        *,
        overwrite: bool = False,
        max_age: timedelta | None = None,
    ) -> None:
        """Store ``output`` under ``key``.

        An existing entry is replaced only with ``overwrite`` or when it is older than
        ``max_age`` (strict ``>``; a zero ``max_age`` treats every entry as expired);
        otherwise :class:`AlreadyExistsError`. ``last_updated_at`` is always the store clock;
        ``created_at`` is the output's, else the existing entry's, else now. Reservations are
        never touched.
        """
        check_text(key, "key")
        params, literals = _entry_params(key, output)
        if type(overwrite) is not bool:
            raise InvalidArgumentError("overwrite must be a bool", field="overwrite")
        if max_age is not None and not isinstance(max_age, timedelta):
            raise InvalidArgumentError("max_age must be a timedelta or None", field="max_age")
        self._check_open()
        now = self._now_us()
        if max_age is None:
            expired_before = _MIN_BIGINT
        elif not max_age:
            expired_before = _MAX_BIGINT  # Flyte quirk: a present, zero max_age expires all.
        else:
            expired_before = max(_MIN_BIGINT, min(_MAX_BIGINT, now - timedelta_to_us(max_age)))
        request_created = params["created_at"]
        params["request_created_at"] = request_created
        params["created_at"] = now if request_created is None else request_created
        params["last_updated_at"] = now
        params["overwrite"] = overwrite
        params["expired_before"] = expired_before
        params["writes"] = 0
        sql = self._sql
        with self._pool.transaction(write=True) as cur:
            row = cur.execute(sql.put.text, sql.put.args(params)).fetchone()
            if row is None:
                raise AlreadyExistsError(f'cache entry "{key}" already exists', key=key)
            entry_id, writes = row
            if writes:  # an overwrite: drop the previous outputs (a fresh entry has none)
                cur.execute(
                    sql.delete_outputs.text, sql.delete_outputs.args({"entry_id": entry_id})
                )
            if literals:
                cur.executemany(
                    sql.insert_output.text,
                    [
                        sql.insert_output.args({"entry_id": entry_id, "name": n, "literal": v})
                        for n, v in literals
                    ],
                )

    def delete(self, key: str) -> None:
        """Remove the entry and its outputs; :class:`NotFoundError` if there was none."""
        check_text(key, "key")
        self._check_open()
        sql = self._sql.delete_entry
        with self._pool.transaction(write=True) as cur:
            deleted = cur.execute(sql.text, sql.args({"key": key})).rowcount
        if not deleted:
            raise NotFoundError(f'cache entry "{key}" not found', key=key)

    # -- reservations --------------------------------------------------------------------

    @overload
    def get_or_extend_reservation(
        self, key: str, owner_id: str, heartbeat_interval: timedelta | None = None
    ) -> cs.Reservation: ...

    @overload
    def get_or_extend_reservation(
        self,
        key: str,
        owner_id: str,
        heartbeat_interval: timedelta | None = None,
        *,
        with_outcome: Literal[True],
    ) -> tuple[cs.Reservation, ReservationOutcome]: ...

    def get_or_extend_reservation(
        self,
        key: str,
        owner_id: str,
        heartbeat_interval: timedelta | None = None,
        *,
        with_outcome: bool = False,
    ) -> cs.Reservation | tuple[cs.Reservation, ReservationOutcome]:
        """Acquire, extend or take over the lease on ``key`` for ``owner_id``.

        Returns the requester's lease, or — when another owner holds a live lease — the
        holder's lease unchanged (compare ``owner_id`` with your own). See SPEC §4. With
        ``with_outcome``, a ``(lease, ReservationOutcome)`` pair saying what happened.
        """
        lease, outcome = self._reserve(key, owner_id, heartbeat_interval)
        return (lease, outcome) if with_outcome else lease

    def _reserve(
        self, key: str, owner_id: str, heartbeat_interval: timedelta | None
    ) -> tuple[cs.Reservation, ReservationOutcome]:
        check_text(key, "key")
        check_text(owner_id, "owner_id")
        if heartbeat_interval is not None and not isinstance(heartbeat_interval, timedelta):
            raise InvalidArgumentError(
                "heartbeat_interval must be a timedelta or None", field="heartbeat_interval"
            )
        self._check_open()
        max_hb = self._max_heartbeat_us
        requested = 0 if heartbeat_interval is None else timedelta_to_us(heartbeat_interval)
        hb = requested if 0 < requested < max_hb else max_hb
        sql = self._sql
        # On PostgreSQL the holder may release between our upsert and the holder lookup;
        # then the upsert is simply tried again. On SQLite the IMMEDIATE lock rules it out.
        for _ in range(5):
            now = self._now_us()
            expires = now + (
                hb * self._grace if type(self._grace) is int else round(hb * self._grace)
            )
            with self._pool.transaction(write=True) as cur:
                row = cur.execute(
                    sql.reserve.text,
                    sql.reserve.args(
                        {
                            "key": key,
                            "owner_id": owner_id,
                            "heartbeat_interval": hb,
                            "expires_at": expires,
                            "now": now,
                        }
                    ),
                ).fetchone()
                if row is None:
                    holder = cur.execute(sql.holder.text, sql.holder.args({"key": key})).fetchone()
            if row is not None:
                previous = row[0]
                outcome = (
                    ReservationOutcome.ACQUIRED
                    if previous is None
                    else ReservationOutcome.EXTENDED
                    if previous == owner_id
                    else ReservationOutcome.TAKEN_OVER
                )
                return _reservation(key, owner_id, hb, expires), outcome
            if holder is not None:
                return (
                    _reservation(key, holder[0], holder[1], holder[2]),
                    ReservationOutcome.HELD_BY_OTHER,
                )
        raise StorageError(f"reservation on {key!r} kept changing hands; retry")  # pragma: no cover

    def release_reservation(self, key: str, owner_id: str) -> bool:
        """Release ``owner_id``'s lease on ``key``; whether a lease was removed (releasing one
        that does not exist or is someone else's changes nothing and is not an error)."""
        check_text(key, "key")
        check_text(owner_id, "owner_id")
        self._check_open()
        sql = self._sql.release
        with self._pool.transaction(write=True) as cur:
            return bool(
                cur.execute(sql.text, sql.args({"key": key, "owner_id": owner_id})).rowcount
            )


def _reservation(key: str, owner: str, hb_us: int, expires_us: int) -> cs.Reservation:
    return cs.Reservation(
        key=key,
        owner_id=owner,
        heartbeat_interval=us_to_duration(hb_us),
        expires_at=us_to_timestamp(expires_us),
    )


def _entry_params(key: str, output: Any) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """Validate a CachedOutput and flatten it into column values and (name, literal) rows."""
    if not isinstance(output, cs.CachedOutput):
        raise InvalidArgumentError(
            f"output must be a CachedOutput, got {type(output).__name__}", field="output"
        )
    which = output.WhichOneof("output")
    literals: list[tuple[str, bytes]] = []
    if which == "output_uri":
        uri = output.output_uri
        if not uri:
            raise InvalidArgumentError("output.output_uri must not be empty", field="output")
        check_storable(uri, "output.output_uri")
        output_uri: str | None = uri
        size = len(uri.encode("utf-8", "surrogatepass"))
    elif which == "output_literals":
        output_uri = None
        literals = [
            (name, literal.SerializeToString())
            for name, literal in output.output_literals.literals.items()
        ]
        # One scan for the common case; the field is named only when there is a NUL.
        if "\x00" in "".join([name for name, _ in literals]):
            for name, _ in literals:
                check_storable(name, "output name")
        size = sum(len(v) for _, v in literals)
    else:
        raise InvalidArgumentError(
            "output has neither output_uri nor output_literals", field="output"
        )
    metadata = output.metadata
    params: dict[str, Any] = {
        "key": key,
        "output_uri": output_uri,
        "size": size,
        "created_at": (
            timestamp_to_us(metadata.created_at, field="metadata.created_at")
            if metadata.HasField("created_at")
            else None
        ),
    }
    if metadata.HasField("source_identifier"):
        ident = metadata.source_identifier
        if "\x00" in "".join((ident.project, ident.domain, ident.name, ident.version, ident.org)):
            for field in ("project", "domain", "name", "version", "org"):
                check_storable(getattr(ident, field), f"metadata.source_identifier.{field}")
        params.update(
            resource_type=ident.resource_type,
            project=ident.project,
            domain=ident.domain,
            name=ident.name,
            version=ident.version,
            org=ident.org,
        )
    else:
        params.update(resource_type=None, project="", domain="", name="", version="", org="")
    values = dict(metadata.key_map.values)
    if "\x00" in "".join(values) or "\x00" in "".join(values.values()):
        for name, value in values.items():
            check_storable(name, "metadata.key_map")
            check_storable(value, "metadata.key_map")
    params["key_map"] = json.dumps(values, sort_keys=True) if values else "{}"
    if metadata.HasField("created_at") or metadata.HasField("last_updated_at"):
        # Timestamps live in their columns (merged and set by the store): keep them out of the
        # blob, or the second copy appended on read would be merged into this one.
        metadata = cs.Metadata()
        metadata.CopyFrom(output.metadata)
        metadata.ClearField("created_at")
        metadata.ClearField("last_updated_at")
    params["metadata_pb"] = metadata.SerializeToString()
    return params, literals


# -- get: assemble the CachedOutput's wire bytes and parse once -----------------------------
#
# Building the message field by field in Python costs more than the SQL; concatenating the
# stored bytes (literals as received, metadata as written) and parsing once in C does not.
# Field numbers come from the generated descriptors, so a renumbering cannot go unnoticed.


def _tag(message: Any, field: str) -> bytes:
    number = message.DESCRIPTOR.fields_by_name[field].number
    return bytes([(number << 3) | 2])  # length-delimited; every number here is < 16


_OUTPUT_LITERALS = _tag(cs.CachedOutput, "output_literals")
_OUTPUT_URI = _tag(cs.CachedOutput, "output_uri")
_METADATA = _tag(cs.CachedOutput, "metadata")
_CREATED_AT = _tag(cs.Metadata, "created_at")
_LAST_UPDATED_AT = _tag(cs.Metadata, "last_updated_at")
_LITERALS = _tag(literals_pb2.LiteralMap, "literals")
_MAP_KEY, _MAP_VALUE = b"\x0a", b"\x12"  # protobuf map entries: key = 1, value = 2


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    size = len(payload)
    return tag + (_ONE_BYTE[size] if size < 0x80 else _varint(size)) + payload


def _timestamp_bytes(us: int) -> bytes:
    seconds, micros = divmod(us, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000).SerializeToString()


def _assemble_cached_output(rows: list[Any]) -> cs.CachedOutput:
    first = rows[0]
    metadata = (
        first[13]
        + _field(_CREATED_AT, _timestamp_bytes(first[8]))
        + _field(_LAST_UPDATED_AT, _timestamp_bytes(first[9]))
    )
    if first[10] is not None:
        body = _field(_OUTPUT_URI, first[10].encode("utf-8"))
    else:
        body = _field(
            _OUTPUT_LITERALS,
            b"".join(
                [
                    _field(
                        _LITERALS,
                        _field(_MAP_KEY, row[11].encode("utf-8")) + _field(_MAP_VALUE, row[12]),
                    )
                    for row in rows
                    if row[11] is not None
                ]
            ),
        )
    return cs.CachedOutput.FromString(body + _field(_METADATA, bytes(metadata)))


def _cached_output(rows: Iterable[Any]) -> cs.CachedOutput:
    rows = list(rows)
    (
        _id,
        resource_type,
        project,
        domain,
        name,
        version,
        org,
        key_map,
        created_at,
        last_updated_at,
        output_uri,
        _,
        _,
        _,
    ) = rows[0]
    metadata = cs.Metadata(
        created_at=us_to_timestamp(created_at), last_updated_at=us_to_timestamp(last_updated_at)
    )
    if resource_type is not None:
        metadata.source_identifier.CopyFrom(
            identifier_pb2.Identifier(
                resource_type=resource_type,
                project=project,
                domain=domain,
                name=name,
                version=version,
                org=org,
            )
        )
    if key_map and key_map != "{}":
        metadata.key_map.values.update(json.loads(key_map))
    if output_uri is not None:
        return cs.CachedOutput(output_uri=output_uri, metadata=metadata)
    literal_map = literals_pb2.LiteralMap()
    for row in rows:
        if row[11] is not None:
            literal_map.literals[row[11]].ParseFromString(bytes(row[12]))
    return cs.CachedOutput(output_literals=literal_map, metadata=metadata)
