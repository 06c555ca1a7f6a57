"""StoreThreads: store calls off the event loop, in order per writer, nothing lost on close."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

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
