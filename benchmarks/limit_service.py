"""A CacheService answered by the limit (``benchmarks/limit.py``), served by flytecache's own
HTTP stack: what a store that commits every put could reach on this stack (benchmarks only;
it is not part of the product).

``bench_server`` measures ``flytecache serve`` against two contenders on the same stack: the
no-op service (the transport's ceiling) and this one. Each RPC is one or two of the limit's
statements on one SQLite file with flytecache's PRAGMAs, run directly on the event loop, as a
minimal server would: every call is synchronous and nothing else waits on the loop's thread
(one process, one connection; SQLite never waits for a lock no other process takes).

Keys are scoped as the real server scopes them (``<project>-<domain>-<key>``,
``flytecache.scoping``); a reservation is granted, extended or taken over by one upsert, and
refused with the live holder's lease (a second statement reads it), per SPEC §4. Nothing else
of the real server is here: no validation of keys or outputs, ``max_age`` is not honoured (the
limit keeps no timestamps), no reservation metrics.
"""

from __future__ import annotations

import os
import time
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.cacheservice.v2 import cacheservice_pb2 as v2

from benchmarks.limit import Limit
from flytecache import StoreSettings
from flytecache.scoping import reservation_key, scoped_key
from flytecache.server import CacheServiceApp, ServerSettings
from flytecache.server.metrics import Metrics

Ctx = RequestContext[Any, Any]


def _key(request: Any) -> str:
    ident = request.identifier
    return scoped_key(ident.project, ident.domain, request.base_request.key)


def _lease(key: str, owner: str, heartbeat_us: int | None, expires_us: int) -> cs.Reservation:
    lease = cs.Reservation(key=reservation_key(key), owner_id=owner)
    if heartbeat_us is not None:
        seconds, micros = divmod(heartbeat_us, 1_000_000)
        lease.heartbeat_interval.seconds, lease.heartbeat_interval.nanos = seconds, micros * 1000
    seconds, micros = divmod(expires_us, 1_000_000)
    lease.expires_at.seconds, lease.expires_at.nanos = seconds, micros * 1000
    return lease


class LimitCacheService:
    """``flyteidl2.cacheservice.v2.CacheService`` over a :class:`~benchmarks.limit.Limit`.

    Heartbeats are clamped and leases last ``heartbeat × grace_multiplier`` with the defaults
    ``flytecache serve`` runs with (``StoreSettings``). The limit's lease table keeps no
    heartbeat, so a holder's lease comes back without one.
    """

    def __init__(self, limit: Limit, settings: StoreSettings | None = None) -> None:
        settings = settings or StoreSettings()
        self._limit = limit
        self._max_heartbeat_us = int(settings.max_heartbeat.total_seconds() * 1_000_000)
        self._grace = settings.grace_multiplier

    async def get(self, request: v2.GetCacheRequest, ctx: Ctx) -> cs.GetCacheResponse:
        """Get: one ``SELECT`` and a parse, or NOT_FOUND."""
        output = self._limit.get(_key(request))
        if output is None:
            raise ConnectError(Code.NOT_FOUND, "no entry under this key")
        return cs.GetCacheResponse(output=output)

    async def put(self, request: v2.PutCacheRequest, ctx: Ctx) -> cs.PutCacheResponse:
        """Put: one upsert; ALREADY_EXISTS when the key is taken and not overwritten."""
        base = request.base_request
        if not self._limit.put(_key(request), base.output, overwrite=base.overwrite.overwrite):
            raise ConnectError(Code.ALREADY_EXISTS, "an entry exists under this key")
        return cs.PutCacheResponse()

    async def delete(self, request: v2.DeleteCacheRequest, ctx: Ctx) -> cs.DeleteCacheResponse:
        """Delete: one ``DELETE``, or NOT_FOUND."""
        if not self._limit.delete(_key(request)):
            raise ConnectError(Code.NOT_FOUND, "no entry under this key")
        return cs.DeleteCacheResponse()

    async def get_or_extend_reservation(
        self, request: v2.GetOrExtendReservationRequest, ctx: Ctx
    ) -> cs.GetOrExtendReservationResponse:
        """GetOrExtendReservation: the requester's lease (one upsert), or the live holder's
        (one more ``SELECT``)."""
        base = request.base_request
        key = _key(request)
        requested = base.heartbeat_interval.seconds * 1_000_000 + (
            base.heartbeat_interval.nanos // 1000
        )
        heartbeat = requested if 0 < requested < self._max_heartbeat_us else self._max_heartbeat_us
        ttl = round(heartbeat * self._grace)
        now = time.time_ns() // 1000
        if self._limit.acquire(key, base.owner_id, ttl, now_us=now):
            lease = _lease(key, base.owner_id, heartbeat, now + ttl)
        else:
            holder = self._limit.holder(key)
            if holder is None:
                # Released between the two statements: only another process on the same file
                # could do that, and the benchmark runs none.
                raise ConnectError(Code.UNAVAILABLE, "the lease changed hands; retry")
            lease = _lease(key, holder[0], None, holder[1])
        return cs.GetOrExtendReservationResponse(reservation=lease)

    async def release_reservation(
        self, request: v2.ReleaseReservationRequest, ctx: Ctx
    ) -> cs.ReleaseReservationResponse:
        """ReleaseReservation: one ``DELETE`` of the requester's lease (a no-op for others)."""
        self._limit.release(_key(request), request.base_request.owner_id)
        return cs.ReleaseReservationResponse()


def build_limit_app(
    path: str | os.PathLike[str], settings: ServerSettings | None = None
) -> CacheServiceApp:
    """The same stack as ``flytecache serve`` over :class:`LimitCacheService` on the SQLite
    file ``path`` (created if missing)."""
    limit = Limit.open(path)

    async def health() -> tuple[bool, str]:
        return True, "the limit"

    app = CacheServiceApp(
        LimitCacheService(limit),
        settings=settings or ServerSettings(),
        metrics=Metrics(),
        health=health,
    )
    app.closers.append(limit.close)
    return app
