"""``flytecache reservations``: who holds which lease, until when; release and clean up."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Annotated

import typer

from flytecache.cli import _present as present
from flytecache.cli._common import (
    DEFAULT_DB,
    DbOption,
    JsonOption,
    VerboseOption,
    YesOption,
    cli_errors,
    confirm,
    err,
    human_age,
    human_seconds,
    open_store,
    plural,
    print_json,
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
)

if TYPE_CHECKING:
    from flytecache.store.admin import ReservationInfo

app = typer.Typer(help="Inspect and manage reservations.", no_args_is_help=True)


def _expiry(expires_in: float) -> str:
    if expires_in > 0:
        return f"expires in {human_seconds(expires_in)}"
    return f"expired {human_seconds(-expires_in)} ago"


def _lease_cells(lease: ReservationInfo) -> tuple[str, ...]:
    return (
        lease.key,
        lease.owner_id,
        _expiry(lease.expires_in),
        human_seconds(lease.heartbeat_interval / 1_000_000),
        human_age(lease.created_at, lease.now),
    )


_LISTING = Listing(
    noun="reservations",
    columns=(
        Column("key", min_width=28),
        Column("owner", min_width=12, drop=2, cut="middle"),
        Column("state", reserve=len("expired 23h 59m ago")),
        Column("heartbeat", drop=3),
        Column("held since", reserve=len("23h 59m ago"), drop=1),
    ),
    cells=_lease_cells,
    key=lambda lease: lease.key,
    as_json=present.reservation_json,
)


@app.command("ls")
def list_reservations(
    active: Annotated[bool, typer.Option("--active", metavar="", help="Only live leases.")] = False,
    expired: Annotated[
        bool, typer.Option("--expired", metavar="", help="Only expired leases.")
    ] = False,
    owner: Annotated[str | None, typer.Option(help="Only leases held by this owner.")] = None,
    limit: Annotated[
        int, typer.Option(min=0, help="Show at most N leases, by key (0: no limit).")
    ] = 0,
    db: DbOption = DEFAULT_DB,
    table: TableOption = None,
    wide: WideOption = False,
    keys: KeysOption = False,
    json: JsonOption = False,
    jsonl: JsonlOption = False,
    verbose: VerboseOption = False,
) -> None:
    """List reservations (default: all), with who holds them and until when.

    On a terminal: a table fitted to its width, one line per lease. Long keys are shortened in
    the middle ("…") but never so far that two nearby rows read alike; columns that do not fit
    are left out. --wide shows every column, with the keys in full.

    Piped or redirected: one line per lease and no header, the fields in full, separated by
    tabs: key, owner, state, heartbeat, held since. (A value holding a tab, newline or other
    control character is printed as a JSON string.)

    --keys prints only the keys; --json prints a JSON array and --jsonl one JSON object per
    line, with timestamps in ISO 8601 and durations in seconds. Every form is printed as the
    leases are read, in constant memory.
    """
    if active and expired:
        raise usage_error("--active and --expired are mutually exclusive")
    form = choose_format(table=table, wide=wide, keys=keys, json=json, jsonl=jsonl)
    with cli_errors(verbose):
        from flytecache.store import admin

        state: admin.ReservationState = "active" if active else "expired" if expired else "all"
        with (
            open_store(db) as store,
            # Closed even when printing fails midway: it holds a pooled connection.
            contextlib.closing(
                admin.iter_reservations(store, state=state, owner=owner, limit=limit or None)
            ) as leases,
        ):
            print_rows(leases, _LISTING, form)


@app.command()
def release(
    key: Annotated[str, typer.Argument(help="The reservation's key (as stored).")],
    owner: Annotated[str, typer.Option(help="The owner whose lease to release.")],
    db: DbOption = DEFAULT_DB,
    verbose: VerboseOption = False,
) -> None:
    """Release OWNER's lease on KEY so another run can take it at once.

    Exits 1 when OWNER does not hold a lease on KEY (nothing is changed).
    """
    with cli_errors(verbose):
        from flytecache.errors import NotFoundError
        from flytecache.store import admin

        with open_store(db) as store:
            if store.release_reservation(key, owner):
                err(f'released the reservation on "{key}" held by "{owner}"')
                return
            try:
                holder = admin.get_reservation(store, key)
            except NotFoundError:
                raise NotFoundError(f'no reservation on "{key}"; nothing to release') from None
            raise NotFoundError(
                f'the reservation on "{key}" is held by "{holder.owner_id}", not "{owner}" '
                f"({_expiry(holder.expires_in)}); nothing released"
            )


@app.command()
def gc(
    db: DbOption = DEFAULT_DB,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", metavar="", help="Only count the expired leases.")
    ] = False,
    yes: YesOption = False,
    json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Remove expired reservations (live leases are never touched)."""
    with cli_errors(verbose):
        from flytecache.store import admin

        with open_store(db) as store:
            now = store.lease_now_us()
            expired = admin.count_reservations(store, state="expired", now_us=now)
            if dry_run:
                removed = expired
            else:
                if expired:
                    confirm(
                        f"remove {plural(expired, 'expired reservation', 'expired reservations')}",
                        yes=yes,
                    )
                removed = admin.gc_reservations(store, now_us=now)
        if json:
            print_json({"removed": removed, "dry_run": dry_run})
        verb = "would remove" if dry_run else "removed"
        err(f"{verb} {plural(removed, 'expired reservation', 'expired reservations')}")
