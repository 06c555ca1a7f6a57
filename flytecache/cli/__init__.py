"""The ``flytecache`` command line: one Typer per noun, verbs as commands.

Heavy imports (SQLAlchemy, protobuf) happen inside the commands so ``--help`` is instant.
"""

from __future__ import annotations

import sys

import typer

from . import db, entries, maintenance, reservations, serve, transfer

app = typer.Typer(
    name="flytecache",
    help="Flyte's cache and reservation store on one SQLite file (or PostgreSQL).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(db.app, name="db")
app.add_typer(entries.app, name="entries")
app.add_typer(reservations.app, name="reservations")
serve.register(app)  # flytecache serve
transfer.register(app)  # flytecache export / import
maintenance.register(app)  # flytecache stats / vacuum / checkpoint


def main() -> None:
    """Console-script entry point."""
    sys.exit(app())  # pragma: no cover
