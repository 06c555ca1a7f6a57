"""How the cache service scopes keys, and a store seen that way: shared by the server and the
CatalogClient.

An entry written through ``flytecache serve`` and one written by a local CatalogClient for the
same task and inputs land on the same stored key, so each is a hit for the other.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal, NamedTuple, overload

from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache.validation import check_text

if TYPE_CHECKING:
    from flytecache.store import CacheStore, ReservationOutcome

__all__ = [
    "RESERVATION_PREFIX",
    "Scope",
    "ScopedStore",
    "reservation_key",
    "scope_of",
    "scoped_key",
]


class Scope(NamedTuple):
    """The v2 ``Identifier`` a cache request is scoped by (Flyte's org/project/domain)."""

    org: str = ""
    project: str = ""
    domain: str = ""


RESERVATION_PREFIX = "reservation:"


def scope_of(identifier: Any) -> Scope:
    """The scope of a request or task: the ``org``/``project``/``domain`` of ``identifier`` (a
    cache service v2 ``Identifier`` or a ``flyteidl2.core.Identifier``)."""
    return Scope(org=identifier.org, project=identifier.project, domain=identifier.domain)


def scoped_key(project: str, domain: str, key: str) -> str:
    """The stored key: ``"<project>-<domain>-<key>"`` (Flyte's form; org is not used)."""
    return f"{project}-{domain}-{key}"


def reservation_key(scoped: str) -> str:
    """The ``Reservation.key`` the service returns for a scoped key (Flyte's form)."""
    return RESERVATION_PREFIX + scoped


class ScopedStore:
    """A :class:`~flytecache.CacheStore` seen through the cache service's scoping (SPEC §4).

    Every call takes the request's :class:`Scope` and the key as the caller knows it; the store
    sees ``"<project>-<domain>-<key>"`` and reservations come back keyed
    ``"reservation:<scoped key>"``. The server answers RPCs with it and the
    :class:`~flytecache.CatalogClient` uses it for a local database, so the two always agree.
    ``owns_store`` makes :meth:`close` close the store too.
    """

    def __init__(self, store: CacheStore, *, owns_store: bool = False) -> None:
        self.store = store
        self._owns_store = owns_store

    @staticmethod
    def key(scope: Scope, key: str) -> str:
        """The stored key for ``key`` in ``scope``; :class:`InvalidArgumentError` for a key that
        is not valid text (checked before scoping: ``"<p>-<d>-"`` alone would be a valid key)."""
        return scoped_key(scope.project, scope.domain, check_text(key, "key"))

    def get(self, scope: Scope, key: str) -> cs.CachedOutput:
        """The entry (``NotFoundError`` when there is none)."""
        return self.store.get(self.key(scope, key))

    def put(
        self,
        scope: Scope,
        key: str,
        output: cs.CachedOutput,
        *,
        overwrite: bool = False,
        max_age: timedelta | None = None,
    ) -> None:
        """Store ``output`` (SPEC §3: ``AlreadyExistsError`` unless overwritten or expired)."""
        self.store.put(self.key(scope, key), output, overwrite=overwrite, max_age=max_age)

    def delete(self, scope: Scope, key: str) -> None:
        """Remove the entry (``NotFoundError`` when there is none)."""
        self.store.delete(self.key(scope, key))

    @overload
    def get_or_extend_reservation(
        self,
        scope: Scope,
        key: str,
        owner_id: str,
        heartbeat_interval: timedelta | None = None,
    ) -> cs.Reservation: ...

    @overload
    def get_or_extend_reservation(
        self,
        scope: Scope,
        key: str,
        owner_id: str,
        heartbeat_interval: timedelta | None = None,
        *,
        with_outcome: Literal[True],
    ) -> tuple[cs.Reservation, ReservationOutcome]: ...

    def get_or_extend_reservation(
        self,
        scope: Scope,
        key: str,
        owner_id: str,
        heartbeat_interval: timedelta | None = None,
        *,
        with_outcome: bool = False,
    ) -> cs.Reservation | tuple[cs.Reservation, ReservationOutcome]:
        """The requester's lease or the live holder's (SPEC §4), keyed as Flyte keys it; with
        ``with_outcome`` also what happened (acquired, extended, taken over, held by another)."""
        scoped = self.key(scope, key)
        lease, outcome = self.store.get_or_extend_reservation(
            scoped, owner_id, heartbeat_interval, with_outcome=True
        )
        lease.key = reservation_key(scoped)
        return (lease, outcome) if with_outcome else lease

    def release_reservation(self, scope: Scope, key: str, owner_id: str) -> bool:
        """Release ``owner_id``'s lease; whether one was released (never an error)."""
        return self.store.release_reservation(self.key(scope, key), owner_id)

    def close(self) -> None:
        """Close the store if this object owns it."""
        if self._owns_store:
            self.store.close()
