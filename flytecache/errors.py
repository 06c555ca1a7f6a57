"""One exception tree for flytecache; every error carries a Flyte/Connect error ``code``.

Callers branch on the class or on ``code`` (the gRPC/Connect vocabulary), whatever the transport:
the local store, the remote client and the server all raise or return the same codes.
"""

from __future__ import annotations

from typing import Any, ClassVar

__all__ = [
    "AlreadyExistsError",
    "DeadlineExceededError",
    "FlyteCacheError",
    "InvalidArgumentError",
    "KeyHashCollisionError",
    "NotFoundError",
    "ResourceExhaustedError",
    "SchemaError",
    "StaleEntryError",
    "StorageBusyError",
    "StorageError",
    "UnauthenticatedError",
    "UnavailableError",
    "UnsupportedVersionError",
]


class FlyteCacheError(Exception):
    """Root of every error flytecache raises.

    ``code`` is the Connect/gRPC code name (``"NOT_FOUND"``...); keyword ``fields`` (the key,
    the holder...) are kept as attributes and in ``.fields`` for programs that need them.
    """

    code: ClassVar[str] = "INTERNAL"

    def __init__(self, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.message = message
        self.fields: dict[str, Any] = fields
        for name, value in fields.items():
            setattr(self, name, value)

    def __str__(self) -> str:
        return self.message


class InvalidArgumentError(FlyteCacheError, ValueError):
    """A request or setting is malformed; the message names the offending field."""

    code = "INVALID_ARGUMENT"


class NotFoundError(FlyteCacheError, LookupError):
    """No cache entry (or blob) exists for the key."""

    code = "NOT_FOUND"


class StaleEntryError(NotFoundError):
    """An entry is stored but the client counts it as a miss (SPEC §5.3).

    Raised by :class:`~flytecache.CatalogClient` when the entry is older than its
    ``max_cache_age`` or its outputs blob is gone or is not a serialized ``LiteralMap``. It is a
    :class:`NotFoundError` (code ``NOT_FOUND``), so code that treats any miss alike keeps
    working; code that recomputes should *replace* the entry (``update``), not ``put`` it,
    which would answer ALREADY_EXISTS.
    """


class AlreadyExistsError(FlyteCacheError):
    """A live cache entry already exists and overwrite was not requested."""

    code = "ALREADY_EXISTS"


class StorageBusyError(FlyteCacheError):
    """The database lock could not be obtained within ``busy_timeout``; safe to retry."""

    code = "UNAVAILABLE"


class UnavailableError(FlyteCacheError):
    """The database or cache service cannot be reached; safe to retry later."""

    code = "UNAVAILABLE"


class ResourceExhaustedError(FlyteCacheError):
    """The disk (or database size limit) is full; nothing was written."""

    code = "RESOURCE_EXHAUSTED"


class SchemaError(FlyteCacheError):
    """The database schema is not the one this code expects (too old, too new, or unreadable)."""

    code = "FAILED_PRECONDITION"


class KeyHashCollisionError(FlyteCacheError):
    """The key's 64-bit hash belongs to another stored key (``store/keyhash.py``): nothing
    was written; the key can be stored once the other key's entry is gone. ``key`` names the
    key put, ``stored`` (locally) the key holding the hash. The odds are n / 2**64 per put
    with n entries stored."""

    code = "FAILED_PRECONDITION"


class UnauthenticatedError(FlyteCacheError):
    """The cache service rejected the request's credentials."""

    code = "UNAUTHENTICATED"


class UnsupportedVersionError(FlyteCacheError):
    """An SDK integration met a version of the SDK it was not tested with.

    The integrations replace private SDK internals, so they refuse untested versions unless
    installed with ``force=True``; the message names the installed and supported versions.
    """

    code = "FAILED_PRECONDITION"


class StorageError(FlyteCacheError):
    """Any other storage failure (corrupt file, unexpected driver error)."""

    code = "INTERNAL"


class DeadlineExceededError(FlyteCacheError, TimeoutError):
    """Waiting (for another owner's result or lease) took longer than the caller allowed."""

    code = "DEADLINE_EXCEEDED"
