"""``flytecache entries``: list, show, remove and prune cached task results."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from flytecache.cli import _present as present
from flytecache.cli._common import (
    DEFAULT_DB,
    BlobPrefixOption,
    DbOption,
    JsonOption,
    VerboseOption,
    YesOption,
    cli_errors,
    confirm,
    err,
    human_age,
    human_bytes,
    human_time,
    open_store,
    parse_duration_option,
    parse_size_option,
    plural,
    print_json,
    progress,
    stdout_console,
    usage_error,
)
from flytecache.cli._listing import (
    Column,
    JsonlOption,
    KeysOption,
    Listing,
    TableOption,
    WideOption,
    choose_format,
    print_rows,
    printable,
)

if TYPE_CHECKING:
    from flytecache.store import CacheStore
    from flytecache.store.admin import EntryFilter, EntrySummary, PruneResult

app = typer.Typer(help="Inspect and manage entries.", no_args_is_help=True)

_DURATIONS = "90s, 15m, 12h, 30d or 2w"

ProjectOption = Annotated[str | None, typer.Option(help="Only entries of this project.")]
DomainOption = Annotated[str | None, typer.Option(help="Only entries of this domain.")]
NameOption = Annotated[str | None, typer.Option(help="Only entries of this task (name).")]
VersionOption = Annotated[str | None, typer.Option(help="Only entries of this task version.")]
OlderThanOption = Annotated[
    timedelta | None,
    typer.Option(
        parser=parse_duration_option,
        metavar="DURATION",
        help=f"Only entries last updated more than DURATION ago ({_DURATIONS}).",
    ),
]
NewerThanOption = Annotated[
    timedelta | None,
    typer.Option(
        parser=parse_duration_option,
        metavar="DURATION",
        help=f"Only entries last updated less than DURATION ago ({_DURATIONS}).",
    ),
]


def _filter(
    project: str | None,
    domain: str | None,
    name: str | None,
    version: str | None,
    older_than: timedelta | None,
    newer_than: timedelta | None,
) -> EntryFilter:
    from flytecache.store.admin import EntryFilter

    return EntryFilter(
        project=project,
        domain=domain,
        name=name,
        version=version,
        older_than=older_than,
        newer_than=newer_than,
    )


def _entry_cells(now: int) -> Callable[[EntrySummary], tuple[str, ...]]:
    def cells(entry: EntrySummary) -> tuple[str, ...]:
        return (
            entry.key,
            entry.project,
            entry.domain,
            entry.name,
            entry.version,
            human_age(entry.last_updated_at, now),
            "inline" if entry.inline else entry.output_uri or "",
            human_bytes(entry.size),
        )

    return cells


_COLUMNS = (
    Column("key", min_width=28),
    Column("project", min_width=7, drop=5),
    Column("domain", min_width=7, drop=6),
    Column("name", min_width=12, drop=3, cut="start"),
    Column("version", min_width=7, drop=4),
    Column("updated", reserve=len("23h 59m ago"), drop=1),
    Column("output", min_width=12, drop=7, cut="middle"),
    Column("size", reserve=len("999.9 KiB"), drop=2, right=True),
)


@app.command("ls")
def list_entries(
    project: ProjectOption = None,
    domain: DomainOption = None,
    name: NameOption = None,
    version: VersionOption = None,
    older_than: OlderThanOption = None,
    newer_than: NewerThanOption = None,
    limit: Annotated[
        int, typer.Option(min=0, help="Show at most N entries, newest first (0: no limit).")
    ] = 100,
    db: DbOption = DEFAULT_DB,
    table: TableOption = None,
    wide: WideOption = False,
    keys: KeysOption = False,
    json: JsonOption = False,
    jsonl: JsonlOption = False,
    verbose: VerboseOption = False,
) -> None:
    """List entries, most recently updated first.

    On a terminal: a table fitted to its width, one line per entry. Long keys are shortened in
    the middle ("…") but never so far that two nearby rows read alike; columns that do not fit
    are left out. --wide shows every column, with the keys in full.

    Piped or redirected: one line per entry and no header, the fields in full, separated by
    tabs: key, project, domain, name, version, updated, output, size. (A value holding a tab,
    newline or other control character is printed as a JSON string.)

    --keys prints only the keys; --json prints a JSON array and --jsonl one JSON object per
    line, with timestamps in ISO 8601 and sizes in bytes. Every form is printed as the entries
    are read, in constant memory.
    """
    form = choose_format(table=table, wide=wide, keys=keys, json=json, jsonl=jsonl)
    with cli_errors(verbose):
        from flytecache.store import admin

        where = _filter(project, domain, name, version, older_than, newer_than)
        with open_store(db) as store:
            now = store.now_us()
            # One more than asked, to tell people that the listing was cut short.
            rows = admin.iter_entries(store, where, limit=limit + 1 if limit else None, now_us=now)
            truncated = False

            def capped() -> Iterator[EntrySummary]:
                nonlocal truncated
                for index, entry in enumerate(rows):
                    if limit and index >= limit:
                        truncated = True
                        return
                    yield entry

            # Stopping after `limit` rows leaves the listing's read transaction open: close it
            # here, so its connection goes back to the pool before the store is closed.
            with contextlib.closing(rows):
                listing = Listing(
                    noun="entries",
                    columns=_COLUMNS,
                    cells=_entry_cells(now),
                    key=lambda entry: entry.key,
                    as_json=present.entry_json,
                )
                print_rows(capped(), listing, form)
            if truncated:
                total, _ = admin.count_entries(store, where, now_us=now)
                err(f"showing the newest {limit} of {total} entries; use --limit 0 for all")


ScopeProject = Annotated[
    str | None,
    typer.Option(
        "--project",
        help="With --domain: KEY is the unscoped cache key of this project, as Flyte sends it.",
        show_default=False,
    ),
]
ScopeDomain = Annotated[
    str | None,
    typer.Option(
        "--domain",
        help="With --project: KEY is the unscoped cache key of this domain.",
        show_default=False,
    ),
]


def _stored_key(key: str, project: str | None, domain: str | None) -> str:
    """The key as stored: scoped ``<project>-<domain>-<key>`` when a scope is given."""
    if project is None and domain is None:
        return key
    from flytecache.scoping import scoped_key

    return scoped_key(project or "", domain or "", key)


def _not_found_hint(project: str | None, domain: str | None) -> str:
    if project is None and domain is None:
        return (
            "entries written through `flytecache serve` or the SDK integrations are stored as "
            '"<project>-<domain>-<key>": give that key, or --project and --domain with yours'
        )
    return f'looked up as "<project>-<domain>-<key>" with project "{project or ""}", domain ' + (
        f'"{domain or ""}"'
    )


@app.command()
def show(
    key: Annotated[
        str,
        typer.Argument(help="The entry's key as stored (unscoped with --project/--domain)."),
    ],
    project: ScopeProject = None,
    domain: ScopeDomain = None,
    db: DbOption = DEFAULT_DB,
    json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Show one entry: metadata, key map and its output URI or inline outputs."""
    with cli_errors(verbose):
        from flytecache.errors import NotFoundError
        from flytecache.store import admin

        stored = _stored_key(key, project, domain)
        with open_store(db) as store:
            try:
                detail = admin.get_entry(store, stored)
            except NotFoundError as error:
                hint = _not_found_hint(project, domain)
                raise NotFoundError(f"{error.message} ({hint})", key=stored) from None
            now = store.now_us()
        if json:
            print_json(present.detail_json(detail))
            return
        from rich.table import Table
        from rich.text import Text

        console = stdout_console()
        entry = detail.entry
        info = [
            ("key", entry.key),
            *(
                (label, getattr(entry, label) or "-")
                for label in ("project", "domain", "name", "version", "org")
            ),
            ("resource type", present.resource_type_name(entry.resource_type) or "-"),
            ("created", f"{human_time(entry.created_at)} ({human_age(entry.created_at, now)})"),
            (
                "last updated",
                f"{human_time(entry.last_updated_at)} ({human_age(entry.last_updated_at, now)})",
            ),
            ("size", human_bytes(entry.size)),
            ("output URI", entry.output_uri or "- (inline outputs)"),
        ]
        labels = max(len(label) for label, _ in info)
        for label, value in info:
            # Each value whole on its line (the terminal may wrap it): a key or URI cut short
            # with "…" could not be copied.
            line = Text.assemble((label.ljust(labels), "bold"), "  ", printable(value))
            console.print(line, soft_wrap=True)
        if detail.key_map:
            key_map = Table("key map", "value", box=None, pad_edge=False)
            for name, value in sorted(detail.key_map.items()):
                key_map.add_row(name, str(value))
            console.print()
            console.print(key_map)
        if detail.outputs is not None:
            console.print()
            if not detail.outputs:
                console.print("no outputs")
                return
            outputs = Table("output", "type", "size", "value", box=None, pad_edge=False)
            for name, raw in detail.outputs:
                output = present.describe_literal(name, raw)
                value = "" if output.value is None else _show_value(output.value)
                outputs.add_row(output.name, output.type, human_bytes(output.size), value)
            console.print(outputs)


def _show_value(value: Any) -> str:
    import json as json_module

    return value if isinstance(value, str) else json_module.dumps(value)


@app.command("rm")
def remove(
    keys: Annotated[
        list[str], typer.Argument(help="Keys of the entries to remove (as stored, or unscoped).")
    ],
    project: ScopeProject = None,
    domain: ScopeDomain = None,
    db: DbOption = DEFAULT_DB,
    yes: YesOption = False,
    json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Remove entries (and their inline outputs) by key.

    Exits 1 if any key had no entry (the others are still removed).
    """
    with cli_errors(verbose):
        from flytecache.store import admin

        keys = [_stored_key(key, project, domain) for key in keys]
        with open_store(db) as store:
            confirm(f"remove {plural(len(keys), 'entry', 'entries')}", yes=yes)
            result = admin.delete_entries(store, keys)
        if json:
            print_json(
                {"removed": result.removed, "missing": result.missing, "bytes": result.bytes}
            )
        removed = plural(len(result.removed), "entry", "entries")
        err(f"removed {removed} ({human_bytes(result.bytes)})")
        if result.missing:
            shown = ", ".join(f'"{k}"' for k in result.missing[:3])
            more = f" and {len(result.missing) - 3} more" if len(result.missing) > 3 else ""
            err(f"error: no entry for {shown}{more} ({_not_found_hint(project, domain)})")
            raise typer.Exit(1)


EvictionChoice = Literal["least-recently-stored", "least-recently-used"]


@app.command()
def prune(
    older_than: Annotated[
        timedelta | None,
        typer.Option(
            parser=parse_duration_option,
            metavar="DURATION",
            help=f"Remove entries last updated more than DURATION ago ({_DURATIONS}).",
        ),
    ] = None,
    to_size: Annotated[
        int | None,
        typer.Option(
            parser=parse_size_option,
            metavar="SIZE",
            help="Remove entries, oldest first, until their payload is at most SIZE (5GiB).",
        ),
    ] = None,
    to_count: Annotated[
        int | None,
        typer.Option(min=0, help="Remove entries, oldest first, until at most N remain."),
    ] = None,
    eviction: Annotated[
        EvictionChoice | None,
        typer.Option(
            help="With --to-size/--to-count, which go first: least-recently-stored (the "
            "default), or least-recently-used (reads as recorded by stores evicting that way)."
        ),
    ] = None,
    project: ProjectOption = None,
    domain: DomainOption = None,
    name: NameOption = None,
    version: VersionOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            metavar="",
            help="Only count what would be removed (with --delete-blobs, the blobs too).",
        ),
    ] = False,
    delete_blobs: Annotated[
        bool,
        typer.Option(
            "--delete-blobs",
            metavar="",
            help="Also delete each removed entry's output blob under a --blob-prefix, after "
            "the removal commits (failures are reported, not fatal).",
        ),
    ] = False,
    blob_prefix: BlobPrefixOption = None,
    batch_size: Annotated[
        int, typer.Option(min=1, max=10_000, help="Entries removed per write transaction.")
    ] = 500,
    db: DbOption = DEFAULT_DB,
    yes: YesOption = False,
    json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Remove old entries, or the oldest down to a size or count, in small batches (concurrent
    writers are never blocked for long; entries whose key has a live reservation stay when
    pruning to a size or count). --project/--domain/--name/--version narrow --older-than;
    --eviction orders --to-size/--to-count."""
    by_age = older_than is not None
    by_size = to_size is not None or to_count is not None
    if by_age == by_size:
        raise usage_error("give --older-than, or --to-size and/or --to-count (not both)")
    if by_size and any(v is not None for v in (project, domain, name, version)):
        raise usage_error("--project/--domain/--name/--version filter --older-than only")
    if by_age and eviction is not None:
        raise usage_error("--eviction orders --to-size/--to-count; --older-than takes no order")
    with cli_errors(verbose):
        with open_store(db) as store:
            prefixes = tuple(blob_prefix or store.settings.blob_prefixes)
            if delete_blobs and not prefixes:
                raise usage_error(
                    "--delete-blobs needs --blob-prefix (or FLYTECACHE_BLOB_PREFIXES)"
                )
            if delete_blobs:
                from flytecache.blobs import check_backends
                from flytecache.config import check_blob_prefix
                from flytecache.errors import InvalidArgumentError

                try:
                    for prefix in prefixes:
                        check_blob_prefix(prefix, name="--blob-prefix")
                    check_backends(prefixes)  # before any entry goes
                except InvalidArgumentError as error:
                    raise usage_error(str(error)) from None
            blobs = prefixes if delete_blobs else None
            if by_size:
                result = _prune_to(
                    store,
                    to_size,
                    to_count,
                    eviction or "least-recently-stored",
                    dry_run,
                    batch_size,
                    blobs,
                    yes,
                )
            else:
                assert older_than is not None
                where = _filter(project, domain, name, version, older_than, None)
                result = _prune_by_age(store, where, older_than, dry_run, batch_size, blobs, yes)
        if json:
            report = present.prune_json(result)
            if by_size:  # what is left, against the targets
                report["remaining_entries"] = result.remaining_entries
                report["remaining_bytes"] = result.remaining_bytes
            print_json(report)
        verb = "would remove" if dry_run else "removed"
        err(f"{verb} {plural(result.entries, 'entry', 'entries')} ({human_bytes(result.bytes)})")
        if by_size:
            _say_what_remains(result, to_size, to_count, dry_run)
        if delete_blobs:
            _say_what_blobs(result, dry_run)


def _say_what_blobs(result: PruneResult, dry_run: bool) -> None:
    """The blob line of a prune with --delete-blobs; a dry run counts, measuring nothing."""
    blobs = result.blobs
    outside = plural(blobs.skipped, "blob", "blobs")
    if dry_run:
        err(
            f"would delete up to {plural(blobs.deleted, 'blob', 'blobs')} under the prefixes"
            + (f"; would leave {outside} outside them" if blobs.skipped else "")
        )
    else:
        err(
            f"deleted {plural(blobs.deleted, 'blob', 'blobs')} ({human_bytes(blobs.bytes)})"
            + (f"; left {outside} outside the prefixes" if blobs.skipped else "")
        )
    for uri, reason in blobs.failed:
        err(f"warning: {'would not' if dry_run else 'could not'} delete blob {uri}: {reason}")


def _prune_by_age(
    store: CacheStore,
    where: EntryFilter,
    older_than: timedelta,
    dry_run: bool,
    batch_size: int,
    blobs: tuple[str, ...] | None,
    yes: bool,
) -> PruneResult:
    from flytecache.store import admin

    now = store.now_us()
    if dry_run:
        return admin.prune(store, where, now_us=now, dry_run=True, blob_prefixes=blobs)
    count, size = admin.count_entries(store, where, now_us=now)
    if count:
        confirm(
            f"remove {plural(count, 'entry', 'entries')} ({human_bytes(size)}) "
            f"last updated before {human_time(now - older_than // timedelta(microseconds=1))}",
            yes=yes,
        )
    removed = _Removed()
    with progress("pruning", total=count) as update, removed.reported():
        return admin.prune(
            store,
            where,
            now_us=now,
            batch_size=batch_size,
            on_batch=removed.advance(update, count),
            blob_prefixes=blobs,
        )


def _prune_to(
    store: CacheStore,
    to_size: int | None,
    to_count: int | None,
    policy: EvictionChoice,
    dry_run: bool,
    batch_size: int,
    blobs: tuple[str, ...] | None,
    yes: bool,
) -> PruneResult:
    from flytecache.store import admin, eviction

    planned = admin.prune_to(
        store,
        size=to_size,
        count=to_count,
        policy=policy,
        dry_run=True,
        blob_prefixes=blobs if dry_run else None,  # a preview only when it is all there is
    )
    if dry_run:
        return planned
    if planned.entries:
        confirm(
            f"remove {plural(planned.entries, 'entry', 'entries')} "
            f"({human_bytes(planned.bytes)}), {policy.replace('-', ' ')} first",
            yes=yes,
        )
    removed = _Removed()
    with progress("pruning", total=planned.entries) as update, removed.reported():
        pruned = admin.prune_to(
            store,
            size=to_size,
            count=to_count,
            policy=policy,
            batch_size=batch_size,
            on_batch=removed.advance(update, planned.entries),
            blob_prefixes=blobs,
        )
    # Read again: other processes' puts meanwhile count against the target too.
    entries, size = eviction.totals(store)
    return dataclasses.replace(pruned, remaining_entries=entries, remaining_bytes=size)


def _say_what_remains(
    result: PruneResult, to_size: int | None, to_count: int | None, dry_run: bool
) -> None:
    """A line on stderr when the entries left are still above a --to-size/--to-count target."""
    over = []
    if to_count is not None and result.remaining_entries > to_count:
        extra = plural(result.remaining_entries - to_count, "entry", "entries")
        over.append(f"{extra} over --to-count {to_count:,}")
    if to_size is not None and result.remaining_bytes > to_size:
        over.append(
            f"{human_bytes(result.remaining_bytes - to_size)} over --to-size {human_bytes(to_size)}"
        )
    if not over:
        return
    left = plural(result.remaining_entries, "entry", "entries")
    err(
        f"{left} ({human_bytes(result.remaining_bytes)}) {'would ' if dry_run else ''}remain"
        f"{'' if dry_run or result.remaining_entries != 1 else 's'}: {' and '.join(over)}. "
        "Entries whose key has a live reservation are kept"
        + ("" if dry_run else ", and puts made meanwhile count too")
        + "; prune again later"
    )


class _Removed:
    """Entries and bytes a prune's committed batches removed: the progress bar's count, and
    what an interrupt reports (every batch commits on its own, so they stay removed).

    The first Ctrl-C stops the prune after the batch in flight, once it is counted: a
    KeyboardInterrupt raised between a batch's COMMIT and its count would report one batch
    too few. A second Ctrl-C interrupts at once (a prune waiting for the lock or the eviction
    lease), and the report then says "at least".
    """

    def __init__(self) -> None:
        self.entries = 0
        self.bytes = 0
        self._stop = False
        self._exact = True

    def advance(self, update: Callable[..., None], count: int) -> Callable[[int, int], None]:
        def advance(entries: int, size: int) -> None:
            self.entries += entries
            self.bytes += size
            update(self.entries, max(count, self.entries))
            if self._stop:
                raise KeyboardInterrupt

        return advance

    def _on_sigint(self, _signum: int, _frame: object) -> None:
        if self._stop:
            self._exact = False
            raise KeyboardInterrupt
        self._stop = True

    @contextlib.contextmanager
    def reported(self) -> Iterator[None]:
        import signal
        import threading

        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        except KeyboardInterrupt:
            removed = plural(self.entries, "entry", "entries")
            err(
                f"interrupted: removed {'' if self._exact else 'at least '}{removed} "
                f"({human_bytes(self.bytes)}) before the interrupt; they stay removed, and "
                "running the prune again continues"
            )
            raise typer.Exit(130) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
