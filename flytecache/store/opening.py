"""Opening a database, in one place: the path checks, a missing driver, the read-only fallback,
the schema check, and what state the schema is in.

Every way in — ``CacheStore.open``, the admin CLI, the server — goes through :func:`open_store`
or :func:`open_engine`, so each rule (a missing file, a missing PostgreSQL driver, a file on a
read-only directory, a schema too old or too new) is decided once and reported the same way.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.engine import URL, Engine

from flytecache.config import StoreSettings
from flytecache.errors import (
    FlyteCacheError,
    InvalidArgumentError,
    StorageError,
    UnavailableError,
)
from flytecache.store.engine import create_store_engine, read_connection
from flytecache.store.filesystem import sqlite_unopenable_directory
from flytecache.store.migrate import current_revision, ensure_schema, head_revision
from flytecache.store.urls import database_name, is_sqlite, normalize_url, sqlite_file
from flytecache.timeutil import Clock

if TYPE_CHECKING:
    from flytecache.store.cache import CacheStore

__all__ = [
    "Engine",
    "SchemaState",
    "create_parent_directory",
    "created_or_nothing",
    "describe_url",
    "open_engine",
    "open_store",
    "require_database",
    "schema_state",
]


def require_database(url: URL) -> None:
    """Raise unless ``url`` names an existing database (SQLite: the file must exist)."""
    if not is_sqlite(url):
        return
    path = Path(str(url.database))
    if path.is_dir():
        raise InvalidArgumentError(f"cannot open database {path}: it is a directory", field="db")
    if not path.exists():
        raise InvalidArgumentError(
            f"database {path} does not exist; create it with `flytecache db upgrade --db {path}`",
            field="db",
        )


def create_parent_directory(url_or_path: str | os.PathLike[str]) -> None:
    """For a SQLite database, create the directory it goes in (and its parents), as a user
    moving a cache to a new place expects; :class:`InvalidArgumentError` naming the path when
    that is impossible (a file in the way, no permission). Nothing for PostgreSQL."""
    url = normalize_url(url_or_path)
    if not is_sqlite(url) or not url.database:
        return
    parent = Path(url.database).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InvalidArgumentError(
            f"cannot create the directory {parent} for the database: {error.strerror}",
            field="db",
        ) from None


@contextlib.contextmanager
def created_or_nothing(
    url_or_path: str | os.PathLike[str], *, create_directory: bool = True
) -> Iterator[None]:
    """For a block that may create a SQLite database: with ``create_directory``, make its
    directory first (:func:`create_parent_directory`); if the block fails, remove what this
    created, so that a failed command leaves no empty database behind: the database file
    (with its ``-wal``, ``-shm`` and ``-journal``) when it did not exist before the block, and
    the directories made for it. A database that existed before, one that holds entries or
    reservations by then (another process created it meanwhile), one that cannot be read,
    and PostgreSQL are never touched."""
    url = normalize_url(url_or_path)
    if not is_sqlite(url) or not url.database:
        yield
        return
    path = Path(url.database)
    existed = os.path.lexists(path)
    new_directories: list[Path] = []  # the nearest first, so each is empty when removed
    for parent in path.parents:
        if parent.exists():
            break
        new_directories.append(parent)
    if create_directory:
        create_parent_directory(url_or_path)
    try:
        yield
    except BaseException:
        if not existed and path.is_file() and not _holds_rows(path):
            for suffix in ("", "-wal", "-shm", "-journal"):
                with contextlib.suppress(OSError):
                    Path(f"{path}{suffix}").unlink(missing_ok=True)
        for directory in new_directories:
            with contextlib.suppress(OSError):
                directory.rmdir()  # only if empty
        raise


def _holds_rows(path: Path) -> bool:
    """Whether the SQLite file has an entry or a reservation (or cannot be read: then it is
    kept too)."""
    try:
        conn = sqlite3.connect(f"{path.as_uri()}?mode=rw", uri=True, timeout=0)
    except sqlite3.Error:
        return True
    try:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
        return any(
            conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is not None
            for table in ("entries", "reservations")
            if table in tables
        )
    except sqlite3.Error:
        return True
    finally:
        conn.close()


def _engine(url: URL, settings: StoreSettings, *, read_only: bool = False) -> Engine:
    try:
        return create_store_engine(url, settings, read_only=read_only)
    except ImportError as error:
        raise UnavailableError(
            f"the driver for {url.drivername} is not installed ({error}); for PostgreSQL, "
            "install psycopg: `pip install 'psycopg[binary]'` (in this repository: "
            "`.venv/bin/pip install -e '.[postgres]'`, which `make test` does)"
        ) from error


def open_engine(
    url_or_path: str | os.PathLike[str],
    settings: StoreSettings | None = None,
    *,
    must_exist: bool = True,
) -> Engine:
    """An engine for admin work (migrations, checks), with ``settings`` (default: from the
    ``FLYTECACHE_*`` variables); with ``must_exist`` a missing SQLite file is an
    :class:`InvalidArgumentError` instead of a new empty database. A missing driver is an
    :class:`UnavailableError` naming what to install."""
    url = normalize_url(url_or_path)
    if must_exist:
        require_database(url)
    settings = settings or StoreSettings.from_env()
    engine = _engine(url, settings)
    if not is_sqlite(url):
        return engine
    try:
        with read_connection(engine):
            pass
    except UnavailableError:
        if not sqlite_unopenable_directory(url):
            return engine  # the caller reports the failure where it uses the engine
        # Read-only storage: the same fallback as open_store, so checks and backups work.
        engine.dispose()
        return _engine(url, settings, read_only=True)
    except FlyteCacheError:
        pass  # a damaged file: `db check` reports it as an item, other commands fail on use
    return engine


def open_store(
    url_or_path: str | os.PathLike[str],
    *,
    settings: StoreSettings | None = None,
    clock: Clock | None = None,
    migrate: bool = True,
    must_exist: bool = False,
) -> CacheStore:
    """Open a :class:`~flytecache.CacheStore` (``CacheStore.open`` is this function).

    ``settings`` default to :meth:`StoreSettings.from_env` (the ``FLYTECACHE_*`` variables), as
    for every command. ``migrate`` creates or migrates the schema; without it a database not at
    the current schema raises :class:`~flytecache.errors.SchemaError`. ``must_exist`` refuses
    to create a SQLite file. A SQLite file whose directory cannot be written (so no WAL can be
    made) is opened read-only: reads work, writes fail clearly. Errors name the database.
    """
    from flytecache.store.cache import CacheStore, resolve_lease_clock

    if settings is None:
        settings = StoreSettings.from_env()
    elif not isinstance(settings, StoreSettings):
        raise InvalidArgumentError("settings must be a StoreSettings", field="settings")
    if clock is not None and not callable(clock):
        raise InvalidArgumentError("clock must be a callable returning a datetime", field="clock")
    url = normalize_url(url_or_path)
    # Refused before anything is created: lease_clock='database' on SQLite.
    resolve_lease_clock(
        settings.lease_clock, sqlite=is_sqlite(url), clock_injected=clock is not None
    )
    if must_exist:
        require_database(url)
    engine = _engine(url, settings)
    try:
        ensure_schema(engine, migrate=migrate)
    except UnavailableError:
        engine.dispose()
        if not sqlite_unopenable_directory(url):
            raise
        # A read-only directory: serve reads, fail writes with a clear message.
        engine = _engine(url, settings, read_only=True)
        try:
            ensure_schema(engine, migrate=False)
        except BaseException:
            engine.dispose()
            raise
    except StorageError as error:
        engine.dispose()
        # Name the file: "damaged" means little without knowing which database.
        raise type(error)(f"{database_name(url)}: {error}", **error.fields) from error
    except BaseException:
        engine.dispose()
        raise
    return CacheStore(engine, settings=settings, clock=clock)


def describe_url(engine: Engine | URL) -> str:
    """The database URL with any password hidden (for messages)."""
    url = engine if isinstance(engine, URL) else engine.url
    if is_sqlite(url) and url.database:
        # A read-only engine's URL is a file: URI; people know the database by its path.
        url = URL.create("sqlite", database=str(sqlite_file(url)))
    return url.render_as_string(hide_password=True)


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database's schema stands: its revision (``None``: empty) and this code's head."""

    current: str | None
    head: str

    @property
    def at_head(self) -> bool:
        """Whether the database is at the schema this code expects."""
        return self.current == self.head


def schema_state(engine: Engine) -> SchemaState:
    """The schema revision of the database behind ``engine``, next to this code's head (one
    short read transaction)."""
    with read_connection(engine) as conn:
        current = current_revision(conn)
    return SchemaState(current, head_revision())
