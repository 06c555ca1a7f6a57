"""Where store calls run: on the event loop when they need not wait, else on dedicated threads.

On SQLite a store call is short (a get ~10 us, a put ~65 us in-process) next to the hop to a
thread and back, which costs two scheduler wake-ups and GIL hand-overs: with every call on a
thread the server spent 80-140 us more CPU per request with one client than with the calls
run on the loop, 10-75 us more with 4-8 clients, where a thread's wake-up served several
(``python -m benchmarks.bench_server`` reports CPU time per request). So the service
first runs each call right here on connections that never wait for a lock
(:meth:`CacheStore.nowait`): a WAL read is never blocked by a writer, and a write that finds
the write lock held (by another process, or another worker) is refused at once instead of
stalling the loop for up to the busy timeout. Only a refused call goes to a thread, where it
waits for the lock as usual. PostgreSQL calls are network round trips and always go to a
thread.

Not done, measured: running the writes that arrive in one turn of the loop in one shared
transaction (one commit for the lot). At 4 and 8 clients the turns held 2.3 and 2.7 writes on
average; one commit for 4 puts saved ~20 us of CPU per put, but deferring each write to the end
of the turn (a future and two more turns of the loop) cost ~9 us, which a single client pays
on every write for nothing. Nor sending writes to the thread while other requests are in
flight (so that SQLite's C code, which releases the GIL, overlaps the loop's work): no
difference in interleaved runs.

The threads: a queue per kind of call. SQLite admits one writer at a time. Threads of one
process that race for its write lock wait in SQLite's busy handler, which sleeps 1-100 ms
between tries; a single writer thread fed by a queue hands the lock on without those sleeps
(about 1.3x the write throughput of an 8-thread pool here). While writes are queued or
running there, a new write queues behind them rather than running first, so writes keep
their order and the loop does not race the writer thread for the lock. Reads (WAL: never
blocked by a writer) get their own threads, so a write waiting for the lock never delays
them. Each thread finishes whatever is queued before it wakes the event loop once for the lot.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from queue import Empty, SimpleQueue
from typing import Any, Protocol, TypeVar

from flytecache.errors import StorageBusyError

__all__ = ["CHECKPOINT_EVERY", "StoreThreads", "WriteLock"]

T = TypeVar("T")

log = logging.getLogger("flytecache.server")

_Item = tuple["asyncio.Future[Any]", Callable[[], Any]]
_BATCH = 32

CHECKPOINT_EVERY = 250
"""Writes run first between two checkpoints queued for the writer thread: about SQLite's own
1,000-page automatic checkpoint at the 3-5 WAL pages a put writes."""


class _Lane:
    """One queue and the threads draining it; each call runs inside ``around``."""

    def __init__(
        self, name: str, threads: int, around: AbstractContextManager[Any] | None = None
    ) -> None:
        self._around = around if around is not None else contextlib.nullcontext()
        self._queue: SimpleQueue[_Item | None] = SimpleQueue()
        self.pending = 0
        """Calls submitted and not yet answered (counted on the event loop's thread only)."""
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{n}", daemon=True)
            for n in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def submit(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.pending += 1
        self._queue.put((future, fn))
        return future

    def close(self) -> None:
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        queue = self._queue
        while True:
            item = queue.get()
            batch: list[_Item] = []
            while item is not None:
                batch.append(item)
                if len(batch) >= _BATCH:
                    break
                try:
                    item = queue.get_nowait()
                except Empty:
                    break
            done = [_run(future, fn, self._around) for future, fn in batch]
            if done:
                loop = done[0][0].get_loop()
                # A closed loop raises RuntimeError: then nobody is waiting any more.
                with contextlib.suppress(RuntimeError):
                    loop.call_soon_threadsafe(self._deliver, done)
            if item is None:
                return

    def _deliver(self, done: list[tuple[Any, ...]]) -> None:
        self.pending -= len(done)
        for future, result, error in done:
            if future.done():  # cancelled: the client went away
                continue
            if error is None:
                future.set_result(result)
            else:
                future.set_exception(error)


def _run(
    future: asyncio.Future[Any], fn: Callable[[], Any], around: AbstractContextManager[Any]
) -> tuple[Any, ...]:
    try:
        with around:
            return (future, fn(), None)
    except BaseException as error:
        return (future, None, error)


class WriteLock(Protocol):
    """A lock held around each write (``serve --workers``) that can also be tried."""

    def __enter__(self) -> object: ...

    def __exit__(self, *exc_info: object) -> None: ...

    def acquire_nowait(self) -> bool:
        """Take the lock if it is free at once; whether it was taken."""
        ...

    def release(self) -> None:
        """Release the lock taken by :meth:`acquire_nowait`."""
        ...


class StoreThreads:
    """Runs store calls on threads: ``writers`` for writes, ``readers`` for reads.

    A call may come with ``first``: the same call on connections that never wait for a lock
    (:meth:`CacheStore.nowait`), run right away on the event loop; only when it is refused
    (:class:`StorageBusyError`) does the call go to a thread. A write runs first only when no
    write of this process is queued or running, so writes keep their order and one stuck on
    the lock is not overtaken.

    ``write_lock``, when given, is held around each write (``serve --workers``: the other
    processes' writers wait on it instead of in SQLite's sleeping busy handler); a write run
    first takes it only if it is free.

    ``checkpoint``, when given, is queued for the writer thread after every
    :data:`CHECKPOINT_EVERY` writes run first. Those run on connections that never checkpoint
    (a checkpoint copies pages into the database file and syncs it: 4-5 ms every ~200 puts,
    measured, which would stall the loop), and a checkpoint run by another thread while they
    keep writing never catches up with them, so the WAL never starts over and grows without
    bound (585 MiB after 30,000 back-to-back puts, measured). Queued, the checkpoint runs
    while this process's writes wait behind it, so it completes and the next write starts the
    WAL over, as after SQLite's own automatic checkpoint.
    """

    def __init__(
        self,
        *,
        readers: int = 4,
        writers: int = 1,
        name: str = "flytecache",
        write_lock: WriteLock | None = None,
        checkpoint: Callable[[], object] | None = None,
    ) -> None:
        self._reads = _Lane(f"{name}-read", readers)
        self._writes = _Lane(f"{name}-write", writers, write_lock)
        self._write_lock = write_lock
        self._checkpoint = checkpoint
        self._first_writes = 0
        self._closed = False

    async def read(self, fn: Callable[[], T], *, first: Callable[[], T] | None = None) -> T:
        """Run ``fn`` (which only reads) on a reader thread, or ``first`` here if it can."""
        if first is not None:
            try:
                return first()
            except StorageBusyError:
                pass
        return await self._reads.submit(fn)

    async def write(self, fn: Callable[[], T], *, first: Callable[[], T] | None = None) -> T:
        """Run ``fn`` (which writes) on a writer thread, in submission order per writer, or
        ``first`` here if it can."""
        if first is not None and not self._writes.pending:
            lock = self._write_lock
            if lock is None or lock.acquire_nowait():
                try:
                    result = first()
                except StorageBusyError:
                    pass
                else:
                    self._after_first_write()
                    return result
                finally:
                    if lock is not None:
                        lock.release()
        return await self._writes.submit(fn)

    def _after_first_write(self) -> None:
        if self._checkpoint is None:
            return
        self._first_writes += 1
        if self._first_writes >= CHECKPOINT_EVERY:
            self._first_writes = 0
            self._writes.submit(self._checkpoint).add_done_callback(_checkpoint_done)

    def close(self) -> None:
        """Finish everything queued, then stop the threads (idempotent)."""
        if not self._closed:
            self._closed = True
            self._writes.close()
            self._reads.close()


def _checkpoint_done(future: asyncio.Future[Any]) -> None:
    # Nobody awaits a checkpoint; a failure is the watch's to report (it checkpoints too).
    if not future.cancelled() and future.exception() is not None:
        log.debug("checkpoint failed: %s", future.exception())
