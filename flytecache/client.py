"""CatalogClient: Flyte's catalog ``Client`` in Python, over a local store or a cache service.

Keys are derived exactly as Flyte 2 derives them (:mod:`flytecache.keys`) and scoped exactly as
the cache service scopes them (:mod:`flytecache.scoping`), so an entry written by a Flyte
executor through ``flytecache serve`` is a hit for this client on the same database, and back.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, Self

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2

from flytecache.catalog import (
    CacheHit,
    ExecutionMetadata,
    ReservationCache,
    Status,
)
from flytecache.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
)
from flytecache.keys import CatalogKey, cache_key
from flytecache.leases import new_owner_id
from flytecache.scoping import Scope, ScopedStore
from flytecache.slots import CacheSlot, Claim
from flytecache.store import CacheStore

__all__ = [
    "CacheHit",
    "CacheSlot",
    "CatalogClient",
    "CatalogKey",
    "Claim",
    "ExecutionMetadata",
    "ReservationCache",
    "Status",
]

log = logging.getLogger(__name__)


class CacheBackend(Protocol):
    """What the client needs from a cache: the five cache-service calls, scoped."""

    def get(self, scope: Scope, key: str) -> cs.CachedOutput: ...

    def put(
        self,
        scope: Scope,
        key: str,
        output: cs.CachedOutput,
        *,
        overwrite: bool = False,
        max_age: timedelta | None = None,
    ) -> None: ...

    def delete(self, scope: Scope, key: str) -> None: ...

    def get_or_extend_reservation(
        self, scope: Scope, key: str, owner_id: str, heartbeat_interval: timedelta | None
    ) -> cs.Reservation: ...

    def release_reservation(self, scope: Scope, key: str, owner_id: str) -> object: ...

    def close(self) -> None: ...


class CatalogClient:
    """Flyte's catalog Client: Get, Put, Update, reservations and the reservation memo.

    ``target`` is a :class:`CacheStore`, a database path/URL (a store is opened and owned), or
    an ``http(s)://`` cache-service URL. Errors are :mod:`flytecache.errors` whatever the target.

    ``max_cache_age`` (a non-negative timedelta; ``None`` or zero: no limit, as Flyte's
    ``maxCacheAge: 0``) makes older entries misses; ``clock`` (an aware-datetime callable)
    decides "now" for that check and for ``created_at``. A client on a store (given, or opened
    from a path/URL) uses the store's entry clock unless given its own (SPEC §5.3).
    """

    def __init__(
        self,
        target: CacheStore | str | os.PathLike[str],
        *,
        max_cache_age: timedelta | None = None,
        reservation_cache_size: int = 10_000,
        clock: Callable[[], datetime] | None = None,
        auth_token: str | None = None,
    ) -> None:
        _check_max_age(max_cache_age, "max_cache_age")
        if (
            isinstance(reservation_cache_size, bool)
            or not isinstance(reservation_cache_size, int)
            or reservation_cache_size < 1
        ):
            raise InvalidArgumentError(
                "reservation_cache_size must be a positive integer",
                field="reservation_cache_size",
            )
        if clock is not None and not callable(clock):
            raise InvalidArgumentError("clock must be callable", field="clock")
        self.max_cache_age = max_cache_age
        self._backend = _open_backend(target, clock=clock, auth_token=auth_token)
        if clock is None and isinstance(self._backend, ScopedStore):
            # The store's entry clock (the database's on PostgreSQL), whether the store was
            # passed in or opened from a path/URL: ages are judged as the store writes them.
            store = self._backend.store
            self._clock: Callable[[], datetime] = lambda: (
                _EPOCH + timedelta(microseconds=store.now_us())
            )
        else:
            self._clock = clock or (lambda: datetime.now(UTC))
        self._memo: OrderedDict[str, ReservationCache] = OrderedDict()
        self._memo_size = reservation_cache_size
        self._memo_lock = threading.Lock()

    @property
    def backend(self) -> CacheBackend:
        """The cache this client talks to (a :class:`~flytecache.scoping.ScopedStore` or a
        remote cache)."""
        return self._backend

    def close(self) -> None:
        """Close the store or connection this client opened (not a store passed in)."""
        self._backend.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- Get / Put / Update ------------------------------------------------------------

    def cache_key(self, key: CatalogKey) -> str:
        """The Flyte cache key (unscoped) for ``key``."""
        return cache_key(_catalog_key(key))

    def slot(
        self,
        key: CatalogKey,
        *,
        max_cache_age: timedelta | None = None,
        cache_key_override: str | None = None,
    ) -> CacheSlot:
        """``key`` bound to this client: its cache key derived once, for several calls.

        ``max_cache_age`` overrides the client's for this slot (zero: no limit; ``None``: the
        client's). A callable ``key.inputs`` is read here, once, and never again.
        ``cache_key_override`` is the (unscoped) cache key to use instead of Flyte's, for an
        SDK whose cache has its own key rule (flytekit's local cache); ``key.identifier`` still
        scopes the entry and describes it, and the inputs are not read.
        """
        key = _catalog_key(key)
        if max_cache_age is None:
            max_cache_age = self.max_cache_age
        else:
            _check_max_age(max_cache_age, "max_cache_age")
        if cache_key_override is None:
            return CacheSlot(self, key, cache_key(key), max_cache_age)
        if not isinstance(cache_key_override, str) or not cache_key_override:
            raise InvalidArgumentError(
                "cache_key_override must be a non-empty string", field="cache_key_override"
            )
        return CacheSlot(self, key, cache_key_override, max_cache_age)

    def get(self, key: CatalogKey) -> CacheHit:
        """The cached outputs for ``key``: a hit, or :class:`NotFoundError` on a miss.

        A stored entry older than ``max_cache_age`` (strict ``>``), or whose outputs URI no
        longer exists or holds no ``LiteralMap``, raises :class:`StaleEntryError` (a
        ``NotFoundError``).
        """
        return self.slot(key).get()

    def put(
        self,
        key: CatalogKey,
        outputs: literals_pb2.LiteralMap | str,
        metadata: ExecutionMetadata | None = None,
    ) -> Status:
        """Store ``outputs`` (a LiteralMap inline, or an output URI) if no entry exists.

        Raises :class:`AlreadyExistsError` when one does, unless it is older than a positive
        ``max_cache_age`` (sent as the put's ``max_age``, as Flyte's Go client does), in which
        case it is replaced. Returns ``CACHE_POPULATED``.
        """
        return self.slot(key).put(outputs, metadata)

    def update(
        self,
        key: CatalogKey,
        outputs: literals_pb2.LiteralMap | str,
        metadata: ExecutionMetadata | None = None,
    ) -> Status:
        """Store ``outputs``, replacing any existing entry; returns ``CACHE_POPULATED``."""
        return self.slot(key).put(outputs, metadata, overwrite=True)

    def now(self) -> datetime:
        """ "Now" for this client: its clock, else its store's, else the system's (aware UTC)."""
        now = self._clock()
        if not isinstance(now, datetime) or now.tzinfo is None:
            raise InvalidArgumentError("clock must return an aware datetime", field="clock")
        return now

    # -- reservations --------------------------------------------------------------------

    def get_or_extend_reservation(
        self, key: CatalogKey, owner_id: str, heartbeat_interval: timedelta | None = None
    ) -> cs.Reservation:
        """Acquire or extend the lease on ``key``; another owner's live lease is returned as is.

        Compare the returned ``owner_id`` with yours to know whether you hold it.
        """
        return self.slot(key).get_or_extend_reservation(owner_id, heartbeat_interval)

    def release_reservation(self, key: CatalogKey, owner_id: str) -> None:
        """Release ``owner_id``'s lease on ``key`` (a no-op if it does not hold it)."""
        self.slot(key).release_reservation(owner_id)

    def get_reservation_cache(self, owner_id: str) -> ReservationCache:
        """The memo stored for ``owner_id`` (an empty, DISABLED one if none)."""
        with self._memo_lock:
            entry = self._memo.get(owner_id)
            if entry is None:
                return ReservationCache()
            self._memo.move_to_end(owner_id)
            return entry

    def update_reservation_cache(self, owner_id: str, entry: ReservationCache) -> None:
        """Remember ``entry`` for ``owner_id`` (bounded: least recently used owners go first)."""
        if not isinstance(entry, ReservationCache):
            raise InvalidArgumentError("entry must be a ReservationCache", field="entry")
        with self._memo_lock:
            self._memo[owner_id] = entry
            self._memo.move_to_end(owner_id)
            while len(self._memo) > self._memo_size:
                self._memo.popitem(last=False)

    # -- beyond Flyte ---------------------------------------------------------------------

    def get_or_compute(
        self,
        key: CatalogKey,
        compute: Callable[[], literals_pb2.LiteralMap],
        *,
        owner_id: str | None = None,
        heartbeat_interval: timedelta = timedelta(seconds=5),
        poll_interval: timedelta | None = None,
        timeout: timedelta | None = None,
        metadata: ExecutionMetadata | None = None,
    ) -> CacheHit:
        """The cached outputs for ``key``, computing them at most once across processes.

        A hit is returned at once. On a miss the reservation decides who computes: the owner
        runs ``compute`` while a background thread keeps its lease alive, stores the result and
        releases (also when ``compute`` raises, re-raising the error). Everyone else polls until
        the result appears or the lease can be taken over (its owner died). A stored entry that
        counts as a miss (over age, blob gone) is recomputed once and replaced. ``timeout``
        bounds the waiting and raises :class:`DeadlineExceededError`. The cache key is derived
        once for the whole call (a callable ``key.inputs`` is read once).
        """
        if not callable(compute):
            raise InvalidArgumentError("compute must be callable", field="compute")
        slot = self.slot(key)
        claim = slot.claim(
            owner_id or new_owner_id(),
            heartbeat_interval=heartbeat_interval,
            poll_interval=poll_interval,
            timeout=timeout,
        )
        if claim.entry is not None:
            return claim.entry
        try:
            outputs = compute()
            if not isinstance(outputs, literals_pb2.LiteralMap):
                raise InvalidArgumentError(
                    f"compute must return a LiteralMap, got {type(outputs).__name__}",
                    field="compute",
                )
            try:
                status = slot.put(outputs, metadata, overwrite=claim.replace)
            except AlreadyExistsError:
                return slot.get()  # our lease lapsed and another owner stored first
            return CacheHit(outputs=outputs, output_uri=None, status=status)
        finally:
            claim.release()


def _open_backend(target: Any, *, clock: Any, auth_token: str | None) -> CacheBackend:
    if isinstance(target, CacheStore):
        return ScopedStore(target)
    if isinstance(target, os.PathLike):
        target = os.fspath(target)
    if not isinstance(target, str) or not target:
        raise InvalidArgumentError(
            "target must be a CacheStore, a database path/URL or an http(s):// URL",
            field="target",
        )
    if target.startswith(("http://", "https://")):
        from flytecache.remote import RemoteCache

        return RemoteCache(target, auth_token=auth_token)
    return ScopedStore(CacheStore.open(target, clock=clock), owns_store=True)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _check_max_age(value: object, field: str) -> None:
    if value is not None and (not isinstance(value, timedelta) or value < timedelta(0)):
        raise InvalidArgumentError(
            f"{field} must be a non-negative timedelta or None (zero: no age limit)", field=field
        )


def _catalog_key(key: Any) -> CatalogKey:
    if not isinstance(key, CatalogKey):
        raise InvalidArgumentError(
            f"key must be a CatalogKey, got {type(key).__name__}", field="key"
        )
    return key
