"""Generate ``docs/cli.md`` from the typer app: ``python -m flytecache.cli._docs [--check]``.

The reference is rendered by typer's own Markdown generator (what ``typer ... utils docs``
runs), so it always matches ``--help``. ``--check`` exits 1 when the file is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

INTRO = """\
<!-- Generated from the typer app by `python -m flytecache.cli._docs`; do not edit by hand. -->

Every command takes `--db` (a SQLite path, `sqlite:///path` or `postgresql+psycopg://...`;
environment variable `FLYTECACHE_DB`, default `./flytecache.db`) and `--verbose` (full traceback
on errors). Data goes to stdout, messages to stderr; listings take `--json`. Exit codes: 0 success,
1 an error (one line on stderr), 2 a usage error (including a destructive command run without
`--yes` when stdin is not a terminal). Durations are written `90s`, `15m`, `12h`, `30d`, `2w`.

"""

DOCS_PATH = Path(__file__).resolve().parents[2] / "docs" / "cli.md"


def render() -> str:
    """The Markdown reference for every ``flytecache`` command."""
    import typer
    from typer.cli import get_docs_for_click

    from flytecache.cli import app

    command = typer.main.get_command(app)
    ctx = typer.Context(command, info_name="flytecache")
    body = get_docs_for_click(obj=command, ctx=ctx, name="flytecache", title="`flytecache` CLI")
    title, _, rest = body.partition("\n\n")
    return f"{title}\n\n{INTRO}{rest.strip()}\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check``, verify) the reference at ``docs/cli.md``."""
    args = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in args:
        current = DOCS_PATH.read_text(encoding="utf-8") if DOCS_PATH.exists() else ""
        if current != text:
            print(f"{DOCS_PATH} is stale: run `python -m flytecache.cli._docs`", file=sys.stderr)
            return 1
        return 0
    DOCS_PATH.write_text(text, encoding="utf-8")
    print(f"wrote {DOCS_PATH}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
