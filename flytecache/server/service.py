"""The CacheService implementation: scope the key, run the store call, map errors.

Thin on purpose (decode → store → encode): the semantics live in :class:`CacheStore`.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.request import RequestContext
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.cacheservice.v2 import cacheservice_pb2 as v2

from flytecache.error_codes import to_connect_error
from flytecache.errors import (
    InvalidArgumentError,
    StorageBusyError,
)
from flytecache.scoping import ScopedStore, scope_of
from flytecache.server.metrics import Metrics
from flytecache.server.threads import StoreThreads
from flytecache.server.watch import SchemaGuard
from flytecache.store import CacheStore
from flytecache.timeutil import duration_to_timedelta

__all__ = ["StoreCacheService", "rpc_outcome"]

log = logging.getLogger("flytecache.server")

T = TypeVar("T")
Ctx = RequestContext[Any, Any]

rpc_outcome: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "flytecache_rpc_outcome", default=None
)
"""Set by the app around each RPC; the service appends the Connect code it answered."""


class StoreCacheService:
    """``flyteidl2.cacheservice.v2.CacheService`` over a :class:`CacheStore`.

    Every key is scoped ``"<project>-<domain>-<key>"`` by the request's identifier. Store calls
    go through ``threads``: on SQLite tried on the event loop first without waiting for any
    lock, on a thread when that is refused, so the loop keeps serving while one waits for the
    write lock.
    """

    def __init__(
        self,
        store: CacheStore,
        *,
        threads: StoreThreads,
        metrics: Metrics,
        schema: SchemaGuard | None = None,
    ) -> None:
        self._store = ScopedStore(store)
        # SQLite: each call is tried on the event loop first, on connections that never wait
        # (see threads.py); PostgreSQL calls are network round trips and stay on the threads.
        self._now = ScopedStore(store.nowait()) if store.is_sqlite else None
        self._threads = threads
        self._metrics = metrics
        self._schema = schema
        self._busy_timeout = store.settings.busy_timeout.total_seconds()

    async def get(self, request: v2.GetCacheRequest, ctx: Ctx) -> cs.GetCacheResponse:
        """Get: the entry under the scoped key, or NOT_FOUND."""
        return await self._call("Get", request, self._get, write=False)

    async def put(self, request: v2.PutCacheRequest, ctx: Ctx) -> cs.PutCacheResponse:
        """Put: store the output (ALREADY_EXISTS unless overwrite or expired by max_age)."""
        return await self._call("Put", request, self._put)

    async def delete(self, request: v2.DeleteCacheRequest, ctx: Ctx) -> cs.DeleteCacheResponse:
        """Delete: remove the entry, or NOT_FOUND."""
        return await self._call("Delete", request, self._delete)

    async def get_or_extend_reservation(
        self, request: v2.GetOrExtendReservationRequest, ctx: Ctx
    ) -> cs.GetOrExtendReservationResponse:
        """GetOrExtendReservation: the requester's lease, or the live holder's."""
        return await self._call("GetOrExtendReservation", request, self._reserve)

    async def release_reservation(
        self, request: v2.ReleaseReservationRequest, ctx: Ctx
    ) -> cs.ReleaseReservationResponse:
        """ReleaseReservation: drop the requester's lease (a no-op for anyone else)."""
        return await self._call("ReleaseReservation", request, self._release)

    # -- plumbing --------------------------------------------------------------------------

    async def _call(
        self, rpc: str, request: Any, fn: Callable[[ScopedStore, Any], T], *, write: bool = True
    ) -> T:
        outcome = rpc_outcome.get()
        base = request.base_request
        schema = self._schema
        try:
            if schema is not None and schema.lost is not None:
                # The message says what happened (no detail of the database is in it).
                raise ConnectError(Code.UNAVAILABLE, schema.lost)
            now = self._now
            if write:
                result = await self._threads.write(
                    functools.partial(self._write, fn, self._store, request, time.monotonic()),
                    first=None if now is None else functools.partial(fn, now, request),
                )
            else:
                result = await self._threads.read(
                    functools.partial(fn, self._store, request),
                    first=None if now is None else functools.partial(fn, now, request),
                )
        except Exception as error:
            connect_error = to_connect_error(error)
            if connect_error.code is Code.INTERNAL and schema is not None:
                # A table or column gone under the server fails as an internal error; say why.
                lost = await self._threads.read(schema.check)
                if lost is not None:
                    connect_error = ConnectError(Code.UNAVAILABLE, lost)
            if outcome is not None:
                outcome.append(connect_error.code.value)
            self._log_failure(rpc, base, error, connect_error)
            raise connect_error from None
        if outcome is not None:
            outcome.append("ok")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s key=%r owner=%r ok", rpc, base.key, getattr(base, "owner_id", None))
        return result

    def _log_failure(self, rpc: str, base: Any, error: Exception, answer: ConnectError) -> None:
        # Only the key and owner identify a request in the logs, never outputs or metadata.
        key, owner = base.key, getattr(base, "owner_id", None)
        if self._schema is not None and self._schema.lost is not None:
            # The guard logged the cause once; a line per refused request would drown it.
            log.debug("%s key=%r owner=%r: schema changed", rpc, key, owner)
        elif answer.code is Code.INTERNAL:
            log.error("%s key=%r owner=%r failed", rpc, key, owner, exc_info=error)
        elif answer.code in (Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED):
            log.warning("%s key=%r owner=%r: %s", rpc, key, owner, error)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s key=%r owner=%r: %s", rpc, key, owner, answer.code.value)

    def _write(
        self, fn: Callable[[ScopedStore, Any], T], store: ScopedStore, request: Any, queued: float
    ) -> T:
        # Writes queue for one writer thread; one that waited longer than the busy timeout
        # (behind writes stuck on a lock held elsewhere) fails now instead of waiting again.
        if time.monotonic() - queued > self._busy_timeout:
            raise StorageBusyError("queued behind other writes for longer than the busy timeout")
        return fn(store, request)

    # -- the calls (on the event loop or a store thread, with the store to use) --------------

    def _get(self, store: ScopedStore, request: v2.GetCacheRequest) -> cs.GetCacheResponse:
        output = store.get(scope_of(request.identifier), request.base_request.key)
        return cs.GetCacheResponse(output=output)

    def _put(self, store: ScopedStore, request: v2.PutCacheRequest) -> cs.PutCacheResponse:
        base = request.base_request
        scope = scope_of(request.identifier)
        ScopedStore.key(scope, base.key)  # the key is named first when both are wrong
        if not base.HasField("output"):
            raise InvalidArgumentError("output is required", field="output")
        max_age = (
            duration_to_timedelta(base.overwrite.max_age, field="overwrite.max_age")
            if base.overwrite.HasField("max_age")
            else None
        )
        store.put(scope, base.key, base.output, overwrite=base.overwrite.overwrite, max_age=max_age)
        return cs.PutCacheResponse()

    def _delete(self, store: ScopedStore, request: v2.DeleteCacheRequest) -> cs.DeleteCacheResponse:
        store.delete(scope_of(request.identifier), request.base_request.key)
        return cs.DeleteCacheResponse()

    def _reserve(
        self, store: ScopedStore, request: v2.GetOrExtendReservationRequest
    ) -> cs.GetOrExtendReservationResponse:
        base = request.base_request
        scope = scope_of(request.identifier)
        ScopedStore.key(scope, base.key)  # the key is named first when both are wrong
        heartbeat = (
            duration_to_timedelta(base.heartbeat_interval, field="heartbeat_interval")
            if base.HasField("heartbeat_interval")
            else None
        )
        lease, outcome = store.get_or_extend_reservation(
            scope, base.key, base.owner_id, heartbeat, with_outcome=True
        )
        self._metrics.reservation(outcome.value)
        return cs.GetOrExtendReservationResponse(reservation=lease)

    def _release(
        self, store: ScopedStore, request: v2.ReleaseReservationRequest
    ) -> cs.ReleaseReservationResponse:
        base = request.base_request
        if store.release_reservation(scope_of(request.identifier), base.key, base.owner_id):
            self._metrics.reservation("released")
        return cs.ReleaseReservationResponse()
