"""The ``flytecache`` command line: one Typer per noun, verbs as commands.

Heavy imports (SQLAlchemy, protobuf) happen inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from . import db, entries, maintenance, reservations, serve, transfer

app = typer.Typer(
    name="flytecache",
    help="Flyte's cache and reservation store on one SQLite file (or PostgreSQL).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib import metadata

        typer.echo(f"flytecache {metadata.version('flytecache')}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            "-V",
            callback=_version,
            is_eager=True,
            metavar="",
            help="Print the version and exit.",
        ),
    ] = False,
) -> None:
    """Flyte's cache and reservation store on one SQLite file (or PostgreSQL)."""


app.add_typer(db.app, name="db")
app.add_typer(entries.app, name="entries")
app.add_typer(reservations.app, name="reservations")
serve.register(app)  # flytecache serve
transfer.register(app)  # flytecache export / import
maintenance.register(app)  # flytecache stats / vacuum / checkpoint


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())  # pragma: no cover
