"""Process entry points for the concurrency tests (importable by spawned children)."""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

from flytecache import CacheStore, StoreSettings
from flytecache.errors import StorageBusyError


def lease_worker(path: str, owner: str, keys: list[str], cycles: int, seed: int) -> dict[str, Any]:
    """Acquire/release leases on hot keys; log the intervals during which we held one."""
    rng = random.Random(seed)
    held: list[tuple[str, int, int, bool]] = []
    busy = 0
    with CacheStore.open(path, settings=StoreSettings(max_heartbeat=timedelta(seconds=2))) as store:
        for _ in range(cycles):
            key = rng.choice(keys)
            try:
                lease = store.get_or_extend_reservation(key, owner, timedelta(seconds=1))
            except StorageBusyError:
                busy += 1
                continue
            if lease.owner_id != owner:
                continue
            start = time.monotonic_ns()
            expires_wall_ns = lease.expires_at.seconds * 10**9 + lease.expires_at.nanos
            for _ in range(rng.randrange(50)):
                pass
            end = time.monotonic_ns()
            # If we were descheduled past our own lease, someone may legitimately take over.
            overran = time.time_ns() >= expires_wall_ns
            held.append((key, start, end, overran))
            try:
                store.release_reservation(key, owner)
            except StorageBusyError:
                busy += 1
    return {"owner": owner, "held": held, "busy": busy}


def put_worker(path: str, prefix: str, count: int) -> int:
    """Put ``count`` distinct inline entries; return how many StorageBusyErrors were seen."""
    from flyteidl2.cacheservice import cacheservice_pb2 as cs
    from flyteidl2.core import literals_pb2

    busy = 0
    with CacheStore.open(path) as store:
        for i in range(count):
            literals = literals_pb2.LiteralMap()
            literals.literals["o"].scalar.primitive.string_value = f"{prefix}-{i}"
            try:
                store.put(f"{prefix}-{i}", cs.CachedOutput(output_literals=literals))
            except StorageBusyError:
                busy += 1
    return busy


def open_worker(path: str, barrier: Any) -> str:
    """Open a (brand-new) database at the same moment as the other workers."""
    barrier.wait()
    with CacheStore.open(path) as store:
        store.get_or_extend_reservation("k", "o")
    return "ok"
