"""Top-level ``flytecache`` commands (serve)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated

import typer

from flytecache.cli._common import (
    DEFAULT_DB,
    DEFAULT_FILE_MODE,
    BlobPrefixOption,
    DbOption,
    FileModeOption,
    VerboseOption,
    cli_errors,
)

_OPTION_OF_FIELD = {"max_size_bytes": "--max-size", "blob_prefixes": "--blob-prefix"}
"""Settings whose option is not named after the field."""
_PORT = re.compile(r"^(?:\w+://)?(?:[^:]*:)?(\d{1,5})$")


def _port(value: str) -> int:
    # Kubernetes injects FLYTECACHE_PORT=tcp://10.0.0.7:8094 for a Service named
    # "flytecache"; take the port from that form rather than refusing to start.
    match = _PORT.match(value.strip())
    if not match or int(match.group(1)) > 65535:
        raise typer.BadParameter(f"{value!r} is not a port number (0-65535)")
    return int(match.group(1))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the top-level app."""

    @app.command("serve")
    def serve(
        db: DbOption = DEFAULT_DB,
        host: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_HOST",
                help="Interface to listen on (loopback by default; there is no TLS).",
            ),
        ] = "127.0.0.1",
        port: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_PORT",
                help="TCP port (Flyte's default cacheServiceURL uses 8094; 0 picks a free one).",
            ),
        ] = "8094",
        max_heartbeat: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_MAX_HEARTBEAT",
                help="Longest reservation heartbeat granted (and the default), e.g. 10s.",
            ),
        ] = "10s",
        grace_multiplier: Annotated[
            float,
            typer.Option(
                envvar="FLYTECACHE_GRACE_MULTIPLIER",
                help="A lease expires heartbeat x this after its last extension.",
            ),
        ] = 3.0,
        auth_token_file: Annotated[
            Path | None,
            typer.Option(
                envvar="FLYTECACHE_AUTH_TOKEN_FILE",
                help="Require 'Authorization: Bearer <token>' with the token in this file.",
            ),
        ] = None,
        max_request_bytes: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_MAX_REQUEST_BYTES",
                help="Largest request body accepted (after decompression), e.g. 16MiB.",
            ),
        ] = "16MiB",
        wal_size_limit: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_WAL_SIZE_LIMIT",
                help="SQLite: size the -wal file is cut back to after a complete checkpoint.",
            ),
        ] = "64MiB",
        wal_blocked_warning: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_WAL_BLOCKED_WARNING",
                help="SQLite: warn when a reader has kept checkpoints from completing this long.",
            ),
        ] = "60s",
        file_mode: FileModeOption = DEFAULT_FILE_MODE,
        lease_clock: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_LEASE_CLOCK",
                help="Which clock decides leases and entry times: database (PostgreSQL's), "
                "host (each process's), or auto (database on PostgreSQL, host on SQLite).",
            ),
        ] = "auto",
        max_inflight_bytes: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_MAX_INFLIGHT_BYTES",
                help="Request bodies held at once per process; more get RESOURCE_EXHAUSTED "
                "with Retry-After (at least --max-request-bytes).",
            ),
        ] = "64MiB",
        max_connections: Annotated[
            int,
            typer.Option(
                envvar="FLYTECACHE_MAX_CONNECTIONS",
                help="Open connections per process; at the cap the oldest idle one is closed, "
                "or a new one refused with 503 (lowered to fit ulimit -n).",
            ),
        ] = 1000,
        header_timeout: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_HEADER_TIMEOUT",
                help="A request's headers must arrive within this, e.g. 10s.",
            ),
        ] = "10s",
        body_timeout: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_BODY_TIMEOUT",
                help="A request's body must arrive within this of its headers.",
            ),
        ] = "60s",
        keep_alive_timeout: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_KEEP_ALIVE_TIMEOUT",
                help="Close a connection idle for this long.",
            ),
        ] = "30s",
        workers: Annotated[
            int,
            typer.Option(
                envvar="FLYTECACHE_WORKERS",
                help="Processes serving the port (reads scale with them; SQLite writes do not).",
            ),
        ] = 1,
        log_level: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_LOG_LEVEL",
                help="critical, error, warning, info, debug (logs every request) or trace "
                "(also the HTTP protocol).",
            ),
        ] = "info",
        max_size: Annotated[
            str | None,
            typer.Option(
                envvar="FLYTECACHE_MAX_SIZE_BYTES",
                help="Keep the entries' payload under this (e.g. 10GiB), evicting by --eviction "
                "(default: no limit).",
            ),
        ] = None,
        max_entries: Annotated[
            int | None,
            typer.Option(
                envvar="FLYTECACHE_MAX_ENTRIES",
                help="Keep at most this many entries, evicting by --eviction (default: no limit).",
            ),
        ] = None,
        eviction: Annotated[
            str,
            typer.Option(
                envvar="FLYTECACHE_EVICTION",
                help="Which entries a limit evicts first: least-recently-stored, "
                "least-recently-used (reads recorded in memory, flushed every second) or none.",
            ),
        ] = "least-recently-stored",
        delete_blobs: Annotated[
            bool,
            typer.Option(
                "--delete-blobs",
                envvar="FLYTECACHE_DELETE_BLOBS",
                help="Also delete an evicted entry's output blob when it is under a "
                "--blob-prefix (after the eviction commits).",
            ),
        ] = False,
        blob_prefix: BlobPrefixOption = None,
        ui: Annotated[
            bool,
            typer.Option(
                "--ui/--no-ui",
                envvar="FLYTECACHE_UI",
                help="Serve the read-only web view at /ui/ (behind the token, when one is set).",
            ),
        ] = True,
        ui_admin: Annotated[
            bool,
            typer.Option(
                "--ui-admin",
                envvar="FLYTECACHE_UI_ADMIN",
                help="Add 'release lease' and 'delete entry' buttons to the web view.",
            ),
        ] = False,
        verbose: VerboseOption = False,
    ) -> None:
        """Serve Flyte 2's CacheService (Connect, gRPC, gRPC-Web) over the database; migrates it.

        One port speaks HTTP/1.1 and cleartext HTTP/2 (h2c); gRPC needs HTTP/2.

        Point a Flyte 2 executor's cacheServiceURL at the printed address; open it in a
        browser for the web view (/ui/, read-only unless --ui-admin). Stops cleanly on
        SIGTERM or Ctrl-C: in-flight requests finish, the database is closed, exit code 0.
        """
        from flytecache.config import StoreSettings, parse_duration, parse_file_mode, parse_size
        from flytecache.errors import InvalidArgumentError
        from flytecache.server import ServerSettings
        from flytecache.server import serve as run_server

        level = log_level.strip().lower()
        try:
            store_settings = StoreSettings.from_env(
                max_heartbeat=parse_duration(max_heartbeat, name="--max-heartbeat"),
                grace_multiplier=grace_multiplier,
                wal_size_limit=parse_size(wal_size_limit, name="--wal-size-limit"),
                file_mode=parse_file_mode(file_mode, name="--file-mode"),
                lease_clock=lease_clock.strip().lower(),
                max_size_bytes=parse_size(max_size, name="--max-size") if max_size else None,
                max_entries=max_entries,
                eviction=eviction.strip().lower(),
                delete_blobs=delete_blobs or None,
                blob_prefixes=tuple(blob_prefix) if blob_prefix else None,
            )
            settings = ServerSettings(
                host=host,
                port=_port(port),
                max_request_bytes=parse_size(max_request_bytes, name="--max-request-bytes"),
                max_inflight_bytes=parse_size(max_inflight_bytes, name="--max-inflight-bytes"),
                max_connections=max_connections,
                header_timeout=parse_duration(header_timeout, name="--header-timeout"),
                body_timeout=parse_duration(body_timeout, name="--body-timeout"),
                keep_alive_timeout=parse_duration(keep_alive_timeout, name="--keep-alive-timeout"),
                workers=workers,
                log_level=level,
                wal_blocked_warning=parse_duration(
                    wal_blocked_warning, name="--wal-blocked-warning"
                ),
                ui=ui,
                ui_admin=ui_admin,
            )
        except InvalidArgumentError as error:
            # Name the option (and so its variable, in the usage message) the value came from.
            field = error.fields.get("field")
            option = None
            message = str(error)
            if isinstance(field, str):
                option = _OPTION_OF_FIELD.get(field) or (
                    field if field.startswith("--") else f"--{field.replace('_', '-')}"
                )
                # typer names the option: "--x: bad" and "x must ..." lose their own name.
                for named in (f"{option}: ", f"{field}: "):
                    message = message.removeprefix(named)
                if message.startswith(f"{field} must "):
                    message = message[len(field) + 1 :]
            raise typer.BadParameter(message, param_hint=option and f"'{option}'") from None
        with cli_errors(verbose):
            run_server(
                db,
                settings,
                store_settings=store_settings,
                auth_token_file=auth_token_file,
                echo=_echo,
            )
        _exit_now()


def _exit_now() -> None:
    """Exit 0 at once after a clean stop: requests are finished and the database is closed,
    so the interpreter's teardown of protobuf and SQLAlchemy (about a second, measured) would
    only delay whoever stopped the server."""
    import logging
    import os
    import sys

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _echo(line: str) -> None:
    typer.echo(line)
