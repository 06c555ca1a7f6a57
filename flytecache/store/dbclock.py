"""The database's clock on the host: PostgreSQL's time, read once, carried forward by a
monotonic clock, so that entry times follow the database without a round trip per put."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["MAX_DRIFT_PPM", "RESAMPLE_NS", "DatabaseClock", "Sample", "host_monotonic_ns"]

RESAMPLE_NS = 30 * 10**9
"""How often a new sample is taken (by the next reading after it is due: one extra round trip
per 30 s), so that the drift since the sample stays small."""
MAX_DRIFT_PPM = 500
"""The most the host's monotonic clock may run fast or slow against the database server's:
the largest frequency correction Linux applies while NTP slews (``adjtimex``, ±500 ppm).
Real drift is far smaller; this is the bound the error estimate assumes."""
_SAMPLES_AT_START = 3


def _boottime_ns() -> int:
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)


# CLOCK_BOOTTIME is CLOCK_MONOTONIC that also counts a suspend: neither is ever stepped
# (NTP only slews them), but after a laptop or VM resumes a plain monotonic clock would be
# behind the database by the time it slept, until the next sample.
host_monotonic_ns: Callable[[], int] = (
    _boottime_ns if hasattr(time, "CLOCK_BOOTTIME") else time.monotonic_ns
)


@dataclass(frozen=True, slots=True)
class Sample:
    """One reading of the database's clock between two readings of the monotonic clock."""

    database_us: int
    """The database's time (``statement_timestamp()``), in microseconds since the epoch."""
    sent_ns: int
    """The monotonic clock just before the query was sent."""
    received_ns: int
    """The monotonic clock just after its answer arrived."""

    @property
    def round_trip_ns(self) -> int:
        """How long the query took: the database's reading lies somewhere inside it."""
        return self.received_ns - self.sent_ns

    @property
    def offset_ns(self) -> int:
        """Database time minus monotonic time, taking the reading at the round trip's middle."""
        return self.database_us * 1000 - (self.sent_ns + self.received_ns) // 2

    def error_ns(self, at_ns: int) -> int:
        """The most the database time derived from this sample can be off at monotonic time
        ``at_ns``: half the round trip (the reading's position in it is unknown), the drift
        since, and the microsecond the database rounds to."""
        drift = max(0, at_ns - self.received_ns) * MAX_DRIFT_PPM // 10**6
        return self.round_trip_ns // 2 + drift + 1000


class DatabaseClock:
    """Now by the database server's clock, at the cost of a round trip every 30 s.

    ``read(timer)`` runs the database's clock query and returns ``(timer() just before,
    database microseconds, timer() just after)``. A sample pins the database's time to the
    host's monotonic clock (taking it at the middle of the round trip); "now" is the sample
    plus the monotonic time elapsed since. A step of the host's wall clock (``time.time``)
    changes nothing: only the monotonic clock is read. The error is at most half the
    sample's round trip plus the monotonic clock's drift since the sample (see
    :meth:`Sample.error_ns`); the first reading takes the best of three samples, and every
    ``RESAMPLE_NS`` a new sample replaces the one in use unless that one, drift included,
    is still the more accurate (the new round trip was slow) and the two agree (when they
    cannot both be right, the database's clock stepped, and the new one is taken).

    Thread-safe: one thread samples while the others go on with the previous sample. A
    forked child keeps the sample, which stays right there (the monotonic clock is the
    whole host's, not the process's), and gets a fresh lock.
    """

    def __init__(
        self,
        read: Callable[[Callable[[], int]], tuple[int, int, int]],
        *,
        monotonic_ns: Callable[[], int] = host_monotonic_ns,
        resample_ns: int = RESAMPLE_NS,
    ) -> None:
        self._read = read
        self._monotonic_ns = monotonic_ns
        self._resample_ns = resample_ns
        # (the sample in use, the monotonic time of the next sampling): one tuple, replaced
        # whole, so a reader never sees one without the other.
        self._state: tuple[Sample, int] | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()

    @property
    def sample(self) -> Sample | None:
        """The sample in use (None before the first reading)."""
        state = self._state
        return None if state is None else state[0]

    def now_us(self) -> int:
        """Now by the database's clock, in microseconds since the epoch."""
        state = self._state
        at = self._monotonic_ns()
        if state is None or at >= state[1]:
            sample = self._refresh(state)
            at = self._monotonic_ns()
        else:
            sample = state[0]
        return (at + sample.offset_ns) // 1000

    def error_us(self) -> int:
        """The most :meth:`now_us` can be off the database's clock right now (microseconds);
        takes a first sample if there is none."""
        state = self._state
        sample = self._refresh(None) if state is None else state[0]
        return -(-sample.error_ns(self._monotonic_ns()) // 1000)

    def read_database_us(self) -> int:
        """One query of the database's clock, exact; the reading also serves as a sample."""
        sample = self._take()
        self._offer(sample)
        return sample.database_us

    def _take(self) -> Sample:
        sent, database_us, received = self._read(self._monotonic_ns)
        return Sample(int(database_us), sent, received)

    def _offer(self, new: Sample, *, next_ns: int | None = None) -> Sample:
        """Keep ``new`` unless the sample in use is still the more accurate one; the sample
        kept. ``next_ns`` reschedules the next sampling."""
        state = self._state
        best = new
        if state is not None:
            old = state[0]
            old_error, new_error = old.error_ns(new.received_ns), new.error_ns(new.received_ns)
            # Two samples that cannot both be right (their bounds do not overlap) mean the
            # database's clock stepped: the new one is right.
            agree = abs(old.offset_ns - new.offset_ns) <= old_error + new_error
            if agree and old_error < new_error:
                best = old
        if next_ns is None:
            next_ns = new.received_ns + self._resample_ns if state is None else state[1]
        self._state = (best, next_ns)
        return best

    def _refresh(self, seen: tuple[Sample, int] | None) -> Sample:
        if self._pid != os.getpid():
            self._lock = threading.Lock()  # the parent's may have been held at fork
            self._pid = os.getpid()
        if seen is not None:
            if not self._lock.acquire(blocking=False):
                return seen[0]  # another thread is sampling: the previous sample still serves
        else:
            self._lock.acquire()
        try:
            state = self._state
            if state is not None and state is not seen:
                return state[0]  # another thread sampled while this one waited
            # A first sample is the best of a few: the first query on a connection is slower.
            best = state[0] if state is not None else None
            for _ in range(1 if seen is not None else _SAMPLES_AT_START):
                new = self._take()
                best = self._offer(new, next_ns=new.received_ns + self._resample_ns)
            assert best is not None
            return best
        finally:
            self._lock.release()
