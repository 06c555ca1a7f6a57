"""The CacheService implementation: scope the key, run the store call in a thread, map errors.

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
from google.rpc.error_details_pb2 import ErrorInfo  # type: ignore[import-untyped]

from flytecache.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    StorageBusyError,
    UnavailableError,
)
from flytecache.scoping import reservation_key, scoped_key
from flytecache.server.metrics import Metrics
from flytecache.server.threads import StoreThreads
from flytecache.store import CacheStore
from flytecache.store.timeutil import duration_to_timedelta

__all__ = [
    "ERROR_DOMAIN",
    "STORAGE_BUSY_REASON",
    "StoreCacheService",
    "rpc_outcome",
    "to_connect_error",
]

log = logging.getLogger("flytecache.server")

T = TypeVar("T")
Ctx = RequestContext[Any, Any]

ERROR_DOMAIN = "flytecache"
STORAGE_BUSY_REASON = "STORAGE_BUSY"
"""``google.rpc.ErrorInfo.reason`` on an UNAVAILABLE that means "database busy, retry"."""

rpc_outcome: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar(
    "flytecache_rpc_outcome", default=None
)
"""Set by the app around each RPC; the service appends the Connect code it answered."""


def to_connect_error(error: BaseException) -> ConnectError:
    """The Connect error a client sees for ``error`` (details of unexpected ones are not sent)."""
    if isinstance(error, ConnectError):
        return error
    if isinstance(error, NotFoundError):
        return ConnectError(Code.NOT_FOUND, error.message)
    if isinstance(error, AlreadyExistsError):
        return ConnectError(Code.ALREADY_EXISTS, error.message)
    if isinstance(error, InvalidArgumentError):
        return ConnectError(Code.INVALID_ARGUMENT, error.message)
    if isinstance(error, StorageBusyError):
        # UNAVAILABLE makes Flyte's client retry; ErrorInfo lets ours say "busy" precisely.
        return ConnectError(
            Code.UNAVAILABLE,
            "the cache database is busy; retry",
            [ErrorInfo(reason=STORAGE_BUSY_REASON, domain=ERROR_DOMAIN)],
        )
    if isinstance(error, UnavailableError):
        return ConnectError(Code.UNAVAILABLE, "the cache database is unavailable; retry later")
    if isinstance(error, ResourceExhaustedError):
        return ConnectError(Code.RESOURCE_EXHAUSTED, "the cache database is full")
    return ConnectError(Code.INTERNAL, "internal error")


def _text(value: str, field: str) -> str:
    # The key must be checked before scoping: "<p>-<d>-" is itself a valid non-empty key.
    if not value:
        raise InvalidArgumentError(f"{field} must not be empty", field=field)
    return value


def _scoped(identifier: v2.Identifier, key: str) -> str:
    return scoped_key(identifier.project, identifier.domain, _text(key, "key"))


class StoreCacheService:
    """``flyteidl2.cacheservice.v2.CacheService`` over a :class:`CacheStore`.

    Every key is scoped ``"<project>-<domain>-<key>"`` by the request's identifier; store calls
    run on ``threads`` so the event loop keeps serving while one waits for the write lock.
    """

    def __init__(self, store: CacheStore, *, threads: StoreThreads, metrics: Metrics) -> None:
        self._store = store
        self._threads = threads
        self._metrics = metrics
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
        self, rpc: str, request: Any, fn: Callable[[Any], T], *, write: bool = True
    ) -> T:
        outcome = rpc_outcome.get()
        base = request.base_request
        try:
            if write:
                result = await self._threads.write(
                    functools.partial(self._write, fn, request, time.monotonic())
                )
            else:
                result = await self._threads.read(functools.partial(fn, request))
        except Exception as error:
            connect_error = to_connect_error(error)
            if outcome is not None:
                outcome.append(connect_error.code.value)
            self._log_failure(rpc, base, error, connect_error)
            raise connect_error from None
        if outcome is not None:
            outcome.append("ok")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("%s key=%r owner=%r ok", rpc, base.key, getattr(base, "owner_id", None))
        return result

    @staticmethod
    def _log_failure(rpc: str, base: Any, error: Exception, answer: ConnectError) -> None:
        # Only the key and owner identify a request in the logs, never outputs or metadata.
        key, owner = base.key, getattr(base, "owner_id", None)
        if answer.code is Code.INTERNAL:
            log.error("%s key=%r owner=%r failed", rpc, key, owner, exc_info=error)
        elif answer.code in (Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED):
            log.warning("%s key=%r owner=%r: %s", rpc, key, owner, error)
        elif log.isEnabledFor(logging.DEBUG):
            log.debug("%s key=%r owner=%r: %s", rpc, key, owner, answer.code.value)

    def _write(self, fn: Callable[[Any], T], request: Any, queued: float) -> T:
        # Writes queue for one writer thread; one that waited longer than the busy timeout
        # (behind writes stuck on a lock held elsewhere) fails now instead of waiting again.
        if time.monotonic() - queued > self._busy_timeout:
            raise StorageBusyError("queued behind other writes for longer than the busy timeout")
        return fn(request)

    # -- the calls (run on the store threads) ----------------------------------------------

    def _get(self, request: v2.GetCacheRequest) -> cs.GetCacheResponse:
        key = _scoped(request.identifier, request.base_request.key)
        return cs.GetCacheResponse(output=self._store.get(key))

    def _put(self, request: v2.PutCacheRequest) -> cs.PutCacheResponse:
        base = request.base_request
        key = _scoped(request.identifier, base.key)
        if not base.HasField("output"):
            raise InvalidArgumentError("output is required", field="output")
        max_age = (
            duration_to_timedelta(base.overwrite.max_age, field="overwrite.max_age")
            if base.overwrite.HasField("max_age")
            else None
        )
        self._store.put(key, base.output, overwrite=base.overwrite.overwrite, max_age=max_age)
        return cs.PutCacheResponse()

    def _delete(self, request: v2.DeleteCacheRequest) -> cs.DeleteCacheResponse:
        self._store.delete(_scoped(request.identifier, request.base_request.key))
        return cs.DeleteCacheResponse()

    def _reserve(
        self, request: v2.GetOrExtendReservationRequest
    ) -> cs.GetOrExtendReservationResponse:
        base = request.base_request
        key = _scoped(request.identifier, base.key)
        owner = _text(base.owner_id, "owner_id")
        heartbeat = (
            duration_to_timedelta(base.heartbeat_interval, field="heartbeat_interval")
            if base.HasField("heartbeat_interval")
            else None
        )
        lease, outcome = self._store.reserve(key, owner, heartbeat)
        self._metrics.reservation(outcome.value)
        lease.key = reservation_key(key)
        return cs.GetOrExtendReservationResponse(reservation=lease)

    def _release(self, request: v2.ReleaseReservationRequest) -> cs.ReleaseReservationResponse:
        base = request.base_request
        key = _scoped(request.identifier, base.key)
        if self._store.release(key, _text(base.owner_id, "owner_id")):
            self._metrics.reservation("released")
        return cs.ReleaseReservationResponse()
