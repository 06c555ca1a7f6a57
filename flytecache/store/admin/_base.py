"""What the admin modules share: the tables, batch size, timestamp range, the clock, one
snapshot for several reads, keyset paging, and the SQLite-only guard."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

from flytecache.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
)
from flytecache.store.cache import CacheStore
from flytecache.store.engine import read_connection
from flytecache.store.models import ENTRY_DATA_COLUMNS, Entry, Output, Reservation
from flytecache.store.urls import is_sqlite, sqlite_file
from flytecache.timeutil import (
    MAX_TS_SECONDS,
    MIN_TS_SECONDS,
    US,
)

BATCH = 500
"""Rows per write transaction for bulk deletes and per statement for import staging."""

ENTRIES = cast(sa.Table, Entry.__table__)
OUTPUTS = cast(sa.Table, Output.__table__)
RESERVATIONS = cast(sa.Table, Reservation.__table__)

ENTRY_COLUMNS = ENTRY_DATA_COLUMNS
WITH_PAYLOAD = ENTRIES.outerjoin(
    OUTPUTS, sa.and_(ENTRIES.c.payload.is_(None), OUTPUTS.c.entry_id == ENTRIES.c.id)
)
"""``entries`` with the spilled payload of a large entry; select :data:`PAYLOAD` from it."""
PAYLOAD = sa.func.coalesce(ENTRIES.c.payload, OUTPUTS.c.payload).label("payload")
"""An entry's payload wherever it is stored (in the row, or for a large one in outputs)."""
MIN_US = MIN_TS_SECONDS * US
MAX_US = MAX_TS_SECONDS * US + US - 1
SHORT_TEXT = 255  # project, domain and org are VARCHAR(255) on PostgreSQL


def now_us_of(store: CacheStore, now_us: int | None) -> int:
    """``now_us`` if given, else the store's clock (microseconds since the epoch)."""
    if now_us is not None:
        return now_us
    return store.now_us()


def lease_now_us_of(store: CacheStore, now_us: int | None) -> int:
    """``now_us`` if given, else now by the clock that decides the store's leases (the
    database's on PostgreSQL by default: see ``StoreSettings.lease_clock``)."""
    if now_us is not None:
        return now_us
    return store.lease_now_us()


_POSTGRES_INSTEAD = {
    "backup": "back it up with pg_dump (or `flytecache export`)",
    "checkpoint": "the server checkpoints on its own (or run CHECKPOINT as a superuser)",
    "vacuum": "autovacuum reclaims space (or run VACUUM on the server)",
}


def require_sqlite(url: URL, operation: str) -> Path:
    """The SQLite file at ``url``; :class:`InvalidArgumentError` naming ``operation`` otherwise
    (a URL, so that commands can refuse before connecting to another database)."""
    if not is_sqlite(url):
        instead = _POSTGRES_INSTEAD.get(operation, "use the database server's own tools")
        raise InvalidArgumentError(
            f"{operation} is SQLite-only; this database is {url.get_backend_name()}: {instead}",
            field="db",
        )
    return sqlite_file(url)


@contextlib.contextmanager
def snapshot(engine: Engine) -> Iterator[sa.Connection]:
    """A read transaction whose statements all see one snapshot.

    SQLite's read transactions already do; PostgreSQL's default READ COMMITTED takes a new
    snapshot per statement, so a paged listing or export could skip or repeat rows that a
    concurrent writer changes between pages. REPEATABLE READ holds one snapshot, and a
    read-only transaction there never fails with a serialization error.
    """
    with read_connection(engine) as conn:
        if not is_sqlite(engine):
            conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        yield conn


def keyset_pages(
    engine: Engine,
    page: Callable[[Any], sa.Select[Any]],
    cursor: Callable[[Any], Any],
    *,
    limit: int | None,
    page_size: int,
) -> Iterator[Any]:
    """The rows of a keyset-paginated listing, at most ``limit`` (``None``: all).

    ``page(after)`` is the ordered query for the rows after the cursor ``after`` (``None``
    for the first page) and ``cursor(row)`` the cursor a row leaves; memory stays at one page
    however many rows there are.

    On SQLite each page is its own short read transaction: a listing a person pages through
    (``entries ls | less``) would otherwise hold one open for minutes, and no checkpoint can
    pass an open read transaction, so the WAL would grow with every write meanwhile. The
    listing is then a live view: rows written after it started may or may not appear, and a
    row rewritten meanwhile can move past the cursor; no row appears twice. On PostgreSQL,
    where an open transaction blocks nothing, all pages share one snapshot (:func:`snapshot`).
    """
    if is_sqlite(engine):

        def fetch(query: sa.Select[Any]) -> list[Any]:
            with read_connection(engine) as conn:
                return list(conn.execute(query).all())

        yield from _pages(fetch, page, cursor, limit=limit, page_size=page_size)
        return
    with snapshot(engine) as conn:

        def fetch_in_snapshot(query: sa.Select[Any]) -> list[Any]:
            return list(conn.execute(query).all())

        yield from _pages(fetch_in_snapshot, page, cursor, limit=limit, page_size=page_size)


def _pages(
    fetch: Callable[[sa.Select[Any]], list[Any]],
    page: Callable[[Any], sa.Select[Any]],
    cursor: Callable[[Any], Any],
    *,
    limit: int | None,
    page_size: int,
) -> Iterator[Any]:
    remaining = limit
    after: Any = None
    while True:
        size = page_size if remaining is None else min(page_size, remaining)
        rows = fetch(page(after).limit(size))
        yield from rows
        if len(rows) < size:
            return
        if remaining is not None:
            remaining -= len(rows)
            if remaining <= 0:
                return
        after = cursor(rows[-1])


def check_output_path(target: Path, *, overwrite: bool, what: str) -> None:
    """Refuse to write ``what`` (``"the backup"``, ``"the export"``) to ``target`` before any
    work: a directory, an existing file without ``overwrite``, a missing directory — one policy
    for every file flytecache writes."""
    if target.is_dir():
        raise InvalidArgumentError(f"cannot write {what} to {target}: it is a directory")
    if target.exists() and not overwrite:
        raise AlreadyExistsError(f"{target} already exists (pass --overwrite to replace it)")
    if not target.parent.is_dir():
        raise InvalidArgumentError(
            f"cannot write {what} to {target}: directory {target.parent} does not exist"
        )
