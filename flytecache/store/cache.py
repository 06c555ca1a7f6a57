"""CacheStore: Flyte's cache semantics (entries and reservations) on SQLite or PostgreSQL."""

from __future__ import annotations

import contextlib
import copy
import os
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from enum import Enum
from typing import Any, Literal, Self, cast, overload

import sqlalchemy as sa
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from sqlalchemy.engine import URL, Engine

from flytecache.config import StoreSettings
from flytecache.errors import (
    AlreadyExistsError,
    FlyteCacheError,
    InvalidArgumentError,
    KeyHashCollisionError,
    NotFoundError,
    StorageBusyError,
    StorageError,
)
from flytecache.store.codec import SPILL_BYTES, cached_output, entry_params, payload
from flytecache.store.dbclock import DatabaseClock
from flytecache.store.evictor import Evictor
from flytecache.store.keyhash import key_hash
from flytecache.store.models import ENTRY_DATA_COLUMNS, Entry, Output, Reservation
from flytecache.store.pool import HotPool, Sql
from flytecache.store.urls import dialect_insert, is_sqlite
from flytecache.timeutil import (
    Clock,
    make_now_us,
    timedelta_to_us,
)
from flytecache.validation import MAX_KEY_BYTES, check_text

__all__ = ["MAX_KEY_BYTES", "CacheStore", "ReservationOutcome"]

_MIN_BIGINT = -(2**63)
# Rounds of a two-statement operation (a get of a spilled payload, a refused reservation and
# its holder) whose row another writer changed between the two statements.
_RACE_ROUNDS = 100
_MAX_BIGINT = 2**63 - 1


class ReservationOutcome(Enum):
    """What a get-or-extend call did (for metrics and logs)."""

    ACQUIRED = "acquired"
    EXTENDED = "extended"
    TAKEN_OVER = "taken_over"
    HELD_BY_OTHER = "held_by_other"


def database_now() -> sa.ColumnElement[int]:
    """PostgreSQL's clock as the store's integer microseconds, fixed for the statement."""
    epoch = sa.extract("epoch", sa.func.statement_timestamp())
    # EXTRACT gives numeric on PostgreSQL 14 and later: exact at the microsecond (before
    # 14 a double: within a microsecond).
    return sa.cast(epoch * sa.literal_column("1000000"), sa.BigInteger)


def resolve_lease_clock(
    setting: str, *, sqlite: bool, clock_injected: bool
) -> Literal["database", "host"]:
    """Which clock decides leases for ``StoreSettings.lease_clock`` (see its docstring);
    :class:`InvalidArgumentError` for ``database`` on SQLite, which has no clock of its own."""
    if setting == "database":
        if sqlite:
            raise InvalidArgumentError(
                "lease_clock='database' needs PostgreSQL: SQLite has no clock of its own (every "
                "process reads its one host's); use 'auto' or 'host'",
                field="lease_clock",
            )
        return "database"
    if setting == "host" or sqlite or clock_injected:
        return "host"
    return "database"


class Statements:
    """The store's hot-path statements: portable Core, compiled once for the engine's dialect.

    Each hot operation is one statement, run on its own (autocommit) on both backends: a
    single write statement takes SQLite's write lock before it reads anything, exactly as
    ``BEGIN IMMEDIATE`` would, and on PostgreSQL it is one round trip. Only a put of a
    payload over ``SPILL_BYTES`` runs two statements, inside one transaction.
    """

    def __init__(self, engine: Engine, *, database_clock: bool = False) -> None:
        e = cast(sa.Table, Entry.__table__)
        o = cast(sa.Table, Output.__table__)
        r = cast(sa.Table, Reservation.__table__)
        b = sa.bindparam
        insert = dialect_insert(engine)

        # An entry is found by its key's hash (the unique index) and the key itself, which
        # the row must match: keys sharing a hash never read each other's entry.
        this_key = sa.and_(e.c.key_hash == b("key_hash"), e.c.key == b("key"))
        # One lookup: the hash's index, then the row. A payload over SPILL_BYTES is NULL
        # here and read by ``get_spilled``. Not one outer join for both: PostgreSQL and
        # SQLite then probe ``outputs`` on every get (about a third of a get's statement).
        self.get = Sql.compile(sa.select(e.c.payload).where(this_key), engine)
        self.get_spilled = Sql.compile(
            sa.select(o.c.payload).select_from(e.join(o, o.c.entry_id == e.c.id)).where(this_key),
            engine,
        )
        # Which key holds a hash: told apart from "already exists" when a put changed nothing.
        self.hash_holder = Sql.compile(
            sa.select(e.c.key).where(e.c.key_hash == b("key_hash")), engine
        )

        values: dict[str, Any] = {name: b(name) for name in ENTRY_DATA_COLUMNS}
        upsert = insert(e).values(values)
        excluded = upsert.excluded
        set_ = {
            **{c: excluded[c] for c in values if c not in ("key", "key_hash", "created_at")},
            # The writer's created_at wins; otherwise the first write's is kept.
            "created_at": sa.func.coalesce(
                b("request_created_at", type_=sa.BigInteger), e.c.created_at
            ),
        }
        # Overwrite when asked, or when the existing entry is older than max_age (strict: an
        # entry exactly max_age old is still fresh).
        # The stored key must be this one: a key whose hash another key holds is refused (no
        # row changes) and told apart by ``hash_holder``.
        replaceable = sa.and_(
            e.c.key == excluded.key,
            sa.or_(
                b("overwrite", type_=sa.Boolean),
                e.c.last_updated_at < b("expired_before", type_=sa.BigInteger),
            ),
        )
        # Whether the existing entry has a spilled payload (which a replacement must drop).
        # Written out: SQLAlchemy correlates a subquery neither inside ON CONFLICT's WHERE
        # (it would test every entry) nor inside RETURNING.
        had_spill: Any = sa.literal_column(
            "EXISTS (SELECT 1 FROM outputs WHERE outputs.entry_id = entries.id)"
        )
        # The one-statement put: inserts, and replaces only an entry whose replacement needs
        # nothing more (the payload's created_at is right, no spilled payload to drop).
        # Refused otherwise (no row changed): then the put runs ``put`` in a transaction. No
        # RETURNING: SQLite buffers returned rows in an ephemeral table, which cost a tenth of
        # the statement; the count of changed rows says the same.
        self.put_simple = Sql.compile(
            upsert.on_conflict_do_update(
                index_elements=[e.c.key_hash],
                set_=set_,
                where=sa.and_(
                    replaceable,
                    sa.or_(
                        b("request_created_at", type_=sa.BigInteger).is_not(None),
                        e.c.created_at == b("created_at", type_=sa.BigInteger),
                    ),
                    ~had_spill,
                ),
            ),
            engine,
        )
        self.put = Sql.compile(
            upsert.on_conflict_do_update(
                index_elements=[e.c.key_hash], set_=set_, where=replaceable
            ).returning(e.c.id, e.c.created_at, had_spill),
            engine,
        )
        # An overwrite that kept the previous created_at rewrites the payload's copy of it.
        self.fix_payload = Sql.compile(
            sa.update(e).where(e.c.id == b("entry_id")).values(payload=b("payload")), engine
        )
        spill = insert(o).values(entry_id=b("entry_id"), payload=b("payload"))
        self.put_spill = Sql.compile(
            spill.on_conflict_do_update(
                index_elements=[o.c.entry_id], set_={"payload": spill.excluded.payload}
            ),
            engine,
        )
        self.drop_spill = Sql.compile(sa.delete(o).where(o.c.entry_id == b("entry_id")), engine)
        self.delete_entry = Sql.compile(sa.delete(e).where(this_key), engine)

        # The lease clock: the caller's ``now``, or PostgreSQL's. statement_timestamp() is
        # one value for the whole statement, so the lease's created_at, updated_at, expires_at
        # and the expiry test all agree; it is read before any row lock is waited for, so it
        # can only be earlier than the decision: a takeover is never early, and the lease
        # granted ends no later than its lease time after the decision.
        now: Any = database_now() if database_clock else b("now", type_=sa.BigInteger)
        self.clock = Sql.compile(sa.select(database_now()), engine) if database_clock else None
        lease = insert(r).values(
            key=b("key"),
            key_hash=b("key_hash", type_=sa.BigInteger),
            owner_id=b("owner_id"),
            heartbeat_interval=b("heartbeat_interval"),
            expires_at=now + b("lease", type_=sa.BigInteger),
            created_at=now,
            updated_at=now,
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
            ).returning(r.c.previous_owner, r.c.expires_at),
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
        self._clock = clock
        self._lease_clock = resolve_lease_clock(
            settings.lease_clock, sqlite=is_sqlite(engine), clock_injected=clock is not None
        )
        self._sql = Statements(engine, database_clock=self._lease_clock == "database")
        self._pool = HotPool(
            engine,
            keep=max(settings.pool_size, 8) if is_sqlite(engine) else settings.pool_size,
            limit=settings.pool_size + settings.max_overflow,
            wait=settings.pool_timeout.total_seconds(),
        )
        # Entry times follow the database's clock too, unless a clock is injected (which
        # then times entries, as it always did): see StoreSettings.lease_clock.
        self._database_clock: DatabaseClock | None = None
        self._now_us = make_now_us(clock)
        if self._sql.clock is not None:
            self._database_clock = DatabaseClock(self._read_database_clock)
            if clock is None:
                self._now_us = self._database_clock.now_us
        self._closed = False
        self._max_heartbeat_us = timedelta_to_us(settings.max_heartbeat)
        self._grace = settings.grace_multiplier
        self._nowait: CacheStore | None = None
        self._owns_engine = True
        # Without a limit there is no evictor, and puts and gets run as they always did.
        self._evictor = Evictor(self, settings) if settings.limited else None
        self._record_hit = (
            self._evictor.record_hit
            if self._evictor is not None and self._evictor.hits is not None
            else None
        )
        # SQLite with a limit: this process's puts and eviction batches take turns on a lock
        # of their own, so a put waits the batch's millisecond instead of SQLite's busy
        # handler sleeping (1, 2, 5 ms...) after it: put throughput under eviction, measured.
        self._write_turn: _WriteTurn | None = None
        if self._evictor is not None and is_sqlite(engine):
            self._write_turn = _WriteTurn(self._evictor.gate, wait=True)
        self._waits = True
        """False on :meth:`nowait`'s store: nothing there may wait, for a lock or the evictor."""

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
        the store writes or compares comes from it, except lease times when
        :attr:`lease_clock` is ``"database"``. Without ``clock``, times come from the
        database's clock when :attr:`lease_clock` is ``"database"`` (by default on PostgreSQL;
        ``StoreSettings.lease_clock`` chooses): leases read it in their statements, entry
        times from a sample of it (:meth:`now_us`); otherwise from the system clock. With
        ``migrate=False`` a database that is not at the current schema raises
        :class:`~flytecache.errors.SchemaError`.
        """
        from flytecache.store.opening import open_store

        return open_store(url_or_path, settings=settings, clock=clock, migrate=migrate)

    def close(self) -> None:
        """Close every connection this store opened (idempotent)."""
        if not self._closed:
            if self._evictor is not None:
                self._evictor.close()
            self._closed = True
            if self._nowait is not None and self._nowait is not self:
                self._nowait.close()
            self._pool.close()
            if self._owns_engine:
                self._engine.dispose()

    def nowait(self) -> CacheStore:
        """This store on connections of its own that never wait for a lock (SQLite only).

        A call that would wait for a lock held by another connection (a writer elsewhere)
        raises :class:`~flytecache.errors.StorageBusyError` at once, having changed nothing;
        every other call behaves as on this store. With a size limit, a put is refused the same
        way rather than wait for this process's eviction batch or for the evictor to catch up
        (see ``Evictor.added``). Its commits leave WAL checkpoints to the
        store's other connections and to explicit checkpoints, since a checkpoint writes and
        syncs the database file. For a caller that must not block (``flytecache serve`` runs
        these calls on its event loop and queues for a thread only when they are refused).
        Created once; closed with this store.
        """
        if not self.is_sqlite:
            raise InvalidArgumentError(
                "nowait() is for SQLite: PostgreSQL calls are network round trips",
                field="nowait",
            )
        self._check_open()
        if self._nowait is None:
            sibling = copy.copy(self)
            sibling._pool = HotPool(
                self._engine,
                keep=2,
                setup=("PRAGMA busy_timeout = 0", "PRAGMA wal_autocheckpoint = 0"),
            )
            sibling._owns_engine = False
            sibling._nowait = sibling
            sibling._waits = False
            if self._write_turn is not None:
                sibling._write_turn = _WriteTurn(self._write_turn.lock, wait=False)
            self._nowait = sibling
        return self._nowait

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
        """The compiled SQL of the hot path, by operation (``get``, ``put_simple``, ``reserve``,
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
    def pool(self) -> HotPool:
        """The store's own DB-API connection pool (for the store package's eviction; its
        methods run statements compiled by :class:`~flytecache.store.pool.Sql`)."""
        return self._pool

    @property
    def evictor(self) -> Evictor | None:
        """The background evictor keeping the size limits (None without a limit): its
        ``stats`` feed the server's metrics; tests and benchmarks call ``run_once`` and
        ``flush_hits``."""
        return self._evictor

    @property
    def settings(self) -> StoreSettings:
        """The settings in force."""
        return self._settings

    @property
    def is_sqlite(self) -> bool:
        """Whether the database is SQLite."""
        return is_sqlite(self._engine)

    @property
    def lease_clock(self) -> Literal["database", "host"]:
        """The clock that decides leases: ``"database"`` (PostgreSQL's, read by each lease
        statement) or ``"host"`` (the store clock), resolved from
        ``StoreSettings.lease_clock``. With ``"database"`` and no injected clock, entry times
        follow the database's clock too (:meth:`now_us`)."""
        return self._lease_clock

    def now_us(self) -> int:
        """Now by the entry clock, in microseconds since the epoch: the clock of every entry
        time the store writes (``created_at``, ``last_updated_at``) and compares (``max_age``),
        and of the admin tools' entry ages.

        When :attr:`lease_clock` is ``"database"`` and no clock was injected, that is the
        database's clock without a round trip: a sample of it carried forward by the host's
        monotonic clock, off by at most :meth:`clock_error_us` (see
        :class:`~flytecache.store.dbclock.DatabaseClock`); otherwise the injected clock, else
        the system's (as for leases with ``lease_clock="host"``).
        """
        return self._now_us()

    def lease_now_us(self) -> int:
        """Now by the clock that decides leases, in microseconds since the epoch: one query of
        the database's clock, or the store clock. For the admin tools that judge expiry."""
        if self._database_clock is None:
            return self._now_us()
        self._check_open()
        return self._database_clock.read_database_us()

    def clock_error_us(self) -> int:
        """The most :meth:`now_us` can be off the clock it follows, in microseconds: half the
        round trip of the database clock's sample plus the drift since (0 for a clock read
        directly: the system's or an injected one)."""
        if self._database_clock is None or self._clock is not None:
            return 0
        self._check_open()
        return self._database_clock.error_us()

    def _read_database_clock(self, timer: Callable[[], int]) -> tuple[int, int, int]:
        self._check_open()
        assert self._sql.clock is not None
        return self._pool.fetch_timed(self._sql.clock, timer)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageError("the store is closed")

    # -- entries -------------------------------------------------------------------------

    def get(self, key: str) -> cs.CachedOutput:
        """The entry stored under ``key``; :class:`NotFoundError` if there is none.

        One statement (one round trip): the key's index, then the row, whose stored bytes
        are parsed once. A payload over ``SPILL_BYTES`` takes a second statement, which
        reads it from ``outputs`` through the key again.
        """
        check_text(key, "key")
        self._check_open()
        fetchall = self._pool.fetchall
        params = {"key": key, "key_hash": key_hash(key)}
        for _ in range(_RACE_ROUNDS):
            rows = fetchall(self._sql.get, params)
            if not rows:
                break
            stored = rows[0][0]
            if stored is None:
                rows = fetchall(self._sql.get_spilled, params)
                if not rows:
                    continue  # replaced by an inline payload, or deleted, in between: again
                stored = rows[0][0]
            if self._record_hit is not None:  # least-recently-used: in memory, flushed later
                self._record_hit(key, self._now_us())
            return cached_output(stored)
        else:  # pragma: no cover - a writer replacing the entry between every pair
            raise StorageError(f"entry {key!r} kept changing while being read; retry")
        raise NotFoundError(f'cache entry "{key}" not found', key=key)

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
        otherwise :class:`AlreadyExistsError`. ``last_updated_at`` is always the entry clock
        (:meth:`now_us`), and so is the "now" ``max_age`` is measured from;
        ``created_at`` is the output's, else the existing entry's, else now. Reservations are
        never touched. One statement, unless the payload is over ``SPILL_BYTES`` or the put
        replaces an entry whose ``created_at`` it keeps.
        """
        check_text(key, "key")
        params = entry_params(key, output)
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
        created = now if request_created is None else request_created
        params["request_created_at"] = request_created
        params["created_at"] = created
        params["last_updated_at"] = now
        params["overwrite"] = overwrite
        params["expired_before"] = expired_before
        params["payload"] = payload(params["head"], params["meta"], created, now)
        evictor = self._evictor
        if evictor is not None and not self._waits and evictor.behind():
            # Where nothing may wait (an event loop), the put goes to a caller that may: it
            # then waits for the evictor there (see Evictor.added).
            raise StorageBusyError(
                "eviction is behind this process's puts; retry where a put may wait"
            )
        if len(params["payload"]) <= SPILL_BYTES:
            turn = self._write_turn
            if turn is None:
                changed = self._pool.rowcount(self._sql.put_simple, params)
            else:
                with turn:
                    changed = self._pool.rowcount(self._sql.put_simple, params)
            if changed:
                if evictor is not None:
                    evictor.added(params["size"], wait=self._waits)
                return
            if not overwrite and max_age is None:
                raise self._refusal(params)
        # A large payload, or a replacement that keeps the entry's created_at (which the
        # payload carries too) or drops a spilled payload: one write transaction.
        self._put_in_transaction(params, now)
        if evictor is not None:
            evictor.added(params["size"], wait=self._waits)

    def _put_in_transaction(self, params: dict[str, Any], now: int) -> None:
        sql = self._sql
        stored: bytes = params["payload"]
        large = len(stored) > SPILL_BYTES
        if large:
            params["payload"] = None
        turn = self._write_turn if self._write_turn is not None else contextlib.nullcontext()
        with turn, self._pool.transaction(write=True) as cur:
            row = cur.execute(sql.put.text, sql.put.args(params)).fetchone()
            if row is not None:
                entry_id, created, had_spill = row
                if created != params["created_at"]:  # a replacement kept the first created_at
                    stored = payload(params["head"], params["meta"], created, now)
                    if not large:
                        args = {"entry_id": entry_id, "payload": stored}
                        cur.execute(sql.fix_payload.text, sql.fix_payload.args(args))
                if large:
                    args = {"entry_id": entry_id, "payload": stored}
                    cur.execute(sql.put_spill.text, sql.put_spill.args(args))
                elif had_spill:
                    args = {"entry_id": entry_id}
                    cur.execute(sql.drop_spill.text, sql.drop_spill.args(args))
        # Raised after the (empty) transaction committed: a ROLLBACK would make psycopg
        # drop its prepared statements.
        if row is None:
            raise self._refusal(params)

    def _refusal(self, params: dict[str, Any]) -> FlyteCacheError:
        """Why a put changed no row: the key exists, or (once in 2**64 / n) another key
        holds its hash (``store/keyhash.py``)."""
        key = params["key"]
        rows = self._pool.fetchall(self._sql.hash_holder, params)
        if rows and rows[0][0] != key:
            stored = rows[0][0]
            return KeyHashCollisionError(
                f'cache key "{key}" has the same 64-bit hash as the stored key "{stored}"; it '
                "cannot be cached while that entry exists",
                key=key,
                stored=stored,
            )
        return AlreadyExistsError(f'cache entry "{key}" already exists', key=key)

    def delete(self, key: str) -> None:
        """Remove the entry (and a spilled payload); :class:`NotFoundError` if there was none."""
        check_text(key, "key")
        self._check_open()
        if not self._pool.rowcount(self._sql.delete_entry, {"key": key, "key_hash": key_hash(key)}):
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
        fetchall = self._pool.fetchall
        sql = self._sql
        params: dict[str, Any] = {
            "key": key,
            "key_hash": key_hash(key),
            "owner_id": owner_id,
            "heartbeat_interval": hb,
            "lease": hb * self._grace if type(self._grace) is int else round(hb * self._grace),
        }
        host_clock = sql.clock is None
        # The upsert decides atomically (one statement: on SQLite it holds the write lock
        # from its start, like BEGIN IMMEDIATE). Only when another owner's live lease stopped
        # it is the holder read, by a second statement; if that holder released in between,
        # the upsert is simply tried again. The lease returned carries the expiry the
        # statement wrote, whichever clock computed it. On a hot key the holder can change
        # between the two statements again and again (seen 5 times running with 8 processes
        # on PostgreSQL), so the bound is generous: each round is two short statements.
        for _ in range(_RACE_ROUNDS):
            if host_clock:
                params["now"] = self._now_us()
            rows = fetchall(sql.reserve, params)
            if rows:
                previous, expires = rows[0]
                outcome = (
                    ReservationOutcome.ACQUIRED
                    if previous is None
                    else ReservationOutcome.EXTENDED
                    if previous == owner_id
                    else ReservationOutcome.TAKEN_OVER
                )
                return _reservation(key, owner_id, hb, expires), outcome
            holder = fetchall(sql.holder, {"key": key})
            if holder:
                owner, holder_hb, holder_expires = holder[0]
                return (
                    _reservation(key, owner, holder_hb, holder_expires),
                    ReservationOutcome.HELD_BY_OTHER,
                )
        raise StorageError(f"reservation on {key!r} kept changing hands; retry")  # pragma: no cover

    def release_reservation(self, key: str, owner_id: str) -> bool:
        """Release ``owner_id``'s lease on ``key``; whether a lease was removed (releasing one
        that does not exist or is someone else's changes nothing and is not an error)."""
        check_text(key, "key")
        check_text(owner_id, "owner_id")
        self._check_open()
        return bool(self._pool.rowcount(self._sql.release, {"key": key, "owner_id": owner_id}))


class _WriteTurn:
    """This process's turn to write beside its evictor (SQLite with a limit): a put waits for
    an eviction batch's commit on this lock instead of sleeping in SQLite's busy handler. With
    ``wait=False`` (:meth:`CacheStore.nowait`) a turn that is taken refuses at once."""

    __slots__ = ("_wait", "lock")

    def __init__(self, lock: threading.Lock, *, wait: bool) -> None:
        self.lock = lock
        self._wait = wait

    def __enter__(self) -> None:
        if not self.lock.acquire(self._wait):
            raise StorageBusyError("an eviction batch of this process is writing; retry")

    def __exit__(self, *exc_info: object) -> None:
        self.lock.release()


def _reservation(key: str, owner: str, hb_us: int, expires_us: int) -> cs.Reservation:
    # Fields set in place: building a Duration and a Timestamp to copy in cost twice as much.
    lease = cs.Reservation(key=key, owner_id=owner)
    heartbeat, expires = lease.heartbeat_interval, lease.expires_at
    seconds, micros = divmod(hb_us, 1_000_000)
    heartbeat.seconds, heartbeat.nanos = seconds, micros * 1000
    seconds, micros = divmod(expires_us, 1_000_000)
    expires.seconds, expires.nanos = seconds, micros * 1000
    return lease
