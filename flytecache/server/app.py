"""The ASGI app: flyteidl2's Connect CacheService behind a small gateway.

The gateway routes ``/healthz``, ``/metrics`` and the web view (``/`` and ``/ui/``), checks
the bearer token, bounds the request body, answers unknown paths with a Connect error, and
records request metrics; everything else is flyteidl2's generated
``CacheServiceASGIApplication`` on the connectrpc runtime.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
import zlib
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from flyteidl2.cacheservice.v2.cacheservice_connect import CacheServiceASGIApplication
from google.protobuf.json_format import MessageToJson, Parse, ParseError
from google.protobuf.message import DecodeError, Message
from prometheus_client import CONTENT_TYPE_LATEST

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


# -- codecs and compression: malformed input is the client's error, never a crash -----------


class _ProtoCodec:
    """Binary protobuf; an undecodable body is INVALID_ARGUMENT (the runtime would say UNKNOWN)."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message: Any) -> Any:
        try:
            message.ParseFromString(bytes(data))
        except (DecodeError, ValueError, RuntimeError) as error:
            raise ConnectError(
                Code.INVALID_ARGUMENT, "request body is not a valid protobuf message"
            ) from error
        return message


class _JSONCodec:
    """Protobuf JSON, compact, unknown fields ignored (like connect-go); bad JSON is rejected."""

    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        return MessageToJson(message, indent=None).encode()

    def decode(self, data: bytes | bytearray, message: Any) -> Any:
        try:
            Parse(bytes(data), message, ignore_unknown_fields=True)
        except (ParseError, ValueError, RuntimeError, RecursionError) as error:
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"request body is not valid protobuf JSON: {error}"[:300]
            ) from error
        return message


class _BoundedGzip:
    """gzip that refuses to inflate past the request limit (no decompression bombs)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    def name(self) -> str:
        return "gzip"

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        # Responses are small; level 1 costs a fraction of the default for the same result.
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        return compressor.compress(bytes(data)) + compressor.flush()

    def decompress(self, data: bytes | bytearray | memoryview) -> bytes:
        out = bytearray()
        pending = bytes(data)
        try:
            while pending:
                inflater = zlib.decompressobj(47)  # gzip or zlib header, auto-detected
                out += inflater.decompress(pending, self._limit + 1 - len(out))
                if len(out) > self._limit or inflater.unconsumed_tail:
                    raise ConnectError(
                        Code.RESOURCE_EXHAUSTED,
                        f"request body is larger than the limit of {self._limit} bytes",
                    )
                if not inflater.eof:
                    raise ConnectError(Code.INVALID_ARGUMENT, "truncated gzip request body")
                pending = inflater.unused_data  # the next gzip member, if any
        except zlib.error as error:
            raise ConnectError(Code.INVALID_ARGUMENT, "request body is not valid gzip") from error
        return bytes(out)


class _ConnectApp(CacheServiceASGIApplication):  # type: ignore[misc]
    """The generated app with strict codecs (the generated __init__ does not take codecs)."""

    def __init__(self, service: Any, *, max_request_bytes: int) -> None:
        super().__init__(
            service,
            read_max_bytes=max_request_bytes,
            compressions=[_BoundedGzip(max_request_bytes)],
        )
        # connectrpc 0.10 (pinned) keeps the codecs here; the defaults turn a malformed body
        # into UNKNOWN/500 and a logged traceback, ours into INVALID_ARGUMENT.
        self._codecs = {codec.name(): codec for codec in (_ProtoCodec(), _JSONCodec())}


# -- the gateway ----------------------------------------------------------------------------


class _BodyTooLarge(Exception):
    pass


class CacheServiceApp:
    """ASGI app: the Connect CacheService plus ``/healthz``, ``/metrics``, auth and limits."""

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
            await self._discard(receive)
            self.metrics.observe("unknown", "unimplemented", 0.0)
            await _connect_error(send, Code.UNIMPLEMENTED, f"no such procedure: {path[:200]}")

    # -- RPCs --------------------------------------------------------------------------

    async def _rpc(self, rpc: str, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status: list[int] = []
        error_body = bytearray()
        outcome: list[str] = []
        self.metrics.in_flight.inc()

        async def send_and_watch(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            elif (
                message["type"] == "http.response.body"
                and status[:1] != [200]
                and len(error_body) < 4096
            ):
                error_body.extend(message.get("body", b""))
            await send(message)

        token = rpc_outcome.set(outcome)
        try:
            await self._rpc_checked(scope, receive, send_and_watch)
        except Exception:
            # The runtime re-raises unexpected errors after answering (or before, for a
            # protocol it cannot serve here); either way the client gets an answer.
            log.exception("%s failed unexpectedly", rpc)
            if not status:
                await _connect_error(send_and_watch, Code.INTERNAL, "internal error")
        finally:
            rpc_outcome.reset(token)
            self.metrics.in_flight.dec()
            code = _code_of(outcome, status, error_body)
            self.metrics.observe(rpc, code, time.perf_counter() - started)

    async def _rpc_checked(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = _headers(scope)
        if self._token is not None and not self._authorized(headers):
            await self._discard(receive)
            await _connect_error(send, Code.UNAUTHENTICATED, "missing or invalid bearer token")
            return
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        grpc = content_type.startswith("application/grpc") and not content_type.startswith(
            "application/grpc-web"
        )
        if grpc and "http.response.trailers" not in scope.get("extensions", {}):
            # gRPC needs HTTP/2 trailers; over HTTP/1.1 only Connect and gRPC-Web work.
            await self._discard(receive)
            await _http_error(send, 415, "gRPC needs HTTP/2; use Connect (or gRPC-Web)")
            return
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)
            except ValueError:
                length = -1
            if length < 0:
                await _http_error(send, 400, "invalid content-length")
                return
            if length > self._limit:
                await self._discard(receive)
                await self._too_large(send)
                return
        await self._connect(scope, self._bounded(receive), send)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        assert self._token is not None
        value = headers.get(b"authorization", b"")
        scheme, _, credentials = value.partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Constant time: the comparison must not reveal how much of a guess was right.
        return hmac.compare_digest(credentials.strip(), self._token)

    def _bounded(self, receive: Receive) -> Receive:
        """``receive`` that fails with RESOURCE_EXHAUSTED once the body passes the limit."""
        received = 0

        async def bounded_receive() -> MutableMapping[str, Any]:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self._limit:
                    if message.get("more_body", False):
                        await self._discard(receive, already=received)
                    raise ConnectError(
                        Code.RESOURCE_EXHAUSTED,
                        f"request body is larger than the limit of {self._limit} bytes",
                    )
            return message

        return bounded_receive

    async def _too_large(self, send: Send) -> None:
        await _connect_error(
            send,
            Code.RESOURCE_EXHAUSTED,
            f"request body is larger than the limit of {self._limit} bytes",
        )

    async def _discard(self, receive: Receive, already: int = 0) -> None:
        """Read and drop the rest of the body, so the answer reaches a client still sending."""
        total = already
        while total <= self._drain_cap:
            message = await receive()
            if message["type"] != "http.request":
                return
            total += len(message.get("body", b""))
            if not message.get("more_body", False):
                return

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


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return {name.lower(): value for name, value in scope.get("headers", ())}


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


async def _http_error(send: Send, status: int, message: str, *, allow: str | None = None) -> None:
    extra = [(b"allow", allow.encode())] if allow else None
    body = json.dumps({"code": _STATUS_CODE.get(status, "unknown"), "message": message}).encode()
    await _respond(send, status, body, b"application/json", extra=extra)


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
