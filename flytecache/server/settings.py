"""ServerSettings: how ``flytecache serve`` listens, limits and authenticates requests."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from flytecache.errors import InvalidArgumentError

__all__ = [
    "DEFAULT_MAX_CONNECTIONS",
    "DEFAULT_MAX_INFLIGHT_BYTES",
    "DEFAULT_MAX_REQUEST_BYTES",
    "DEFAULT_PORT",
    "LOG_LEVELS",
    "ServerSettings",
    "load_token",
]

log = logging.getLogger("flytecache.server")

DEFAULT_PORT = 8094
"""Flyte 2's default ``cacheServiceURL`` is ``http://localhost:8094``."""
DEFAULT_MAX_REQUEST_BYTES = 16 * 1024 * 1024
DEFAULT_MAX_INFLIGHT_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_CONNECTIONS = 1000
LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Listening address, limits and credentials of the cache service; validated here."""

    host: str = "127.0.0.1"
    """Interface to bind; loopback unless told otherwise (there is no TLS)."""
    port: int = DEFAULT_PORT
    """TCP port; 0 picks a free one (the startup line says which)."""
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    """Largest request body accepted, after decompression; larger gets RESOURCE_EXHAUSTED."""
    auth_token: str | None = field(default=None, repr=False)
    """When set, every RPC (and /metrics) needs ``Authorization: Bearer <token>``."""
    log_level: str = "info"
    """uvicorn/flytecache log level; ``debug`` also logs each request (key and owner only)."""
    threads: int = 8
    """Threads running store calls, so a slow write never blocks the event loop."""
    graceful_timeout: timedelta = timedelta(seconds=30)
    """On SIGTERM/SIGINT, how long in-flight requests may take before they are cancelled."""
    wal_blocked_warning: timedelta = timedelta(seconds=60)
    """SQLite: how long checkpoints may be held back by a reader before a warning is logged
    (and again after each such period while they still are)."""
    ui: bool = True
    """Serve the read-only web view under ``/ui/`` (see docs/web-view.md)."""
    ui_admin: bool = False
    """Let the web view release leases and delete entries (CSRF-protected forms)."""
    ui_secret: bytes | None = field(default=None, repr=False)
    """The key the web view signs its forms' CSRF tokens with (at least 16 bytes); None: a
    random one per process, so forms from before a restart are refused. ``serve --workers``
    draws one before forking, so a form one worker rendered is accepted by the others."""
    max_inflight_bytes: int = DEFAULT_MAX_INFLIGHT_BYTES
    """Request bodies held at once by one process (sum over requests, before decompression);
    a request that would pass it gets RESOURCE_EXHAUSTED with ``Retry-After``. At least
    ``max_request_bytes``."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Open connections per process; at the cap the oldest connection without a request in
    progress is closed, or, when all are busy, the new one is refused with 503 UNAVAILABLE.
    Lowered at startup to fit the open-files limit (``ulimit -n``)."""
    header_timeout: timedelta = timedelta(seconds=10)
    """A request's headers must arrive within this of its first byte (or of the connection)."""
    body_timeout: timedelta = timedelta(seconds=60)
    """A request's body must arrive within this of its headers; else DEADLINE_EXCEEDED."""
    keep_alive_timeout: timedelta = timedelta(seconds=30)
    """A connection with no request in progress is closed after this."""
    workers: int = 1
    """Processes serving the one port (and the one database)."""

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise InvalidArgumentError("host must be a non-empty string", field="host")
        if isinstance(self.port, bool) or not isinstance(self.port, int):
            raise InvalidArgumentError(f"port must be an integer, got {self.port!r}", field="port")
        if not 0 <= self.port <= 65535:
            raise InvalidArgumentError(f"port must be in 0..65535, got {self.port}", field="port")
        if (
            isinstance(self.max_request_bytes, bool)
            or not isinstance(self.max_request_bytes, int)
            or self.max_request_bytes < 1024
        ):
            raise InvalidArgumentError(
                f"max_request_bytes must be an integer of at least 1024, "
                f"got {self.max_request_bytes!r}",
                field="max_request_bytes",
            )
        if self.auth_token is not None and (
            not isinstance(self.auth_token, str) or not self.auth_token
        ):
            raise InvalidArgumentError("auth_token must be a non-empty string", field="auth_token")
        if self.log_level not in LOG_LEVELS:
            raise InvalidArgumentError(
                f"log_level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}",
                field="log_level",
            )
        for name in ("threads", "max_inflight_bytes", "max_connections", "workers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(
                    f"{name} must be a positive integer, got {value!r}", field=name
                )
        if self.max_inflight_bytes < self.max_request_bytes:
            raise InvalidArgumentError(
                f"max_inflight_bytes ({self.max_inflight_bytes}) must be at least "
                f"max_request_bytes ({self.max_request_bytes})",
                field="max_inflight_bytes",
            )
        for name in ("graceful_timeout", "header_timeout", "body_timeout", "keep_alive_timeout"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise InvalidArgumentError(f"{name} must be a positive timedelta", field=name)

        if not isinstance(
            self.wal_blocked_warning, timedelta
        ) or self.wal_blocked_warning <= timedelta(0):
            raise InvalidArgumentError(
                "wal_blocked_warning must be a positive timedelta", field="wal_blocked_warning"
            )
        for name in ("ui", "ui_admin"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentError(f"{name} must be a boolean", field=name)
        if self.ui_secret is not None and (
            not isinstance(self.ui_secret, bytes) or len(self.ui_secret) < 16
        ):
            raise InvalidArgumentError("ui_secret must be at least 16 bytes", field="ui_secret")
        if self.ui_admin and not self.ui:
            raise InvalidArgumentError("ui_admin needs the web view (ui)", field="ui_admin")

    def replace(self, **changes: object) -> ServerSettings:
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def load_token(path: str | os.PathLike[str]) -> str:
    """Read a bearer token from ``path`` (surrounding whitespace stripped).

    Logs a warning when the file is readable or writable by group or others: anyone who can
    read it can use the cache service.
    """
    file = Path(path)
    try:
        mode = file.stat().st_mode
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgumentError(
            f"cannot read the auth token file {file}: {error}", field="auth_token_file"
        ) from None
    if not stat.S_ISREG(mode):
        raise InvalidArgumentError(f"{file} is not a regular file", field="auth_token_file")
    if mode & 0o077:
        log.warning(
            "auth token file %s is accessible by group or others (mode %s); run `chmod 600 %s`",
            file,
            oct(stat.S_IMODE(mode)),
            file,
        )
    token = text.strip()
    if not token:
        raise InvalidArgumentError(f"the auth token file {file} is empty", field="auth_token_file")
    if any(ch.isspace() for ch in token) or not token.isprintable():
        raise InvalidArgumentError(
            f"the auth token in {file} must be one line without spaces", field="auth_token_file"
        )
    return token
