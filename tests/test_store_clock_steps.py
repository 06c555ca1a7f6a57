"""SQLite and the host clock: what a step of it (an NTP correction) does to live leases.

On SQLite every process using the database runs on the one host that has the file (network
filesystems are refused), so they all read one clock and a step moves them all at once. Each
decision reads that clock once inside its ``BEGIN IMMEDIATE`` transaction, so the database
never holds two owners for a key; what a step changes is *when* a lease counts as expired.
The store's injected clock plays the host clock; two stores on one file play two processes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta

import pytest
from _store import GRACE, uri_output
from conftest import FakeClock

from flytecache import CacheStore
from flytecache.errors import AlreadyExistsError

HB = timedelta(seconds=10)
LEASE = HB * GRACE  # 30 s: a lease expires this long after its last extension
SAFE_STEP = HB * (GRACE - 1)  # 20 s: the largest forward step a heartbeating holder survives


@pytest.fixture
def two(db_path: str, clock: FakeClock) -> Iterator[tuple[CacheStore, CacheStore]]:
    """Two stores on one SQLite file sharing one clock: two processes on one host."""
    with CacheStore.open(db_path, clock=clock) as a, CacheStore.open(db_path, clock=clock) as b:
        yield a, b


def _holder(store: CacheStore, owner: str) -> str:
    return store.get_or_extend_reservation("key", owner, HB).owner_id


@pytest.mark.parametrize(
    ("step", "survives"),
    [(SAFE_STEP, True), (SAFE_STEP + timedelta(microseconds=1), False)],
    ids=["step-within-heartbeat-x-(grace-1)", "step-beyond"],
)
def test_forward_step_and_a_heartbeating_holder(
    two: tuple[CacheStore, CacheStore], clock: FakeClock, step: timedelta, survives: bool
) -> None:
    """A forward step makes every live lease closer to its expiry by the step. A holder that
    heartbeats every ``HB`` keeps its lease through any step up to ``HB × (grace − 1)``;
    past that, another owner can take it over just before the holder's next heartbeat, and
    that heartbeat answers with the new holder (the old one learns it lost the lease)."""
    a, b = two
    assert _holder(a, "A") == "A"
    clock.advance(HB)
    assert _holder(a, "A") == "A"  # a heartbeat on time: expires 30 s from now
    clock.advance(step)  # the NTP correction
    assert _holder(b, "B") == "A"
    clock.advance(HB - timedelta(microseconds=1))  # just before A's next heartbeat
    if survives:
        assert _holder(b, "B") == "A"
        assert _holder(a, "A") == "A"  # the heartbeat extends as usual
    else:
        assert _holder(b, "B") == "B"  # taken over: the step ate A's margin
        assert _holder(a, "A") == "B"  # A's heartbeat says who holds it now
        assert not a.release_reservation("key", "A")  # and A cannot release B's lease
        assert _holder(b, "B") == "B"


def test_a_large_forward_step_expires_live_leases_at_once(
    two: tuple[CacheStore, CacheStore], clock: FakeClock
) -> None:
    a, b = two
    assert _holder(a, "A") == "A"
    clock.advance(timedelta(minutes=5))
    assert _holder(b, "B") == "B"
    assert _holder(a, "A") == "B"


def test_backward_step_lengthens_leases_and_never_lets_two_hold(
    two: tuple[CacheStore, CacheStore], clock: FakeClock
) -> None:
    """A backward step makes every live lease last longer by the step: nobody can take over
    a lease early (no overlap), but a holder that died just before it is replaced only after
    its lease *plus the step*. A holder still heartbeating is unaffected: each extension
    runs ``HB × grace`` from the new "now"."""
    a, b = two
    step = timedelta(minutes=1)
    lease = a.get_or_extend_reservation("key", "A", HB)
    clock.advance(-step)  # the NTP correction; then A dies without releasing
    clock.advance(LEASE + step - timedelta(microseconds=1))  # the lease's life plus the step
    held = b.get_or_extend_reservation("key", "B", HB)
    assert held.owner_id == "A" and held.expires_at == lease.expires_at
    clock.advance(timedelta(microseconds=1))  # now the clock reaches the old expiry
    assert _holder(b, "B") == "B"


def test_backward_step_with_a_live_holder(
    two: tuple[CacheStore, CacheStore], clock: FakeClock
) -> None:
    a, b = two
    first = a.get_or_extend_reservation("key", "A", HB)
    clock.advance(-timedelta(minutes=1))
    renewed = a.get_or_extend_reservation("key", "A", HB)
    # The extension counts from the stepped clock, so its expiry moves earlier by the step;
    # it is still LEASE ahead of "now", and the holder keeps renewing it as usual.
    assert renewed.owner_id == "A"
    assert renewed.expires_at.ToDatetime() == first.expires_at.ToDatetime() - timedelta(minutes=1)
    clock.advance(LEASE - timedelta(microseconds=1))
    assert _holder(b, "B") == "A"


def test_steps_and_entry_ages(two: tuple[CacheStore, CacheStore], clock: FakeClock) -> None:
    """Entry ages move with the clock too: after a forward step an entry looks older by the
    step (an age limit replaces it sooner); after a backward step it looks younger, even
    written "in the future", and an age limit replaces it later by the step."""
    a, b = two
    a.put("entry", uri_output("s3://b/1"))
    clock.advance(-timedelta(minutes=1))
    with pytest.raises(AlreadyExistsError):
        b.put("entry", uri_output("s3://b/2"), max_age=timedelta(seconds=30))
    clock.advance(timedelta(minutes=1, seconds=30, microseconds=1))
    b.put("entry", uri_output("s3://b/2"), max_age=timedelta(seconds=30))
    clock.advance(timedelta(minutes=10))  # forward: the entry is now over any short limit
    a.put("entry", uri_output("s3://b/3"), max_age=timedelta(minutes=5))
    assert b.get("entry").output_uri == "s3://b/3"
