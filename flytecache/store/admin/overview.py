"""The numbers of a cache at a glance: totals, entries by project/domain, the biggest tasks and
entries created per day (what ``flytecache serve``'s web view shows on its first page)."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa

from flytecache.errors import InvalidArgumentError
from flytecache.store.admin._base import ENTRIES, RESERVATIONS, now_us_of, snapshot
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

    Each grouping reads every entry once (there is no index that serves a GROUP BY of the
    size column): about a second per million entries on SQLite, so callers showing it often
    should keep the result for a while.
    """
    for name, value in (("top", top), ("days", days)):
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 1000:
            raise InvalidArgumentError(f"{name} must be in 1..1000, got {value!r}", field=name)
    from flytecache.store.opening import schema_state

    now = now_us_of(store, now_us)
    today = now // DAY_US
    first_day = today - days + 1
    engine = store.engine
    size = sa.func.coalesce(sa.func.sum(ENTRIES.c.size), 0)
    count = sa.func.count()
    with snapshot(engine) as conn:
        entries, payload = conn.execute(sa.select(count, size).select_from(ENTRIES)).one()
        active = sa.func.coalesce(
            sa.func.sum(sa.case((RESERVATIONS.c.expires_at > now, 1), else_=0)), 0
        )
        leases, live = conn.execute(sa.select(count, active).select_from(RESERVATIONS)).one()
        scope = (ENTRIES.c.project, ENTRIES.c.domain)
        by_scope = [
            Group(row[0], row[1], "", int(row[2]), int(row[3]))
            for row in conn.execute(
                sa.select(*scope, count, size)
                .group_by(*scope)
                .order_by(count.desc(), *scope)
                .limit(top)
            )
        ]
        task = (*scope, ENTRIES.c.name)
        tasks = (
            sa.select(*task, count.label("entries"), size.label("bytes")).group_by(*task).subquery()
        )
        columns = (tasks.c.project, tasks.c.domain, tasks.c.name)
        ranked = {
            order: [
                Group(*row[:3], int(row[3]), int(row[4]))
                for row in conn.execute(
                    sa.select(*columns, tasks.c.entries, tasks.c.bytes)
                    .order_by(tasks.c[order].desc(), *columns)
                    .limit(top)
                )
            ]
            for order in ("entries", "bytes")
        }
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
    return Overview(
        entries=int(entries),
        payload_bytes=int(payload),
        active_reservations=int(live),
        expired_reservations=int(leases) - int(live),
        files={name: int(value) for name, value in files.items()},
        schema_revision=schema_state(engine).current,
        by_scope=by_scope,
        top_by_entries=ranked["entries"],
        top_by_bytes=ranked["bytes"],
        per_day=[(d, int(created.get(d, 0))) for d in range(first_day, today + 1)],
    )
