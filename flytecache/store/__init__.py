"""The storage engine: models, engine setup, migrations and the CacheStore."""

from flytecache.store.cache import CacheStore, ReservationOutcome

__all__ = ["CacheStore", "ReservationOutcome"]
