"""A throwaway PostgreSQL server for the test suite (started by the repo, not by hand).

Uses the PostgreSQL binaries on the machine (``/usr/lib/postgresql/<v>/bin``, or
``FLYTECACHE_PG_BINDIR``). PostgreSQL refuses to run as root, so under root the server runs as
the ``postgres`` system user (or a ``flytecache-pg`` user created for the purpose). Data lives
in a temporary folder, the port is a free one, and everything is removed on stop — also when
the tests fail. ``FLYTECACHE_TEST_PG_URL`` points the tests at an existing server instead.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg

from benchmarks._postgres import USER, find_bindir
from benchmarks._postgres import PostgresServer as _Server

__all__ = ["USER", "PostgresServer", "create_database", "drop_database", "find_bindir", "truncate"]

# A throwaway server: durability off for speed (never do this for real data).
TEST_SETTINGS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=300 -c shared_buffers=64MB"
)


class PostgresServer(_Server):
    """The shared launcher (benchmarks/_postgres.py) with the test suite's settings."""

    def __init__(self, bindir: Path) -> None:
        super().__init__(bindir, settings=TEST_SETTINGS)


def create_database(admin_dsn: str, template: str = "template0") -> str:
    name = "t_" + uuid.uuid4().hex[:16]
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def drop_database(admin_dsn: str, name: str) -> None:
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def truncate(dsn: str) -> None:
    """Empty flytecache's tables (fast reset between tests sharing one database)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '10s'")
        conn.execute("TRUNCATE entries, outputs, reservations RESTART IDENTITY CASCADE")
