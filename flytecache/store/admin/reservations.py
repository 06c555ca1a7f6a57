"""Listing, looking up and collecting leases (reservations)."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, Literal

import sqlalchemy as sa

from flytecache.errors import (
    InvalidArgumentError,
    NotFoundError,
)
from flytecache.store.admin._base import (
    BATCH,
    ENTRIES,
    RESERVATIONS,
    keyset_pages,
    lease_now_us_of,
)
from flytecache.store.cache import CacheStore
from flytecache.store.engine import read_connection, write_connection
from flytecache.timeutil import (
    US,
)
from flytecache.validation import check_text


@dataclass(frozen=True, slots=True)
class ReservationInfo:
    """One lease (times in microseconds since the epoch) as seen at ``now``."""

    key: str
    owner_id: str
    heartbeat_interval: int
    """Microseconds."""
    expires_at: int
    created_at: int
    updated_at: int
    previous_owner: str | None
    now: int

    @property
    def active(self) -> bool:
        """Whether the lease is live (others must wait)."""
        return self.expires_at > self.now

    @property
    def expires_in(self) -> float:
        """Seconds until expiry (negative once expired)."""
        return (self.expires_at - self.now) / US


ReservationState = Literal["all", "active", "expired"]


def _reservation_clauses(
    state: ReservationState, owner: str | None, now: int
) -> list[sa.ColumnElement[bool]]:
    where: list[sa.ColumnElement[bool]] = []
    if state == "active":
        where.append(RESERVATIONS.c.expires_at > now)
    elif state == "expired":
        where.append(RESERVATIONS.c.expires_at <= now)
    elif state != "all":
        raise InvalidArgumentError(f"unknown reservation state {state!r}", field="state")
    if owner is not None:
        where.append(RESERVATIONS.c.owner_id == owner)
    return where


def _reservation(row: Any, now: int) -> ReservationInfo:
    return ReservationInfo(
        key=row.key,
        owner_id=row.owner_id,
        heartbeat_interval=row.heartbeat_interval,
        expires_at=row.expires_at,
        created_at=row.created_at,
        updated_at=row.updated_at,
        previous_owner=row.previous_owner,
        now=now,
    )


def iter_reservations(
    store: CacheStore,
    *,
    state: ReservationState = "all",
    owner: str | None = None,
    now_us: int | None = None,
    limit: int | None = None,
    page_size: int = BATCH,
) -> Generator[ReservationInfo, None, None]:
    """Leases ordered by key, streamed page by page (one short read transaction per page
    on SQLite, one snapshot on PostgreSQL: see :func:`iter_entries`).

    Like :func:`iter_entries`, close the generator when you stop early.
    """
    if limit is not None and limit <= 0:
        return
    now = lease_now_us_of(store, now_us)
    clauses = _reservation_clauses(state, owner, now)

    def page(after: str | None) -> sa.Select[Any]:
        query = sa.select(RESERVATIONS).where(*clauses)
        if after is not None:
            query = query.where(RESERVATIONS.c.key > after)
        return query.order_by(RESERVATIONS.c.key)

    rows = keyset_pages(store.engine, page, lambda row: row.key, limit=limit, page_size=page_size)
    for row in rows:
        yield _reservation(row, now)


@dataclass(frozen=True, slots=True)
class ReservationMatch:
    """A lease found by :func:`search_reservations`, with the task of the entry under its key
    (empty when the key has no entry yet: a first run of the task is what holds it)."""

    lease: ReservationInfo
    task: str
    project: str
    domain: str


@dataclass(frozen=True, slots=True)
class ReservationPage:
    """One page of :func:`search_reservations` and the cursor of the next (None when last)."""

    matches: list[ReservationMatch]
    next_cursor: str | None


def search_reservations(
    store: CacheStore,
    text: str | None = None,
    *,
    state: ReservationState = "all",
    after: str | None = None,
    limit: int = 100,
    now_us: int | None = None,
) -> ReservationPage:
    """Leases ordered by key whose key or owner contains ``text``, or whose key's entry belongs
    to a task whose name contains it; up to ``limit`` (1..1000) after the key ``after``.

    A cache key hashes the task's name away, so a lease is found by task name only when an
    entry already exists under its key (a rerun); a first run is found by its key or its owner
    id (Flyte's owner ids carry the execution name).
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidArgumentError(f"limit must be in 1..1000, got {limit!r}", field="limit")
    now = lease_now_us_of(store, now_us)
    where = _reservation_clauses(state, None, now)
    if text:
        check_text(text, "search")
        where.append(
            sa.or_(
                RESERVATIONS.c.key.contains(text, autoescape=True),
                RESERVATIONS.c.owner_id.contains(text, autoescape=True),
                ENTRIES.c.name.contains(text, autoescape=True),
            )
        )
    if after is not None:
        where.append(RESERVATIONS.c.key > check_text(after, "after"))
    # An outer join walks the leases and looks each key's hash up in the entries' unique
    # index: the cost follows the number of leases, never the number of entries.
    joined = RESERVATIONS.outerjoin(
        ENTRIES,
        sa.and_(
            ENTRIES.c.key_hash == RESERVATIONS.c.key_hash,
            ENTRIES.c.key == RESERVATIONS.c.key,
        ),
    )
    query = (
        sa.select(RESERVATIONS, ENTRIES.c.name, ENTRIES.c.project, ENTRIES.c.domain)
        .select_from(joined)
        .where(*where)
        .order_by(RESERVATIONS.c.key)
        .limit(limit + 1)
    )
    with read_connection(store.engine) as conn:
        rows = conn.execute(query).all()
    more = len(rows) > limit
    rows = rows[:limit]
    return ReservationPage(
        matches=[
            ReservationMatch(
                lease=_reservation(row, now),
                task=row.name or "",
                project=row.project or "",
                domain=row.domain or "",
            )
            for row in rows
        ],
        next_cursor=rows[-1].key if more else None,
    )


def get_reservation(store: CacheStore, key: str, *, now_us: int | None = None) -> ReservationInfo:
    """The lease on ``key``; NotFoundError if there is none."""
    check_text(key, "key")
    now = lease_now_us_of(store, now_us)
    with read_connection(store.engine) as conn:
        row = conn.execute(sa.select(RESERVATIONS).where(RESERVATIONS.c.key == key)).one_or_none()
    if row is None:
        raise NotFoundError(f'no reservation on "{key}"', key=key)
    return _reservation(row, now)


def count_reservations(
    store: CacheStore,
    *,
    state: ReservationState = "all",
    owner: str | None = None,
    now_us: int | None = None,
) -> int:
    """How many leases match."""
    clauses = _reservation_clauses(state, owner, lease_now_us_of(store, now_us))
    with read_connection(store.engine) as conn:
        return int(conn.execute(sa.select(sa.func.count()).where(*clauses)).scalar_one())


def gc_reservations(
    store: CacheStore, *, now_us: int | None = None, batch_size: int = BATCH, dry_run: bool = False
) -> int:
    """Delete expired leases (``expires_at <= now``) in batches; return how many."""
    now = lease_now_us_of(store, now_us)
    if dry_run:
        return count_reservations(store, state="expired", now_us=now)
    expired = RESERVATIONS.c.expires_at <= now
    victims = sa.select(RESERVATIONS.c.key).where(expired).limit(batch_size)
    # The outer condition re-checks expiry under the write lock, so a lease extended between
    # the listing and the delete is never removed.
    statement = sa.delete(RESERVATIONS).where(RESERVATIONS.c.key.in_(victims), expired)
    removed = 0
    while True:
        with write_connection(store.engine) as conn:
            count = conn.execute(statement).rowcount
        removed += count
        if count < batch_size:
            return removed
