"""Options and helpers shared by the CLI commands.

Only the standard library and typer are imported here: everything heavy (SQLAlchemy, protobuf,
rich) is imported inside the functions that need it, so ``flytecache --help`` stays instant.
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from rich.console import Console

    from flytecache.store import CacheStore
    from flytecache.store.opening import Engine

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

VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        envvar="FLYTECACHE_VERBOSE",
        metavar="",
        help="On error, show the full traceback instead of one line.",
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", metavar="", help="Print JSON to stdout (for scripts).")
]
YesOption = Annotated[
    bool,
    typer.Option(
        "--yes", "-y", metavar="", help="Do not ask for confirmation (required when not a TTY)."
    ),
]


def _check_file_mode_option(value: str) -> str:
    file_mode_of(value)  # refused before the command runs, naming the option
    return value


BlobPrefixOption = Annotated[
    list[str] | None,
    typer.Option(
        metavar="URI",
        help="A URI prefix whose blobs --delete-blobs may delete (repeatable; default: "
        "FLYTECACHE_BLOB_PREFIXES, comma-separated).",
    ),
]


FileModeOption = Annotated[
    str,
    typer.Option(
        "--file-mode",
        envvar="FLYTECACHE_FILE_MODE",
        callback=_check_file_mode_option,
        help="Permission bits (octal, as for chmod) of the files this creates; the umask "
        "does not apply.",
    ),
]
DEFAULT_FILE_MODE = "600"

EXIT_ERROR = 1
EXIT_USAGE = 2


@contextlib.contextmanager
def cli_errors(verbose: bool = False) -> Iterator[None]:
    """Print an error as one line on stderr and exit 1 (the traceback only if ``verbose``).

    ``FlyteCacheError`` messages are printed as they are; file errors name the file; anything
    unexpected names its type. typer's own exits and usage errors pass through untouched.
    """
    from flytecache.errors import FlyteCacheError

    try:
        yield
    except (typer.Exit, typer.Abort, typer.TyperException):
        raise
    except KeyboardInterrupt:
        if verbose:
            raise
        err("interrupted")
        raise typer.Exit(130) from None
    except BrokenPipeError:
        # The reader went away (`flytecache export - | head`): stop quietly, like other tools.
        # Point stdout at /dev/null so the interpreter's final flush does not complain again.
        import os
        import sys

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(0) from None
    except FlyteCacheError as error:
        if verbose:
            raise
        err(f"error: {_one_line(str(error))}")
        raise typer.Exit(EXIT_ERROR) from None
    except OSError as error:
        if verbose:
            raise
        where = f": {error.filename}" if error.filename else ""
        err(f"error: {error.strerror or error}{where}")
        raise typer.Exit(EXIT_ERROR) from None
    except Exception as error:
        if verbose:
            raise
        err(
            f"error: unexpected {type(error).__name__}: {_one_line(str(error))} "
            "(run with --verbose for the traceback)"
        )
        raise typer.Exit(EXIT_ERROR) from None


def _one_line(text: str) -> str:
    return " ".join(text.split())


def settings(file_mode: str | None = None) -> Any:
    """Store settings from ``FLYTECACHE_*`` environment variables (and ``--file-mode``)."""
    from flytecache.config import StoreSettings

    return StoreSettings.from_env(file_mode=file_mode_of(file_mode))


def file_mode_of(text: str | None) -> int | None:
    """The ``--file-mode`` option's value as permission bits (a usage error if malformed)."""
    if text is None:
        return None
    from flytecache.config import parse_file_mode
    from flytecache.errors import InvalidArgumentError

    try:
        return parse_file_mode(text, name="--file-mode")
    except InvalidArgumentError as error:
        raise typer.BadParameter(str(error).removeprefix("--file-mode: ")) from None


def open_store(
    db: str,
    *,
    migrate: bool = False,
    must_exist: bool | None = None,
    file_mode: str | None = None,
) -> CacheStore:
    """Open the store for a command: no implicit migration, and no implicit creation.

    A SQLite file that does not exist is an error unless ``migrate`` (or ``must_exist=False``).
    """
    from flytecache.store.opening import open_store as open_existing

    return open_existing(
        db,
        settings=settings(file_mode),
        must_exist=(not migrate) if must_exist is None else must_exist,
        migrate=migrate,
    )


def open_engine(db: str, *, must_exist: bool = True, file_mode: str | None = None) -> Engine:
    """A bare engine (no schema check) for ``db`` commands; the caller disposes it."""
    from flytecache.store.opening import open_engine as open_bare

    return open_bare(db, settings(file_mode), must_exist=must_exist)


def err(message: str) -> None:
    """A message for people, on stderr."""
    print(message, file=sys.stderr, flush=True)


def usage_error(message: str) -> typer.Exit:
    """Print a one-line usage error and return the exit (code 2) to raise."""
    err(f"error: {message}")
    return typer.Exit(EXIT_USAGE)


def stdin_is_tty() -> bool:
    """Whether a person can answer a prompt (patched in tests)."""
    try:
        return sys.stdin.isatty()
    except (AttributeError, ValueError):
        return False


def confirm(action: str, *, yes: bool) -> None:
    """Go ahead if ``yes``; else ask on a terminal, or refuse (exit 2) without one.

    ``action`` completes "refusing to ...", e.g. ``"delete 3 entries (1.2 KiB)"``.
    """
    if yes:
        return
    if not stdin_is_tty():
        raise usage_error(f"refusing to {action} without --yes (stdin is not a terminal)")
    if not typer.confirm(f"{action[:1].upper()}{action[1:]}?", default=False, err=True):
        err("aborted")
        raise typer.Exit(EXIT_ERROR)


def print_json(value: Any) -> None:
    """Write ``value`` as indented JSON to stdout."""
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


def print_json_list(items: Iterable[Any]) -> int:
    """Stream a JSON list to stdout item by item (constant memory); return the count."""
    out = sys.stdout
    count = 0
    for item in items:
        out.write(("[\n  " if count == 0 else ",\n  ") + json.dumps(item))
        count += 1
    out.write("[]\n" if count == 0 else "\n]\n")
    out.flush()
    return count


def stdout_console() -> Console:
    """A rich console on stdout (data); markup is off, since keys and values may hold ``[``."""
    from rich.console import Console

    return Console(highlight=False, markup=False)


def stderr_console() -> Console:
    """A rich console on stderr (messages, progress)."""
    from rich.console import Console

    return Console(stderr=True, highlight=False)


@contextlib.contextmanager
def progress(description: str, total: int | None = None) -> Iterator[Callable[..., None]]:
    """A rich progress bar on stderr (drawn only on a terminal).

    Yields ``update(done, total=None)``: the number of items done so far (and the total, once
    known).
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
    )

    console = stderr_console()
    with Progress(
        SpinnerColumn(),
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=total, visible=total != 0)

        def update(done: int, total: int | None = None) -> None:
            if total is not None:
                bar.update(task, completed=done, total=total)
            else:
                bar.update(task, completed=done)
            # Nothing to do is said by the command's own line, not by an empty 0/0 bar.
            bar.update(task, visible=bar.tasks[0].total != 0)

        yield update


# -- parsing and formatting ----------------------------------------------------------------


def parse_duration_option(value: str | None) -> timedelta | None:
    """Parse a duration option (``90s``, ``15m``, ``12h``, ``30d``, ``2w``) for typer."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        return value
    from flytecache.config import parse_duration
    from flytecache.errors import InvalidArgumentError

    try:
        return parse_duration(value, name="duration")
    except InvalidArgumentError as error:
        raise typer.BadParameter(str(error).removeprefix("duration: ")) from None


def parse_size_option(value: str | None) -> int | None:
    """Parse a size option (``5GiB``, ``512MiB``, ``1048576``) for typer."""
    if value is None or isinstance(value, int):
        return value
    from flytecache.config import parse_size
    from flytecache.errors import InvalidArgumentError

    try:
        return parse_size(value)
    except InvalidArgumentError as error:
        raise typer.BadParameter(str(error).removeprefix("size: ")) from None


def plural(count: int, one: str, many: str) -> str:
    """``1 entry``, ``2 entries``."""
    return f"{count} {one if count == 1 else many}"


def human_bytes(size: int) -> str:
    """``1536`` → ``1.5 KiB`` (:func:`flytecache.config.format_size`)."""
    from flytecache.config import format_size

    return format_size(size)


def human_seconds(seconds: float) -> str:
    """A short duration for people: ``12s``, ``4m 5s``, ``3h 20m``, ``2d 4h``."""
    if math.isinf(seconds) or math.isnan(seconds):
        return str(seconds)
    total = int(abs(seconds))
    if total < 60:
        return f"{abs(seconds):.0f}s" if total >= 1 else f"{abs(seconds):.1f}s"
    minutes, secs = divmod(total, 60)
    if minutes < 60:
        return f"{minutes}m {secs}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    days, hours = divmod(hours, 24)
    return f"{days}d {hours}h" if hours else f"{days}d"


def human_age(then_us: int, now_us: int) -> str:
    """``3h ago`` (or ``in 5s`` for a time in the future)."""
    delta = (now_us - then_us) / 1_000_000
    return f"{human_seconds(delta)} ago" if delta >= 0 else f"in {human_seconds(-delta)}"


def human_time(us: int | None) -> str:
    """Microseconds since the epoch as ``2026-01-01 00:00:00Z``."""
    if us is None:
        return "-"
    from datetime import UTC, datetime

    try:
        return datetime.fromtimestamp(us / 1_000_000, tz=UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return str(us)
