"""CatalogClient: Flyte's catalog ``Client`` in Python, over a local store or a cache service.

Keys are derived exactly as Flyte 2 derives them (:mod:`flytecache.keys`) and scoped exactly as
the cache service scopes them (:mod:`flytecache.scoping`), so an entry written by a Flyte
executor through ``flytecache serve`` is a hit for this client on the same database, and back.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, Self

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import catalog_pb2, identifier_pb2, literals_pb2

from flytecache.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FlyteCacheError,
    InvalidArgumentError,
    NotFoundError,
    StorageError,
)
from flytecache.keys import CatalogKey, cache_key
from flytecache.scoping import Scope, reservation_key, scoped_key
from flytecache.store import CacheStore

__all__ = [
    "CatalogClient",
    "CatalogKey",
    "Entry",
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
class Entry:
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

    def release_reservation(self, scope: Scope, key: str, owner_id: str) -> None: ...

    def close(self) -> None: ...


class LocalCache:
    """A :class:`CacheStore` seen through the cache service's scoping rules."""

    def __init__(self, store: CacheStore, *, owns_store: bool = False) -> None:
        self.store = store
        self._owns_store = owns_store

    def get(self, scope: Scope, key: str) -> cs.CachedOutput:
        return self.store.get(scoped_key(scope.project, scope.domain, _key(key)))

    def put(
        self,
        scope: Scope,
        key: str,
        output: cs.CachedOutput,
        *,
        overwrite: bool = False,
        max_age: timedelta | None = None,
    ) -> None:
        self.store.put(
            scoped_key(scope.project, scope.domain, _key(key)),
            output,
            overwrite=overwrite,
            max_age=max_age,
        )

    def delete(self, scope: Scope, key: str) -> None:
        self.store.delete(scoped_key(scope.project, scope.domain, _key(key)))

    def get_or_extend_reservation(
        self, scope: Scope, key: str, owner_id: str, heartbeat_interval: timedelta | None
    ) -> cs.Reservation:
        scoped = scoped_key(scope.project, scope.domain, _key(key))
        lease = self.store.get_or_extend_reservation(scoped, owner_id, heartbeat_interval)
        lease.key = reservation_key(scoped)
        return lease

    def release_reservation(self, scope: Scope, key: str, owner_id: str) -> None:
        self.store.release_reservation(scoped_key(scope.project, scope.domain, _key(key)), owner_id)

    def close(self) -> None:
        if self._owns_store:
            self.store.close()


def _key(key: str) -> str:
    # Validate before scoping: "<p>-<d>-" would otherwise turn an empty key into a valid one.
    if type(key) is not str or not key:
        raise InvalidArgumentError("key must be a non-empty string", field="key")
    return key


class CatalogClient:
    """Flyte's catalog Client: Get, Put, Update, reservations and the reservation memo.

    ``target`` is a :class:`CacheStore`, a database path/URL (a store is opened and owned), or
    an ``http(s)://`` cache-service URL. Errors are :mod:`flytecache.errors` whatever the target.
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
        if max_cache_age is not None and (
            not isinstance(max_cache_age, timedelta) or max_cache_age < timedelta(0)
        ):
            raise InvalidArgumentError(
                "max_cache_age must be a non-negative timedelta or None", field="max_cache_age"
            )
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
        self._clock = clock or (lambda: datetime.now(UTC))
        self.max_cache_age = max_cache_age
        self._backend = _open_backend(target, clock=clock, auth_token=auth_token)
        self._memo: OrderedDict[str, ReservationCache] = OrderedDict()
        self._memo_size = reservation_cache_size
        self._memo_lock = threading.Lock()

    @property
    def backend(self) -> CacheBackend:
        """The cache this client talks to (a :class:`LocalCache` or a remote cache)."""
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

    def get(self, key: CatalogKey) -> Entry:
        """The cached outputs for ``key``: a hit, or :class:`NotFoundError` on a miss.

        An entry older than ``max_cache_age`` (strict ``>``) is a miss, and so is an entry
        whose outputs URI no longer exists.
        """
        key = _catalog_key(key)
        scope = _scope(key.identifier)
        output = self._backend.get(scope, cache_key(key))
        if not output.metadata.HasField("last_updated_at"):
            raise StorageError("cache entry has no last_updated_at")
        if self.max_cache_age is not None:
            updated = output.metadata.last_updated_at.ToDatetime(tzinfo=UTC)
            if self._now() - updated > self.max_cache_age:
                raise NotFoundError(
                    f"artifact over age limit: last updated {updated.isoformat()}, "
                    f"max_cache_age {self.max_cache_age}",
                    key=cache_key(key),
                )
        if output.WhichOneof("output") == "output_uri":
            outputs = _read_outputs(output.output_uri)
            uri: str | None = output.output_uri
        else:
            outputs = output.output_literals
            uri = None
        return Entry(
            outputs=outputs,
            output_uri=uri,
            status=Status(CacheStatus.CACHE_HIT, _catalog_metadata(output.metadata)),
        )

    def put(
        self,
        key: CatalogKey,
        outputs: literals_pb2.LiteralMap | str,
        metadata: ExecutionMetadata | None = None,
    ) -> Status:
        """Store ``outputs`` (a LiteralMap inline, or an output URI) if no entry exists.

        Raises :class:`AlreadyExistsError` when one does; returns ``CACHE_POPULATED``.
        """
        return self._write(key, outputs, metadata, overwrite=False)

    def update(
        self,
        key: CatalogKey,
        outputs: literals_pb2.LiteralMap | str,
        metadata: ExecutionMetadata | None = None,
    ) -> Status:
        """Store ``outputs``, replacing any existing entry; returns ``CACHE_POPULATED``."""
        return self._write(key, outputs, metadata, overwrite=True)

    def _write(
        self,
        key: CatalogKey,
        outputs: literals_pb2.LiteralMap | str,
        metadata: ExecutionMetadata | None,
        *,
        overwrite: bool,
    ) -> Status:
        key = _catalog_key(key)
        if metadata is None:
            metadata = ExecutionMetadata()
        elif not isinstance(metadata, ExecutionMetadata):
            raise InvalidArgumentError("metadata must be an ExecutionMetadata", field="metadata")
        stored_metadata = self._stored_metadata(key, metadata)
        if isinstance(outputs, literals_pb2.LiteralMap):
            output = cs.CachedOutput(output_literals=outputs, metadata=stored_metadata)
        elif isinstance(outputs, str):
            if not outputs:
                raise InvalidArgumentError("outputs URI must not be empty", field="outputs")
            _check_uri_exists(outputs)
            output = cs.CachedOutput(output_uri=outputs, metadata=stored_metadata)
        else:
            raise InvalidArgumentError(
                f"outputs must be a LiteralMap or a URI string, got {type(outputs).__name__}",
                field="outputs",
            )
        self._backend.put(_scope(key.identifier), cache_key(key), output, overwrite=overwrite)
        return Status(CacheStatus.CACHE_POPULATED, _catalog_metadata(stored_metadata))

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
        if now.tzinfo is None:
            raise InvalidArgumentError("clock must return an aware datetime", field="clock")
        return now

    # -- reservations --------------------------------------------------------------------

    def get_or_extend_reservation(
        self, key: CatalogKey, owner_id: str, heartbeat_interval: timedelta | None = None
    ) -> cs.Reservation:
        """Acquire or extend the lease on ``key``; another owner's live lease is returned as is.

        Compare the returned ``owner_id`` with yours to know whether you hold it.
        """
        key = _catalog_key(key)
        return self._backend.get_or_extend_reservation(
            _scope(key.identifier), cache_key(key), owner_id, heartbeat_interval
        )

    def release_reservation(self, key: CatalogKey, owner_id: str) -> None:
        """Release ``owner_id``'s lease on ``key`` (a no-op if it does not hold it)."""
        key = _catalog_key(key)
        self._backend.release_reservation(_scope(key.identifier), cache_key(key), owner_id)

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
    ) -> Entry:
        """The cached outputs for ``key``, computing them at most once across processes.

        A hit is returned at once. On a miss the reservation decides who computes: the owner
        runs ``compute`` while a background thread keeps its lease alive, stores the result and
        releases (also when ``compute`` raises, re-raising the error). Everyone else polls until
        the result appears or the lease can be taken over (its owner died). ``timeout`` bounds
        the waiting and raises :class:`DeadlineExceededError`.
        """
        key = _catalog_key(key)
        if not callable(compute):
            raise InvalidArgumentError("compute must be callable", field="compute")
        if not isinstance(heartbeat_interval, timedelta) or heartbeat_interval <= timedelta(0):
            raise InvalidArgumentError(
                "heartbeat_interval must be a positive timedelta", field="heartbeat_interval"
            )
        owner = owner_id or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}"
        poll = (
            poll_interval.total_seconds()
            if poll_interval is not None
            else min(1.0, heartbeat_interval.total_seconds() / 2)
        )
        if poll <= 0:
            raise InvalidArgumentError("poll_interval must be positive", field="poll_interval")
        deadline = None if timeout is None else time.monotonic() + timeout.total_seconds()
        while True:
            try:
                return self.get(key)
            except NotFoundError:
                pass
            lease = self.get_or_extend_reservation(key, owner, heartbeat_interval)
            if lease.owner_id == owner:
                return self._compute_as_owner(key, compute, owner, lease, metadata)
            if deadline is not None and time.monotonic() + poll > deadline:
                raise DeadlineExceededError(
                    f"gave up after {timeout} waiting for {lease.owner_id!r} to compute "
                    f"{self.cache_key(key)!r}",
                    holder=lease.owner_id,
                )
            time.sleep(poll)

    def _compute_as_owner(
        self,
        key: CatalogKey,
        compute: Callable[[], literals_pb2.LiteralMap],
        owner: str,
        lease: cs.Reservation,
        metadata: ExecutionMetadata | None,
    ) -> Entry:
        heartbeat = _Heartbeat(self, key, owner, lease)
        heartbeat.start()
        try:
            try:  # someone may have finished between our miss and our acquisition
                return self.get(key)
            except NotFoundError:
                pass
            outputs = compute()
            if not isinstance(outputs, literals_pb2.LiteralMap):
                raise InvalidArgumentError(
                    f"compute must return a LiteralMap, got {type(outputs).__name__}",
                    field="compute",
                )
            try:
                status = self.put(key, outputs, metadata)
            except AlreadyExistsError:
                return self.get(key)  # our lease lapsed and another owner stored first
            return Entry(outputs=outputs, output_uri=None, status=status)
        finally:
            heartbeat.stop()
            try:
                self.release_reservation(key, owner)
            except FlyteCacheError as error:  # the lease expires by itself anyway
                log.warning("could not release reservation for %s: %s", owner, error)


@dataclass
class _Heartbeat:
    """Keeps a lease alive from a daemon thread while its owner computes."""

    client: CatalogClient
    key: CatalogKey
    owner: str
    lease: cs.Reservation
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="flytecache-heartbeat", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        interval = self.lease.heartbeat_interval.ToTimedelta().total_seconds() or 1.0
        while not self._stop.wait(interval):
            try:
                lease = self.client.get_or_extend_reservation(
                    self.key, self.owner, self.lease.heartbeat_interval.ToTimedelta()
                )
            except FlyteCacheError as error:  # keep trying: the lease has grace periods left
                log.warning("heartbeat for %s failed: %s", self.owner, error)
                continue
            if lease.owner_id != self.owner:
                log.warning("reservation lost to %s while computing", lease.owner_id)


def _open_backend(target: Any, *, clock: Any, auth_token: str | None) -> CacheBackend:
    if isinstance(target, CacheStore):
        return LocalCache(target)
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
    return LocalCache(CacheStore.open(target, clock=clock), owns_store=True)


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


def _is_local(uri: str) -> bool:
    return uri.startswith("file://") or "://" not in uri


def _check_uri_exists(uri: str) -> None:
    if _is_local(uri):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.exists(path):
            raise NotFoundError(f"outputs URI {uri} does not exist", uri=uri)


def _read_outputs(uri: str) -> literals_pb2.LiteralMap:
    import fsspec

    try:
        with fsspec.open(uri, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise NotFoundError(
            f"cache entry points at {uri}, which no longer exists (treated as a miss)", uri=uri
        ) from None
    except (ImportError, ValueError) as error:
        raise StorageError(
            f"cannot read outputs at {uri}: {error} (install the fsspec backend for this scheme)"
        ) from error
    literal_map = literals_pb2.LiteralMap()
    try:
        literal_map.ParseFromString(data)
    except Exception as error:
        raise StorageError(f"outputs at {uri} are not a serialized LiteralMap") from error
    return literal_map
