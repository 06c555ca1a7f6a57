"""Size limits: the batched, re-checking delete that the store's background evictor
(:mod:`flytecache.store.evictor`) and ``entries prune --to-size/--to-count`` share.

The measure. An entry's size is ``entries.size`` (the serialized inline literal map, or the
URI's length), summed: what ``flytecache stats`` calls ``payload_bytes`` and ``entries
prune`` counts.
It is the part of the database that grows with what tasks return; keys, metadata, indexes and
free pages come on top (docs/operations.md, "Sizing and eviction", has the measured ratio).

The batches. Victims are chosen by a read (outside any lock: for least-recently-used that is a
scan, and no index on the recency has to be written by every put and flush), then deleted in
one short write transaction (``BEGIN IMMEDIATE`` on SQLite) of at most :data:`BATCH` rows and
:data:`BATCH_BYTES` of payload whose ``DELETE`` re-checks each victim: still as old as when it
was chosen (a put or a flushed read since spares it), and no live reservation on its key
(``expires_at > now`` by the lease clock). Reservation and entry keys are the same stored key
(the server and the CatalogClient both scope through ``flytecache.scoping``), so a task
holding a lease keeps its entry.

One evictor at a time. Batches run under a lease in the reservations table (:data:`LEASE_KEY`,
held while rounds follow each other), so evictors of several processes sharing one database
never race to delete the same room twice; a crashed evictor's lease expires like any other.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa

from flytecache.blobs import BlobDeletion, delete_blobs, preview_deletion
from flytecache.config import Eviction
from flytecache.errors import InvalidArgumentError, StorageBusyError
from flytecache.store.engine import read_connection
from flytecache.store.models import Entry, Reservation
from flytecache.store.pool import Sql

if TYPE_CHECKING:
    from flytecache.store.cache import CacheStore

__all__ = [
    "BATCH",
    "LEASE_KEY",
    "LOW_WATER",
    "EvictionLease",
    "EvictionResult",
    "LeaseLost",
    "Victim",
    "evict",
    "evict_round",
    "lease_owner",
    "over_limits",
    "plan",
    "statements",
    "totals",
    "write_gate",
]

BATCH = 200
"""Entries deleted per write transaction. Measured on SQLite (benchmarks/eviction.py): a batch
holds the write lock for about a millisecond (median), far below the busy timeout a put waits."""
CANDIDATE_BATCHES = 20
"""Batches' worth of candidates one read returns (see ``evict_round``)."""
LOW_WATER = 0.9
"""Evict down to this fraction of a limit, so that eviction does not run on every put."""
BATCH_BYTES = 1024**2
"""Payload bytes deleted per write transaction at most (at least one entry): freeing large
spilled payloads is what makes a batch hold the lock longer (benchmarks/eviction.py)."""
LEASE_KEY = "flytecache:eviction"
"""The reservation an evictor (or ``entries prune --to-size``) holds while it deletes."""

_ENTRIES = cast(sa.Table, Entry.__table__)
_RESERVATIONS = cast(sa.Table, Reservation.__table__)


def _recency(policy: Eviction) -> sa.ColumnElement[int]:
    """The time an entry was last stored (or, least-recently-used, last stored or read)."""
    e = _ENTRIES.c
    if policy == "least-recently-used":
        # NULL (never read) compares false: the last put's time.
        return sa.case((e.accessed_at > e.last_updated_at, e.accessed_at), else_=e.last_updated_at)
    return e.last_updated_at


class _Statements:
    """The eviction's SQL for one store, compiled for the pool on first use."""

    def __init__(self, store: CacheStore) -> None:
        from flytecache.store.cache import database_now

        self._engine = store.engine
        self._database_clock = store.lease_clock == "database"
        now: Any = (
            database_now() if self._database_clock else sa.bindparam("now", type_=sa.BigInteger)
        )
        r = _RESERVATIONS.c
        self._free = ~sa.exists().where(r.key == _ENTRIES.c.key, r.expires_at > now)
        self._cache: dict[tuple[Any, ...], Sql] = {}
        e = _ENTRIES.c
        self.totals = self._compile(
            sa.select(
                sa.func.count(), sa.func.coalesce(sa.func.sum(e.size), sa.literal_column("0"))
            ).select_from(_ENTRIES)
        )
        b = sa.bindparam
        self.touch = self._compile(
            sa.update(_ENTRIES)
            .where(
                e.key_hash == b("key_hash", type_=sa.BigInteger),
                e.key == b("key"),
                sa.or_(
                    e.accessed_at.is_(None),
                    e.accessed_at < b("stale_before", type_=sa.BigInteger),
                ),
            )
            .values(accessed_at=b("at", type_=sa.BigInteger))
        )

    def _compile(self, statement: Any) -> Sql:
        return Sql.compile(statement, self._engine)

    def params(self, store: CacheStore) -> dict[str, Any]:
        """The lease clock's ``now`` for a statement (none when the database's own decides)."""
        return {} if self._database_clock else {"now": store.now_us()}

    def candidates(self, policy: Eviction) -> Sql:
        """The oldest ``limit`` entries without a live lease: id, size, recency."""
        cached = self._cache.get(("candidates", policy))
        if cached is None:
            recency = _recency(policy)
            cached = self._cache[("candidates", policy)] = self._compile(
                sa.select(_ENTRIES.c.id, _ENTRIES.c.size, recency)
                .where(self._free)
                .order_by(recency, _ENTRIES.c.id)
                .limit(sa.bindparam("limit", type_=sa.Integer))
                # SQLite's compiler adds an OFFSET bind to a bound LIMIT: make it a literal.
                .offset(sa.literal_column("0"))
            )
        return cached

    def delete(self, policy: Eviction, count: int) -> Sql:
        """Delete ``count`` chosen ids that are still no more recent than ``cutoff`` and
        without a live lease; returns key, size and output URI of each deleted entry."""
        cached = self._cache.get(("delete", policy, count))
        if cached is None:
            ids = [sa.bindparam(f"id{i}", type_=sa.Integer) for i in range(count)]
            cached = self._cache[("delete", policy, count)] = self._compile(
                sa.delete(_ENTRIES)
                .where(
                    _ENTRIES.c.id.in_(ids),
                    _recency(policy) <= sa.bindparam("cutoff", type_=sa.BigInteger),
                    self._free,
                )
                .returning(_ENTRIES.c.key, _ENTRIES.c.size, _ENTRIES.c.output_uri)
            )
        return cached


@dataclass(frozen=True, slots=True)
class Victim:
    """An entry removed by eviction or a size prune."""

    key: str
    size: int
    output_uri: str | None


@dataclass(frozen=True, slots=True)
class EvictionResult:
    """What a prune or :func:`evict` removed (or, with ``dry_run`` or from :func:`plan`,
    would remove)."""

    entries: int
    bytes: int
    batches: int
    dry_run: bool
    longest_batch_seconds: float = 0.0
    """Longest time one batch held the write lock (from BEGIN to COMMIT)."""
    blobs: BlobDeletion = field(default_factory=BlobDeletion)
    """The blobs of removed entries deleted (with ``blob_prefixes``), and those that could
    not be."""
    remaining_entries: int = 0
    remaining_bytes: int = 0
    """The totals after the eviction (by the evictor's count: writes by others meanwhile are
    not in it)."""


_STATEMENTS: weakref.WeakKeyDictionary[CacheStore, _Statements] = weakref.WeakKeyDictionary()


def statements(store: CacheStore) -> _Statements:
    """The eviction statements compiled for ``store`` (cached per store)."""
    cached = _STATEMENTS.get(store)
    if cached is None:
        cached = _STATEMENTS[store] = _Statements(store)
    return cached


def totals(store: CacheStore) -> tuple[int, int]:
    """(entries, payload bytes) in the database: one aggregate read."""
    rows = store.pool.fetchall(statements(store).totals, {})
    return int(rows[0][0]), int(rows[0][1])


def _needs(
    entries: int, size: int, max_entries: int | None, max_bytes: int | None
) -> tuple[int, int]:
    """(entries, bytes) to remove to get within the limits (0 for a limit that is None)."""
    return (
        0 if max_entries is None else max(0, entries - max_entries),
        0 if max_bytes is None else max(0, size - max_bytes),
    )


def over_limits(entries: int, size: int, max_entries: int | None, max_bytes: int | None) -> bool:
    return _needs(entries, size, max_entries, max_bytes) != (0, 0)


def _check_targets(max_bytes: int | None, max_entries: int | None) -> None:
    if max_bytes is None and max_entries is None:
        raise InvalidArgumentError("give a size or an entry count to evict to", field="to_size")
    for name, value in (("to_size", max_bytes), ("to_count", max_entries)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            raise InvalidArgumentError(f"{name} must be a non-negative integer", field=name)


def plan(
    store: CacheStore,
    *,
    max_bytes: int | None = None,
    max_entries: int | None = None,
    policy: Eviction = "least-recently-stored",
    blob_prefixes: Sequence[str] | None = None,
) -> EvictionResult:
    """What :func:`evict` would remove now (a dry run: reads only, in pages of :data:`BATCH`);
    with ``blob_prefixes``, also which of their blobs it would delete
    (:func:`~flytecache.blobs.preview_deletion`)."""
    _check_targets(max_bytes, max_entries)
    entries, size = totals(store)
    need_entries, need_bytes = _needs(entries, size, max_entries, max_bytes)
    sql = statements(store)
    count = freed = 0
    limit = BATCH
    chosen: list[int] = []
    while need_entries > count or need_bytes > freed:
        params = {**sql.params(store), "limit": limit}
        rows = store.pool.fetchall(sql.candidates(policy), params)
        for entry_id, entry_size, _ in rows[count:]:
            if count >= need_entries and freed >= need_bytes:
                break
            count += 1
            freed += int(entry_size)
            if blob_prefixes:
                chosen.append(int(entry_id))
        if len(rows) < limit:
            break
        limit *= 2  # a dry run reads the prefix again, twice as long: linear overall
    blobs = BlobDeletion()
    if blob_prefixes and chosen:
        blobs = preview_deletion(_output_uris(store, chosen), blob_prefixes)
    return EvictionResult(
        entries=count,
        bytes=freed,
        batches=0,
        dry_run=True,
        remaining_entries=entries - count,
        remaining_bytes=size - freed,
        blobs=blobs,
    )


def _output_uris(store: CacheStore, ids: list[int]) -> list[str]:
    """The output URIs of the entries ``ids`` (those stored by URI), read in chunks."""
    e = _ENTRIES
    uris: list[str] = []
    with read_connection(store.engine) as conn:
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            query = sa.select(e.c.output_uri).where(e.c.id.in_(chunk), e.c.output_uri.is_not(None))
            uris += conn.execute(query).scalars()
    return uris


BatchHook = Callable[[list[Victim], float, BlobDeletion], None]
"""Called after each committed batch with its victims, how long it held the write lock and
what deleting their blobs did."""


Candidate = tuple[int, int, int]
"""An entry that may be evicted: (id, size, recency), oldest first."""


def _candidates(store: CacheStore, policy: Eviction, limit: int) -> list[Candidate]:
    """The oldest ``limit`` entries without a live lease, oldest first (a read)."""
    sql = statements(store)
    rows = store.pool.fetchall(sql.candidates(policy), {**sql.params(store), "limit": limit})
    return [(int(entry_id), int(size), int(recency)) for entry_id, size, recency in rows]


def _choose(
    candidates: list[Candidate], need_entries: int, need_bytes: int, batch_size: int
) -> int:
    """How many of ``candidates`` (at least one) the next batch deletes: enough for the
    needs, at most ``batch_size`` entries and :data:`BATCH_BYTES` of payload."""
    count = freed = 0
    for _, size, _ in candidates[:batch_size]:
        if count and (
            (count >= need_entries and freed >= need_bytes) or freed + size > BATCH_BYTES
        ):
            break
        count += 1
        freed += size
    return count


def _delete_chosen(
    store: CacheStore, policy: Eviction, chosen: list[Candidate]
) -> tuple[list[Victim], float, int]:
    """Delete ``chosen`` in one write transaction, re-checking each (still no more recent
    than when chosen, no live lease); (victims, seconds the lock was held, the newest chosen
    recency)."""
    sql = statements(store)
    delete = sql.delete(policy, len(chosen))
    params: dict[str, Any] = {f"id{i}": entry_id for i, (entry_id, _, _) in enumerate(chosen)}
    params["cutoff"] = cutoff = max(recency for _, _, recency in chosen)
    params.update(sql.params(store))
    with write_gate(store), store.pool.transaction(write=True) as cur:
        started = time.perf_counter()
        rows = cur.execute(delete.text, delete.args(params)).fetchall()
        _in_batch(rows)
    held = time.perf_counter() - started
    return [Victim(key, int(size), uri) for key, size, uri in rows], held, cutoff


def write_gate(store: CacheStore) -> contextlib.AbstractContextManager[Any]:
    """The lock this process's puts and eviction writes take turns on (SQLite, with a limit)."""
    evictor = store.evictor
    return evictor.gate if evictor is not None and store.is_sqlite else contextlib.nullcontext()


def _in_batch(rows: list[Any]) -> None:
    """Inside a batch's transaction, after its DELETE: nothing (a seam for fault injection,
    which replaces it to stop a process mid-batch)."""


@dataclass
class Round:
    entries: int
    size: int
    removed: int = 0
    freed: int = 0
    batches: int = 0
    longest: float = 0.0
    cutoff: int | None = None
    """The recency of the newest entry chosen (micros since the epoch)."""
    blobs: BlobDeletion = field(default_factory=BlobDeletion)


def evict_round(
    store: CacheStore,
    *,
    max_bytes: int | None,
    max_entries: int | None,
    policy: Eviction,
    batch_size: int,
    blob_prefixes: Sequence[str] | None,
    on_batch: BatchHook | None,
    pause: bool,
    known: tuple[int, int] | None = None,
) -> Round:
    entries, size = known or totals(store)
    state = Round(entries=entries, size=size)
    # Read once for several batches: for least-recently-used the read is a scan of the
    # table (445 ms at 1M entries, measured), while its top-N sort costs little more for
    # CANDIDATE_BATCHES batches than for one. Each batch re-checks its victims anyway.
    # A short round (the usual: a tenth of the limit) reads one batch's worth; a long one
    # doubles its reads up to that many batches.
    candidates: list[Candidate] = []
    fetch = batch_size
    while True:
        need_entries, need_bytes = _needs(state.entries, state.size, max_entries, max_bytes)
        if not need_entries and not need_bytes:
            return state
        if not candidates:
            candidates = _candidates(store, policy, fetch)
            fetch = min(2 * fetch, batch_size * CANDIDATE_BATCHES)
            if not candidates:  # none left, or every one has a live lease
                return state
        count = _choose(candidates, need_entries, need_bytes, batch_size)
        chosen, candidates = candidates[:count], candidates[count:]
        victims, held, state.cutoff = _delete_chosen(store, policy, chosen)
        batch_bytes = sum(v.size for v in victims)
        state.removed += len(victims)
        state.freed += batch_bytes
        state.entries -= len(victims)
        state.size -= batch_bytes
        state.batches += 1
        state.longest = max(state.longest, held)
        blobs = BlobDeletion()
        if blob_prefixes:
            blobs = delete_blobs([v.output_uri for v in victims if v.output_uri], blob_prefixes)
            state.blobs = state.blobs + blobs
        if on_batch is not None:
            on_batch(victims, held, blobs)
        if len(victims) < len(chosen):
            # Some victims were written, read or deleted by someone else since they were
            # chosen: read the totals and the candidates again rather than trust them.
            state.entries, state.size = totals(store)
            candidates = []
        if pause:
            # Writers poll for the lock with backoff: leaving it free about as long as a batch
            # held it lets them in between batches (as ``entries prune`` does).
            time.sleep(min(max(held, 0.001), 0.05))


class LeaseLost(Exception):
    """Another evictor took the eviction lease over in the middle of a round."""


class EvictionLease:
    """The reservation that makes one evictor at a time delete (see :data:`LEASE_KEY`)."""

    def __init__(self, store: CacheStore, owner: str) -> None:
        self._store = store
        self.owner = owner
        settings = store.settings
        # Extended every third of its time, so a long round never lets it lapse.
        self._renew_every = settings.max_heartbeat.total_seconds() * settings.grace_multiplier / 3
        self._renew_at = 0.0

    def acquire(self) -> str | None:
        """None when acquired (or extended); else the owner holding it."""
        lease = self._store.get_or_extend_reservation(LEASE_KEY, self.owner)
        if lease.owner_id != self.owner:
            self._renew_at = 0.0
            return str(lease.owner_id)
        self._renew_at = time.monotonic() + self._renew_every
        return None

    def keep(self) -> bool:
        """Whether it is still held: extended when a third of its time has passed."""
        if self._renew_at and time.monotonic() < self._renew_at:
            return True
        return self.acquire() is None

    def release(self) -> None:
        self._renew_at = 0.0
        self._store.release_reservation(LEASE_KEY, self.owner)


def lease_owner() -> str:
    return f"evictor@{socket.gethostname()}:{os.getpid()}:{threading.get_ident():x}"


def evict(
    store: CacheStore,
    *,
    max_bytes: int | None = None,
    max_entries: int | None = None,
    policy: Eviction = "least-recently-stored",
    batch_size: int = BATCH,
    blob_prefixes: Sequence[str] | None = None,
    on_batch: BatchHook | None = None,
    wait: timedelta = timedelta(seconds=60),
) -> EvictionResult:
    """Delete entries, oldest first by ``policy``, until at most ``max_entries`` remain
    holding at most ``max_bytes``; entries whose key has a live reservation stay.

    Each batch of up to ``batch_size`` is its own short write transaction that re-checks its
    victims; between batches the lock is left free about as long as a batch held it. Holds
    the eviction lease (:data:`LEASE_KEY`) throughout, waiting up to ``wait`` for another
    evictor's round to end (:class:`StorageBusyError` after that). With ``blob_prefixes``, the
    blobs of removed entries under them are deleted after each batch commits (see
    :func:`flytecache.blobs.delete_blobs`).
    """
    _check_targets(max_bytes, max_entries)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidArgumentError("batch_size must be at least 1", field="batch_size")
    lease = EvictionLease(store, lease_owner())
    deadline = time.monotonic() + wait.total_seconds()
    while (holder := lease.acquire()) is not None:
        if time.monotonic() > deadline:
            raise StorageBusyError(
                f"another evictor ({holder}) kept the eviction lease for {wait}; retry later",
                holder=holder,
            )
        time.sleep(0.2)

    def batch_done(victims: list[Victim], held: float, blobs: BlobDeletion) -> None:
        if on_batch is not None:
            on_batch(victims, held, blobs)
        if not lease.keep():
            raise LeaseLost

    try:
        state = evict_round(
            store,
            max_bytes=max_bytes,
            max_entries=max_entries,
            policy=policy,
            batch_size=batch_size,
            blob_prefixes=blob_prefixes,
            on_batch=batch_done,
            pause=True,
        )
    except LeaseLost:
        raise StorageBusyError(
            "another evictor took the eviction lease over mid-prune (this one was too slow to "
            "extend it); what was removed stays removed: run the prune again"
        ) from None
    finally:
        lease.release()
    return EvictionResult(
        entries=state.removed,
        bytes=state.freed,
        batches=state.batches,
        dry_run=False,
        longest_batch_seconds=state.longest,
        blobs=state.blobs,
        remaining_entries=state.entries,
        remaining_bytes=state.size,
    )
