"""``flytecache reservations``: who holds which lease, until when; release and clean up."""

from __future__ import annotations

import contextlib
from typing import Annotated

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
    print_json_list,
    stdout_console,
    usage_error,
)

app = typer.Typer(help="Inspect and manage reservations.", no_args_is_help=True)


def _expiry(expires_in: float) -> str:
    if expires_in > 0:
        return f"expires in {human_seconds(expires_in)}"
    return f"expired {human_seconds(-expires_in)} ago"


@app.command("ls")
def list_reservations(
    active: Annotated[bool, typer.Option("--active", help="Only live leases.")] = False,
    expired: Annotated[bool, typer.Option("--expired", help="Only expired leases.")] = False,
    owner: Annotated[str | None, typer.Option(help="Only leases held by this owner.")] = None,
    limit: Annotated[
        int, typer.Option(min=0, help="Show at most N leases, by key (0: no limit).")
    ] = 0,
    db: DbOption = DEFAULT_DB,
    json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """List reservations (default: all), with who holds them and until when."""
    if active and expired:
        raise usage_error("--active and --expired are mutually exclusive")
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
            if json:
                print_json_list(present.reservation_json(lease) for lease in leases)
                return
            from rich.table import Table

            table = Table()
            table.add_column("key", overflow="fold")
            table.add_column("owner", overflow="fold")
            for column in ("state", "heartbeat", "held since"):
                table.add_column(column)
            for lease in leases:
                table.add_row(
                    lease.key,
                    lease.owner_id,
                    _expiry(lease.expires_in),
                    human_seconds(lease.heartbeat_interval / 1_000_000),
                    human_age(lease.created_at, lease.now),
                )
            if table.row_count:
                stdout_console().print(table)
            else:
                err("no reservations")


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
        bool, typer.Option("--dry-run", help="Only count the expired leases.")
    ] = False,
    yes: YesOption = False,
    json: JsonOption = False,
    verbose: VerboseOption = False,
) -> None:
    """Remove expired reservations (live leases are never touched)."""
    with cli_errors(verbose):
        from flytecache.store import admin

        with open_store(db) as store:
            now = store.now_us()
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
