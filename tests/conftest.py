"""Shared fixtures: an injectable clock, real SQLite files under ``tmp_path`` and a real
PostgreSQL server (started once per session by the suite itself, see ``_postgres.py``).

``db_url`` and ``store`` are parametrized over both backends, so every test that uses them runs
on SQLite and on PostgreSQL.
"""

from __future__ import annotations

import atexit
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import _postgres
import pytest
import sqlalchemy as sa

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


@pytest.hookimpl(optionalhook=True, tryfirst=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object | None:
    """``-n 2`` without ``--dist``: work stealing rather than xdist's default ``load``.

    ``load`` hands each worker its share up front; the suite's tests range from microseconds to
    tens of seconds, and a run measured one worker idle for its last 97 s of 337 while the other
    still had a queue of server tests. Stealing lets an idle worker take from the other's queue.
    (An explicit ``--dist`` is respected; ``addopts`` cannot say this because the benchmark
    runner starts pytest with ``-p no:xdist``.)
    """
    named = any(arg.startswith(("--dist", "-d")) for arg in config.invocation_params.args)
    if config.getoption("dist") != "load" or named:
        return None
    from xdist.scheduler import WorkStealingScheduling

    return WorkStealingScheduling(config, log)  # type: ignore[arg-type]


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at 2026-01-01T00:00:00.123456Z (non-zero microseconds on purpose)."""
    return FakeClock()


@pytest.fixture
def db_path(tmp_path) -> str:
    """A path (str) in a fresh directory where no database exists yet."""
    return str(tmp_path / "cache.db")


@pytest.fixture(scope="session")
def pg_server() -> Iterator[_postgres.PostgresServer | None]:
    """The session's PostgreSQL server (None, and PostgreSQL tests skipped, if unavailable).

    In CI (``CI`` set) a missing PostgreSQL is an error, not a skip.
    """
    if os.environ.get("FLYTECACHE_TEST_PG_URL"):
        yield None
        return
    bindir = _postgres.find_bindir()
    if bindir is None:
        if os.environ.get("CI"):
            raise RuntimeError("PostgreSQL binaries not found; set FLYTECACHE_PG_BINDIR")
        yield None
        return
    server = _postgres.PostgresServer(bindir)
    atexit.register(server.stop)  # also on an interrupted run
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server: _postgres.PostgresServer | None) -> Iterator[str]:
    """A URL to a fresh, empty PostgreSQL database (dropped afterwards)."""
    external = os.environ.get("FLYTECACHE_TEST_PG_URL")
    if external:
        yield external
        return
    if pg_server is None:
        pytest.skip("no PostgreSQL binaries on this machine")
    name = _postgres.create_database(pg_server.admin_dsn)
    try:
        yield pg_server.url(name)
    finally:
        _postgres.drop_database(pg_server.admin_dsn, name)


@pytest.fixture(scope="session")
def pg_shared(pg_server: _postgres.PostgresServer | None) -> str | None:
    """One migrated database reused by the tests, emptied before each (CREATE DATABASE costs
    ~250 ms; TRUNCATE ~10 ms)."""
    if pg_server is None:
        return None
    name = _postgres.create_database(pg_server.admin_dsn)
    CacheStore.open(pg_server.url(name)).close()
    return name


@pytest.fixture
def migrated_pg_url(pg_server: _postgres.PostgresServer | None, pg_shared: str | None) -> str:
    """A URL to an empty PostgreSQL database at the current schema (shared, truncated)."""
    external = os.environ.get("FLYTECACHE_TEST_PG_URL")
    if external:
        return external
    if pg_server is None or pg_shared is None:
        pytest.skip("no PostgreSQL binaries on this machine")
    _postgres.truncate(pg_server.dsn(pg_shared))
    return pg_server.url(pg_shared)


@pytest.fixture
def local_pg(migrated_pg_url: str) -> str:
    """The suite's PostgreSQL, checked to read this machine's clock: the clock tests compare
    times the server wrote with times measured here."""
    from flytecache import StoreSettings

    with CacheStore.open(migrated_pg_url, settings=StoreSettings(lease_clock="database")) as s:
        before = time.time_ns() // 1000
        server = s.lease_now_us()
        after = time.time_ns() // 1000
    if not before <= server <= after:
        pytest.skip("the PostgreSQL server's clock is not this machine's (an external server)")
    return migrated_pg_url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, db_path: str) -> str:
    """An empty database (no schema) on each backend: for migration tests."""
    if request.param == "sqlite":
        return db_path
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def empty_engine(empty_url: str) -> Iterator[sa.Engine]:
    """flytecache's engine on ``empty_url``."""
    from flytecache import StoreSettings
    from flytecache.store.engine import create_store_engine
    from flytecache.store.urls import normalize_url

    engine = create_store_engine(normalize_url(empty_url), StoreSettings())
    yield engine
    engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    """A fresh database on each backend: a SQLite path, or a (migrated) PostgreSQL URL."""
    if request.param == "sqlite":
        return str(tmp_path / "cache.db")
    return str(request.getfixturevalue("migrated_pg_url"))


@pytest.fixture
def store(db_url: str, clock: FakeClock) -> Iterator[CacheStore]:
    """An opened (migrated) store on ``db_url`` (both backends) using ``clock``."""
    with CacheStore.open(db_url, clock=clock) as opened:
        yield opened


@pytest.fixture
def sqlite_store(db_path: str, clock: FakeClock) -> Iterator[CacheStore]:
    """An opened store on a SQLite file (for SQLite-specific tests)."""
    with CacheStore.open(db_path, clock=clock) as opened:
        yield opened


@pytest.fixture(scope="session")
def cache_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A real ``flytecache serve`` subprocess on a free port with its own database file.

    ``.url`` is its address, ``.database`` the database URL it serves; see
    tests/_server_helpers.py. The server uses the real clock.
    """
    from _server_helpers import ServerProcess

    tmp = tmp_path_factory.mktemp("cache-server")
    with ServerProcess(tmp / "cache.db", log_path=tmp / "server.log") as server:
        yield server


@pytest.fixture(params=["sqlite", "remote"])
def sdk_target(request: pytest.FixtureRequest, tmp_path) -> Iterator[object]:
    """Where SDK integration tests cache: a SQLite file, or a real ``flytecache serve``
    (emptied first); see tests/_sdk_runs.py."""
    from _sdk_runs import Target

    if request.param == "remote":
        server = request.getfixturevalue("cache_server")
        with CacheStore.open(server.database) as store, store.engine.begin() as conn:
            conn.exec_driver_sql("DELETE FROM entries")  # the server is shared by the session
            conn.exec_driver_sql("DELETE FROM reservations")
        yield Target(server.url, server.database)
    else:
        path = str(tmp_path / "flytecache.db")
        yield Target(path, path)


@pytest.fixture
def home(tmp_path) -> object:
    """An empty directory to be HOME for SDK processes (their own caches would appear here)."""
    path = tmp_path / "home"
    path.mkdir()
    return path
