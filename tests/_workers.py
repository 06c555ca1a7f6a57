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


def skewed_lease_worker(
    url: str,
    process: int,
    offset: timedelta,
    keys: list[str],
    start: Any,
    seconds: float,
    lease_clock: str,
) -> dict[str, Any]:
    """Three threads in one process whose host clock is off by ``offset`` (the store's
    injected clock), started together by the ``start`` barrier and running for ``seconds``,
    each heartbeating leases on hot keys every 50–200 ms; a holder releases,
    or crashes and leaves its lease to expire (the thread goes on as a new owner: a crashed
    owner never touches the key again).

    Returns ``(key, start, end, owner, how)`` for each interval during which an owner
    believed it held a key, in microseconds of the machine's real clock (the database
    server's: it runs on this machine): from receiving the grant to sending the release, cut
    at the expiry of the last extension received.
    """
    import threading
    from datetime import UTC, datetime

    intervals: list[tuple[str, int, int, str, str]] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()
    settings = StoreSettings(lease_clock=lease_clock)  # type: ignore[arg-type]
    shift_us = 0  # a host clock's expiries are off the real clock by its offset

    def skewed() -> datetime:
        return datetime.now(UTC) + offset

    def real_us() -> int:
        return time.time_ns() // 1000

    def expires_us(lease: Any) -> int:
        expires = lease.expires_at.seconds * 10**6 + lease.expires_at.nanos // 1000
        return int(expires - shift_us)

    def owner_loop(store: CacheStore, name: str, seed: int) -> None:
        rng = random.Random(seed)
        mine: list[tuple[str, int, int, str, str]] = []
        counts: dict[str, int] = {}
        generation = 0

        def reserve(key: str, owner: str, hb: timedelta) -> tuple[Any, str]:
            lease, outcome = store.get_or_extend_reservation(key, owner, hb, with_outcome=True)
            counts[outcome.value] = counts.get(outcome.value, 0) + 1
            return lease, outcome.value

        while time.monotonic() < stop_at:
            owner = f"{name}-{generation}"
            key = rng.choice(keys)
            hb = timedelta(milliseconds=rng.randint(50, 200))
            lease_us = hb // timedelta(microseconds=1) * 3
            lease, how = reserve(key, owner, hb)
            if lease.owner_id != owner:
                time.sleep(rng.uniform(0.005, 0.03))
                continue
            start, claim_end = real_us(), expires_us(lease)
            end: int | None = None
            for _ in range(rng.randint(0, 2)):
                time.sleep(hb.total_seconds())
                sent = real_us()
                lease, outcome = reserve(key, owner, hb)
                if lease.owner_id != owner:  # lost it: this heartbeat came too late
                    end, how = min(sent, claim_end), how + ",lost"
                    break
                granted_at = expires_us(lease) - lease_us  # the statement's "now"
                if granted_at >= claim_end:  # extended after it had expired: a new holding
                    mine.append((key, start, claim_end, owner, how + ",late"))
                    start, how = real_us(), "late-" + outcome
                claim_end = expires_us(lease)
            if end is None and rng.random() < 0.3:
                end, how = claim_end, how + ",crashed"
                generation += 1
            elif end is None:
                end, how = min(real_us(), claim_end), how + ",released"
                store.release_reservation(key, owner)
            mine.append((key, start, end, owner, how))
        with lock:
            # A grant received after its own expiry was never held.
            intervals.extend(interval for interval in mine if interval[2] > interval[1])
            for outcome_name, count in counts.items():
                outcomes[outcome_name] = outcomes.get(outcome_name, 0) + count

    with CacheStore.open(url, settings=settings, clock=skewed) as store:
        measured_skew_us = store.now_us() - real_us()
        if store.lease_clock == "host":
            shift_us = offset // timedelta(microseconds=1)
        start.wait()
        stop_at = time.monotonic() + seconds
        threads = [
            threading.Thread(target=owner_loop, args=(store, f"p{process}-t{t}", process * 10 + t))
            for t in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        lease_clock_used = store.lease_clock
    return {
        "intervals": intervals,
        "outcomes": outcomes,
        "skew_us": measured_skew_us,
        "lease_clock": lease_clock_used,
    }


def flip_worker(path: str, key: str, rounds: int, started: Any) -> int:
    """Rewrite ``key`` ``rounds`` times through its three states: a small inline payload, a
    spilled one (over SPILL_BYTES, in ``outputs``) and no entry. Version ``i``'s value is
    ``"<i>:"`` padded to its size class. Returns the number of rewrites."""
    from flyteidl2.cacheservice import cacheservice_pb2 as cs
    from flyteidl2.core import literals_pb2

    from flytecache.store.codec import SPILL_BYTES

    with CacheStore.open(path) as store:
        started.set()
        for i in range(rounds):
            if i % 3 == 2:
                store.delete(key)
                continue
            literals = literals_pb2.LiteralMap()
            text = f"{i}:".ljust(SPILL_BYTES * 2 if i % 3 == 1 else 10, "x")
            literals.literals["o"].scalar.primitive.string_value = text
            store.put(key, cs.CachedOutput(output_literals=literals), overwrite=True)
    return rounds


def skewed_entry_worker(
    url: str, offset: timedelta, lease_clock: str, own: str, fresh: str, old: str
) -> dict[str, Any]:
    """A process whose host clock (``time.time``/``time.time_ns``) is off by ``offset``.

    Writes ``own`` between two readings of the database's clock; then, for two entries
    another process wrote, makes ``fresh`` 0 s and ``old`` 3 s old by the database's clock
    (set in SQL, a moment before) and puts each again with ``max_age=1.5s``. Returns the
    measured skew, the readings, the times ``own`` got, the clock's error bound, and for the
    two puts ``"replaced"`` or ``"exists"``.
    """
    import sqlalchemy as sa

    from flytecache.errors import AlreadyExistsError
    from flytecache.store.cache import database_now
    from flytecache.store.models import Entry

    real_ns = time.time_ns
    shift_ns = offset // timedelta(microseconds=1) * 1000
    time.time_ns = lambda: real_ns() + shift_ns
    time.time = lambda: (real_ns() + shift_ns) / 1e9

    from flyteidl2.cacheservice import cacheservice_pb2 as cs

    def us(ts: Any) -> int:
        return int(ts.seconds * 10**6 + ts.nanos // 1000)

    entries = Entry.__table__
    settings = StoreSettings(lease_clock=lease_clock)  # type: ignore[arg-type]
    out: dict[str, Any] = {}
    with CacheStore.open(url, settings=settings) as store:

        def database_us() -> int:  # whichever clock the store uses
            with store.engine.connect() as conn:
                return int(conn.execute(sa.select(database_now())).scalar_one())

        out["skew_us"] = time.time_ns() // 1000 - database_us()
        out["before"] = database_us()
        store.put(own, cs.CachedOutput(output_uri="s3://b/own"))
        out["after"] = database_us()
        meta = store.get(own).metadata
        out["created"], out["updated"] = us(meta.created_at), us(meta.last_updated_at)
        out["error_us"] = store.clock_error_us()
        ages = {fresh: 0, old: 3_000_000}
        with store.engine.begin() as conn:
            for key, age in ages.items():
                conn.execute(
                    sa.update(entries)  # type: ignore[arg-type]
                    .where(entries.c.key == key)
                    .values(last_updated_at=database_now() - age)
                )
        for key, name in ((fresh, "fresh"), (old, "old")):
            try:
                store.put(
                    key, cs.CachedOutput(output_uri="s3://b/new"), max_age=timedelta(seconds=1.5)
                )
                out[name] = "replaced"
            except AlreadyExistsError:
                out[name] = "exists"
    return out
