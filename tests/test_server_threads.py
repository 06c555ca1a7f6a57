"""StoreThreads: store calls on the loop when they need not wait, else on threads; in order per
writer, nothing lost on close."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache import CacheStore
from flytecache.errors import StorageBusyError
from flytecache.server.threads import CHECKPOINT_EVERY, StoreThreads
from flytecache.store.admin import wal_state


def test_calls_run_off_the_loop_and_results_and_errors_come_back() -> None:
    threads = StoreThreads(readers=2, writers=1)

    async def main() -> None:
        loop_thread = threading.get_ident()
        assert await threads.read(threading.get_ident) != loop_thread
        assert await threads.write(threading.get_ident) != loop_thread
        assert await threads.read(lambda: 42) == 42
        with pytest.raises(KeyError):
            await threads.write(lambda: {}["missing"])

    try:
        asyncio.run(main())
    finally:
        threads.close()
        threads.close()


def test_one_writer_keeps_order_and_a_slow_write_does_not_block_reads() -> None:
    threads = StoreThreads(readers=2, writers=1)
    order: list[int] = []
    release = threading.Event()

    async def main() -> None:
        slow = asyncio.ensure_future(threads.write(lambda: release.wait(10)))
        writes = [
            asyncio.ensure_future(threads.write(lambda i=i: order.append(i))) for i in range(50)
        ]
        # The reads are answered while the writer is stuck.
        assert await asyncio.wait_for(threads.read(lambda: "read"), 5) == "read"
        assert not slow.done()
        release.set()
        await asyncio.gather(slow, *writes)

    try:
        asyncio.run(main())
    finally:
        threads.close()
    assert order == list(range(50))


def test_close_finishes_queued_work() -> None:
    threads = StoreThreads(readers=1, writers=1)
    done: list[int] = []

    async def main() -> None:
        # Submitted, then abandoned: the loop closes before the results come back.
        pending = [
            asyncio.ensure_future(threads.write(lambda i=i: (time.sleep(0.001), done.append(i))))
            for i in range(20)
        ]
        await asyncio.sleep(0)
        assert not all(task.done() for task in pending)

    asyncio.run(main())
    threads.close()
    assert done == list(range(20))


def test_first_runs_on_the_loop_and_a_refused_call_goes_to_a_thread() -> None:
    threads = StoreThreads(readers=1, writers=1)

    def refused() -> int:
        raise StorageBusyError("would wait")

    async def main() -> None:
        loop_thread = threading.get_ident()
        here = threading.get_ident
        assert await threads.read(here, first=here) == loop_thread
        assert await threads.write(here, first=here) == loop_thread
        assert await threads.read(here, first=refused) != loop_thread
        assert await threads.write(here, first=refused) != loop_thread
        with pytest.raises(KeyError):  # any other error is the answer
            await threads.write(here, first=lambda: {}["missing"])

    try:
        asyncio.run(main())
    finally:
        threads.close()


def test_a_write_is_not_run_first_while_writes_are_queued() -> None:
    threads = StoreThreads(readers=1, writers=1)
    order: list[str] = []
    release = threading.Event()

    async def main() -> None:
        stuck = asyncio.ensure_future(threads.write(lambda: release.wait(10)))
        await asyncio.sleep(0)
        # Behind the stuck write, a write keeps its turn; a read is still answered first.
        queued = asyncio.ensure_future(
            threads.write(lambda: order.append("thread"), first=lambda: order.append("loop"))
        )
        assert await threads.read(lambda: "thread", first=lambda: "loop") == "loop"
        release.set()
        await asyncio.gather(stuck, queued)
        # Nothing queued any more: the next write runs first.
        await threads.write(lambda: order.append("thread"), first=lambda: order.append("loop"))

    try:
        asyncio.run(main())
    finally:
        threads.close()
    assert order == ["thread", "loop"]


class _HeldElsewhere:
    """A write lock another process holds: it cannot be taken without waiting."""

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        pass

    def acquire_nowait(self) -> bool:
        return False

    def release(self) -> None:  # pragma: no cover - never taken
        raise AssertionError("released a lock that was not taken")


def test_a_write_lock_held_elsewhere_sends_the_write_to_its_thread() -> None:
    threads = StoreThreads(readers=1, writers=1, write_lock=_HeldElsewhere())

    async def main() -> None:
        loop_thread = threading.get_ident()
        here = threading.get_ident
        assert await threads.write(here, first=here) != loop_thread

    try:
        asyncio.run(main())
    finally:
        threads.close()


def test_writes_run_first_are_checkpointed_on_the_writer_thread(tmp_path: Path) -> None:
    # Back-to-back writes on connections that never checkpoint: without the queued
    # checkpoints the WAL never starts over (hundreds of MiB after 30,000 puts).
    checkpoints: list[int] = []
    with CacheStore.open(tmp_path / "cache.db") as store:
        now = store.nowait()

        def checkpoint() -> None:
            checkpoints.append(threading.get_ident())
            wal_state(store.engine)

        threads = StoreThreads(readers=1, writers=1, checkpoint=checkpoint)
        output = cs.CachedOutput(output_uri="s3://bucket/outputs.pb")

        async def main() -> None:
            for i in range(10 * CHECKPOINT_EVERY):
                key = f"k-{i}-" + "x" * 100
                await threads.write(
                    lambda k=key: store.put(k, output), first=lambda k=key: now.put(k, output)
                )

        try:
            asyncio.run(main())
        finally:
            threads.close()
        assert len(checkpoints) >= 9
        assert threading.get_ident() not in checkpoints
        # Ten checkpoints' worth of writes, and the WAL holds about one of them.
        assert wal_state(store.engine).frames <= 3 * 1000
