"""CatalogClient: Flyte's catalog ``Client`` in Python, over a local store or a cache service.

Keys are derived exactly as Flyte 2 derives them (:mod:`flytecache.keys`) and scoped exactly as
the cache service scopes them (:mod:`flytecache.scoping`), so an entry written by a Flyte
executor through ``flytecache serve`` is a hit for this client on the same database, and back.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, Self

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import catalog_pb2, identifier_pb2, literals_pb2

from flytecache.blobs import check_uri_exists, read_outputs
from flytecache.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    StaleEntryError,
    StorageError,
)
from flytecache.keys import CatalogKey, cache_key
from flytecache.leases import Lease, check_heartbeat, new_owner_id
from flytecache.scoping import Scope, ScopedStore
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

CacheStatus = catalog_pb2.CatalogCacheStatus
ReservationStatus = catalog_pb2.CatalogReservation.Status

# Keys of the Flyte ``KeyMapMetadata`` describing where an entry came from (Flyte's names).
TASK_VERSION_KEY = "task-version"
EXEC_NAME_KEY = "execution-name"
EXEC_DOMAIN_KEY = "exec-domain"
EXEC_PROJECT_KEY = "exec-project"
EXEC_NODE_KEY = "exec-node"
EXEC_ATTEMPT_KEY = "exec-attempt"
EXEC_ORG_KEY = "exec-org"


@dataclass(frozen=True, slots=True)
class ExecutionMetadata:
    """Where a result comes from (Go's ``catalog.Metadata``); all optional."""

    workflow_execution_identifier: identifier_pb2.WorkflowExecutionIdentifier | None = None
    node_execution_identifier: identifier_pb2.NodeExecutionIdentifier | None = None
    task_execution_identifier: identifier_pb2.TaskExecutionIdentifier | None = None
    created_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """The outcome of a catalog call: a ``CatalogCacheStatus`` and the entry's metadata."""

    cache_status: int
    metadata: catalog_pb2.CatalogMetadata | None = None


@dataclass(frozen=True, slots=True)
class CacheHit:
    """A cache hit: the outputs (read from ``output_uri`` when stored by reference)."""

    outputs: literals_pb2.LiteralMap
    output_uri: str | None
    status: Status


@dataclass(frozen=True, slots=True)
class ReservationCache:
    """The per-owner reservation memo (Go's ``catalog.ReservationCache``)."""

    timestamp: datetime | None = None
    reservation_status: int = ReservationStatus.RESERVATION_DISABLED


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
    decides "now" for that check and for ``created_at``. A client built on a store uses the
    store's clock unless given its own (SPEC §5.3).
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
        if clock is None and isinstance(target, CacheStore):
            store = target
            self._clock: Callable[[], datetime] = lambda: (
                _EPOCH + timedelta(microseconds=store.now_us())
            )
        else:
            self._clock = clock or (lambda: datetime.now(UTC))
        self.max_cache_age = max_cache_age
        self._backend = _open_backend(target, clock=clock, auth_token=auth_token)
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

    def _stored_metadata(self, key: CatalogKey, metadata: ExecutionMetadata) -> cs.Metadata:
        created = metadata.created_at or self._now()
        if created.tzinfo is None:
            raise InvalidArgumentError(
                "metadata.created_at must be timezone-aware", field="metadata.created_at"
            )
        stored = cs.Metadata(source_identifier=key.identifier)
        stored.created_at.FromDatetime(created.astimezone(UTC))
        values = stored.key_map.values
        task = metadata.task_execution_identifier
        node = metadata.node_execution_identifier
        if task is not None:
            execution = task.node_execution_id.execution_id
            values.update(
                {
                    TASK_VERSION_KEY: task.task_id.version,
                    EXEC_PROJECT_KEY: execution.project,
                    EXEC_DOMAIN_KEY: execution.domain,
                    EXEC_NAME_KEY: execution.name,
                    EXEC_NODE_KEY: task.node_execution_id.node_id,
                    EXEC_ATTEMPT_KEY: str(task.retry_attempt),
                    EXEC_ORG_KEY: execution.org,
                }
            )
        elif node is not None:
            execution = node.execution_id
            values.update(
                {
                    EXEC_PROJECT_KEY: execution.project,
                    EXEC_DOMAIN_KEY: execution.domain,
                    EXEC_NAME_KEY: execution.name,
                    EXEC_NODE_KEY: node.node_id,
                    EXEC_ORG_KEY: execution.org,
                }
            )
        return stored

    def _now(self) -> datetime:
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


class CacheSlot:
    """One cache key of a :class:`CatalogClient`, derived once (``CatalogClient.slot``).

    Every call on a slot uses the same string key and scope, so an operation made of several
    calls (look up, reserve, heartbeat, store, release) hashes its inputs once. Thread-safe as
    the client is.
    """

    __slots__ = ("_client", "catalog_key", "key", "max_cache_age", "scope")

    def __init__(
        self,
        client: CatalogClient,
        catalog_key: CatalogKey,
        key: str,
        max_cache_age: timedelta | None,
    ) -> None:
        self._client = client
        self.catalog_key = catalog_key
        self.key = key
        """The unscoped Flyte cache key (``<identifier>-<signature>-<inputs>-<version>``)."""
        self.scope = _scope(catalog_key.identifier)
        self.max_cache_age = max_cache_age

    def __repr__(self) -> str:
        return f"CacheSlot({self.key!r}, scope={tuple(self.scope)!r})"

    def get(self) -> CacheHit:
        """The hit for this key; :class:`NotFoundError` if none is stored, or
        :class:`StaleEntryError` if the stored one counts as a miss (SPEC §5.3)."""
        output = self._client.backend.get(self.scope, self.key)
        if not output.metadata.HasField("last_updated_at"):
            raise StorageError("cache entry has no last_updated_at")
        if self.max_cache_age:  # None and zero both mean "no age limit"
            updated = output.metadata.last_updated_at.ToDatetime(tzinfo=UTC)
            if self._client._now() - updated > self.max_cache_age:
                raise StaleEntryError(
                    f"artifact over age limit: last updated {updated.isoformat()}, "
                    f"max_cache_age {self.max_cache_age}",
                    key=self.key,
                )
        if output.WhichOneof("output") == "output_uri":
            outputs = read_outputs(output.output_uri, self.key)
            uri: str | None = output.output_uri
        else:
            outputs = output.output_literals
            uri = None
        return CacheHit(
            outputs=outputs,
            output_uri=uri,
            status=Status(CacheStatus.CACHE_HIT, _catalog_metadata(output.metadata)),
        )

    def put(
        self,
        outputs: literals_pb2.LiteralMap | str,
        metadata: ExecutionMetadata | None = None,
        *,
        overwrite: bool = False,
    ) -> Status:
        """Store ``outputs`` (a LiteralMap inline, or an outputs URI); ``CACHE_POPULATED``.

        Without ``overwrite`` an existing entry raises :class:`AlreadyExistsError`, unless it is
        older than a positive ``max_cache_age`` (sent as ``max_age``, SPEC §5.3).
        """
        if metadata is None:
            metadata = ExecutionMetadata()
        elif not isinstance(metadata, ExecutionMetadata):
            raise InvalidArgumentError("metadata must be an ExecutionMetadata", field="metadata")
        stored_metadata = self._client._stored_metadata(self.catalog_key, metadata)
        if isinstance(outputs, literals_pb2.LiteralMap):
            output = cs.CachedOutput(output_literals=outputs, metadata=stored_metadata)
        elif isinstance(outputs, str):
            if not outputs:
                raise InvalidArgumentError("outputs URI must not be empty", field="outputs")
            check_uri_exists(outputs)
            output = cs.CachedOutput(output_uri=outputs, metadata=stored_metadata)
        else:
            raise InvalidArgumentError(
                f"outputs must be a LiteralMap or a URI string, got {type(outputs).__name__}",
                field="outputs",
            )
        # A present-but-zero max_age would make the server replace every entry (SPEC §3).
        max_age = self.max_cache_age if self.max_cache_age else None
        self._client.backend.put(self.scope, self.key, output, overwrite=overwrite, max_age=max_age)
        return Status(CacheStatus.CACHE_POPULATED, _catalog_metadata(stored_metadata))

    def get_or_extend_reservation(
        self, owner_id: str, heartbeat_interval: timedelta | None = None
    ) -> cs.Reservation:
        """Acquire or extend ``owner_id``'s lease; another owner's live lease is returned."""
        return self._client.backend.get_or_extend_reservation(
            self.scope, self.key, owner_id, heartbeat_interval
        )

    def release_reservation(self, owner_id: str) -> None:
        """Release ``owner_id``'s lease (a no-op if it does not hold it)."""
        self._client.backend.release_reservation(self.scope, self.key, owner_id)

    def lookup(self) -> tuple[CacheHit | None, bool]:
        """:meth:`get` without raising on a miss: ``(entry, False)`` on a hit, ``(None, stale)``
        on a miss, where ``stale`` says an entry is stored that counts as a miss."""
        try:
            return self.get(), False
        except StaleEntryError:
            return None, True
        except NotFoundError:
            return None, False

    def claim(
        self,
        owner_id: str,
        *,
        serialize: bool = True,
        heartbeat_interval: timedelta = timedelta(seconds=5),
        poll_interval: timedelta | None = None,
        timeout: timedelta | None = None,
    ) -> Claim:
        """Look up, and on a miss decide who computes: the wait loop of SPEC §4/§5.3.

        Returns a :class:`Claim` holding either the hit, or the go-ahead to compute: then with
        ``serialize`` the caller holds ``owner_id``'s lease, kept alive by a heartbeat thread
        every ``heartbeat_interval`` (at least :data:`~flytecache.leases.MIN_HEARTBEAT`) until
        :meth:`Claim.release`. While another owner holds a live lease this polls every
        ``poll_interval`` (default: half the heartbeat, at most 1 s) until its result is stored
        or its lease expires and is taken over. ``timeout`` bounds the waiting
        (:class:`DeadlineExceededError`, naming the holder). Each round is
        :meth:`claim_round`, which an asynchronous caller loops over with its own sleep.
        """
        check_heartbeat(heartbeat_interval)
        if poll_interval is not None and not isinstance(poll_interval, timedelta):
            raise InvalidArgumentError("poll_interval must be a timedelta", field="poll_interval")
        poll = (
            poll_interval.total_seconds()
            if poll_interval is not None
            else min(1.0, heartbeat_interval.total_seconds() / 2)
        )
        if poll <= 0:
            raise InvalidArgumentError("poll_interval must be positive", field="poll_interval")
        deadline = None if timeout is None else time.monotonic() + timeout.total_seconds()
        while True:
            claim = self.claim_round(
                owner_id, serialize=serialize, heartbeat_interval=heartbeat_interval
            )
            if claim.holder is None:
                return claim
            if deadline is not None and time.monotonic() + poll > deadline:
                raise DeadlineExceededError(
                    f"gave up after {timeout} waiting for {claim.holder!r} to compute {self.key!r}",
                    holder=claim.holder,
                )
            time.sleep(poll)

    def claim_round(
        self,
        owner_id: str,
        *,
        serialize: bool = True,
        heartbeat_interval: timedelta = timedelta(seconds=5),
    ) -> Claim:
        """One round of :meth:`claim`, without waiting: a hit, the go-ahead to compute (with
        ``owner_id``'s lease when ``serialize``), or a claim naming the ``holder`` of another
        live lease — then wait and call again."""
        if not isinstance(owner_id, str) or not owner_id:
            raise InvalidArgumentError("owner_id must be a non-empty string", field="owner_id")
        check_heartbeat(heartbeat_interval)
        entry, stale = self.lookup()
        if entry is not None:
            return Claim(entry=entry)
        if not serialize:
            return Claim(replace=stale)
        lease = self.get_or_extend_reservation(owner_id, heartbeat_interval)
        if lease.owner_id != owner_id:
            return Claim(holder=lease.owner_id)
        held = Lease(self, owner_id, lease)
        try:  # someone may have finished between our miss and our acquisition
            entry, stale = self.lookup()
        except BaseException:
            held.release()
            raise
        if entry is not None:
            held.release()
            return Claim(entry=entry)
        return Claim(replace=stale, lease=held)


@dataclass(slots=True)
class Claim:
    """The outcome of :meth:`CacheSlot.claim`: a hit, or the go-ahead to compute.

    ``entry`` is the hit (nothing to compute). Otherwise compute, store with
    ``overwrite=replace`` (``replace`` is set when a stored entry counts as a miss), then call
    :meth:`release`, also on failure. ``lease`` is the reservation held meanwhile (``None``
    without serialization). From :meth:`CacheSlot.claim_round` only, ``holder`` names another
    owner whose live lease means: wait, then try again.
    """

    entry: CacheHit | None = None
    replace: bool = False
    lease: Lease | None = None
    holder: str | None = None

    def release(self) -> None:
        """Stop the heartbeat and release the lease, if any (idempotent, never raises)."""
        if self.lease is not None:
            self.lease.release()


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


def _scope(identifier: identifier_pb2.Identifier) -> Scope:
    return Scope(org=identifier.org, project=identifier.project, domain=identifier.domain)


def _catalog_metadata(metadata: cs.Metadata) -> catalog_pb2.CatalogMetadata:
    """Go's GenerateCatalogMetadata(GetSourceFromMetadata(...)), with Flyte's fallbacks."""
    source = metadata.source_identifier
    values = metadata.key_map.values

    def value(name: str, fallback: str) -> str:
        return values.get(name) or fallback

    try:
        attempt = int(value(EXEC_ATTEMPT_KEY, "0"))
    except ValueError:
        attempt = 0
    task_execution = identifier_pb2.TaskExecutionIdentifier(
        task_id=identifier_pb2.Identifier(
            resource_type=source.resource_type,
            project=source.project,
            domain=source.domain,
            name=source.name,
            version=value(TASK_VERSION_KEY, "unknown"),
            org=source.org,
        ),
        retry_attempt=attempt if 0 <= attempt < 2**32 else 0,
        node_execution_id=identifier_pb2.NodeExecutionIdentifier(
            node_id=value(EXEC_NODE_KEY, "unknown"),
            execution_id=identifier_pb2.WorkflowExecutionIdentifier(
                project=value(EXEC_PROJECT_KEY, source.project),
                domain=value(EXEC_DOMAIN_KEY, source.domain),
                name=value(EXEC_NAME_KEY, "unknown"),
                org=value(EXEC_ORG_KEY, source.org),
            ),
        ),
    )
    return catalog_pb2.CatalogMetadata(dataset_id=source, source_task_execution=task_execution)
