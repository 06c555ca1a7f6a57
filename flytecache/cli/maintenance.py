"""Top-level ``flytecache`` commands: ``stats``, ``vacuum`` and ``checkpoint``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from flytecache.cli._common import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    VerboseOption,
    cli_errors,
    err,
    human_bytes,
    open_store,
    plural,
    print_json,
    stdout_console,
)


def stats(
    db: DbOption = DEFAULT_DB,
    top: Annotated[
        int, typer.Option(min=0, max=1000, help="How many top projects/domains/tasks.")
    ] = 5,
    json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Entries, payload and file sizes, reservations, and the biggest projects and tasks."""
    with cli_errors(verbose):
        from flytecache.store import admin

        with open_store(db) as store:
            data = admin.stats(store, top=top)
        if json:
            print_json(data)
            return
        _print_stats(data)


def _print_stats(data: dict[str, Any]) -> None:
    from rich.table import Table

    console = stdout_console()
    summary = Table.grid(padding=(0, 2))
    summary.add_column(style="bold")
    summary.add_column()
    summary.add_row("database", data["database"])
    summary.add_row(
        "entries",
        f"{data['entries']} ({data['entries_inline']} inline, {data['entries_uri']} URI)",
    )
    summary.add_row("payload", human_bytes(data["payload_bytes"]))
    summary.add_row("oldest update", data["oldest_last_updated_at"] or "-")
    summary.add_row("newest update", data["newest_last_updated_at"] or "-")
    leases = data["reservations"]
    summary.add_row("reservations", f"{leases['active']} active, {leases['expired']} expired")
    files = data["files"]
    if "wal" in files:
        summary.add_row(
            "files",
            f"database {human_bytes(files['database'])}, WAL {human_bytes(files['wal'])}, "
            f"free pages {human_bytes(files['free_bytes'])}",
        )
    else:
        summary.add_row("size", human_bytes(files["database"]))
    console.print(summary)
    for title, columns in (
        ("top projects", ("project",)),
        ("top domains", ("domain",)),
        ("top tasks", ("project", "domain", "name")),
    ):
        rows = data[title.replace(" ", "_")]
        if not rows:
            continue
        table = Table(*columns, "entries", "payload", title=title, title_justify="left")
        for row in rows:
            table.add_row(
                *(row[c] or "-" for c in columns), str(row["entries"]), human_bytes(row["bytes"])
            )
        console.print()
        console.print(table)


def vacuum(db: DbOption = DEFAULT_DB, verbose: VerboseOption = False) -> None:
    """Rebuild the SQLite file to give free pages back to the filesystem (SQLite only).

    Writers wait while it runs; prefer a quiet moment.
    """
    with cli_errors(verbose):
        from flytecache.store import admin
        from flytecache.store.urls import normalize_url

        admin.require_sqlite(normalize_url(db), "vacuum")
        with open_store(db) as store:
            result = admin.vacuum(store.engine)
        err(f"vacuumed: {human_bytes(result.bytes_before)} -> {human_bytes(result.bytes_after)}")


def checkpoint(db: DbOption = DEFAULT_DB, verbose: VerboseOption = False) -> None:
    """Copy the WAL into the database file and truncate the WAL (SQLite only)."""
    with cli_errors(verbose):
        from flytecache.errors import StorageBusyError
        from flytecache.store import admin
        from flytecache.store.urls import normalize_url

        admin.require_sqlite(normalize_url(db), "checkpoint")
        with open_store(db) as store:
            result = admin.checkpoint(store.engine, "TRUNCATE")
            if result.busy:
                raise StorageBusyError(
                    f"the checkpoint could not complete ({result.checkpointed_frames} of "
                    f"{result.wal_frames} frames copied): "
                    + admin.blocking_readers_hint(store.engine)
                )
        size = (
            f"WAL {human_bytes(result.wal_bytes_before)} -> {human_bytes(result.wal_bytes_after)}"
        )
        if result.wal_frames == 0:
            err(f"checkpointed: the WAL was empty; {size}")
        else:
            frames = plural(result.wal_frames, "frame", "frames")
            err(f"checkpointed: all {frames} of the WAL are in the database; {size}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.command("stats")(stats)
    app.command("vacuum")(vacuum)
    app.command("checkpoint")(checkpoint)
