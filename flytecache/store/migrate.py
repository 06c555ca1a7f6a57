"""Alembic migrations run from code: locate the scripts, read/compare revisions, upgrade safely."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Engine

from flytecache.errors import SchemaError
from flytecache.store.driver_errors import translate_errors
from flytecache.store.engine import lock_for_migration, read_connection, write_connection
from flytecache.store.models import Base

__all__ = [
    "alembic_config",
    "check_models_match",
    "current_revision",
    "downgrade",
    "ensure_schema",
    "head_revision",
    "history",
    "upgrade",
]


def migrations_dir() -> Path:
    """The alembic scripts: inside the package when installed from a wheel, else the repo's."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_migrations", package.parent / "alembic"):
        if (candidate / "env.py").is_file():
            return candidate
    raise SchemaError(f"flytecache's migration scripts are missing (looked in {package})")


def alembic_config(connection: sa.Connection | None = None) -> Config:
    """An alembic Config built in code; ``connection`` is handed to env.py via ``attributes``."""
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head_revision() -> str:
    """The newest revision this code knows."""
    head = _script().get_current_head()
    if head is None:  # pragma: no cover - the package always ships a revision
        raise SchemaError("no migration revisions found")
    return head


def known_revision(revision: str) -> bool:
    """Whether ``revision`` belongs to this code's migration history."""
    try:
        return _script().get_revision(revision) is not None
    except Exception:
        return False


def current_revision(conn: sa.Connection) -> str | None:
    """The revision stamped in the database, or None for an empty database."""
    return MigrationContext.configure(conn).get_current_revision()


def _check_known(current: str | None) -> None:
    if current is not None and not known_revision(current):
        raise SchemaError(
            f"the database schema is at revision {current}, newer than this flytecache knows "
            f"(head {head_revision()}); upgrade flytecache",
            current=current,
            head=head_revision(),
        )


def ensure_schema(engine: Engine, *, migrate: bool) -> None:
    """Make sure the schema is at head, migrating if allowed.

    Concurrent openers of a brand-new file are serialized by the write transaction (BEGIN
    IMMEDIATE on SQLite): the first migrates, the others then see head and do nothing.
    """
    head = head_revision()
    with read_connection(engine) as conn:
        current = current_revision(conn)
    if current == head:
        return
    _check_known(current)
    if not migrate:
        raise SchemaError(
            f"the database schema is at revision {current or '(empty)'} but this flytecache needs "
            f"{head}; run `flytecache db upgrade`",
            current=current,
            head=head,
        )
    upgrade(engine, "head")


Progress = Callable[[int, int], None]
"""A data migration's progress: called with (rows done, rows in all)."""


def upgrade(engine: Engine, revision: str = "head", *, progress: Progress | None = None) -> None:
    """Upgrade to ``revision`` (a no-op when already there).

    The schema change itself is one write transaction. Before it, a revision's data
    migration may run in committed batches (0001 -> 0002 does), reporting ``progress``: an
    interrupted upgrade (even SIGKILL) loses at most one batch of work and is simply re-run.
    """
    with read_connection(engine) as conn:
        current = current_revision(conn)
    if revision not in ("base", current) and current is not None:
        _prepare(engine, current, revision, progress)
    with write_connection(engine) as conn:
        lock_for_migration(conn)
        _check_known(current_revision(conn))
        _run(command.upgrade, conn, revision)


def _prepare(engine: Engine, current: str, target: str, progress: Progress | None) -> None:
    """Run the batched ``prepare`` of each revision between ``current`` and ``target``."""
    script = _script()
    try:
        revisions = list(script.iterate_revisions(target, current))
    except Exception:
        return  # an unknown or backward target: alembic reports it in the upgrade itself
    for rev in reversed(revisions):
        prepare = getattr(rev.module, "prepare", None)
        if prepare is not None:
            prepare(functools.partial(_migration_transaction, engine), progress)


@contextlib.contextmanager
def _migration_transaction(engine: Engine) -> Iterator[sa.Connection]:
    with write_connection(engine) as conn:
        lock_for_migration(conn)
        yield conn


def downgrade(engine: Engine, revision: str) -> None:
    """Downgrade to ``revision`` (``base`` empties the schema) in one write transaction."""
    with write_connection(engine) as conn:
        lock_for_migration(conn)
        _check_known(current_revision(conn))
        _run(command.downgrade, conn, revision)


def _run(fn: Any, conn: sa.Connection, revision: str) -> None:
    try:
        fn(alembic_config(conn), revision)
    except SchemaError:
        raise
    except Exception as error:
        if type(error).__module__.startswith("alembic"):
            raise SchemaError(f"migration to {revision!r} failed: {error}") from error
        raise


def history() -> list[tuple[str, str | None, str]]:
    """(revision, down_revision, message) from newest to oldest."""
    return [
        (
            str(rev.revision),
            rev.down_revision if isinstance(rev.down_revision, str) else None,
            rev.doc or "",
        )
        for rev in _script().walk_revisions()
    ]


def check_models_match(engine: Engine) -> list[Any]:
    """Differences between the models and the database (empty when the migrations match)."""
    with translate_errors(), engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"render_as_batch": True})
        diffs: list[Any] = compare_metadata(context, Base.metadata)
        conn.rollback()
        return diffs
