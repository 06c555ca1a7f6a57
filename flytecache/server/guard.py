"""Connections under guard: one port for HTTP/1.1 and h2c, a cap, and deadlines uvicorn lacks.

uvicorn answers HTTP/2 (and so gRPC, which needs trailers) only through its zttp protocols, and
it starts no timer until a first response is sent: a socket that sends half a request line and
stops is held forever, and ~1,000 of them exhaust the file descriptors so that nothing, not even
``/healthz``, is accepted any more (reproduced: > 2 minutes until the sockets were closed).

:class:`GuardedConnection` is the protocol uvicorn creates for each accepted socket. It sniffs the
first bytes (the HTTP/2 client preface means prior-knowledge h2c, anything else HTTP/1.1), hands
the connection to uvicorn's zttp protocol for that version, and keeps three rules itself:

* **Header deadline**: a request's headers must be complete within ``header_timeout`` of its
  first byte (or of the connection opening); trickling bytes do not extend it.
* **Idle timeout**: a connection with no request in progress is closed after
  ``keep_alive_timeout``.
* **Connection cap**: at ``max_connections`` a new connection first evicts the oldest one with no
  request in progress (idle, or still waiting for headers); only when every connection is busy is
  the new one refused with ``503`` and a Connect ``unavailable`` body saying to retry.

"A request has started/finished" is told by the app (``CacheServiceApp``) through
:func:`connection_of`, as only it sees where headers end for both HTTP versions.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import MutableMapping
from typing import Any

from uvicorn.config import Config
from uvicorn.protocols.http.zttp_h2_impl import ZttpH2Protocol
from uvicorn.protocols.http.zttp_impl import ZttpProtocol
from uvicorn.server import ServerState

__all__ = ["ConnectionGuard", "GuardedConnection", "connection_of"]

log = logging.getLogger("flytecache.server")

_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_STATE_KEY = "flytecache.connection"
# A refused client gets this long to finish sending before the socket closes: closing with its
# request unread would reset the connection and could destroy the 503 before it is read.
_REFUSAL_LINGER = 1.0


class _H2Protocol(ZttpH2Protocol):
    """uvicorn 0.54's HTTP/2 protocol, with a request whose HEADERS end the stream completed.

    zttp marks such a request (a bodyless POST or GET, as Go's client sends an empty message)
    with ``end_stream`` and emits no ``EndOfMessage`` after it; uvicorn waits for one, so the
    app's first ``receive()`` never returned (reproduced with httpx: a GET over h2c hung).
    """

    def handle_request(self, event: Any) -> None:
        super().handle_request(event)
        cycle = self.cycles.get(event.stream_id)
        if event.end_stream and cycle is not None:
            cycle.more_body = False
            cycle.message_event.set()


class _Http1Protocol(ZttpProtocol):
    """uvicorn 0.54's HTTP/1.1 protocol, whose answer to a request it cannot parse (a bad
    chunk, two Content-Lengths, Transfer-Encoding with Content-Length) carries a Connect
    error body like every other 4xx of the server, instead of plain text."""

    def send_400_response(self, msg: str) -> None:
        body = json.dumps(
            {"code": "invalid_argument", "message": "malformed HTTP/1.1 request"}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"connection", b"close"),
        ]
        self.conn.send_response(400, headers)
        self.conn.send_data(body)
        self.conn.end_message()
        self.transport.write(self.conn.data_to_send())
        self.transport.close()


class _CorkedTransport:
    """The transport as uvicorn's HTTP/1.1 protocol sees it: writes between ``cork()`` and
    ``uncork()`` leave in one ``send()``.

    uvicorn writes a response's head and body separately, each a system call; profiled under
    4 clients putting, those two writes were a fifth of the event loop's time.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._pending: list[bytes] | None = None

    def write(self, data: bytes) -> None:
        if self._pending is None:
            self._transport.write(data)
        else:
            self._pending.append(data)

    def cork(self) -> None:
        if self._pending is None:
            self._pending = []

    def uncork(self) -> None:
        pending, self._pending = self._pending, None
        if pending:
            self._transport.write(b"".join(pending))

    def close(self) -> None:
        self.uncork()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class ConnectionGuard:
    """The live connections of one server process, oldest first, and the limits they obey."""

    def __init__(
        self, *, max_connections: int, header_timeout: float, keep_alive_timeout: float
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.keep_alive_timeout = keep_alive_timeout
        # dict as an ordered set: iteration starts at the oldest connection.
        self.connections: dict[GuardedConnection, None] = {}
        self.refusing: set[GuardedConnection] = set()
        self.evicted = 0
        self.refused = 0
        self.timed_out = 0

    def protocol_factory(self) -> type[GuardedConnection]:
        """The class to give uvicorn as ``http=``: it creates one per accepted socket."""
        guard = self

        class _Bound(GuardedConnection):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(guard, **kwargs)

        return _Bound

    def abort_uploads(self) -> None:
        """At shutdown: close the connections whose requests are still waiting for body
        bytes. Nothing of those requests has run; a graceful shutdown would otherwise wait up
        to its timeout for a client that may never send, and then cancel them with a traceback.
        Their requests end UNAVAILABLE (``CacheServiceApp``), which the client retries."""
        for connection in list(self.connections):
            if connection.uploads:
                connection.aborted = True
                connection.close()

    def admit(self, connection: GuardedConnection) -> bool:
        """Make room for ``connection``; False when every connection has a request running."""
        if len(self.connections) >= self.max_connections:
            for candidate in self.connections:
                if candidate.active == 0:
                    self.evicted += 1
                    candidate.close()
                    break
            else:
                return False
        self.connections[connection] = None
        return True


class GuardedConnection(asyncio.Protocol):
    """One accepted socket: version sniffing, deadlines, and its place under the cap."""

    def __init__(
        self,
        guard: ConnectionGuard,
        *,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        self._guard = guard
        self._config = config
        self._server_state = server_state
        self._loop = _loop or asyncio.get_event_loop()
        self._transport: asyncio.Transport | None = None
        self._inner: asyncio.Protocol | None = None
        self._corked: _CorkedTransport | None = None
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None
        self._waiting_for_headers = True
        self._close_when_answered = False
        self.active = 0
        """Requests of this connection inside the app (HTTP/2 may run several at once)."""
        self.uploads = 0
        """Of those, the ones waiting for body bytes right now (set by the app)."""
        self.aborted = False
        """Closed by :meth:`ConnectionGuard.abort_uploads` (the server is stopping)."""

    # -- the app's side -----------------------------------------------------------------

    def request_started(self) -> None:
        """The app has a request: its headers are in, so the header deadline is met."""
        self.active += 1
        self._waiting_for_headers = False
        self._cancel_timer()

    def request_finished(self) -> None:
        """The app has answered a request; with none left the idle timeout runs."""
        self.active -= 1
        if self._close_when_answered:
            self.close()
        elif self.active == 0 and not self._closing():
            self._arm(self._guard.keep_alive_timeout, waiting_for_headers=False)

    def cork(self) -> None:
        """Hold this response's writes until :meth:`uncork` (HTTP/1.1; a no-op on HTTP/2)."""
        if self._corked is not None:
            self._corked.cork()

    def uncork(self) -> None:
        """Send what :meth:`cork` held, in one write."""
        if self._corked is not None:
            self._corked.uncork()

    def close_when_answered(self) -> None:
        """Close once the current request is answered (its body never came: the rest of it
        is not worth reading, nor the connection worth keeping)."""
        self._close_when_answered = True

    def close(self) -> None:
        """Close after what is already written."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    # -- asyncio.Protocol -----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        if not self._guard.admit(self):
            self._refuse()
            return
        self._arm(self._guard.header_timeout, waiting_for_headers=True)

    def data_received(self, data: bytes) -> None:
        if self in self._guard.refusing:
            return
        if self.active == 0 and not self._waiting_for_headers:
            # The first byte of the next request on an idle connection: its headers now have
            # header_timeout, however slowly the rest trickles in.
            self._arm(self._guard.header_timeout, waiting_for_headers=True)
        inner = self._inner
        if inner is not None:
            inner.data_received(data)
            return
        self._buffer += data
        if len(self._buffer) < len(_H2_PREFACE) and _H2_PREFACE.startswith(self._buffer):
            return  # could still be the HTTP/2 preface
        self._start(http2=self._buffer.startswith(_H2_PREFACE))

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._guard.connections.pop(self, None)
        self._guard.refusing.discard(self)
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    # -- internals -------------------------------------------------------------------------

    def _start(self, *, http2: bool) -> None:
        assert self._transport is not None
        # Each connection's app_state reaches the app as scope["state"]: the app's handle on it.
        # zttp, not httptools, for HTTP/1.1: on "Upgrade: h2c" (curl --http2) httptools stops
        # parsing and the app got an empty body; zttp answers over HTTP/1.1 with the body read.
        inner_class: type[asyncio.Protocol] = _H2Protocol if http2 else _Http1Protocol
        inner = inner_class(
            config=self._config,  # type: ignore[call-arg]
            server_state=self._server_state,
            app_state={_STATE_KEY: self},
            _loop=self._loop,
        )
        self._inner = inner
        transport: Any = self._transport
        if not http2:
            transport = self._corked = _CorkedTransport(self._transport)
        inner.connection_made(transport)
        data, self._buffer = self._buffer, b""
        inner.data_received(data)

    def _arm(self, seconds: float, *, waiting_for_headers: bool) -> None:
        self._cancel_timer()
        self._waiting_for_headers = waiting_for_headers
        self._timer = self._loop.call_later(seconds, self._expire)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expire(self) -> None:
        self._timer = None
        if self.active == 0:
            if self._waiting_for_headers:
                self._guard.timed_out += 1
            self.close()

    def _closing(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def _refuse(self) -> None:
        assert self._transport is not None
        self._guard.refused += 1
        limit = self._guard.max_connections
        body = json.dumps(
            {
                "code": "unavailable",
                "message": f"the server has {limit} connections with requests in progress "
                "(--max-connections); retry later",
            }
        ).encode()
        head = (
            b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
            b"retry-after: 1\r\nconnection: close\r\n"
            b"content-length: " + str(len(body)).encode() + b"\r\n\r\n"
        )
        self._transport.write(head + body)
        if len(self._guard.refusing) >= self._guard.max_connections // 8 + 1:
            self._transport.close()  # too many lingering already: no courtesy
            return
        self._guard.refusing.add(self)
        if self._transport.can_write_eof():
            self._transport.write_eof()
        self._timer = self._loop.call_later(_REFUSAL_LINGER, self._transport.close)


def connection_of(scope: MutableMapping[str, Any]) -> GuardedConnection | None:
    """The guarded connection a request arrived on (None when served without the guard)."""
    state = scope.get("state")
    if state is None:
        return None
    connection = state.get(_STATE_KEY)
    return connection if isinstance(connection, GuardedConnection) else None
