"""flytecache: Flyte's cache and reservations on one SQLite file (or PostgreSQL)."""

from flytecache import errors
from flytecache.config import StoreSettings
from flytecache.store import CacheStore

__version__ = "0.1.0"

__all__ = ["CacheStore", "StoreSettings", "__version__", "errors"]
