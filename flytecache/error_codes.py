"""The one table between flytecache's errors and Connect/gRPC codes, both ways: the server
answers with :func:`to_connect_error`, the remote client raises :func:`from_connect_error`, so
an error has the same class and code locally and through the server (SPEC §5.3)."""

from __future__ import annotations

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.rpc.error_details_pb2 import ErrorInfo  # type: ignore[import-untyped]

from flytecache.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FlyteCacheError,
    InvalidArgumentError,
    KeyHashCollisionError,
    NotFoundError,
    ResourceExhaustedError,
    StorageBusyError,
    StorageError,
    UnauthenticatedError,
    UnavailableError,
)

__all__ = ["ERROR_DOMAIN", "STORAGE_BUSY_REASON", "from_connect_error", "to_connect_error"]

ERROR_DOMAIN = "flytecache"
STORAGE_BUSY_REASON = "STORAGE_BUSY"
"""``google.rpc.ErrorInfo.reason`` on an UNAVAILABLE that means "database busy, retry"."""
KEY_HASH_COLLISION_REASON = "KEY_HASH_COLLISION"
"""``google.rpc.ErrorInfo.reason`` on the FAILED_PRECONDITION of a :class:`KeyHashCollisionError`
(any other FAILED_PRECONDITION, from another cache service, stays a plain error)."""


def to_connect_error(error: BaseException) -> ConnectError:
    """The Connect error a client sees for ``error`` (details of unexpected ones are not sent)."""
    if isinstance(error, ConnectError):
        return error
    if isinstance(error, NotFoundError):
        return ConnectError(Code.NOT_FOUND, error.message)
    if isinstance(error, AlreadyExistsError):
        return ConnectError(Code.ALREADY_EXISTS, error.message)
    if isinstance(error, InvalidArgumentError):
        return ConnectError(Code.INVALID_ARGUMENT, error.message)
    if isinstance(error, KeyHashCollisionError):
        # The other key is not named: it may belong to another project.
        key = error.fields.get("key", "")
        return ConnectError(
            Code.FAILED_PRECONDITION,
            f'cache key "{key}" has the same 64-bit hash as another stored key; it cannot be '
            "cached while that entry exists",
            [ErrorInfo(reason=KEY_HASH_COLLISION_REASON, domain=ERROR_DOMAIN)],
        )
    if isinstance(error, StorageBusyError):
        # UNAVAILABLE makes Flyte's client retry; ErrorInfo lets ours say "busy" precisely.
        return ConnectError(
            Code.UNAVAILABLE,
            "the cache database is busy; retry",
            [ErrorInfo(reason=STORAGE_BUSY_REASON, domain=ERROR_DOMAIN)],
        )
    if isinstance(error, UnavailableError):
        return ConnectError(Code.UNAVAILABLE, "the cache database is unavailable; retry later")
    if isinstance(error, ResourceExhaustedError):
        return ConnectError(Code.RESOURCE_EXHAUSTED, "the cache database is full")
    return ConnectError(Code.INTERNAL, "internal error")


def from_connect_error(error: ConnectError, *, key: str, url: str) -> FlyteCacheError:
    """The flytecache error a client raises for the Connect ``error`` a server at ``url``
    answered about ``key`` (a transport failure is UNAVAILABLE with a non-Connect cause)."""
    code, message = error.code, error.message
    translated: FlyteCacheError
    if code is Code.NOT_FOUND:
        translated = NotFoundError(message, key=key)
    elif code is Code.ALREADY_EXISTS:
        translated = AlreadyExistsError(message, key=key)
    elif code is Code.INVALID_ARGUMENT:
        translated = InvalidArgumentError(message)
    elif code is Code.FAILED_PRECONDITION and _has_reason(error, KEY_HASH_COLLISION_REASON):
        translated = KeyHashCollisionError(message, key=key)
    elif code is Code.UNAVAILABLE:
        cause = error.__cause__
        if cause is not None and not isinstance(cause, ConnectError):
            # The runtime wraps transport failures (refused, reset, DNS) as UNAVAILABLE.
            translated = UnavailableError(
                f"cannot reach the cache service at {url}: {message}", url=url
            )
        elif _is_busy(error):
            translated = StorageBusyError(f"{message} ({url})", url=url)
        else:
            translated = UnavailableError(
                f"the cache service at {url} is unavailable: {message}", url=url
            )
    elif code is Code.UNAUTHENTICATED:
        translated = UnauthenticatedError(
            f"the cache service at {url} rejected the credentials: {message}", url=url
        )
    elif code is Code.RESOURCE_EXHAUSTED:
        translated = ResourceExhaustedError(f"{message} ({url})", url=url)
    elif code is Code.DEADLINE_EXCEEDED:
        translated = DeadlineExceededError(
            f"the cache service at {url} did not answer in time", url=url
        )
    else:
        # ``code`` (a field, so an instance attribute) keeps the server's code name.
        translated = StorageError(
            f"the cache service at {url} answered {code.name}: {message}",
            code=code.name,
            url=url,
        )
    return translated


def _is_busy(error: ConnectError) -> bool:
    return _has_reason(error, STORAGE_BUSY_REASON)


def _has_reason(error: ConnectError, reason: str) -> bool:
    """Whether ``error`` carries flytecache's ``ErrorInfo`` with ``reason``."""
    for detail in error.details:
        info = ErrorInfo()
        if (
            detail.Is(ErrorInfo.DESCRIPTOR)
            and detail.Unpack(info)
            and (info.domain, info.reason) == (ERROR_DOMAIN, reason)
        ):
            return True
    return False
