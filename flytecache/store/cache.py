"""CacheStore: Flyte's cache semantics (entries and reservations) on SQLite or PostgreSQL."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import timedelta
from enum import Enum
from typing import Any, Literal, Self, cast, overload

import sqlalchemy as sa
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from sqlalchemy.engine import URL, Engine

from flytecache.config import StoreSettings
from flytecache.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    StorageError,
)
from flytecache.store.codec import cached_output, entry_params, rows_to_cached_output
from flytecache.store.models import ENTRY_DATA_COLUMNS, Entry, Output, Reservation
from flytecache.store.pool import HotPool, Sql
from flytecache.store.urls import dialect_insert, is_sqlite
from flytecache.timeutil import (
    Clock,
    make_now_us,
    timedelta_to_us,
    us_to_duration,
    us_to_timestamp,
)
from flytecache.validation import MAX_KEY_BYTES, check_text

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
        ``settings`` default to :meth:`StoreSettings.from_env` (the ``FLYTECACHE_*``
        variables, as for every command). ``clock`` returns an aware datetime; every timestamp
        the store writes or compares comes from it (default: the system clock). With
        ``migrate=False`` a database that is not at the current schema raises
        :class:`~flytecache.errors.SchemaError`.
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
            return rows_to_cached_output(rows)
        return cached_output(rows)

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
        params, literals = entry_params(key, output)
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
