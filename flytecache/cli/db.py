"""``flytecache db``: schema migrations, health checks and backups."""

from __future__ import annotations

from typing import Annotated

import typer

from flytecache.cli import _present as present
from flytecache.cli._common import (
    DEFAULT_DB,
    DEFAULT_FILE_MODE,
    DbOption,
    FileModeOption,
    JsonOption,
    VerboseOption,
    YesOption,
    cli_errors,
    confirm,
    err,
    open_engine,
    print_json,
    progress,
    settings,
    stdout_console,
)

app = typer.Typer(help="Create, migrate, check and back up the database.", no_args_is_help=True)


@app.command()
def upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
    db: DbOption = DEFAULT_DB,
    file_mode: FileModeOption = DEFAULT_FILE_MODE,
    verbose: VerboseOption = False,
) -> None:
    """Create the database if needed and migrate it to REVISION (default: the newest).

    Entries are converted in committed batches with a progress bar; an interrupted upgrade
    (even a kill) is finished by running it again. A SQLite file's directory is created too,
    and a new file gets --file-mode (its -wal and -shm files follow it). On PostgreSQL the
    database itself must exist (CREATE DATABASE); this creates the tables.
    """
    with cli_errors(verbose):
        from flytecache.errors import InvalidArgumentError, SchemaError
        from flytecache.store import migrate, opening
        from flytecache.store.urls import normalize_url

        url = normalize_url(db)
        if not (migrate.known_revision(revision) or revision == "base"):
            try:
                opening.require_database(url)
            except InvalidArgumentError:
                # Opening would create the file: refuse an unknown revision before that, so a
                # typo leaves no empty database behind (an existing one lets alembic decide).
                raise SchemaError(
                    f"unknown revision {revision!r}; see `flytecache db history`"
                ) from None
        opening.create_parent_directory(db)
        engine = open_engine(db, must_exist=False, file_mode=file_mode)
        try:
            # Data migrations (0001 -> 0002, 0003 -> 0004) run in committed batches behind
            # this bar; if interrupted, running the command again continues where it stopped.
            try:
                with progress("migrating rows", total=0) as update:
                    migrate.upgrade(engine, revision, progress=update)
            except KeyboardInterrupt:
                err(
                    "interrupted: the batches already committed stay, and the schema is "
                    "unchanged; run `flytecache db upgrade` again to continue"
                )
                raise typer.Exit(130) from None
            current = opening.schema_state(engine).current
        finally:
            engine.dispose()
        err(f"database {opening.describe_url(engine)} is at revision {current or '(empty)'}")


@app.command()
def downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' drops every table.")],
    db: DbOption = DEFAULT_DB,
    yes: YesOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Migrate the database back to REVISION (may drop tables and their data).

    Warns when other processes have the database open: a server or worker still running the
    newer code stops working (a server answers UNAVAILABLE until the schema is back).
    """
    with cli_errors(verbose):
        from flytecache.store import admin, migrate, opening

        engine = open_engine(db)
        try:
            current = opening.schema_state(engine).current
            others = admin.other_connections(engine)
            if others:
                err(
                    f"warning: {others}: they run the schema this downgrade removes and will "
                    "fail (a flytecache server answers UNAVAILABLE) until it is upgraded again"
                )
            confirm(
                f"downgrade {opening.describe_url(engine)} from {current or '(empty)'} to "
                f"{revision} (tables and data may be dropped)",
                yes=yes,
            )
            migrate.downgrade(engine, revision)
            current = opening.schema_state(engine).current
        finally:
            engine.dispose()
        err(f"database {opening.describe_url(engine)} is at revision {current or '(empty)'}")


@app.command()
def current(
    db: DbOption = DEFAULT_DB, json: JsonOption = False, verbose: VerboseOption = False
) -> None:
    """Print the database's schema revision (and whether it is the newest)."""
    with cli_errors(verbose):
        from flytecache.store import migrate, opening

        engine = open_engine(db)
        try:
            state = opening.schema_state(engine)
        finally:
            engine.dispose()
        revision, head = state.current, state.head
        if json:
            print_json({"current": revision, "head": head, "at_head": revision == head})
            return
        if revision == head:
            where = "head"
        elif not revision:
            where = "empty"
        elif migrate.known_revision(revision):
            where = f"behind head {head}"
        else:  # written by a newer flytecache: upgrading this one cannot help
            where = f"newer than this flytecache knows; its head is {head}"
        typer.echo(f"{revision or '(none)'} ({where})")


@app.command()
def history(
    db: DbOption = DEFAULT_DB, json: JsonOption = False, verbose: VerboseOption = False
) -> None:
    """List the schema revisions, newest first (marking the database's own if it exists)."""
    with cli_errors(verbose):
        from flytecache.errors import InvalidArgumentError
        from flytecache.store import migrate, opening
        from flytecache.store.urls import normalize_url

        revision: str | None = None
        url = normalize_url(db)
        try:
            opening.require_database(url)
            exists = True
        except InvalidArgumentError:
            exists = False  # the history is the code's; the database only marks "current"
        if exists:
            engine = open_engine(db)
            try:
                revision = opening.schema_state(engine).current
            finally:
                engine.dispose()
        head = migrate.head_revision()
        rows = [
            {
                "revision": rev,
                "down_revision": down,
                "message": message,
                "head": rev == head,
                "current": rev == revision,
            }
            for rev, down, message in migrate.history()
        ]
        if json:
            print_json(rows)
            return
        for row in rows:
            marks = [m for m in ("head", "current") if row[m]]
            suffix = f" ({', '.join(marks)})" if marks else ""
            typer.echo(f"{row['down_revision'] or '<base>'} -> {row['revision']}{suffix}")
            typer.echo(f"    {row['message']}")


@app.command()
def check(
    db: DbOption = DEFAULT_DB,
    max_wal: Annotated[
        str, typer.Option(help="Fail when the WAL file is larger than this (e.g. 64MiB).")
    ] = "128MiB",
    quick: Annotated[
        bool,
        typer.Option("--quick", metavar="", help="PRAGMA quick_check instead of integrity_check."),
    ] = False,
    json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Check the schema, the models, the key hashes (a sample), SQLite integrity, the WAL
    size, the filesystem and the file permissions.

    A WAL larger than FLYTECACHE_WAL_SIZE_LIMIT is a warning naming the processes whose read
    transactions hold checkpoints back (past --max-wal, a failure); a database other users
    can read is a warning. On PostgreSQL the SQLite-only items (filesystem, permissions,
    integrity, wal) are reported as skipped. Exits 1 naming the first failing item.
    """
    with cli_errors(verbose):
        from flytecache.config import parse_size
        from flytecache.store import admin, opening

        limit = parse_size(max_wal, name="--max-wal")
        config = settings()
        # Open even on a network filesystem, so that the check reports it as a failing item.
        engine = opening.open_engine(db, config.replace(allow_network_filesystem=True))
        try:
            items = admin.check_database(engine, max_wal_bytes=limit, quick=quick, settings=config)
        finally:
            engine.dispose()
        failed = [item for item in items if item.status == "fail"]
        if json:
            print_json({"ok": not failed, "checks": [present.check_json(item) for item in items]})
        else:
            from rich.table import Table
            from rich.text import Text

            table = Table("check", "status", "detail", box=None, pad_edge=False)
            styles = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}
            for item in items:
                table.add_row(item.name, Text(item.status, style=styles[item.status]), item.detail)
            stdout_console().print(table)
        if failed:
            first = failed[0]
            names = ", ".join(item.name for item in failed)
            detail = " ".join(first.detail.split())
            err(f"error: db check failed: {names} ({first.name}: {detail})")
            raise typer.Exit(1)


@app.command()
def backup(
    path: Annotated[str, typer.Argument(help="Where to write the backup (a new SQLite file).")],
    db: DbOption = DEFAULT_DB,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", metavar="", help="Replace PATH if it exists.")
    ] = False,
    file_mode: FileModeOption = DEFAULT_FILE_MODE,
    json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Copy a SQLite database to PATH with the online backup API (safe while others write).

    SQLite only: back up PostgreSQL with pg_dump (or `flytecache export`).
    """
    with cli_errors(verbose):
        from flytecache.cli._common import human_bytes
        from flytecache.store import admin, opening
        from flytecache.store.urls import normalize_url

        admin.require_sqlite(normalize_url(db), "backup")
        engine = open_engine(db)
        try:
            result = admin.backup(
                engine, path, overwrite=overwrite, file_mode=settings(file_mode).file_mode
            )
        finally:
            engine.dispose()
        if json:
            print_json({"path": result.path, "bytes": result.bytes, "seconds": result.seconds})
        err(
            f"backed up {opening.describe_url(engine)} to {result.path} "
            f"({human_bytes(result.bytes)}) in {result.seconds:.2f}s"
        )
