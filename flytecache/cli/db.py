"""``flytecache db``: schema migrations."""

from __future__ import annotations

import typer

from flytecache.cli._common import DEFAULT_DB, DbOption, cli_errors, err

app = typer.Typer(help="Create, migrate and check the database schema.", no_args_is_help=True)


@app.command()
def upgrade(
    revision: str = typer.Argument("head", help="Target revision."),
    db: DbOption = DEFAULT_DB,
) -> None:
    """Create the database if needed and migrate it to REVISION (default: the newest)."""
    with cli_errors():
        from flytecache.config import StoreSettings
        from flytecache.store import migrate
        from flytecache.store.engine import create_store_engine, normalize_url, read_connection

        engine = create_store_engine(normalize_url(db), StoreSettings.from_env())
        try:
            migrate.upgrade(engine, revision)
            with read_connection(engine) as conn:
                current = migrate.current_revision(conn)
        finally:
            engine.dispose()
        err(f"database {engine.url.render_as_string(hide_password=True)} is at revision {current}")


@app.command()
def current(db: DbOption = DEFAULT_DB) -> None:
    """Print the database's schema revision (and whether it is the newest)."""
    with cli_errors():
        from flytecache.config import StoreSettings
        from flytecache.store import migrate
        from flytecache.store.engine import create_store_engine, normalize_url, read_connection

        engine = create_store_engine(normalize_url(db), StoreSettings.from_env())
        try:
            with read_connection(engine) as conn:
                revision = migrate.current_revision(conn)
        finally:
            engine.dispose()
        head = migrate.head_revision()
        state = "head" if revision == head else f"behind head {head}" if revision else "empty"
        typer.echo(f"{revision or '(none)'} ({state})")
