"""Top-level ``flytecache`` commands: ``export`` and ``import`` (JSON Lines, streamed)."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, cast

import typer

from flytecache.cli import _present as present
from flytecache.cli._common import (
    DEFAULT_DB,
    DEFAULT_FILE_MODE,
    DbOption,
    FileModeOption,
    JsonOption,
    VerboseOption,
    cli_errors,
    err,
    open_store,
    plural,
    print_json,
    progress,
    settings,
)


@contextlib.contextmanager
def _writer(path: str, file_mode: int) -> Iterator[IO[bytes]]:
    """stdout for ``-``; else a sibling temporary file, created with ``file_mode`` whatever the
    umask, renamed over PATH on success.

    A name ending in ``.gz`` is gzip-compressed.
    """
    if path == "-":
        sys.stdout.flush()
        yield sys.stdout.buffer
        sys.stdout.buffer.flush()
        return
    target = Path(path).expanduser()
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        from flytecache.store.filesystem import create_private_file

        partial.unlink(missing_ok=True)
        create_private_file(partial, file_mode)
        with open(partial, "wb") as raw:
            if target.suffix == ".gz":
                import gzip

                with gzip.GzipFile(filename=target.stem, mode="wb", fileobj=raw) as packed:
                    yield cast(IO[bytes], packed)
            else:
                yield raw
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)


@contextlib.contextmanager
def _reader(path: str) -> Iterator[IO[bytes]]:
    """stdin for ``-``; else the file (gunzipped when it starts with the gzip magic).

    A ``.gz`` file that is not gzip, and a damaged or cut-off gzip stream, are an
    :class:`InvalidArgumentError` naming the file (the reading happens in the caller's block,
    which then writes nothing).
    """
    if path == "-":
        yield sys.stdin.buffer
        return
    from flytecache.errors import InvalidArgumentError

    file = Path(path).expanduser()
    with open(file, "rb") as raw:
        if raw.peek(2)[:2] != b"\x1f\x8b":
            if file.suffix == ".gz":  # `export` compresses every .gz it writes
                raise InvalidArgumentError(
                    f"{path}: not gzip data, although the name ends in .gz (an uncompressed "
                    "export? rename it); nothing was imported"
                )
            yield raw
            return
        import gzip
        import zlib

        try:
            with gzip.GzipFile(fileobj=raw, mode="rb") as unpacked:
                yield cast(IO[bytes], unpacked)
        except EOFError:
            raise InvalidArgumentError(
                f"{path}: the gzip data ends early (the file is truncated); nothing was imported"
            ) from None
        except (gzip.BadGzipFile, zlib.error) as error:
            raise InvalidArgumentError(
                f"{path}: not valid gzip data, the file is damaged ({error}); nothing was imported"
            ) from None


def export(
    path: Annotated[str, typer.Argument(help="Output file (.gz to compress), or - for stdout.")],
    overwrite: Annotated[
        bool, typer.Option("--overwrite", metavar="", help="Replace PATH if it exists.")
    ] = False,
    file_mode: FileModeOption = DEFAULT_FILE_MODE,
    db: DbOption = DEFAULT_DB,
    verbose: VerboseOption = False,
) -> None:
    """Export every entry as JSON Lines: a header line, then one line per entry.

    Reads one consistent snapshot without blocking writers, in constant memory. Inline
    outputs are base64-encoded serialized Literals; timestamps are microseconds since the epoch.
    An existing PATH is kept unless --overwrite (as for `db backup`); a new one gets
    --file-mode.
    """
    with cli_errors(verbose):
        from flytecache.store import admin

        if path != "-":
            admin.check_output_path(
                Path(path).expanduser().absolute(), overwrite=overwrite, what="the export"
            )
        with (
            open_store(db) as store,
            admin.export_entries(store) as stream,
            _writer(path, settings(file_mode).file_mode) as out,
            progress("exporting", total=stream.total) as update,
        ):
            for index, line in enumerate(stream.lines):
                out.write(line.encode("utf-8") + b"\n")
                if index % 500 == 0:
                    update(index)
            update(stream.total)
        where = "stdout" if path == "-" else path
        err(f"exported {plural(stream.total, 'entry', 'entries')} to {where}")


def import_(
    path: Annotated[
        str | None,
        typer.Argument(help="An export file (.gz accepted), or - for stdin.", show_default=False),
    ] = None,
    from_flytekit_cache: Annotated[
        Path | None,
        typer.Option(
            "--from-flytekit-cache",
            metavar="DIR",
            help=(
                "Instead of an export file, import the local cache flytekit wrote "
                "(~/.flyte/local-cache), keyed as flytecache.integrations.flytekit stores it."
            ),
        ),
    ] = None,
    project: Annotated[
        str, typer.Option(help="With --from-flytekit-cache: the project to scope entries by.")
    ] = "local",
    domain: Annotated[
        str, typer.Option(help="With --from-flytekit-cache: the domain to scope entries by.")
    ] = "development",
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", metavar="", help="Replace entries whose keys already exist."),
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", metavar="", help="Validate and count; write nothing.")
    ] = False,
    file_mode: FileModeOption = DEFAULT_FILE_MODE,
    db: DbOption = DEFAULT_DB,
    json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Import an export file: every line is validated first; a bad line imports nothing.

    Existing keys are skipped (and counted) unless --overwrite, so importing the same file
    twice changes nothing. A database that does not exist yet is created and migrated (not on
    a dry run), and removed again if the import fails. With --from-flytekit-cache DIR,
    import the cache of flytekit's local executions instead, so that they keep hitting once
    they cache through flytecache.
    """
    if (path is None) == (from_flytekit_cache is None):
        raise typer.BadParameter("give an export file or --from-flytekit-cache DIR (one of them)")
    with cli_errors(verbose):
        if from_flytekit_cache is not None:
            # It checks the cache directory before a database is opened or created; ``db``
            # may also be a cache service's http(s):// URL there.
            _import_flytekit_cache(
                from_flytekit_cache, db, project, domain, overwrite, dry_run, json
            )
            return
        assert path is not None
        from flytecache.errors import InvalidArgumentError
        from flytecache.store import admin, opening

        # Moving a cache to a new machine creates and migrates the database (not on a dry
        # run); a failed import leaves no new empty database behind. The input is opened
        # first: a missing file or one that is not gzip fails before anything is created.
        with (
            _reader(path) as source,
            opening.created_or_nothing(db, create_directory=not dry_run),
            open_store(db, migrate=not dry_run, file_mode=file_mode) as store,
            progress("importing") as update,
        ):
            try:
                result = admin.import_entries(
                    store, source, overwrite=overwrite, dry_run=dry_run, progress=update
                )
            except InvalidArgumentError as error:
                if path == "-" or "line" not in error.fields:
                    raise
                # "line 3" alone does not say of which file.
                raise InvalidArgumentError(f"{path}: {error}", **error.fields) from None
        if json:
            print_json(present.import_json(result))
        existing = (
            f"{result.replaced} replaced" if overwrite else f"{result.skipped} skipped (present)"
        )
        verb = "would import" if dry_run else "imported"
        entries = plural(result.entries, "entry", "entries")
        err(f"{verb} {entries}: {result.inserted} new, {existing}")


def _import_flytekit_cache(
    directory: Path,
    db: str,
    project: str,
    domain: str,
    overwrite: bool,
    dry_run: bool,
    json: bool,
) -> None:
    from flytecache.integrations.flytekit import import_local_cache

    with progress("importing") as update:
        result = import_local_cache(
            directory,
            db,
            project=project,
            domain=domain,
            overwrite=overwrite,
            dry_run=dry_run,
            progress=update,
        )
    if json:
        print_json(
            {
                "read": result.read,
                "imported": result.imported,
                "replaced": result.replaced,
                "skipped": result.skipped,
                "unreadable": result.unreadable,
                "dry_run": dry_run,
            }
        )
    verb = "would import" if dry_run else "imported"
    present = f"{result.replaced} replaced" if overwrite else f"{result.skipped} skipped (present)"
    err(
        f"{verb} {plural(result.imported, 'entry', 'entries')} from {directory}: "
        f"{present}, {len(result.unreadable)} unreadable"
    )
    for key in result.unreadable:
        err(f"  unreadable: {key}")


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""
    app.command("export")(export)
    app.command("import")(import_)
