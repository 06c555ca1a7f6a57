"""Running the service: open (and migrate) the store, bind, serve with uvicorn, stop cleanly.

uvicorn runs on uvloop with :mod:`flytecache.server.guard` as its protocol: uvicorn's zttp
protocols parse HTTP/1.1 and HTTP/2 (h2c), on one port. Measured with the no-op service and
flyteidl2's client (``python -m benchmarks.bench_stacks``), that is the fastest stack that also
serves gRPC; docs/flyte-integration.md has the numbers against uvicorn's h11 default (what
flytecache ran before), httptools, hypercorn and granian.
"""

from __future__ import annotations

import copy
import errno
import functools
import logging
import logging.config
import math
import os
import resource
import secrets
import signal
import socket
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG

from flytecache.config import StoreSettings
from flytecache.server.app import CacheServiceApp, build_app
from flytecache.server.guard import ConnectionGuard
from flytecache.server.settings import ServerSettings, load_token
from flytecache.server.threads import StoreThreads
from flytecache.server.workers import STOP_SIGNALS as _STOP_SIGNALS
from flytecache.server.workers import WriteLock, supervise
from flytecache.store import CacheStore
from flytecache.store.admin import wal_state

__all__ = ["bind", "configure_logging", "run_app", "serve"]

log = logging.getLogger("flytecache.server")


def configure_logging(level: str) -> dict[str, Any]:
    """uvicorn's log format for uvicorn and flytecache loggers; returns the dictConfig used."""
    config = copy.deepcopy(LOGGING_CONFIG)
    numeric = "DEBUG" if level == "trace" else level.upper()
    config["loggers"]["flytecache"] = {
        "handlers": ["default"],
        "level": numeric,
        "propagate": False,
    }
    logging.config.dictConfig(config)
    return config


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY on accepted sockets only
    # then, and without it every response waits ~40 ms for a delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        from flytecache.errors import UnavailableError

        hint = ""
        if error.errno == errno.EADDRINUSE:
            hint = (
                "; another process is listening there: choose another port with --port or "
                "FLYTECACHE_PORT (0 picks a free one)"
            )
        elif error.errno == errno.EADDRNOTAVAIL:
            hint = "; no interface has that address: check --host or FLYTECACHE_HOST"
        raise UnavailableError(f"cannot listen on {host}:{port}: {error.strerror}{hint}") from None
    return sock


def listen_url(sock: socket.socket) -> str:
    """A URL a client can use for a bound socket: a wildcard address becomes loopback."""
    host, port = sock.getsockname()[:2]
    if host == "0.0.0.0":
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def _limits_note(settings: StoreSettings) -> str:
    """The size limits in force, as the start-up line states them (empty without any)."""
    if not settings.limited:
        return ""
    from flytecache.config import format_size

    limits = []
    if settings.max_size_bytes is not None:
        limits.append(format_size(settings.max_size_bytes) + " of payload")
    if settings.max_entries is not None:
        limits.append(f"{settings.max_entries:,} entries")
    blobs = ", deleting their blobs" if settings.delete_blobs else ""
    return f", evicting {settings.eviction} above {' or '.join(limits)}{blobs}"


def _wildcard_note(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    if host not in ("0.0.0.0", "::"):
        return ""
    return f" (all interfaces; from other machines: http://{socket.gethostname()}:{port})"


_FD_RESERVE = 128
"""File descriptors kept free of connections: the database, its WAL, logs, threads, accept()."""


def connection_cap(requested: int) -> int:
    """``requested`` connections, or fewer so that they fit the open-files limit.

    Raises the soft limit to the hard one first (as Go servers do): past it, accept() fails
    with EMFILE and the server stops taking connections, /healthz included.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or hard > soft):
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft == resource.RLIM_INFINITY or requested <= soft - _FD_RESERVE:
        return requested
    fitted = max(16, soft - _FD_RESERVE)
    log.warning(
        "--max-connections %d does not fit the open-files limit (ulimit -n %d); using %d",
        requested,
        soft,
        fitted,
    )
    return fitted


class _StopRequest:
    """SIGTERM/SIGINT before and after uvicorn's own handlers: stop, and exit 0 afterwards.

    uvicorn restores the previous handlers after its graceful shutdown and re-raises the
    signal to them; with these installed the process then closes the store and exits 0
    instead of dying by the signal. A signal during startup (migrations) stops the server
    as soon as it runs.
    """

    def __init__(self) -> None:
        self.requested = threading.Event()
        self.server: uvicorn.Server | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in _STOP_SIGNALS}
            # A new worker starts with them blocked (see workers._fork): deliver one pending.
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.requested.set()
        if self.server is not None:
            self.server.should_exit = True


def run_app(
    app: CacheServiceApp,
    sock: socket.socket,
    settings: ServerSettings,
    *,
    log_config: dict[str, Any] | None = None,
    stop: _StopRequest | None = None,
) -> None:
    """Serve ``app`` on ``sock`` until SIGTERM/SIGINT; in-flight requests are finished."""
    guard = ConnectionGuard(
        max_connections=connection_cap(settings.max_connections),
        header_timeout=settings.header_timeout.total_seconds(),
        keep_alive_timeout=settings.keep_alive_timeout.total_seconds(),
    )
    budget = app.budget

    def limits() -> dict[str, float]:
        return {
            "connections": len(guard.connections),
            "bytes_in_flight": budget.held,
            "connections_evicted": guard.evicted,
            "connections_refused": guard.refused,
            "connections_timed_out": guard.timed_out,
            "requests_over_budget": budget.refused,
        }

    app.metrics.watch_limits(limits)
    config = uvicorn.Config(
        app,
        http=guard.protocol_factory(),
        loop="uvloop",
        log_config=log_config,
        log_level=settings.log_level,
        # Per-request access lines cost about a tenth of a request; only when debugging.
        access_log=settings.log_level in ("debug", "trace"),
        lifespan="off",
        server_header=False,
        # The guard closes idle connections itself; uvicorn's own timer must not come first.
        timeout_keep_alive=math.ceil(settings.keep_alive_timeout.total_seconds()) + 1,
        timeout_graceful_shutdown=max(1, round(settings.graceful_timeout.total_seconds())),
    )
    server = _Server(config, guard)
    if stop is None:
        with _StopRequest() as own:
            _run(server, sock, own)
    else:
        _run(server, sock, stop)


class _Server(uvicorn.Server):
    """uvicorn's server, which at shutdown first lets go of requests still waiting for their
    bodies (:meth:`ConnectionGuard.abort_uploads`): a stalled upload held a SIGINT for the
    whole graceful timeout (30 s, measured) and then ended in a logged traceback."""

    def __init__(self, config: uvicorn.Config, guard: ConnectionGuard) -> None:
        super().__init__(config)
        self._guard = guard

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self._guard.abort_uploads()
        await super().shutdown(sockets=sockets)


def _run(server: uvicorn.Server, sock: socket.socket, stop: _StopRequest) -> None:
    stop.server = server
    if not stop.requested.is_set():
        server.run(sockets=[sock])


def serve(
    db: str | os.PathLike[str],
    settings: ServerSettings,
    *,
    store_settings: StoreSettings | None = None,
    auth_token_file: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] = print,
) -> None:
    """Run ``flytecache serve``: migrate ``db``, listen, serve until told to stop, close.

    ``auth_token_file`` (read after logging is set up, so a permissions warning shows like
    the rest) overrides ``settings.auth_token``. Prints one line saying where it listens and
    which database it serves (through ``echo``). Returns normally after SIGTERM/SIGINT once
    in-flight requests are done and the database is closed.
    """
    log_config = configure_logging(settings.log_level)
    if auth_token_file is not None:
        settings = settings.replace(auth_token=load_token(auth_token_file))
    with _StopRequest() as stop:
        store = CacheStore.open(db, settings=store_settings, migrate=True)
        try:
            sock = bind(settings.host, settings.port)
        except BaseException:
            store.close()
            raise
        database = store.url.render_as_string(hide_password=True)
        workers = f" with {settings.workers} workers" if settings.workers > 1 else ""
        echo(
            f"flytecache: serving CacheService (Connect, gRPC, gRPC-Web) on "
            f"{listen_url(sock)} for {database}{workers}"
            + _limits_note(store.settings)
            + (" (bearer token required)" if settings.auth_token else "")
            + _wildcard_note(sock)
        )
        if settings.host not in ("127.0.0.1", "localhost", "::1") and not settings.auth_token:
            log.warning(
                "listening on %s without --auth-token-file: anyone who can reach it can "
                "read and overwrite the cache",
                settings.host,
            )
        if settings.workers == 1:
            _serve_store(store, sock, settings, log_config, stop)
            return
        # Nothing of the store may cross fork(): each worker opens its own.
        store.close()
        if settings.ui_admin and settings.ui_secret is None:
            # One CSRF key for all workers: a form rendered by one is posted to any of them.
            settings = settings.replace(ui_secret=secrets.token_bytes(32))

        def run_worker() -> None:
            with _StopRequest() as own:
                worker_store = CacheStore.open(db, settings=store_settings, migrate=False)
                path = worker_store.url.database if worker_store.is_sqlite else None
                lock = WriteLock(path) if path else None
                try:
                    _serve_store(worker_store, sock, settings, log_config, own, lock)
                finally:
                    if lock is not None:
                        lock.close()  # after the store is closed (see WriteLock.close)

        supervise(
            settings.workers, run_worker, stop.requested, settings.graceful_timeout.total_seconds()
        )
        log.info("all workers stopped")


def _serve_store(
    store: CacheStore,
    sock: socket.socket,
    settings: ServerSettings,
    log_config: dict[str, Any],
    stop: _StopRequest,
    write_lock: WriteLock | None = None,
) -> None:
    """Serve ``store`` on ``sock`` in this process until stopped; closes the store."""
    # SQLite: one writer thread, which also checkpoints for the writes run on the event loop
    # (see threads.py); PostgreSQL takes concurrent writers.
    threads = StoreThreads(
        readers=settings.threads,
        writers=1 if store.is_sqlite else settings.threads,
        write_lock=write_lock,
        checkpoint=functools.partial(wal_state, store.engine) if store.is_sqlite else None,
    )
    app: CacheServiceApp | None = None
    try:
        app = build_app(store, settings, threads=threads)
        run_app(app, sock, settings, log_config=log_config, stop=stop)
    finally:
        # uvicorn has waited for in-flight requests; nothing is left running on the store.
        if app is not None:
            app.close()  # the watch thread, before the store it reads
        threads.close()
        store.close()
        log.info("database closed")
