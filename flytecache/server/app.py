"""The ASGI app: flyteidl2's CacheService (Connect, gRPC, gRPC-Web) behind a small gateway.

The gateway routes ``/healthz``, ``/metrics`` and the web view (``/`` and ``/ui/``), checks
the content type and the bearer token, bounds each request body (size, deadline, and the
process's budget for bodies in flight), answers unknown paths with a Connect error, tells the
guarded connection when a request starts and ends, and records request metrics; everything
else is flyteidl2's generated ``CacheServiceASGIApplication`` on the connectrpc runtime, which
answers errors in the request's own protocol.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.cacheservice.v2.cacheservice_connect import CacheServiceASGIApplication
from prometheus_client import CONTENT_TYPE_LATEST

from flytecache.server.codecs import BoundedGzip, JSONCodec, ProtoCodec, skipped_compression
from flytecache.server.guard import GuardedConnection, connection_of
from flytecache.server.limits import BodyBudget, RequestLedger, current_ledger
from flytecache.server.metrics import RPC_NAMES, Metrics
from flytecache.server.service import StoreCacheService, rpc_outcome
from flytecache.server.settings import ServerSettings
from flytecache.server.threads import StoreThreads
from flytecache.server.watch import SchemaGuard, Watch
from flytecache.store import CacheStore

__all__ = ["SERVICE_PATH", "CacheServiceApp", "build_app"]

log = logging.getLogger("flytecache.server")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
HealthCheck = Callable[[], Awaitable[tuple[bool, str]]]

SERVICE_PATH = "/flyteidl2.cacheservice.v2.CacheService"
RPC_PATHS = {f"{SERVICE_PATH}/{name}": name for name in RPC_NAMES}

# Connect's HTTP status for each code (connect-go / connectrpc use the same table).
_HTTP_STATUS = {
    Code.INVALID_ARGUMENT: 400,
    Code.UNAUTHENTICATED: 401,
    Code.NOT_FOUND: 404,
    Code.RESOURCE_EXHAUSTED: 429,
    Code.UNIMPLEMENTED: 404,  # an unknown procedure is a 404 in the Connect protocol
    Code.INTERNAL: 500,
    Code.UNAVAILABLE: 503,
    Code.DEADLINE_EXCEEDED: 504,
}
_STATUS_CODE = {
    400: "invalid_argument",
    401: "unauthenticated",
    403: "permission_denied",
    404: "unimplemented",
    405: "unimplemented",
    408: "deadline_exceeded",
    409: "already_exists",
    412: "failed_precondition",
    413: "resource_exhausted",
    415: "unimplemented",
    429: "resource_exhausted",
    499: "canceled",
    501: "unimplemented",
    503: "unavailable",
    504: "deadline_exceeded",
}


# The content types each protocol's requests carry (parameters such as charset aside).
_PROTOCOLS = {
    "application/proto": "connect",
    "application/json": "connect",
    "application/grpc": "grpc",
    "application/grpc+proto": "grpc",
    "application/grpc+json": "grpc",
    "application/grpc-web": "grpc-web",
    "application/grpc-web+proto": "grpc-web",
    "application/grpc-web+json": "grpc-web",
}
_ACCEPTED = ", ".join(_PROTOCOLS)


class _ConnectApp(CacheServiceASGIApplication):  # type: ignore[misc]
    """The generated app with strict codecs (the generated __init__ does not take codecs)."""

    def __init__(self, service: Any, *, max_request_bytes: int) -> None:
        super().__init__(
            service,
            read_max_bytes=max_request_bytes,
            compressions=[BoundedGzip(max_request_bytes)],
        )
        # connectrpc 0.10 (pinned) keeps the codecs here; the defaults turn a malformed body
        # into UNKNOWN/500 and a logged traceback, ours into INVALID_ARGUMENT.
        self._codecs = {codec.name(): codec for codec in (ProtoCodec(), JSONCodec())}


# -- the gateway ----------------------------------------------------------------------------


class CacheServiceApp:
    """ASGI app: the CacheService plus ``/healthz``, ``/metrics``, auth and limits."""

    def __init__(
        self,
        service: Any,
        *,
        settings: ServerSettings,
        metrics: Metrics,
        health: HealthCheck,
        threads: StoreThreads | None = None,
        ui: Callable[[Scope, Receive, Send], Awaitable[None]] | None = None,
    ) -> None:
        self.settings = settings
        self._ui = ui
        self.metrics = metrics
        self._connect = _ConnectApp(service, max_request_bytes=settings.max_request_bytes)
        self._health = health
        self._threads = threads
        self._limit = settings.max_request_bytes
        self._body_seconds = settings.body_timeout.total_seconds()
        self.budget = BodyBudget(settings.max_inflight_bytes)
        # Past this, an oversized body is not drained for a clean answer: the connection drops.
        self._drain_cap = 4 * settings.max_request_bytes + (1 << 20)
        token = settings.auth_token
        self._token = None if token is None else token.encode("utf-8")
        self.closers: list[Callable[[], None]] = []
        """Called by :meth:`close` (the watch thread's stop)."""

    def close(self) -> None:
        """Stop what the app runs besides requests (call once serving has ended)."""
        while self.closers:
            self.closers.pop()()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "lifespan":
            await _lifespan(receive, send)
            return
        if kind != "http":  # websockets: not ours
            return
        connection = connection_of(scope)
        if connection is not None:
            connection.request_started()
        try:
            path = scope["path"]
            rpc = RPC_PATHS.get(path)
            if rpc is not None:
                await self._rpc(rpc, scope, receive, send)
            elif path == "/healthz":
                await self._healthz(scope, receive, send)
            elif path == "/metrics":
                await self._metrics(scope, receive, send)
            elif self._ui is not None and (path in ("/", "/ui") or path.startswith("/ui/")):
                await self._ui(scope, receive, send)
            else:
                await self._discard(scope, receive)
                self.metrics.observe("unknown", "unimplemented", 0.0)
                await _connect_error(send, Code.UNIMPLEMENTED, f"no such procedure: {path[:200]}")
        finally:
            if connection is not None:
                connection.uncork()
                connection.request_finished()

    # -- RPCs --------------------------------------------------------------------------

    async def _rpc(self, rpc: str, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status: list[int] = []
        error_body = bytearray()
        outcome: list[str] = []
        ledger = self.budget.ledger()
        skipped: list[bool] = []
        self.metrics.in_flight.inc()

        async def send_and_watch(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                if connection is not None:
                    connection.cork()  # head and body in one write (guard._CorkedTransport)
                status.append(message["status"])
                if skipped or ledger.refused:
                    message = _adjust_headers(
                        message, uncompressed=bool(skipped), retry=ledger.refused
                    )
            elif (
                message["type"] == "http.response.body"
                and status[:1] != [200]
                and len(error_body) < 4096
            ):
                error_body.extend(message.get("body", b""))
            await send(message)
            if (
                connection is not None
                and message["type"] == "http.response.body"
                and not message.get("more_body", False)
            ):
                connection.uncork()

        connection = connection_of(scope)
        token = rpc_outcome.set(outcome)
        ledger_token = current_ledger.set(ledger)
        skip_token = skipped_compression.set(None)
        try:
            await self._rpc_checked(scope, receive, send_and_watch, ledger, skipped)
        except Exception:
            # The runtime re-raises unexpected errors after answering (or before, for a
            # protocol it cannot serve here); either way the client gets an answer.
            log.exception("%s failed unexpectedly", rpc)
            if not status:
                await _connect_error(send_and_watch, Code.INTERNAL, "internal error")
        finally:
            ledger.release()
            skipped_compression.reset(skip_token)
            current_ledger.reset(ledger_token)
            rpc_outcome.reset(token)
            self.metrics.in_flight.dec()
            code = _code_of(outcome, status, error_body)
            self.metrics.observe(rpc, code, time.perf_counter() - started)

    async def _rpc_checked(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        ledger: RequestLedger,
        skipped: list[bool],
    ) -> None:
        headers = _headers(scope)
        content_type = headers.get(b"content-type", b"").decode("latin-1")
        protocol = _PROTOCOLS.get(content_type.partition(";")[0].strip().lower())
        if protocol is None or scope["method"] != "POST":
            await self._discard(scope, receive)
            if scope["method"] != "POST":
                await _http_error(send, 405, "CacheService procedures take POST", allow="POST")
            else:
                await _http_error(
                    send,
                    415,
                    f"unsupported content type {content_type[:100]!r}; use one of {_ACCEPTED}",
                    extra=[(b"accept-post", _ACCEPTED.encode())],
                )
            return
        if protocol == "grpc" and "http.response.trailers" not in scope.get("extensions", {}):
            # gRPC needs HTTP/2 trailers; over HTTP/1.1 only Connect and gRPC-Web work.
            await self._discard(scope, receive)
            await _http_error(
                send,
                415,
                "gRPC needs HTTP/2 (h2c); over HTTP/1.1 use Connect",
                extra=[(b"accept-post", _ACCEPTED.encode())],
            )
            return
        if protocol == "connect":
            skipped_compression.set(skipped)
        refusal = self._refusal(headers, ledger) or _bad_timeout(scope, headers)
        if refusal is not None:
            # Raised from the first receive(), so that the runtime answers in the request's
            # own protocol (Connect JSON, or gRPC status trailers).
            await self._connect(scope, self._failing(scope, receive, refusal), send)
            return
        bounded = self._bounded(
            receive, ledger, connection_of(scope), enveloped=protocol != "connect"
        )
        await self._connect(scope, bounded, send)

    def _refusal(self, headers: dict[bytes, bytes], ledger: RequestLedger) -> ConnectError | None:
        """Why this request is answered without reading it, if it is."""
        if self._token is not None and not self._authorized(headers):
            return ConnectError(Code.UNAUTHENTICATED, "missing or invalid bearer token")
        length = _content_length(headers)
        if length is None:
            return None
        if length < 0:
            return ConnectError(Code.INVALID_ARGUMENT, "invalid content-length")
        if length > self._limit:
            return self._too_large()
        try:
            ledger.reserve(length)
        except ConnectError as error:
            return error
        return None

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        assert self._token is not None
        value = headers.get(b"authorization", b"")
        scheme, _, credentials = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Constant time: the comparison must not reveal how much of a guess was right.
        return hmac.compare_digest(credentials.strip(), self._token)

    def _failing(self, scope: Scope, receive: Receive, error: ConnectError) -> Receive:
        """``receive`` that drops the body, then raises ``error``."""

        async def failing_receive() -> MutableMapping[str, Any]:
            await self._discard(scope, receive)
            raise error

        return failing_receive

    def _bounded(
        self,
        receive: Receive,
        ledger: RequestLedger,
        connection: GuardedConnection | None,
        *,
        enveloped: bool,
    ) -> Receive:
        """``receive`` charging the body to ``ledger``, within the size limit and deadline;
        an ``enveloped`` body (gRPC, gRPC-Web) must hold the bytes its length prefix promises."""
        received = 0
        deadline = asyncio.get_running_loop().time() + self._body_seconds
        complete = False
        prefix = bytearray()

        async def bounded_receive() -> MutableMapping[str, Any]:
            nonlocal received, complete
            if complete:
                return await receive()
            if connection is not None:
                connection.uploads += 1
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                if connection is not None:
                    connection.close_when_answered()
                raise ConnectError(
                    Code.DEADLINE_EXCEEDED,
                    f"the request body did not arrive within {self._body_seconds:g} s "
                    "(--body-timeout)",
                ) from None
            finally:
                if connection is not None:
                    connection.uploads -= 1
            if message["type"] != "http.request":
                if connection is not None and connection.aborted:
                    raise ConnectError(Code.UNAVAILABLE, "the server is stopping; retry")
                return message
            chunk = message.get("body", b"")
            received += len(chunk)
            complete = not message.get("more_body", False)
            if enveloped and len(prefix) < 5:
                prefix.extend(chunk[: 5 - len(prefix)])
            if enveloped and complete:
                _check_envelope(prefix, received)
            if received > self._limit:
                if not complete:
                    await self._drop_rest(receive, received, connection)
                raise self._too_large()
            try:
                ledger.received(received)
            except ConnectError:
                if not complete:
                    await self._drop_rest(receive, received, connection)
                raise
            return message

        return bounded_receive

    def _too_large(self) -> ConnectError:
        return ConnectError(
            Code.RESOURCE_EXHAUSTED,
            f"request body is larger than the limit of {self._limit} bytes",
        )

    async def _discard(self, scope: Scope, receive: Receive) -> None:
        """Drop the body of a request answered without it (see :meth:`_drop_rest`)."""
        connection = connection_of(scope)
        declared = _content_length(_headers(scope))
        if declared is not None and declared > self._drain_cap:
            # Not worth reading: answered at once, and the connection closes after.
            if connection is not None:
                connection.close_when_answered()
            return
        await self._drop_rest(receive, 0, connection)

    async def _drop_rest(
        self, receive: Receive, already: int, connection: GuardedConnection | None
    ) -> None:
        """Read and drop the rest of the body, so the answer reaches a client still sending:
        at most the drain cap, within ``--body-timeout``. A body past either is not waited
        for; the connection closes once answered (a stalled upload must not hold it, and its
        place under ``--max-connections``, forever)."""
        total = already
        if connection is not None:
            connection.uploads += 1  # a shutdown does not wait for it either
        try:
            async with asyncio.timeout(self._body_seconds):
                while total <= self._drain_cap:
                    message = await receive()
                    if message["type"] != "http.request":
                        return
                    total += len(message.get("body", b""))
                    if not message.get("more_body", False):
                        return
        except TimeoutError:
            pass
        finally:
            if connection is not None:
                connection.uploads -= 1
        if connection is not None:
            connection.close_when_answered()

    # -- health and metrics --------------------------------------------------------------

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _http_error(send, 405, "use GET", allow="GET, HEAD")
            return
        try:
            ok, detail = await asyncio.wait_for(self._health(), timeout=10)
        except TimeoutError:
            ok, detail = False, "the database did not answer within 10 s"
        except Exception as error:
            log.warning("health check failed: %s", error)
            ok, detail = False, "health check failed"
        body = json.dumps({"status": "ok" if ok else "unavailable", "detail": detail}).encode()
        await _respond(send, 200 if ok else 503, body, b"application/json", head=scope)

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["method"] not in ("GET", "HEAD"):
            await _http_error(send, 405, "use GET", allow="GET, HEAD")
            return
        if self._token is not None and not self._authorized(_headers(scope)):
            await _http_error(send, 401, "missing or invalid bearer token")
            return
        render = self.metrics.render
        body = render() if self._threads is None else await self._threads.read(render)
        await _respond(send, 200, body, CONTENT_TYPE_LATEST.encode(), head=scope)


# -- helpers --------------------------------------------------------------------------------


async def _lifespan(receive: Receive, send: Send) -> None:
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


def _check_envelope(prefix: bytes | bytearray, received: int) -> None:
    """INVALID_ARGUMENT for a gRPC body shorter than its 5-byte prefix promises (the runtime
    would count it as no message at all and answer UNIMPLEMENTED), as connect-go does."""
    if received == 0:
        return  # no message: the runtime's own answer
    if len(prefix) < 5:
        raise ConnectError(
            Code.INVALID_ARGUMENT, f"the body ({received} bytes) is shorter than a message prefix"
        )
    promised = int.from_bytes(prefix[1:5], "big")
    if received - 5 < promised:
        raise ConnectError(
            Code.INVALID_ARGUMENT,
            f"the message prefix promises {promised} bytes; the body holds {received - 5}",
        )


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", ())}


def _content_length(headers: dict[bytes, bytes]) -> int | None:
    """The declared body length: None without the header, -1 when it is not a number."""
    declared = headers.get(b"content-length")
    if declared is None:
        return None
    try:
        return int(declared)
    except ValueError:
        return -1


# gRPC's "TimeoutValue TimeoutUnit" (at most 8 digits) and Connect's at most 10 digits.
_GRPC_TIMEOUT = re.compile(rb"[0-9]{1,8}[HMSmun]")
_CONNECT_TIMEOUT = re.compile(rb"[0-9]{1,10}")


def _bad_timeout(scope: Scope, headers: dict[bytes, bytes]) -> ConnectError | None:
    """INVALID_ARGUMENT for a malformed ``grpc-timeout`` or ``connect-timeout-ms`` header,
    which is then dropped from ``scope``: the runtime would fail on it with an internal error
    (gRPC) or ignore it (a negative Connect timeout)."""
    for name, pattern in (
        (b"grpc-timeout", _GRPC_TIMEOUT),
        (b"connect-timeout-ms", _CONNECT_TIMEOUT),
    ):
        value = headers.get(name)
        if value is not None and pattern.fullmatch(value.strip()) is None:
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != name]
            shown = value[:40].decode("latin-1")
            return ConnectError(Code.INVALID_ARGUMENT, f"invalid {name.decode()} header {shown!r}")
    return None


def _code_of(outcome: list[str], status: list[int], error_body: bytearray) -> str:
    if outcome:
        return outcome[-1]
    if not status:
        return "canceled"
    if status[0] == 200:
        return "ok"
    try:
        code = json.loads(bytes(error_body)).get("code")
        if isinstance(code, str) and code:
            return code
    except (ValueError, AttributeError):
        pass
    return _STATUS_CODE.get(status[0], "unknown")


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    *,
    head: Scope | None = None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    headers.extend(extra or ())
    await send({"type": "http.response.start", "status": status, "headers": headers})
    if head is not None and head.get("method") == "HEAD":
        body = b""
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _connect_error(send: Send, code: Code, message: str) -> None:
    body = json.dumps({"code": code.value, "message": message}).encode()
    await _respond(send, _HTTP_STATUS.get(code, 500), body, b"application/json")


async def _http_error(
    send: Send,
    status: int,
    message: str,
    *,
    allow: str | None = None,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"allow", allow.encode())] if allow else []
    headers.extend(extra or ())
    body = json.dumps({"code": _STATUS_CODE.get(status, "unknown"), "message": message}).encode()
    await _respond(send, status, body, b"application/json", extra=headers)


def _adjust_headers(
    message: MutableMapping[str, Any], *, uncompressed: bool, retry: bool
) -> MutableMapping[str, Any]:
    """The response start with ``content-encoding`` dropped (the codec sent the body as is) and
    ``retry-after`` added when the body budget refused the request."""
    headers = [
        (name, value)
        for name, value in message.get("headers", ())
        if not (uncompressed and name.lower() == b"content-encoding")
    ]
    if retry:
        headers.append((b"retry-after", b"1"))
    return {**message, "headers": headers}


# -- building -------------------------------------------------------------------------------


def build_app(
    store: CacheStore, settings: ServerSettings | None = None, *, threads: StoreThreads
) -> CacheServiceApp:
    """The cache service over ``store``; store calls (and health checks) run on ``threads``.

    Also starts the watch thread (WAL and schema, see ``server/watch.py``); ``app.close()``
    stops it.
    """
    from flytecache.store.admin import count_entries

    settings = settings or ServerSettings()

    def entry_count() -> int:
        return count_entries(store)[0]

    schema = SchemaGuard(store)

    def schema_health() -> tuple[bool, str]:
        lost = schema.check()
        if lost is not None:
            return False, lost
        return True, f"schema at {schema_head()}"

    async def health() -> tuple[bool, str]:
        return await threads.read(schema_health)

    _warn_if_readable_by_others(store)
    metrics = Metrics(entry_count)
    if store.evictor is not None:
        metrics.watch_eviction(store.evictor.stats.snapshot)
        store.evictor.start()  # a database already over the limit is evicted at once
    service = StoreCacheService(store, threads=threads, metrics=metrics, schema=schema)
    ui = None
    if settings.ui:
        from flytecache.server.ui import WebView

        ui = WebView(store, settings=settings, threads=threads, metrics=metrics)
    app = CacheServiceApp(
        service, settings=settings, metrics=metrics, health=health, threads=threads, ui=ui
    )
    watch = Watch(
        store, metrics=metrics, schema=schema, wal_blocked_warning=settings.wal_blocked_warning
    )
    watch.start()
    app.closers.append(watch.close)
    return app


def schema_head() -> str:
    """The schema revision this code runs."""
    from flytecache.store.migrate import head_revision

    return head_revision()


def _warn_if_readable_by_others(store: CacheStore) -> None:
    if not store.is_sqlite:
        return
    from flytecache.store.admin.checks import permissions_item
    from flytecache.store.urls import sqlite_file

    item = permissions_item(sqlite_file(store.url))
    if item.status == "warn":
        log.warning("the database is %s", item.detail)
