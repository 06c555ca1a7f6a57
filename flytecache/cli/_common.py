"""Options and helpers shared by the CLI commands."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from flytecache.store import CacheStore

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="FLYTECACHE_DB",
        help="Database: a SQLite path, sqlite:///path or postgresql+psycopg://...",
        show_default=True,
    ),
]
DEFAULT_DB = "./flytecache.db"


@contextlib.contextmanager
def cli_errors(verbose: bool = False) -> Iterator[None]:
    """Print a FlyteCacheError as one line on stderr and exit 1 (traceback only if verbose)."""
    from flytecache.errors import FlyteCacheError

    try:
        yield
    except FlyteCacheError as error:
        if verbose:
            raise
        typer.echo(f"error: {error}", err=True)
        raise typer.Exit(1) from None


def open_store(db: str, *, migrate: bool = False) -> CacheStore:
    """Open the store for a command (no implicit migration unless asked)."""
    from flytecache.config import StoreSettings
    from flytecache.store import CacheStore

    return CacheStore.open(db, settings=StoreSettings.from_env(), migrate=migrate)


def err(message: str) -> None:
    """A message for people, on stderr."""
    print(message, file=sys.stderr)
