"""The catalog's data: what a hit, a status and an execution's metadata are, and how Flyte
encodes that metadata in a cache entry (its ``key_map`` keys and fallbacks, SPEC §5.1)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import catalog_pb2, identifier_pb2, literals_pb2

from flytecache.errors import InvalidArgumentError
from flytecache.keys import CatalogKey

__all__ = [
    "CacheHit",
    "CacheStatus",
    "ExecutionMetadata",
    "ReservationCache",
    "ReservationStatus",
    "Status",
    "catalog_metadata",
    "stored_metadata",
]

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


def stored_metadata(key: CatalogKey, metadata: ExecutionMetadata, now: datetime) -> cs.Metadata:
    """The Flyte ``Metadata`` an entry for ``key`` is stored with (SPEC §5.1): the task as
    ``source_identifier``, ``created_at`` (``metadata``'s or ``now``) and Flyte's ``key_map``
    from the task (else node) execution identifier."""
    created = metadata.created_at or now
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


def catalog_metadata(metadata: cs.Metadata) -> catalog_pb2.CatalogMetadata:
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
