"""``flytecache reservations``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect and manage reservations.", no_args_is_help=True)
