"""Shared fixtures: an injectable clock and a real SQLite store file under ``tmp_path``."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from flytecache import CacheStore

START = datetime(2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC)


class FakeClock:
    """A settable clock for the store: call it for "now" (an aware UTC datetime)."""

    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, delta: timedelta) -> datetime:
        """Move the clock forward by ``delta`` (may be negative) and return the new time."""
        self.now += delta
        return self.now

    def set(self, now: datetime) -> datetime:
        """Jump to ``now``."""
        self.now = now
        return now


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at 2026-01-01T00:00:00.123456Z (non-zero microseconds on purpose)."""
    return FakeClock()


@pytest.fixture
def db_path(tmp_path) -> str:
    """A path (str) in a fresh directory where no database exists yet."""
    return str(tmp_path / "cache.db")


@pytest.fixture
def store(db_path: str, clock: FakeClock) -> Iterator[CacheStore]:
    """An opened (migrated) store on ``db_path`` using ``clock``; closed afterwards."""
    with CacheStore.open(db_path, clock=clock) as opened:
        yield opened
