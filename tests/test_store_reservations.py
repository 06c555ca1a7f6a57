"""CacheStore reservations, row by row against SPEC §4: arguments and heartbeat, the decision
table (acquire, extend, take over, held by another) and release.

Every time comes from the injected ``clock`` so boundaries are checked to the microsecond.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from _store import GRACE, MAX_HB, US, check_error, dur, lease, lease_rows
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache import CacheStore, StoreSettings
from flytecache.errors import InvalidArgumentError
from flytecache.store import ReservationOutcome

# -- Reservations: arguments and heartbeat -------------------------------------------------------


@pytest.mark.parametrize(("key", "owner", "field"), [("", "o", "key"), ("k", "", "owner_id")])
@pytest.mark.parametrize("method", ["get_or_extend_reservation", "release_reservation"])
def test_reservation_empty_key_or_owner_is_invalid_argument(
    store: CacheStore, method: str, key: str, owner: str, field: str
):
    with pytest.raises(InvalidArgumentError) as info:
        getattr(store, method)(key, owner)
    check_error(info.value, "INVALID_ARGUMENT")
    assert info.value.field == field
    assert lease_rows(store) == []


@pytest.mark.parametrize(
    ("requested", "effective"),
    [
        pytest.param(None, MAX_HB, id="absent"),
        pytest.param(timedelta(0), MAX_HB, id="zero"),
        pytest.param(timedelta(seconds=-5), MAX_HB, id="negative"),
        pytest.param(-US, MAX_HB, id="minus-1us"),
        pytest.param(MAX_HB, MAX_HB, id="equal-to-max"),
        pytest.param(MAX_HB + US, MAX_HB, id="max-plus-1us"),
        pytest.param(timedelta(days=365), MAX_HB, id="far-too-large"),
        pytest.param(timedelta.max, MAX_HB, id="timedelta-max"),
        pytest.param(timedelta.min, MAX_HB, id="timedelta-min"),
        pytest.param(US, US, id="1us"),
        pytest.param(MAX_HB - US, MAX_HB - US, id="max-minus-1us"),
        pytest.param(
            timedelta(seconds=2, microseconds=345678),
            timedelta(seconds=2, microseconds=345678),
            id="in-range",
        ),
    ],
)
def test_heartbeat_clamp_and_expiry(
    store: CacheStore, clock, requested: timedelta | None, effective: timedelta
):
    got, outcome = store.get_or_extend_reservation("k", "owner", requested, with_outcome=True)
    assert outcome is ReservationOutcome.ACQUIRED
    assert got == lease("k", "owner", effective, clock.now + effective * GRACE)


@pytest.mark.parametrize(
    ("requested", "effective"),
    [
        (None, timedelta(seconds=2, microseconds=2)),
        (timedelta(seconds=3), timedelta(seconds=2, microseconds=2)),
        (timedelta(seconds=1, microseconds=2), timedelta(seconds=1, microseconds=2)),
    ],
)
def test_heartbeat_with_custom_settings(
    db_url: str, clock, requested: timedelta | None, effective: timedelta
):
    settings = StoreSettings(
        max_heartbeat=timedelta(seconds=2, microseconds=2), grace_multiplier=2.5
    )
    with CacheStore.open(db_url, settings=settings, clock=clock) as custom:
        got = custom.get_or_extend_reservation("k", "owner", requested)
    # Multiples chosen so hb × 2.5 is a whole number of microseconds (no rounding question).
    assert got == lease("k", "owner", effective, clock.now + effective * 5 / 2)


def test_grace_multiplier_one(db_url: str, clock):
    settings = StoreSettings(max_heartbeat=timedelta(minutes=1), grace_multiplier=1)
    with CacheStore.open(db_url, settings=settings, clock=clock) as custom:
        got = custom.get_or_extend_reservation("k", "owner", timedelta(seconds=7, microseconds=1))
        hb = timedelta(seconds=7, microseconds=1)
        assert got == lease("k", "owner", hb, clock.now + hb)
        # With grace 1 the lease is free for others exactly one heartbeat later.
        clock.advance(hb)
        _, outcome = custom.get_or_extend_reservation("k", "other", with_outcome=True)
        assert outcome is ReservationOutcome.TAKEN_OVER


def test_heartbeat_must_be_a_timedelta(store: CacheStore):
    with pytest.raises(InvalidArgumentError) as info:
        store.get_or_extend_reservation("k", "owner", 5, with_outcome=True)  # type: ignore[arg-type]
    assert info.value.field == "heartbeat_interval"


# -- Reservations: the decision table ------------------------------------------------------------


def test_no_lease_creates_one(store: CacheStore, clock):
    hb = timedelta(seconds=1)
    got, outcome = store.get_or_extend_reservation("k", "owner-a", hb, with_outcome=True)
    assert outcome is ReservationOutcome.ACQUIRED
    assert got == lease("k", "owner-a", hb, clock.now + hb * GRACE)
    assert [row[:2] for row in lease_rows(store)] == [("k", "owner-a")]


def test_get_or_extend_reservation_returns_the_reservation_only(store: CacheStore, clock):
    got = store.get_or_extend_reservation("k", "owner-a", timedelta(seconds=1))
    assert isinstance(got, cs.Reservation)
    assert got == lease("k", "owner-a", timedelta(seconds=1), clock.now + timedelta(seconds=3))


def test_own_live_lease_is_extended(store: CacheStore, clock):
    store.get_or_extend_reservation("k", "owner-a", timedelta(seconds=1), with_outcome=True)
    now = clock.advance(timedelta(seconds=2, microseconds=999999))  # 1µs before expiry
    got, outcome = store.get_or_extend_reservation(
        "k", "owner-a", timedelta(seconds=2), with_outcome=True
    )
    assert outcome is ReservationOutcome.EXTENDED
    # New heartbeat and a new expires_at counted from now.
    assert got == lease("k", "owner-a", timedelta(seconds=2), now + timedelta(seconds=6))


def test_own_lease_extended_at_the_same_instant(store: CacheStore, clock):
    store.get_or_extend_reservation("k", "owner-a", timedelta(seconds=1), with_outcome=True)
    got, outcome = store.get_or_extend_reservation(
        "k", "owner-a", timedelta(seconds=1), with_outcome=True
    )
    assert outcome is ReservationOutcome.EXTENDED
    assert got == lease("k", "owner-a", timedelta(seconds=1), clock.now + timedelta(seconds=3))


@pytest.mark.parametrize("late", [timedelta(0), US, timedelta(days=1)])
def test_own_expired_lease_is_extended(store: CacheStore, clock, late: timedelta):
    store.get_or_extend_reservation("k", "owner-a", timedelta(seconds=1), with_outcome=True)
    now = clock.advance(timedelta(seconds=3) + late)  # expires_at <= now
    got, outcome = store.get_or_extend_reservation(
        "k", "owner-a", timedelta(seconds=1), with_outcome=True
    )
    assert outcome is ReservationOutcome.EXTENDED
    assert got == lease("k", "owner-a", timedelta(seconds=1), now + timedelta(seconds=3))


@pytest.mark.parametrize("late", [timedelta(0), US, timedelta(days=1)])
def test_others_expired_lease_is_taken_over(store: CacheStore, clock, late: timedelta):
    store.get_or_extend_reservation("k", "owner-a", timedelta(seconds=1), with_outcome=True)
    now = clock.advance(timedelta(seconds=3) + late)  # late == 0: expires_at == now exactly
    got, outcome = store.get_or_extend_reservation(
        "k", "owner-b", timedelta(seconds=2), with_outcome=True
    )
    assert outcome is ReservationOutcome.TAKEN_OVER
    assert got == lease("k", "owner-b", timedelta(seconds=2), now + timedelta(seconds=6))

    # The previous holder now sees the new holder's lease and cannot release it.
    seen, outcome = store.get_or_extend_reservation(
        "k", "owner-a", timedelta(seconds=1), with_outcome=True
    )
    assert outcome is ReservationOutcome.HELD_BY_OTHER
    assert seen == got
    assert store.release_reservation("k", "owner-a") is False
    assert store.get_or_extend_reservation("k", "owner-c", with_outcome=True)[0] == got


def test_others_live_lease_is_returned_unchanged(store: CacheStore, clock):
    hb = timedelta(seconds=1, microseconds=5)
    held, _ = store.get_or_extend_reservation("k", "owner-a", hb, with_outcome=True)
    before = lease_rows(store)
    clock.advance(hb * GRACE - US)  # expires_at == now + 1µs: still live
    got, outcome = store.get_or_extend_reservation(
        "k", "owner-b", timedelta(seconds=7), with_outcome=True
    )
    assert outcome is ReservationOutcome.HELD_BY_OTHER
    # The holder's owner, heartbeat and expires_at, not the requester's.
    assert got == held
    assert got.owner_id == "owner-a"
    assert got.heartbeat_interval == dur(hb)
    assert got.key == "k"
    assert store.get_or_extend_reservation("k", "owner-b") == held
    assert lease_rows(store) == before


def test_others_lease_becomes_takeable_exactly_at_expiry(store: CacheStore, clock):
    held, _ = store.get_or_extend_reservation(
        "k", "owner-a", timedelta(seconds=1), with_outcome=True
    )
    clock.advance(timedelta(seconds=3) - US)
    assert store.get_or_extend_reservation("k", "owner-b", with_outcome=True) == (
        held,
        ReservationOutcome.HELD_BY_OTHER,
    )
    clock.advance(US)
    assert (
        store.get_or_extend_reservation("k", "owner-b", with_outcome=True)[1]
        is ReservationOutcome.TAKEN_OVER
    )


def test_leases_on_different_keys_are_independent(store: CacheStore):
    assert (
        store.get_or_extend_reservation("k1", "owner-a", with_outcome=True)[1]
        is ReservationOutcome.ACQUIRED
    )
    assert (
        store.get_or_extend_reservation("k2", "owner-b", with_outcome=True)[1]
        is ReservationOutcome.ACQUIRED
    )
    assert (
        store.get_or_extend_reservation("k1", "owner-b", with_outcome=True)[0].owner_id == "owner-a"
    )
    assert (
        store.get_or_extend_reservation("k2", "owner-a", with_outcome=True)[0].owner_id == "owner-b"
    )


def test_reservation_key_is_the_key_given(store: CacheStore, clock):
    key = "reservation:proj-dev-abc+/="
    assert store.get_or_extend_reservation(key, "owner-a", with_outcome=True)[0].key == key
    assert (
        store.get_or_extend_reservation(key, "owner-b", with_outcome=True)[0].key == key
    )  # held by other
    clock.advance(timedelta(minutes=1))
    assert (
        store.get_or_extend_reservation(key, "owner-b", with_outcome=True)[0].key == key
    )  # taken over


def test_reservation_owner_ids_are_compared_exactly(store: CacheStore):
    store.get_or_extend_reservation("k", "owner", with_outcome=True)
    got, outcome = store.get_or_extend_reservation("k", "Owner", with_outcome=True)
    assert outcome is ReservationOutcome.HELD_BY_OTHER
    assert got.owner_id == "owner"
    assert store.release_reservation("k", "owner ") is False


# -- Release ------------------------------------------------------------------------------------


def test_release_by_non_owner_is_a_no_op(store: CacheStore):
    held, _ = store.get_or_extend_reservation("k", "owner-a", with_outcome=True)
    before = lease_rows(store)
    assert store.release_reservation("k", "owner-b") is False
    assert store.release_reservation("k", "owner-b") is False
    assert lease_rows(store) == before
    assert store.get_or_extend_reservation("k", "owner-c", with_outcome=True) == (
        held,
        ReservationOutcome.HELD_BY_OTHER,
    )


def test_release_missing_is_a_no_op(store: CacheStore):
    assert store.release_reservation("k", "owner-a") is False
    assert store.release_reservation("k", "owner-a") is False
    assert lease_rows(store) == []


def test_release_by_owner_frees_the_lease(store: CacheStore, clock):
    store.get_or_extend_reservation("k", "owner-a", with_outcome=True)
    assert store.release_reservation("k", "owner-a") is True
    assert lease_rows(store) == []
    assert store.release_reservation("k", "owner-a") is False  # already gone
    got, outcome = store.get_or_extend_reservation(
        "k", "owner-b", timedelta(seconds=1), with_outcome=True
    )
    # A fresh acquisition, not a takeover: the old lease is gone.
    assert outcome is ReservationOutcome.ACQUIRED
    assert got == lease("k", "owner-b", timedelta(seconds=1), clock.now + timedelta(seconds=3))


def test_release_reservation_by_owner_frees_the_lease(store: CacheStore):
    store.get_or_extend_reservation("k", "owner-a", with_outcome=True)
    assert store.release_reservation("k", "owner-a") is True
    assert (
        store.get_or_extend_reservation("k", "owner-b", with_outcome=True)[1]
        is ReservationOutcome.ACQUIRED
    )


def test_owner_may_release_its_expired_lease(store: CacheStore, clock):
    store.get_or_extend_reservation("k", "owner-a", timedelta(seconds=1), with_outcome=True)
    clock.advance(timedelta(hours=1))
    assert store.release_reservation("k", "owner-a") is True
