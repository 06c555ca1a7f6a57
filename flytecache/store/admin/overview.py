"""The numbers of a cache at a glance: totals, entries by project/domain, the biggest tasks and
entries created per day (what ``flytecache serve``'s web view shows on its first page)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from flytecache.errors import InvalidArgumentError
from flytecache.store.admin._base import (
    ENTRIES,
    RESERVATIONS,
    lease_now_us_of,
    now_us_of,
    snapshot,
)
from flytecache.store.admin.maintenance import sqlite_files
from flytecache.store.cache import CacheStore
from flytecache.store.urls import is_sqlite
from flytecache.timeutil import US

DAY_US = 86_400 * US


@dataclass(frozen=True, slots=True)
class Group:
    """Entries and payload bytes of one project/domain (``name`` empty) or one task."""

    project: str
    domain: str
    name: str
    entries: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Overview:
    """A cache at one instant (one read snapshot); sizes in bytes, days as UTC dates."""

    entries: int
    payload_bytes: int
    active_reservations: int
    expired_reservations: int
    files: dict[str, int]
    """SQLite: ``database``, ``wal`` and ``shm`` file sizes; PostgreSQL: ``database``."""
    schema_revision: str | None
    by_scope: list[Group]
    """The largest project/domain pairs by entries, at most ``top``."""
    top_by_entries: list[Group]
    top_by_bytes: list[Group]
    per_day: list[tuple[int, int]]
    """``(day, entries created)`` for each of the last ``days`` days, oldest first, zeros
    included; ``day`` counts days since 1970-01-01 (UTC)."""


def overview(
    store: CacheStore, *, top: int = 10, days: int = 30, now_us: int | None = None
) -> Overview:
    """Totals, groupings and the daily creation counts of ``store`` (``top`` and ``days`` in
    1..1000).

    Two passes over the entries (one grouped by task, one by day of creation): about 3 s per
    million entries on SQLite, so callers showing it often should keep the result a while.
    """
    for name, value in (("top", top), ("days", days)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise InvalidArgumentError(f"{name} must be in 1..1000, got {value!r}", field=name)
    from flytecache.store.opening import schema_state

    now = now_us_of(store, now_us)
    lease_now = lease_now_us_of(store, now_us)
    today = now // DAY_US
    first_day = today - days + 1
    engine = store.engine
    count = sa.func.count()
    # Grouped on expressions, not on the bare columns: SQLite would otherwise walk the
    # (project, domain, name) index and fetch each entry's size by rowid, a random read per
    # entry (10 s for 1M entries here, against 3 s for one scan and a sort).
    task = tuple(sa.func.coalesce(ENTRIES.c[name], "") for name in ("project", "domain", "name"))
    with snapshot(engine) as conn:
        active = sa.func.coalesce(
            sa.func.sum(sa.case((RESERVATIONS.c.expires_at > lease_now, 1), else_=0)), 0
        )
        leases, live = conn.execute(sa.select(count, active).select_from(RESERVATIONS)).one()
        tasks = [
            Group(row[0], row[1], row[2], int(row[3]), int(row[4]))
            for row in conn.execute(
                sa.select(*task, count, sa.func.coalesce(sa.func.sum(ENTRIES.c.size), 0)).group_by(
                    *task
                )
            )
        ]
        day = (ENTRIES.c.created_at // DAY_US).label("day")
        created: dict[int, int] = dict(
            conn.execute(
                sa.select(day, count)
                .where(ENTRIES.c.created_at >= first_day * DAY_US)
                .group_by(day)
            ).all()
        )
        if is_sqlite(engine):
            files = dict(sqlite_files(engine))
        else:
            files = {
                "database": int(
                    conn.execute(
                        sa.select(sa.func.pg_database_size(sa.func.current_database()))
                    ).scalar_one()
                )
            }
    # Everything else is a sum over the tasks: one pass over the entries, not one per figure.
    scopes: dict[tuple[str, str], list[int]] = {}
    for group in tasks:
        totals = scopes.setdefault((group.project, group.domain), [0, 0])
        totals[0] += group.entries
        totals[1] += group.bytes
    by_scope = sorted(
        (Group(project, domain, "", n, size) for (project, domain), (n, size) in scopes.items()),
        key=lambda g: (-g.entries, g.project, g.domain),
    )
    return Overview(
        entries=sum(g.entries for g in tasks),
        payload_bytes=sum(g.bytes for g in tasks),
        active_reservations=int(live),
        expired_reservations=int(leases) - int(live),
        files={name: int(value) for name, value in files.items()},
        schema_revision=schema_state(engine).current,
        by_scope=by_scope[:top],
        top_by_entries=sorted(tasks, key=lambda g: (-g.entries, g.project, g.domain, g.name))[:top],
        top_by_bytes=sorted(tasks, key=lambda g: (-g.bytes, g.project, g.domain, g.name))[:top],
        per_day=[(d, int(created.get(d, 0))) for d in range(first_day, today + 1)],
    )
