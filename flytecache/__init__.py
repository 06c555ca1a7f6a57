"""flytecache: Flyte's cache and reservations on one SQLite file (or PostgreSQL)."""

from flytecache import errors
from flytecache.client import (
    CatalogClient,
    CatalogKey,
    Entry,
    ExecutionMetadata,
    ReservationCache,
    Status,
)
from flytecache.config import StoreSettings
from flytecache.store import CacheStore

__version__ = "0.1.0"

__all__ = [
    "CacheStore",
    "CatalogClient",
    "CatalogKey",
    "Entry",
    "ExecutionMetadata",
    "ReservationCache",
    "Status",
    "StoreSettings",
    "__version__",
    "errors",
]
