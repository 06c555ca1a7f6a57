"""The web view's ASGI app: routing, sign-in, CSRF, pages rendered off the event loop.

Every store call and every template render runs as one job on the server's reader threads
(:class:`~flytecache.server.threads.StoreThreads`), the same lane the Get RPC uses, so the
event loop that serves RPCs only moves bytes. Each page says how long it took in a
``Server-Timing`` header (``store`` for the queries, ``total`` for the whole answer).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import hmac
import logging
import mimetypes
import secrets
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import jinja2

from flytecache import __version__
from flytecache.errors import FlyteCacheError, InvalidArgumentError, NotFoundError
from flytecache.server.metrics import Metrics
from flytecache.server.settings import ServerSettings
from flytecache.server.threads import StoreThreads
from flytecache.server.ui import present
from flytecache.server.ui.forms import STATES, EntryQuery, Params, ReservationQuery, parse_params
from flytecache.store import CacheStore

__all__ = ["COOKIE", "WebView"]

log = logging.getLogger("flytecache.server")

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

PREFIX = "/ui"
COOKIE = "flytecache_ui"
OVERVIEW_SECONDS = 30.0
"""How long the overview's figures are reused (they take a scan of every entry)."""
_MAX_FORM_BYTES = 16 * 1024
_FORM_FIELDS = ("csrf", "key", "owner", "back", "token", "next")
# Pages load their own stylesheet and script only; inline scripts and other origins are refused.
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self'; "
        b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on our own
    # forms, and the cross-site check below needs the real origin.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class _Answer(Exception):
    """Stop handling and answer with an error page (status, title, message)."""

    def __init__(
        self, status: int, title: str, message: str, *, allow: bytes | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message
        self.allow = allow
        """The methods a 405's ``Allow`` header names."""


@dataclass(slots=True)
class _Request:
    method: str
    path: str
    query: bytes
    headers: dict[bytes, bytes]
    signed_in: bool = False
    session: str = ""
    timings: dict[str, float] = field(default_factory=dict)


class WebView:
    """``/ui/``: overview, entries, one entry, reservations; read-only unless ``ui_admin``."""

    def __init__(
        self,
        store: CacheStore,
        *,
        settings: ServerSettings,
        threads: StoreThreads,
        metrics: Metrics,
    ) -> None:
        self._store = store
        self._threads = threads
        self._metrics = metrics
        self._admin = settings.ui_admin
        token = settings.auth_token
        self._token = None if token is None else token.encode("utf-8")
        # The cookie carries a value derived from the token, never the token itself, so a
        # leaked cookie does not open the RPC API; it changes when the token does.
        self._session = (
            ""
            if self._token is None
            else hmac.new(self._token, b"flytecache-ui-session", hashlib.sha256).hexdigest()
        )
        # Per server start (shared by --workers): forms rendered before a restart fail the
        # CSRF check afterwards, which is the safe direction.
        self._csrf_key = settings.ui_secret or secrets.token_bytes(32)
        self._templates = jinja2.Environment(
            loader=jinja2.PackageLoader("flytecache.server.ui", "templates"),
            autoescape=True,
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._templates.filters["size"] = present.format_size
        self._templates.filters["short_key"] = present.short_key
        self._templates.filters["utc"] = present.iso_utc
        self._templates.globals["quote"] = quote
        self._static = _load_static()
        self._overview_lock = asyncio.Lock()
        self._overview_cached: tuple[float, int, Any] | None = None

    # -- the ASGI entry point ---------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one HTTP request whose path is ``/`` or under ``/ui``."""
        started = time.perf_counter()
        request = _Request(
            method=scope["method"],
            path=scope["path"],
            query=scope.get("query_string", b""),
            headers={k.lower(): v for k, v in scope.get("headers", ())},
        )
        body = _Body(receive)
        try:
            await self._route(request, body, send, started)
        except (_Answer, FlyteCacheError) as error:
            status, title, message = _failure(error)
            if status >= 500:
                # The database is busy or gone: worth a retry, not a bug of the view.
                log.warning("web view: %s %s: %s", request.method, request.path[:200], error)
            await body.drain()
            page = await self._render(request, "error.html", {"title": title, "message": message})
            allow = error.allow if isinstance(error, _Answer) else None
            extra = [] if allow is None else [(b"allow", allow)]
            await self._send_page(send, request, status, page, started, extra=extra)
        except Exception:
            log.exception("web view: %s %s failed", request.method, request.path[:200])
            await body.drain()
            page = await self._render(
                request,
                "error.html",
                {"title": "Internal error", "message": "the server logged the details"},
            )
            await self._send_page(send, request, 500, page, started)

    async def _route(self, request: _Request, receive: _Body, send: Send, started: float) -> None:
        path = request.path
        if path in ("/", PREFIX):
            await receive.drain()
            await _redirect(send, f"{PREFIX}/")
            return
        if path.startswith(f"{PREFIX}/static/"):
            await receive.drain()
            await self._send_static(send, request, path.removeprefix(f"{PREFIX}/static/"))
            return
        self._authenticate(request)
        if path == f"{PREFIX}/login":
            await self._login(request, receive, send, started)
            return
        if not request.signed_in:
            await receive.drain()
            if b"authorization" in request.headers:
                # A script with a wrong token wants a status, not a sign-in form.
                raise _Answer(401, "Wrong token", "the bearer token is not the server's")
            if request.method in ("GET", "HEAD"):
                target = path + (f"?{request.query.decode('latin-1')}" if request.query else "")
                await _redirect(send, f"{PREFIX}/login?{urlencode({'next': target})}")
                return
            raise _Answer(401, "Sign in first", "this action needs the server's token")
        pages: dict[str, Callable[[_Request], Awaitable[bytes]]] = {
            f"{PREFIX}/": self._overview,
            f"{PREFIX}/entries": self._entries,
            f"{PREFIX}/entry": self._entry,
            f"{PREFIX}/reservations": self._reservations,
        }
        actions: dict[str, Callable[[_Request, Params], Awaitable[str]]] = {
            f"{PREFIX}/entry/delete": self._delete_entry,
            f"{PREFIX}/reservations/release": self._release,
            f"{PREFIX}/logout": self._logout,
        }
        page = pages.get(path)
        if page is not None:
            if request.method not in ("GET", "HEAD"):
                raise _Answer(
                    405, "Method not allowed", "this page is read with GET", allow=b"GET, HEAD"
                )
            await receive.drain()
            body = await page(request)
            await self._send_page(send, request, 200, body, started)
            return
        action = actions.get(path)
        if action is None:
            raise _Answer(404, "Not found", f"there is no page {_shown(path)}")
        if request.method != "POST":
            raise _Answer(
                405, "Method not allowed", "this action is a POST from its form", allow=b"POST"
            )
        form = await self._form(request, receive)
        location = await action(request, form)
        extra = []
        if path == f"{PREFIX}/logout":
            extra.append((b"set-cookie", _cookie("", max_age=0)))
        await _redirect(send, location, extra=extra)

    # -- sign-in and CSRF -------------------------------------------------------------------

    def _authenticate(self, request: _Request) -> None:
        if self._token is None:
            request.signed_in = True
            request.session = "open"
            return
        bearer = request.headers.get(b"authorization", b"")
        scheme, _, credentials = bearer.partition(b" ")
        if scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), self._token):
            request.signed_in = True
            request.session = self._session
            return
        cookie = _cookies(request.headers.get(b"cookie", b"")).get(COOKIE, "")
        # Constant time: the comparison must not reveal how much of a guess was right.
        if hmac.compare_digest(cookie.encode("latin-1"), self._session.encode()):
            request.signed_in = True
            request.session = self._session

    def _csrf(self, request: _Request) -> str:
        return hmac.new(self._csrf_key, request.session.encode(), hashlib.sha256).hexdigest()

    async def _form(self, request: _Request, receive: _Body) -> Params:
        body = await receive.read(_MAX_FORM_BYTES)
        if body is None:
            raise _Answer(413, "Too large", f"a form is at most {_MAX_FORM_BYTES} bytes")
        return parse_params(body, _FORM_FIELDS)

    def _check_csrf(self, request: _Request, form: Params) -> None:
        origin = request.headers.get(b"origin")
        host = request.headers.get(b"host")
        # Browsers name the page a POST comes from; another site's page is refused even
        # before the form's token is looked at (the token alone would refuse it too).
        # ("null" is an opaque origin, e.g. a sandboxed frame: the form's token decides.)
        if origin not in (None, b"null") and (host is None or origin.partition(b"://")[2] != host):
            raise _Answer(403, "Cross-site request", "this form was sent from another site")
        sent = form.get("csrf")
        if not request.signed_in or not hmac.compare_digest(
            sent.encode("utf-8", "replace"), self._csrf(request).encode()
        ):
            raise _Answer(
                403,
                "Form expired",
                "the form's security token does not match: reload the page and try again",
            )

    async def _login(self, request: _Request, receive: _Body, send: Send, started: float) -> None:
        if request.method in ("GET", "HEAD"):
            await receive.drain()
            params = parse_params(request.query, ("next",))
            target = _safe_next(params.text("next"))
            if request.signed_in:
                await _redirect(send, target)
                return
            body = await self._render(request, "login.html", {"next": target, "failed": False})
            await self._send_page(send, request, 200, body, started)
            return
        if request.method != "POST":
            raise _Answer(405, "Method not allowed", "sign in with the form")
        form = await self._form(request, receive)
        target = _safe_next(form.get("next") or None)
        if self._token is None:
            await _redirect(send, target)
            return
        given = form.get("token").strip().encode("utf-8", "replace")
        if not hmac.compare_digest(given, self._token):
            log.warning("web view: a sign-in with a wrong token")
            body = await self._render(request, "login.html", {"next": target, "failed": True})
            await self._send_page(send, request, 401, body, started)
            return
        await _redirect(send, target, extra=[(b"set-cookie", _cookie(self._session))])

    async def _logout(self, request: _Request, form: Params) -> str:
        self._check_csrf(request, form)
        return f"{PREFIX}/login" if self._token is not None else f"{PREFIX}/"

    # -- pages ------------------------------------------------------------------------------

    async def _overview(self, request: _Request) -> bytes:
        parse_params(request.query, ())
        from flytecache.store.admin import overview

        # The overview reads every entry (seconds at 1M): one computation at a time, its
        # result shown for OVERVIEW_SECONDS, so reloads never pile scans onto the readers.
        async with self._overview_lock:
            cached = self._overview_cached
            if cached is None or time.monotonic() - cached[0] > OVERVIEW_SECONDS:

                def compute() -> Any:
                    return self._timed(request, "store", lambda: overview(self._store))

                at_us = self._store.now_us()
                cached = (time.monotonic(), at_us, await self._threads.read(compute))
                self._overview_cached = cached
        _, at_us, data = cached

        def build() -> bytes:
            return self._render_now(
                request,
                "overview.html",
                {
                    "data": data,
                    "at_us": at_us,
                    "cache_seconds": OVERVIEW_SECONDS,
                    "peak": max((count for _, count in data.per_day), default=0),
                    "days": [(_day(day), n) for day, n in data.per_day],
                    "hits": self._counter("ok"),
                    "misses": self._counter("not_found"),
                },
            )

        return await self._threads.read(build)

    async def _entries(self, request: _Request) -> bytes:
        query = EntryQuery.parse(request.query)
        from flytecache.store.admin import entry_page

        def build() -> bytes:
            page = self._timed(
                request,
                "store",
                lambda: entry_page(
                    self._store, query.filter(), after=query.after, limit=query.limit
                ),
            )
            return self._render_now(request, "entries.html", {"query": query, "page": page})

        return await self._threads.read(build)

    async def _entry(self, request: _Request) -> bytes:
        params = parse_params(request.query, ("key",))
        key = params.text("key")
        if key is None:
            raise InvalidArgumentError("give the entry's key", field="key")
        from flytecache.store.admin import get_entry

        def build() -> bytes:
            try:
                detail = self._timed(request, "store", lambda: get_entry(self._store, key))
            except NotFoundError:
                raise _Answer(404, "No such entry", f'cache entry "{key}" not found') from None
            outputs = (
                None
                if detail.outputs is None
                else [(name, present.literal_tree(raw)) for name, raw in detail.outputs]
            )
            return self._render_now(
                request, "entry.html", {"detail": detail, "e": detail.entry, "outputs": outputs}
            )

        return await self._threads.read(build)

    async def _reservations(self, request: _Request) -> bytes:
        query = ReservationQuery.parse(request.query)
        from flytecache.store.admin import search_reservations

        def build() -> bytes:
            page = self._timed(
                request,
                "store",
                lambda: search_reservations(
                    self._store, query.q, state=query.state, after=query.after
                ),
            )
            return self._render_now(
                request,
                "reservations.html",
                {"query": query, "page": page, "states": STATES},
            )

        return await self._threads.read(build)

    # -- admin actions ----------------------------------------------------------------------

    def _require_admin(self) -> None:
        if not self._admin:
            raise _Answer(
                403,
                "Read-only",
                "this web view is read-only; start `flytecache serve --ui-admin` to change "
                "the cache from here",
            )

    async def _delete_entry(self, request: _Request, form: Params) -> str:
        self._require_admin()
        self._check_csrf(request, form)
        key = form.text("key")
        if key is None:
            raise InvalidArgumentError("give the entry's key", field="key")
        from flytecache.store.admin import delete_entries

        result = await self._threads.write(lambda: delete_entries(self._store, [key]))
        log.info("web view: deleted entry %r (%d found)", key, len(result.removed))
        return f"{PREFIX}/entries"

    async def _release(self, request: _Request, form: Params) -> str:
        self._require_admin()
        self._check_csrf(request, form)
        key, owner = form.text("key"), form.text("owner")
        if key is None or owner is None:
            raise InvalidArgumentError("give the lease's key and owner", field="key")
        released = await self._threads.write(lambda: self._store.release_reservation(key, owner))
        log.info("web view: released %r held by %r (%s)", key, owner, released)
        # Back to the listing the form was on (its search kept), never anywhere else.
        back = _safe_next(form.get("back") or None, f"{PREFIX}/reservations").removesuffix("?")
        return back if back.startswith(f"{PREFIX}/reservations") else f"{PREFIX}/reservations"

    # -- rendering --------------------------------------------------------------------------

    def _timed(self, request: _Request, name: str, fn: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        try:
            return fn()
        finally:
            request.timings[name] = request.timings.get(name, 0.0) + (time.perf_counter() - started)

    def _counter(self, code: str) -> int:
        # From the request counter alone: collecting the whole registry would also count the
        # entries for the flytecache_entries gauge, a scan of the table.
        for family in self._metrics.requests.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels == {"rpc": "Get", "code": code}:
                    return int(sample.value)
        return 0

    def _render_now(self, request: _Request, name: str, context: dict[str, Any]) -> bytes:
        template = self._templates.get_template(name)
        return template.render(
            admin=self._admin,
            auth=self._token is not None,
            signed_in=request.signed_in,
            csrf=self._csrf(request) if request.signed_in else "",
            path=request.path,
            now_ms=self._store.now_us() // 1000,
            version=__version__,
            **context,
        ).encode("utf-8")

    async def _render(self, request: _Request, name: str, context: dict[str, Any]) -> bytes:
        return await self._threads.read(lambda: self._render_now(request, name, context))

    async def _send_page(
        self,
        send: Send,
        request: _Request,
        status: int,
        body: bytes,
        started: float,
        *,
        extra: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        timings = [f"{name};dur={seconds * 1000:.2f}" for name, seconds in request.timings.items()]
        timings.append(f"total;dur={(time.perf_counter() - started) * 1000:.2f}")
        headers = [
            (b"content-type", b"text/html; charset=utf-8"),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"no-store"),
            (b"server-timing", ", ".join(timings).encode()),
            *_SECURITY_HEADERS,
            *(extra or ()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        if request.method == "HEAD":
            body = b""
        await send({"type": "http.response.body", "body": body, "more_body": False})

    async def _send_static(self, send: Send, request: _Request, name: str) -> None:
        found = self._static.get(name)
        if found is None or request.method not in ("GET", "HEAD"):
            raise _Answer(404, "Not found", f"there is no file {_shown(name)}")
        content_type, body = found
        headers = [
            (b"content-type", content_type),
            (b"content-length", str(len(body)).encode()),
            (b"cache-control", b"public, max-age=3600"),
            *_SECURITY_HEADERS,
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send(
            {
                "type": "http.response.body",
                "body": b"" if request.method == "HEAD" else body,
                "more_body": False,
            }
        )


# -- helpers --------------------------------------------------------------------------------


def _failure(error: Exception) -> tuple[int, str, str]:
    """The status, title and message of the page answering ``error``."""
    if isinstance(error, _Answer):
        return error.status, error.title, error.message
    if isinstance(error, InvalidArgumentError):
        return 400, "Bad request", str(error)
    if isinstance(error, NotFoundError):
        return 404, "Not found", str(error)
    return 503, "Unavailable", str(error)


def _day(day: int) -> str:
    """Days since 1970-01-01 as ``YYYY-MM-DD``."""
    return (datetime.date(1970, 1, 1) + datetime.timedelta(days=day)).isoformat()


def _load_static() -> dict[str, tuple[bytes, bytes]]:
    """The shipped assets, read once: name → (content type, bytes)."""
    folder = resources.files("flytecache.server.ui").joinpath("static")
    files: dict[str, tuple[bytes, bytes]] = {}
    for item in folder.iterdir():
        if item.is_file() and not item.name.startswith("."):
            kind = mimetypes.guess_type(item.name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind.endswith("javascript"):
                kind += "; charset=utf-8"
            files[item.name] = (kind.encode(), item.read_bytes())
    return files


def _cookies(header: bytes) -> dict[str, str]:
    found: dict[str, str] = {}
    for part in header.decode("latin-1").split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name not in found:
            found[name] = value
    return found


def _cookie(value: str, *, max_age: int | None = None) -> bytes:
    # HttpOnly: no script reads it; SameSite=Strict: no other site's page sends it.
    attributes = f"{COOKIE}={value}; Path={PREFIX}/; HttpOnly; SameSite=Strict"
    if max_age is not None:
        attributes += f"; Max-Age={max_age}"
    return attributes.encode()


def _safe_next(target: str | None, default: str = f"{PREFIX}/") -> str:
    """A page of this view to go to (after signing in, or an action); anything else goes to
    ``default`` (no open redirect to another site, no line break into a header)."""
    if (
        target
        and target.startswith(f"{PREFIX}/")
        and not target.startswith(f"{PREFIX}//")
        and "\\" not in target
        and target.isprintable()
    ):
        return target
    return default


def _shown(text: str) -> str:
    """User text quoted in an error page: shortened, unprintable characters escaped (the page
    escapes markup; a NUL or a control character would still reach the browser raw)."""
    short = text[:200]
    return short if short.isprintable() else repr(short)[1:-1]


async def _redirect(
    send: Send, location: str, *, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [
        # A header is ASCII: anything else in the path or query is percent-encoded.
        (b"location", quote(location, safe="/?&=%:;,+@!$'()*~#").encode("ascii")),
        (b"content-length", b"0"),
        (b"cache-control", b"no-store"),
        *(extra or ()),
    ]
    await send({"type": "http.response.start", "status": 303, "headers": headers})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


class _Body:
    """The request body, read once: what is left can be dropped without waiting forever."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._more = True

    async def read(self, limit: int) -> bytes | None:
        """The body, or None (after dropping the rest) when it passes ``limit`` bytes."""
        body = bytearray()
        while self._more:
            message = await self._receive()
            if message["type"] != "http.request":
                self._more = False
                break
            body += message.get("body", b"")
            self._more = message.get("more_body", False)
            if len(body) > limit:
                await self.drain()
                return None
        return bytes(body)

    async def drain(self, cap: int = 1 << 20) -> None:
        """Drop what is left of the body, so the answer reaches a client still sending; past
        ``cap`` bytes the client gets its answer and then a closed connection."""
        total = 0
        while self._more and total <= cap:
            message = await self._receive()
            if message["type"] != "http.request":
                self._more = False
                return
            total += len(message.get("body", b""))
            self._more = message.get("more_body", False)
