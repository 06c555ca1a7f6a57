"""One cache key bound to a client (:class:`CacheSlot`), and the claim protocol on it: look up,
and on a miss decide who computes (SPEC §4, §5.3) — the wait loop that ``get_or_compute`` and
the SDK integrations share."""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import TYPE_CHECKING

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2

from flytecache.blobs import check_uri_exists, read_outputs
from flytecache.catalog import (
    CacheHit,
    CacheStatus,
    ExecutionMetadata,
    Status,
    catalog_metadata,
    stored_metadata,
)
from flytecache.errors import (
    DeadlineExceededError,
    InvalidArgumentError,
    NotFoundError,
    StaleEntryError,
    StorageError,
)
from flytecache.keys import CatalogKey
from flytecache.leases import Lease, check_heartbeat
from flytecache.scoping import scope_of

if TYPE_CHECKING:
    from flytecache.client import CatalogClient

__all__ = ["CacheSlot", "Claim"]


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
        self.scope = scope_of(catalog_key.identifier)
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
            if self._client.now() - updated > self.max_cache_age:
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
            status=Status(CacheStatus.CACHE_HIT, catalog_metadata(output.metadata)),
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
        stored = stored_metadata(self.catalog_key, metadata, self._client.now())
        if isinstance(outputs, literals_pb2.LiteralMap):
            output = cs.CachedOutput(output_literals=outputs, metadata=stored)
        elif isinstance(outputs, str):
            if not outputs:
                raise InvalidArgumentError("outputs URI must not be empty", field="outputs")
            check_uri_exists(outputs)
            output = cs.CachedOutput(output_uri=outputs, metadata=stored)
        else:
            raise InvalidArgumentError(
                f"outputs must be a LiteralMap or a URI string, got {type(outputs).__name__}",
                field="outputs",
            )
        # A present-but-zero max_age would make the server replace every entry (SPEC §3).
        max_age = self.max_cache_age if self.max_cache_age else None
        self._client.backend.put(self.scope, self.key, output, overwrite=overwrite, max_age=max_age)
        return Status(CacheStatus.CACHE_POPULATED, catalog_metadata(stored))

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
