"""flytecache: Flyte's cache and reservations on one SQLite file (or PostgreSQL).

The public names are imported lazily (PEP 562) so that ``flytecache --help`` and other light
uses do not pay for SQLAlchemy and protobuf.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "CacheHit",
    "CacheStore",
    "CatalogClient",
    "CatalogKey",
    "ExecutionMetadata",
    "ReservationCache",
    "Status",
    "StoreSettings",
    "__version__",
    "errors",
]

_LAZY = {
    "CacheStore": "flytecache.store",
    "CatalogClient": "flytecache.client",
    "CatalogKey": "flytecache.client",
    "CacheHit": "flytecache.client",
    "ExecutionMetadata": "flytecache.client",
    "ReservationCache": "flytecache.client",
    "Status": "flytecache.client",
    "StoreSettings": "flytecache.config",
}

if TYPE_CHECKING:
    from flytecache import errors
    from flytecache.client import (
        CacheHit,
        CatalogClient,
        CatalogKey,
        ExecutionMetadata,
        ReservationCache,
        Status,
    )
    from flytecache.config import StoreSettings
    from flytecache.store import CacheStore


def __getattr__(name: str) -> Any:
    if name == "errors":
        return importlib.import_module("flytecache.errors")
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'flytecache' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
