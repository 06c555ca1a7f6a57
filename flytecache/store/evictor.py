"""The store's background evictor: a daemon thread per process that keeps a store's size
limits, and the recency recording least-recently-used eviction needs.

The cost. A store without a limit has no evictor: its puts and gets run exactly the statements
they ran before. With a limit, a put adds its size to a per-process running figure (a lock and
two additions, no statement) and wakes the evictor thread when the figure passes the limit
(and, far past it, waits for the evictor's next batch: backpressure); a get of a
least-recently-used store writes the key and the time into a bounded dict. The thread
reconciles the figure with the database (one aggregate read) when woken and every
:data:`RECONCILE_SECONDS`, so other processes' writes are seen too. On SQLite a process's puts
and its eviction writes take turns on an in-process lock (:attr:`Evictor.gate`), so a put
waits for a batch's commit instead of sleeping in SQLite's busy handler.

The thread deletes with the batches of :mod:`flytecache.store.eviction`, down to
:data:`~flytecache.store.eviction.LOW_WATER` of each limit, holding the eviction lease while
rounds follow each other. Each process counts only its own puts between reads of the totals,
so with P writing processes the payload can pass the limit by about P times the slack until
the next read.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from flytecache.blobs import BlobDeletion
from flytecache.config import StoreSettings
from flytecache.store.eviction import (
    BATCH,
    LOW_WATER,
    EvictionLease,
    LeaseLost,
    Victim,
    evict_round,
    lease_owner,
    over_limits,
    statements,
    totals,
    write_gate,
)
from flytecache.store.keyhash import key_hash

if TYPE_CHECKING:
    from flytecache.store.cache import CacheStore

__all__ = ["EvictionStats", "Evictor"]

log = logging.getLogger("flytecache.eviction")

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
minute, 0 before any eviction. A key read all the time then costs one row write a minute (not
one a second) when victims are hours old, and a ranking whose victims are seconds old stays
exact to a tenth of their age."""


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
        self._lease: EvictionLease | None = None
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
        lease = self._lease or EvictionLease(self._store, lease_owner())
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
        if not over_limits(entries, size, self._max_entries, self._max_bytes):
            self._drop_lease()
            return None
        self._lease_elsewhere = not self._hold_lease()
        if self._lease_elsewhere:
            with self._lock:  # another process's evictor is at it: our puts must not wait
                self._throttling = False
                self._progressed.notify_all()
            return False
        try:
            state = evict_round(
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
        except LeaseLost:
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
            raise LeaseLost
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
        sql = statements(self._store).touch
        resolution = self._resolution_us
        for start in range(0, len(items), FLUSH_BATCH):
            chunk = [
                sql.args(
                    {"key": k, "key_hash": key_hash(k), "at": at, "stale_before": at - resolution}
                )
                for k, at in items[start : start + FLUSH_BATCH]
            ]
            with write_gate(self._store), self._store.pool.transaction(write=True) as cur:
                cur.executemany(sql.text, chunk)
        self.stats.hits_flushed += len(items)
        return len(items)


def _room(limit: int | None, used: int) -> int:
    return 2**62 if limit is None else limit - used


def _slack(limit: int | None) -> int:
    return 0 if limit is None else max(1, int(limit * (1 - LOW_WATER) / 2))


def _low_water(limit: int | None) -> int | None:
    return None if limit is None else int(limit * LOW_WATER)
