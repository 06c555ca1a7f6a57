"""Counts, sizes and the biggest projects, domains and tasks."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from flytecache.store.admin._base import (
    ENTRIES,
    RESERVATIONS,
    lease_now_us_of,
    snapshot,
)
from flytecache.store.admin.maintenance import sqlite_files
from flytecache.store.cache import CacheStore
from flytecache.store.opening import describe_url
from flytecache.store.urls import is_sqlite
from flytecache.timeutil import (
    iso_utc,
)


def stats(store: CacheStore, *, now_us: int | None = None, top: int = 5) -> dict[str, Any]:
    """Counts, sizes and the biggest projects/domains/tasks, as a JSON-ready dict."""
    engine = store.engine
    now = lease_now_us_of(store, now_us)  # only leases are judged by it here
    inline = sa.func.coalesce(sa.func.sum(sa.case((ENTRIES.c.output_uri.is_(None), 1), else_=0)), 0)
    active = sa.func.coalesce(
        sa.func.sum(sa.case((RESERVATIONS.c.expires_at > now, 1), else_=0)), 0
    )
    with snapshot(engine) as conn:
        totals = conn.execute(
            sa.select(
                sa.func.count(),
                inline,
                sa.func.coalesce(sa.func.sum(ENTRIES.c.size), 0),
                sa.func.min(ENTRIES.c.last_updated_at),
                sa.func.max(ENTRIES.c.last_updated_at),
            ).select_from(ENTRIES)
        ).one()
        leases = conn.execute(sa.select(sa.func.count(), active).select_from(RESERVATIONS)).one()
        groups: dict[str, list[dict[str, Any]]] = {}
        for label, columns in (
            ("projects", (ENTRIES.c.project,)),
            ("domains", (ENTRIES.c.domain,)),
            ("tasks", (ENTRIES.c.project, ENTRIES.c.domain, ENTRIES.c.name)),
        ):
            count = sa.func.count().label("entries")
            rows = conn.execute(
                sa.select(*columns, count, sa.func.coalesce(sa.func.sum(ENTRIES.c.size), 0))
                .group_by(*columns)
                .order_by(count.desc(), *columns)
                .limit(top)
            ).all()
            groups[label] = [
                {
                    **{c.name: row[i] for i, c in enumerate(columns)},
                    "entries": int(row[len(columns)]),
                    "bytes": int(row[len(columns) + 1]),
                }
                for row in rows
            ]
        storage: dict[str, Any]
        if is_sqlite(engine):
            pragma = {
                name: int(conn.exec_driver_sql(f"PRAGMA {name}").scalar_one())
                for name in ("page_size", "page_count", "freelist_count")
            }
            storage = {
                **sqlite_files(engine),
                "free_bytes": pragma["page_size"] * pragma["freelist_count"],
            }
        else:
            storage = {
                "database": int(
                    conn.execute(
                        sa.select(sa.func.pg_database_size(sa.func.current_database()))
                    ).scalar_one()
                )
            }
    entries, inline_count = int(totals[0]), int(totals[1])
    return {
        "database": describe_url(engine),
        "dialect": engine.dialect.name,
        "entries": entries,
        "entries_inline": inline_count,
        "entries_uri": entries - inline_count,
        "payload_bytes": int(totals[2]),
        "oldest_last_updated_at": iso_utc(totals[3]),
        "newest_last_updated_at": iso_utc(totals[4]),
        "reservations": {"active": int(leases[1]), "expired": int(leases[0]) - int(leases[1])},
        "files": storage,
        "top_projects": groups["projects"],
        "top_domains": groups["domains"],
        "top_tasks": groups["tasks"],
    }
