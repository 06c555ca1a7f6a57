"""A CacheService that does nothing, served by flytecache's own HTTP stack: the transport
ceiling the server benchmarks compare ``flytecache serve`` against (benchmarks only; it is not
part of the product)."""

from __future__ import annotations

from typing import Any

from connectrpc.request import RequestContext
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.cacheservice.v2 import cacheservice_pb2 as v2

from flytecache.server import CacheServiceApp, ServerSettings
from flytecache.server.metrics import Metrics

Ctx = RequestContext[Any, Any]


class NoopCacheService:
    """A CacheService that touches nothing: the transport ceiling for benchmarks.

    Get answers a fixed small entry, reservations are always granted to the caller.
    """

    def __init__(self) -> None:
        self._output = cs.CachedOutput(output_uri="s3://bucket/noop/outputs.pb")

    async def get(self, request: v2.GetCacheRequest, ctx: Ctx) -> cs.GetCacheResponse:
        """Get: always the same entry."""
        return cs.GetCacheResponse(output=self._output)

    async def put(self, request: v2.PutCacheRequest, ctx: Ctx) -> cs.PutCacheResponse:
        """Put: accepted and dropped."""
        return cs.PutCacheResponse()

    async def delete(self, request: v2.DeleteCacheRequest, ctx: Ctx) -> cs.DeleteCacheResponse:
        """Delete: accepted."""
        return cs.DeleteCacheResponse()

    async def get_or_extend_reservation(
        self, request: v2.GetOrExtendReservationRequest, ctx: Ctx
    ) -> cs.GetOrExtendReservationResponse:
        """GetOrExtendReservation: granted to the caller."""
        base = request.base_request
        return cs.GetOrExtendReservationResponse(
            reservation=cs.Reservation(key=base.key, owner_id=base.owner_id)
        )

    async def release_reservation(
        self, request: v2.ReleaseReservationRequest, ctx: Ctx
    ) -> cs.ReleaseReservationResponse:
        """ReleaseReservation: accepted."""
        return cs.ReleaseReservationResponse()


def build_noop_app(settings: ServerSettings | None = None) -> CacheServiceApp:
    """The same stack as ``flytecache serve`` over :class:`NoopCacheService`."""

    async def health() -> tuple[bool, str]:
        return True, "no-op service"

    return CacheServiceApp(
        NoopCacheService(),
        settings=settings or ServerSettings(),
        metrics=Metrics(),
        health=health,
    )
