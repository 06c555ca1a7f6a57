"""Holding a reservation while computing: owner ids, the shortest safe heartbeat, and the
heartbeat thread that keeps a lease alive until it is released (at the latest when the process
exits normally)."""

from __future__ import annotations

import atexit
import logging
import os
import socket
import threading
import uuid
from datetime import timedelta
from typing import Protocol

from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache.errors import FlyteCacheError, InvalidArgumentError

__all__ = ["MIN_HEARTBEAT", "Lease", "LeaseHolder", "check_heartbeat", "new_owner_id"]

log = logging.getLogger("flytecache.client")


def new_owner_id() -> str:
    """A reservation owner id unique to this call: ``<host>-<pid>-<12 hex digits>``."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"


MIN_HEARTBEAT = timedelta(milliseconds=100)
"""The shortest heartbeat a waiting loop accepts: a lease then lives at least 0.3 s (with the
default grace multiplier), longer than a database round trip under load. Shorter ones would let
a second owner take over a lease whose owner is alive, silently undoing serialization."""


def check_heartbeat(heartbeat_interval: object, field: str = "heartbeat_interval") -> None:
    """:class:`InvalidArgumentError` unless ``heartbeat_interval`` is a timedelta of at least
    :data:`MIN_HEARTBEAT`."""
    if not isinstance(heartbeat_interval, timedelta) or heartbeat_interval < MIN_HEARTBEAT:
        raise InvalidArgumentError(
            f"{field} must be a timedelta of at least {MIN_HEARTBEAT.total_seconds():g} s, "
            f"got {heartbeat_interval!r}",
            field=field,
        )


class LeaseHolder(Protocol):
    """What a :class:`Lease` extends and releases: one key's reservations (a
    :class:`~flytecache.slots.CacheSlot`)."""

    def get_or_extend_reservation(
        self, owner_id: str, heartbeat_interval: timedelta | None = None
    ) -> cs.Reservation: ...

    def release_reservation(self, owner_id: str) -> None: ...


class Lease:
    """A reservation held by ``owner_id``, kept alive from a daemon heartbeat thread.

    The thread extends the lease every ``heartbeat_interval`` of the reservation (as granted
    by the store, SPEC §4) until :meth:`release`. A failed heartbeat is logged and retried: the
    lease survives ``grace_multiplier`` missed beats.
    """

    def __init__(self, slot: LeaseHolder, owner_id: str, reservation: cs.Reservation) -> None:
        self.slot = slot
        self.owner_id = owner_id
        self.reservation = reservation
        self._stop = threading.Event()
        self._released = False
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="flytecache-heartbeat", daemon=True)
        with _live_leases_lock:
            _live_leases.add(self)
        self._thread.start()

    def _run(self) -> None:
        requested = self.reservation.heartbeat_interval.ToTimedelta()
        interval = requested.total_seconds() or 1.0
        while not self._stop.wait(interval):
            try:
                lease = self.slot.get_or_extend_reservation(self.owner_id, requested)
            except FlyteCacheError as error:  # keep trying: the lease has grace periods left
                log.warning("heartbeat for %s failed: %s", self.owner_id, error)
                continue
            if lease.owner_id != self.owner_id:
                log.warning("reservation lost to %s while computing", lease.owner_id)

    def release(self) -> None:
        """Stop the heartbeat, then release the reservation (idempotent, never raises)."""
        with self._lock:
            if self._released:
                return
            self._released = True
        with _live_leases_lock:
            _live_leases.discard(self)
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        try:
            self.slot.release_reservation(self.owner_id)
        except FlyteCacheError as error:  # the lease expires by itself anyway
            log.warning("could not release reservation for %s: %s", self.owner_id, error)


_live_leases: set[Lease] = set()
_live_leases_lock = threading.Lock()


@atexit.register
def _release_live_leases() -> None:
    # An owner interrupted (Ctrl-C, sys.exit) while it computes lets the next one in at once
    # instead of after the lease's grace period. A SIGKILLed owner still relies on expiry.
    with _live_leases_lock:
        leases = list(_live_leases)
    for lease in leases:
        lease.release()
