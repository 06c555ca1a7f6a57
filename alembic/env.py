"""Alembic environment for flytecache.

flytecache runs migrations from code and passes its own connection (already inside a write
transaction) through ``config.attributes["connection"]``; run standalone (``alembic -x
url=sqlite:///cache.db upgrade head``), it opens the URL itself.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from flytecache.store.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
        "sqlalchemy.url"
    )
    if not url:
        raise SystemExit("pass the database with: alembic -x url=sqlite:///path upgrade head")
    with create_engine(url).connect() as conn:
        _run(conn)
        conn.commit()


def _run(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=target_metadata,
        render_as_batch=True,
        literal_binds=True,
    )
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
