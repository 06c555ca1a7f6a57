"""StoreThreads: store calls on the loop when they need not wait, else on threads; in order per
writer, nothing lost on close."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from flytecache.errors import StorageBusyError
from flytecache.server.threads import StoreThreads


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
