"""RemoteCache: the cache-service calls over the network, for ``CatalogClient("http://...")``.

Speaks Flyte 2's ``flyteidl2.cacheservice.v2.CacheService`` (Connect, binary protobuf) with
flyteidl2's generated ``CacheServiceClientSync`` and raises the same :mod:`flytecache.errors` as
the local store, so calling code is identical local or remote.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, NoReturn, Self
from urllib.parse import urlsplit

from connectrpc.errors import ConnectError
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.cacheservice.v2 import cacheservice_pb2 as v2
from flyteidl2.cacheservice.v2.cacheservice_connect import CacheServiceClientSync
from google.protobuf.duration_pb2 import Duration

from flytecache.error_codes import from_connect_error
from flytecache.errors import (
    InvalidArgumentError,
    UnavailableError,
)
from flytecache.scoping import Scope

__all__ = ["RemoteCache"]


class RemoteCache:
    """The five cache-service calls against ``url`` (e.g. ``http://localhost:8094``).

    Keys are passed unscoped; the server scopes them by ``scope``'s project and domain.
    Thread-safe: one instance may serve many threads (the HTTP client pools its connections).
    Create it after ``fork()``, not before.
    """

    def __init__(self, url: str, *, auth_token: str | None = None, timeout: float = 30.0) -> None:
        if not isinstance(url, str) or urlsplit(url).scheme not in ("http", "https"):
            raise InvalidArgumentError(
                f"the cache service URL must start with http:// or https://, got {url!r}",
                field="url",
            )
        parts = urlsplit(url)
        if not parts.hostname:
            raise InvalidArgumentError(f"the cache service URL {url!r} has no host", field="url")
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidArgumentError("timeout must be a positive number of seconds")
        if auth_token is not None and (not isinstance(auth_token, str) or not auth_token.strip()):
            raise InvalidArgumentError("auth_token must be a non-empty string", field="auth_token")
        self.url = url.rstrip("/")
        self._headers: dict[str, str] = (
            {"authorization": f"Bearer {auth_token.strip()}"} if auth_token else {}
        )
        # Requests are small (keys, URIs); like Flyte's Go client, send them uncompressed.
        self._client = CacheServiceClientSync(
            self.url, timeout_ms=max(1, round(timeout * 1000)), send_compression=None
        )
        self._closed = False

    def __repr__(self) -> str:
        return f"RemoteCache({self.url!r})"

    # -- the calls ------------------------------------------------------------------------

    def get(self, scope: Scope, key: str) -> cs.CachedOutput:
        """The entry stored under ``key`` in ``scope``; :class:`NotFoundError` if none."""
        request = v2.GetCacheRequest(
            base_request=cs.GetCacheRequest(key=key), identifier=_identifier(scope)
        )
        response = self._call(self._client.get, request, key)
        output: cs.CachedOutput = response.output
        return output

    def put(
        self,
        scope: Scope,
        key: str,
        output: cs.CachedOutput,
        *,
        overwrite: bool = False,
        max_age: timedelta | None = None,
    ) -> None:
        """Store ``output`` under ``key`` (see :meth:`CacheStore.put` for overwrite/max_age)."""
        if not isinstance(output, cs.CachedOutput):
            raise InvalidArgumentError(
                f"output must be a CachedOutput, got {type(output).__name__}", field="output"
            )
        if type(overwrite) is not bool:
            raise InvalidArgumentError("overwrite must be a bool", field="overwrite")
        options = cs.OverwriteOutput(overwrite=overwrite)
        if max_age is not None:
            options.max_age.CopyFrom(_duration(max_age, "max_age"))
        request = v2.PutCacheRequest(
            base_request=cs.PutCacheRequest(key=key, output=output, overwrite=options),
            identifier=_identifier(scope),
        )
        self._call(self._client.put, request, key)

    def delete(self, scope: Scope, key: str) -> None:
        """Remove the entry under ``key``; :class:`NotFoundError` if there was none."""
        request = v2.DeleteCacheRequest(
            base_request=cs.DeleteCacheRequest(key=key), identifier=_identifier(scope)
        )
        self._call(self._client.delete, request, key)

    def get_or_extend_reservation(
        self, scope: Scope, key: str, owner_id: str, heartbeat_interval: timedelta | None
    ) -> cs.Reservation:
        """The requester's lease on ``key``, or the live holder's (compare ``owner_id``)."""
        base = cs.GetOrExtendReservationRequest(key=key, owner_id=owner_id)
        if heartbeat_interval is not None:
            base.heartbeat_interval.CopyFrom(_duration(heartbeat_interval, "heartbeat_interval"))
        request = v2.GetOrExtendReservationRequest(base_request=base, identifier=_identifier(scope))
        response = self._call(self._client.get_or_extend_reservation, request, key)
        reservation: cs.Reservation = response.reservation
        return reservation

    def release_reservation(self, scope: Scope, key: str, owner_id: str) -> None:
        """Release ``owner_id``'s lease on ``key``; a no-op if it does not hold it."""
        request = v2.ReleaseReservationRequest(
            base_request=cs.ReleaseReservationRequest(key=key, owner_id=owner_id),
            identifier=_identifier(scope),
        )
        self._call(self._client.release_reservation, request, key)

    def close(self) -> None:
        """Stop using the connection (idempotent); later calls raise UnavailableError."""
        if not self._closed:
            self._closed = True
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- plumbing ---------------------------------------------------------------------------

    def _call(self, method: Any, request: Any, key: str) -> Any:
        if self._closed:
            raise UnavailableError(f"the connection to {self.url} is closed", url=self.url)
        try:
            return method(request, headers=self._headers)
        except ConnectError as error:
            self._raise(error, key)

    def _raise(self, error: ConnectError, key: str) -> NoReturn:
        raise from_connect_error(error, key=key, url=self.url) from error


def _identifier(scope: Scope) -> v2.Identifier:
    if not isinstance(scope, tuple):
        raise InvalidArgumentError("scope must be a flytecache.scoping.Scope", field="scope")
    return v2.Identifier(org=scope.org, project=scope.project, domain=scope.domain)


def _duration(value: timedelta, field: str) -> Duration:
    if not isinstance(value, timedelta):
        raise InvalidArgumentError(f"{field} must be a timedelta or None", field=field)
    duration = Duration()
    duration.FromTimedelta(value)
    return duration
