"""Conversions between the store's integer microseconds and datetimes/protobuf types."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from flytecache.errors import InvalidArgumentError

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
ONE_US = timedelta(microseconds=1)
US = 1_000_000
# protobuf Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z
MIN_TS_SECONDS = -62_135_596_800
MAX_TS_SECONDS = 253_402_300_799

Clock = Callable[[], datetime]


def system_now_us() -> int:
    """The real clock, in microseconds since the epoch."""
    return time.time_ns() // 1000


def make_now_us(clock: Clock | None) -> Callable[[], int]:
    """A function returning ``clock()`` in microseconds, checking it returns an aware datetime."""
    if clock is None:
        return system_now_us

    def now_us() -> int:
        value = clock()
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidArgumentError(
                f"clock must return a timezone-aware datetime, got {value!r}", field="clock"
            )
        return (value - EPOCH) // ONE_US

    return now_us


def datetime_to_us(value: datetime, *, field: str) -> int:
    """An aware datetime as microseconds since the epoch."""
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise InvalidArgumentError(f"{field} must be a timezone-aware datetime", field=field)
    return (value - EPOCH) // ONE_US


def us_to_datetime(us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=us)


def timedelta_to_us(value: timedelta) -> int:
    """A timedelta in whole microseconds."""
    return value // ONE_US


def timestamp_to_us(ts: Timestamp, *, field: str) -> int:
    """A protobuf Timestamp (validated) in microseconds; sub-microsecond digits are dropped."""
    if not MIN_TS_SECONDS <= ts.seconds <= MAX_TS_SECONDS or not 0 <= ts.nanos < 1_000_000_000:
        raise InvalidArgumentError(
            f"{field} is out of range (seconds={ts.seconds}, nanos={ts.nanos})", field=field
        )
    return ts.seconds * US + ts.nanos // 1000


def us_to_timestamp(us: int) -> Timestamp:
    """Microseconds since the epoch as a protobuf Timestamp."""
    seconds, micros = divmod(us, US)
    return Timestamp(seconds=seconds, nanos=micros * 1000)


def us_to_duration(us: int) -> Duration:
    """Microseconds as a protobuf Duration."""
    seconds, micros = divmod(us, US)
    return Duration(seconds=seconds, nanos=micros * 1000)


def duration_to_timedelta(duration: Duration, *, field: str) -> timedelta:
    """A protobuf Duration (validated: ±10,000 years, like protobuf itself) as a timedelta."""
    if not -315_576_000_000 <= duration.seconds <= 315_576_000_000 or not (
        -999_999_999 <= duration.nanos <= 999_999_999
    ):
        raise InvalidArgumentError(f"{field} is out of range", field=field)
    try:
        return timedelta(seconds=duration.seconds, microseconds=duration.nanos // 1000)
    except OverflowError:
        raise InvalidArgumentError(f"{field} is out of range", field=field) from None


def iso_utc(us: int | None) -> str | None:
    """Microseconds since the epoch as ISO-8601 UTC (``2026-01-01T00:00:00.123456Z``)."""
    if us is None:
        return None
    return us_to_datetime(us).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"
