"""Size limits: the background evictor, recency recording for least-recently-used, and the
batched, re-checking delete that ``entries prune --to-size/--to-count`` shares with it.

The measure. An entry's size is ``entries.size`` (the serialized inline literal map, or the
URI's length), summed: what ``flytecache stats`` calls ``payload_bytes`` and ``entries
prune`` counts.
It is the part of the database that grows with what tasks return; keys, metadata, indexes and
free pages come on top (docs/operations.md, "Sizing and eviction", has the measured ratio).

The cost. A store without a limit has no evictor: its puts and gets run exactly the statements
they ran before. With a limit, a put adds its size to a per-process running figure (a lock and
two additions, no statement) and wakes the evictor thread when the figure passes the limit
(and, far past it, waits for the evictor's next batch: backpressure); a get of a
least-recently-used store writes the key and the time into a bounded dict. The thread
reconciles the figure with the database (one aggregate read) when woken and every
:data:`RECONCILE_SECONDS`, so other processes' writes are seen too. On SQLite a process's puts
and its eviction writes take turns on an in-process lock (:attr:`Evictor.gate`), so a put
waits for a batch's commit instead of sleeping in SQLite's busy handler.

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
Each process counts only its own puts between reads of the totals, so with P writing
processes the payload can pass the limit by about P times the slack until the next read.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

import sqlalchemy as sa

from flytecache.blobs import BlobDeletion, delete_blobs
from flytecache.config import Eviction, StoreSettings
from flytecache.errors import InvalidArgumentError, StorageBusyError
from flytecache.store.keyhash import key_hash
from flytecache.store.models import Entry, Reservation
from flytecache.store.pool import Sql

if TYPE_CHECKING:
    from flytecache.store.cache import CacheStore

__all__ = [
    "BATCH",
    "LEASE_KEY",
    "LOW_WATER",
    "EvictionResult",
    "Evictor",
    "Victim",
    "evict",
    "plan",
]

log = logging.getLogger("flytecache.eviction")

BATCH = 200
"""Entries deleted per write transaction. Measured on SQLite (benchmarks/eviction.py): a batch
holds the write lock for about a millisecond (median), far below the busy timeout a put waits."""
CANDIDATE_BATCHES = 20
"""Batches' worth of candidates one read returns (see ``_evict_round``)."""
LOW_WATER = 0.9
"""Evict down to this fraction of a limit, so that eviction does not run on every put."""
RECONCILE_SECONDS = 5.0
"""How often the evictor reads the database's totals even when its own puts did not pass the
limit (other processes' writes are seen no later than this), or 50 times as long as the read
took when that is longer (a scan: 0.3 s at 1M entries, so every 15 s there)."""
TICK_SECONDS = 1.0
"""How often pending reads are flushed (least-recently-used), and the pause after a round
that could not reach its target."""
THROTTLE_SECONDS = 1.0
"""The longest a put waits for the evictor when it is far behind (see ``Evictor.added``)."""
MAX_PENDING_HITS = 100_000
"""Keys whose last read waits in memory for the next flush; reads of further keys are not
recorded until then (counted as dropped: only recency is lost)."""
FLUSH_BATCH = 500
"""Recorded reads written per write transaction."""
MAX_RESOLUTION_US = 60_000_000
"""A flush rewrites an entry's read time only when the stored one is older than the resolution:
a tenth of the age of the last entry evicted (growing at most twofold a round), at most a
minute, 0 before any eviction. A key
read all the time then costs one row write a minute (not one a second) when victims are hours
old, and a ranking whose victims are seconds old stays exact to a tenth of their age."""
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


def _statements(store: CacheStore) -> _Statements:
    cached = _STATEMENTS.get(store)
    if cached is None:
        cached = _STATEMENTS[store] = _Statements(store)
    return cached


def totals(store: CacheStore) -> tuple[int, int]:
    """(entries, payload bytes) in the database: one aggregate read."""
    rows = store.pool.fetchall(_statements(store).totals, {})
    return int(rows[0][0]), int(rows[0][1])


def _needs(
    entries: int, size: int, max_entries: int | None, max_bytes: int | None
) -> tuple[int, int]:
    """(entries, bytes) to remove to get within the limits (0 for a limit that is None)."""
    return (
        0 if max_entries is None else max(0, entries - max_entries),
        0 if max_bytes is None else max(0, size - max_bytes),
    )


def _over(entries: int, size: int, max_entries: int | None, max_bytes: int | None) -> bool:
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
) -> EvictionResult:
    """What :func:`evict` would remove now (a dry run: reads only, in pages of :data:`BATCH`)."""
    _check_targets(max_bytes, max_entries)
    entries, size = totals(store)
    need_entries, need_bytes = _needs(entries, size, max_entries, max_bytes)
    sql = _statements(store)
    count = freed = 0
    limit = BATCH
    while need_entries > count or need_bytes > freed:
        params = {**sql.params(store), "limit": limit}
        rows = store.pool.fetchall(sql.candidates(policy), params)
        for _, entry_size, _ in rows[count:]:
            if count >= need_entries and freed >= need_bytes:
                break
            count += 1
            freed += int(entry_size)
        if len(rows) < limit:
            break
        limit *= 2  # a dry run reads the prefix again, twice as long: linear overall
    return EvictionResult(
        entries=count,
        bytes=freed,
        batches=0,
        dry_run=True,
        remaining_entries=entries - count,
        remaining_bytes=size - freed,
    )


BatchHook = Callable[[list[Victim], float, BlobDeletion], None]
"""Called after each committed batch with its victims, how long it held the write lock and
what deleting their blobs did."""


Candidate = tuple[int, int, int]
"""An entry that may be evicted: (id, size, recency), oldest first."""


def _candidates(store: CacheStore, policy: Eviction, limit: int) -> list[Candidate]:
    """The oldest ``limit`` entries without a live lease, oldest first (a read)."""
    sql = _statements(store)
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
    sql = _statements(store)
    delete = sql.delete(policy, len(chosen))
    params: dict[str, Any] = {f"id{i}": entry_id for i, (entry_id, _, _) in enumerate(chosen)}
    params["cutoff"] = cutoff = max(recency for _, _, recency in chosen)
    params.update(sql.params(store))
    with _gate(store), store.pool.transaction(write=True) as cur:
        started = time.perf_counter()
        rows = cur.execute(delete.text, delete.args(params)).fetchall()
        _in_batch(rows)
    held = time.perf_counter() - started
    return [Victim(key, int(size), uri) for key, size, uri in rows], held, cutoff


def _gate(store: CacheStore) -> contextlib.AbstractContextManager[Any]:
    """The lock this process's puts and eviction writes take turns on (SQLite, with a limit)."""
    evictor = store.evictor
    return evictor.gate if evictor is not None and store.is_sqlite else contextlib.nullcontext()


def _in_batch(rows: list[Any]) -> None:
    """Inside a batch's transaction, after its DELETE: nothing (a seam for fault injection,
    which replaces it to stop a process mid-batch)."""


@dataclass
class _Round:
    entries: int
    size: int
    removed: int = 0
    freed: int = 0
    batches: int = 0
    longest: float = 0.0
    cutoff: int | None = None
    """The recency of the newest entry chosen (micros since the epoch)."""
    blobs: BlobDeletion = field(default_factory=BlobDeletion)


def _evict_round(
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
) -> _Round:
    entries, size = known or totals(store)
    state = _Round(entries=entries, size=size)
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


class _LeaseLost(Exception):
    """Another evictor took the eviction lease over in the middle of a round."""


class _EvictionLease:
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


def _owner() -> str:
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
    lease = _EvictionLease(store, _owner())
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
            raise _LeaseLost

    try:
        state = _evict_round(
            store,
            max_bytes=max_bytes,
            max_entries=max_entries,
            policy=policy,
            batch_size=batch_size,
            blob_prefixes=blob_prefixes,
            on_batch=batch_done,
            pause=True,
        )
    except _LeaseLost:
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


# -- the store's background evictor --------------------------------------------------------


class EvictionStats:
    """Counters of one store's evictor (for metrics), safe to read from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.entries = 0
        self.bytes = 0
        self.batches = 0
        self.blobs_deleted = 0
        self.blob_bytes = 0
        self.blob_failures = 0
        self.hits_flushed = 0
        self.hits_dropped = 0
        self.batch_seconds: deque[float] = deque(maxlen=1000)
        """How long each of the last 1000 batches held the write lock."""

    def add_batch(self, victims: list[Victim], held: float, blobs: BlobDeletion) -> None:
        with self._lock:
            self.entries += len(victims)
            self.bytes += sum(v.size for v in victims)
            self.batches += 1
            self.blobs_deleted += blobs.deleted
            self.blob_bytes += blobs.bytes
            self.blob_failures += len(blobs.failed)
            self.batch_seconds.append(held)

    def snapshot(self) -> dict[str, float]:
        """The counters by name: ``evicted_entries``, ``evicted_bytes``, ``eviction_batches``,
        ``blobs_deleted``, ``blob_bytes_deleted``, ``blob_delete_failures``,
        ``recency_flushed``, ``recency_dropped``."""
        with self._lock:
            return {
                "evicted_entries": self.entries,
                "evicted_bytes": self.bytes,
                "eviction_batches": self.batches,
                "blobs_deleted": self.blobs_deleted,
                "blob_bytes_deleted": self.blob_bytes,
                "blob_delete_failures": self.blob_failures,
                "recency_flushed": self.hits_flushed,
                "recency_dropped": self.hits_dropped,
            }


class Evictor:
    """A store's limits, kept by a daemon thread (started on first use in each process).

    The store calls :meth:`added` after each put and, for least-recently-used,
    :meth:`record_hit` after each get; both are constant-time and touch no database.
    """

    def __init__(self, store: CacheStore, settings: StoreSettings) -> None:
        self._store = store
        self._max_bytes = settings.max_size_bytes
        self._max_entries = settings.max_entries
        self._policy = settings.eviction
        self._blob_prefixes = settings.blob_prefixes if settings.delete_blobs else None
        if self._blob_prefixes:
            from flytecache.blobs import check_backends

            check_backends(self._blob_prefixes)  # refused at open, not after rows are gone
        self._lock = threading.Lock()
        self._progressed = threading.Condition(self._lock)
        self.gate = threading.Lock()
        """Held by this process's puts and eviction writes on SQLite (see CacheStore)."""
        self._wake = threading.Event()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        # Room left below the limits at the last reconcile (grown by each batch since), and
        # what this process's puts have added since: the thread is woken when the additions
        # pass the room, and a put waits for it when they pass the room by the slack.
        self._room_bytes = 0
        self._room_entries = 0
        self._added_bytes = 0
        self._added_entries = 0
        self._slack_bytes = _slack(self._max_bytes)
        self._slack_entries = _slack(self._max_entries)
        self._progress = 0
        """Bumped by every reconcile and batch: what a throttled put waits for."""
        self._resolution_us = 0
        """See :data:`MAX_RESOLUTION_US`."""
        self._lease: _EvictionLease | None = None
        self._throttling = True
        """False after a round that could evict nothing (all leased): puts must not wait."""
        self._reconciled_at = -RECONCILE_SECONDS
        self._read_s = 0.0
        """How long the last read of the totals took (seconds)."""
        self._lease_elsewhere = False
        """Whether the last round found another evictor holding the eviction lease."""
        self._reconcile_every = RECONCILE_SECONDS
        self.stats = EvictionStats()
        self.hits: dict[str, int] | None = (
            {} if settings.eviction == "least-recently-used" else None
        )

    # -- the hot path (no I/O) ----------------------------------------------------------

    def added(self, size: int, *, wait: bool = True) -> None:
        """Count a put of ``size`` bytes (a replacement counts as new until reconciled).

        Backpressure: a put that finds this process's additions past the limit by more than
        the slack (half the distance to the low-water mark) waits for the evictor's next batch
        (at most :data:`THROTTLE_SECONDS`), so a writer faster than the evictor cannot run far
        past the limit; ``wait=False`` only counts (a caller that must not block asks
        :meth:`behind` first). Other processes' puts are seen at the next reconcile.
        """
        with self._lock:
            self._added_bytes += size
            self._added_entries += 1
            over = self._past_room()
            far = self._past_room(slack=True)
            progress = self._progress
        if not over:
            return
        self._start()
        self._wake.set()
        if wait and far and self._throttling and self._thread is not None:
            with self._lock:
                self._progressed.wait_for(
                    lambda: self._progress != progress or not self._throttling,
                    timeout=THROTTLE_SECONDS,
                )

    def behind(self) -> bool:
        """Whether a put would wait in :meth:`added` now (this process's puts are past the
        limit by more than the slack while the evictor can make progress)."""
        if not self._throttling or self._thread is None:
            return False
        with self._lock:
            return self._past_room(slack=True)

    def _past_room(self, *, slack: bool = False) -> bool:
        """Whether this process's puts since the last totals passed the room left (by more
        than the slack with ``slack``). Called with ``_lock`` held."""
        bytes_room, entries_room = self._room_bytes, self._room_entries
        if slack:
            bytes_room += self._slack_bytes
            entries_room += self._slack_entries
        return self._added_bytes > bytes_room or self._added_entries > entries_room

    def record_hit(self, key: str, now_us: int) -> None:
        """Remember that ``key`` was read at ``now_us`` (flushed within a tick).

        No lock (a tenth of a get, measured): storing into a dict is atomic under the GIL,
        and :meth:`flush_hits` swaps the dict out before it reads it. A read stored into the
        old dict just as it is swapped out may be missed: its recency only.
        """
        hits = self.hits
        if hits is None:
            return
        if len(hits) < MAX_PENDING_HITS or key in hits:
            hits[key] = now_us
            return
        self.stats.hits_dropped += 1
        self._start()
        self._wake.set()

    # -- the thread ---------------------------------------------------------------------

    def _start(self) -> None:
        if self._thread is not None and self._pid == os.getpid():
            return
        with self._lock:
            if self._thread is not None and self._pid == os.getpid():
                return
            # In a forked child the parent's thread does not exist: start this process's own.
            self._pid = os.getpid()
            self._thread = threading.Thread(
                target=self._run, name="flytecache-evictor", daemon=True
            )
            self._thread.start()

    def start(self) -> None:
        """Start the thread now (it otherwise starts with the first put or read)."""
        self._start()
        self._wake.set()

    def close(self) -> None:
        """Stop the thread and flush pending reads (best effort: only recency is at stake)."""
        self._stopped.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and self._pid == os.getpid() and thread.is_alive():
            thread.join(timeout=30)
        try:
            self.flush_hits()
            self._drop_lease()
        except Exception:
            log.warning("could not flush read times at close (recency only)", exc_info=True)

    def _hold_lease(self) -> bool:
        """Whether this evictor holds the eviction lease, acquiring or extending it when a
        third of its time has passed: while rounds follow each other it is held throughout,
        two statements per ten seconds rather than two per round (a third of a round's cost
        with small entries, measured)."""
        lease = self._lease or _EvictionLease(self._store, _owner())
        if not lease.keep():
            self._lease = None
            return False
        self._lease = lease
        return True

    def _drop_lease(self) -> None:
        lease, self._lease = self._lease, None
        if lease is not None:
            lease.release()

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._wake.wait(TICK_SECONDS)
            self._wake.clear()
            if self._stopped.is_set():
                return
            try:
                self.flush_hits()
                if self._reconcile_due() and self.run_once() is False:
                    if self._lease_elsewhere:
                        self._stopped.wait(TICK_SECONDS)
                    else:
                        # Nothing evictable was left (every remaining entry reserved): puts
                        # then run unthrottled, so the next of them must wake a new round
                        # soon, not a tick later (a tick of puts went far past the limit).
                        # Paced by the totals read, which a round repeats (a scan at 1M).
                        self._stopped.wait(min(TICK_SECONDS, max(0.01, 5 * self._read_s)))
            except Exception:
                log.warning("eviction failed; retrying in %.0fs", TICK_SECONDS, exc_info=True)
                self._stopped.wait(TICK_SECONDS)

    def _reconcile_due(self) -> bool:
        with self._lock:
            over = self._past_room()
        return over or time.monotonic() - self._reconciled_at >= self._reconcile_every

    def _reconcile(self) -> tuple[int, int]:
        with self._lock:
            self._added_bytes = self._added_entries = 0
        started = time.perf_counter()
        entries, size = totals(self._store)
        self._read_s = time.perf_counter() - started
        # The aggregate is a scan (0.3 s at 1M entries, measured): at most 2 % of the time.
        self._reconcile_every = max(RECONCILE_SECONDS, 50 * self._read_s)
        self._set_room(entries, size)
        return entries, size

    def _set_room(self, entries: int, size: int) -> None:
        with self._lock:
            # Puts since the totals were read are counted twice at worst: eviction comes early.
            self._room_bytes = _room(self._max_bytes, size)
            self._room_entries = _room(self._max_entries, entries)
            self._reconciled_at = time.monotonic()
            self._progress += 1
            self._progressed.notify_all()

    def run_once(self) -> bool | None:
        """Reconcile, and if over a limit evict to :data:`LOW_WATER` of it: None when under
        the limits, True when a round ran, False when it could not (another evictor's lease,
        or nothing left to evict)."""
        self.flush_hits()  # least-recently-used: choose by every read this process saw
        entries, size = self._reconcile()
        if not _over(entries, size, self._max_entries, self._max_bytes):
            self._drop_lease()
            return None
        self._lease_elsewhere = not self._hold_lease()
        if self._lease_elsewhere:
            with self._lock:  # another process's evictor is at it: our puts must not wait
                self._throttling = False
                self._progressed.notify_all()
            return False
        try:
            state = _evict_round(
                self._store,
                max_bytes=_low_water(self._max_bytes),
                max_entries=_low_water(self._max_entries),
                policy=self._policy,
                batch_size=BATCH,
                blob_prefixes=self._blob_prefixes,
                on_batch=self._batch_done,
                pause=False,
                known=(entries, size),
            )
        except _LeaseLost:
            self._lease = None
            return False
        except BaseException:
            self._drop_lease()
            raise
        with self._lock:
            self._throttling = state.removed > 0
        if state.cutoff is not None:
            horizon = self._store.now_us() - state.cutoff
            # Shrinks at once, grows at most twofold a round: one round of old victims (a
            # backlog, another process's leftovers) must not make fresh reads go unwritten.
            grown = max(2 * self._resolution_us, 1_000)
            self._resolution_us = max(0, min(MAX_RESOLUTION_US, horizon // 10, grown))
        self._set_room(state.entries, state.size)
        return state.removed > 0

    def _batch_done(self, victims: list[Victim], held: float, blobs: BlobDeletion) -> None:
        if not self._hold_lease():  # a long round: extended as it goes
            raise _LeaseLost
        for uri, reason in blobs.failed:
            log.warning("could not delete blob %s of an evicted entry: %s", uri, reason)
        self.stats.add_batch(victims, held, blobs)
        with self._lock:
            self._room_bytes += sum(v.size for v in victims)
            self._room_entries += len(victims)
            self._progress += 1
            self._progressed.notify_all()
        log.info(
            "evicted %d %s (%d bytes%s) in one batch; write lock held %.1f ms",
            len(victims),
            "entry" if len(victims) == 1 else "entries",
            sum(v.size for v in victims),
            f", {blobs.deleted} blobs, {blobs.bytes} blob bytes" if self._blob_prefixes else "",
            held * 1000,
        )

    def flush_hits(self) -> int:
        """Write the recorded read times, :data:`FLUSH_BATCH` per write transaction; how
        many were written. A crash before this loses those times (recency), never data."""
        if self.hits is None:
            return 0
        pending, self.hits = self.hits, {}
        items = list(pending.items())  # one C call: no get can change the dict meanwhile
        if not items:
            return 0
        sql = _statements(self._store).touch
        resolution = self._resolution_us
        for start in range(0, len(items), FLUSH_BATCH):
            chunk = [
                sql.args(
                    {"key": k, "key_hash": key_hash(k), "at": at, "stale_before": at - resolution}
                )
                for k, at in items[start : start + FLUSH_BATCH]
            ]
            with _gate(self._store), self._store.pool.transaction(write=True) as cur:
                cur.executemany(sql.text, chunk)
        self.stats.hits_flushed += len(items)
        return len(items)


def _room(limit: int | None, used: int) -> int:
    return 2**62 if limit is None else limit - used


def _slack(limit: int | None) -> int:
    return 0 if limit is None else max(1, int(limit * (1 - LOW_WATER) / 2))


def _low_water(limit: int | None) -> int | None:
    return None if limit is None else int(limit * LOW_WATER)
