"""``flytecache entries``."""

from __future__ import annotations

import typer

app = typer.Typer(help="Inspect and manage entries.", no_args_is_help=True)
