"""The exception tree: every error is a ``FlyteCacheError`` with its code and structured fields."""

from __future__ import annotations

import pytest

from flytecache.errors import (
    AlreadyExistsError,
    FlyteCacheError,
    InvalidArgumentError,
    KeyHashCollisionError,
    NotFoundError,
    ResourceExhaustedError,
    SchemaError,
    StorageBusyError,
    StorageError,
    UnauthenticatedError,
    UnavailableError,
)


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (InvalidArgumentError, "INVALID_ARGUMENT"),
        (NotFoundError, "NOT_FOUND"),
        (AlreadyExistsError, "ALREADY_EXISTS"),
        (StorageBusyError, "UNAVAILABLE"),
        (UnavailableError, "UNAVAILABLE"),
        (ResourceExhaustedError, "RESOURCE_EXHAUSTED"),
        (SchemaError, "FAILED_PRECONDITION"),
        (KeyHashCollisionError, "FAILED_PRECONDITION"),
        (UnauthenticatedError, "UNAUTHENTICATED"),
        (StorageError, "INTERNAL"),
    ],
)
def test_every_error_is_a_flytecache_error_with_a_code(cls: type[FlyteCacheError], code: str):
    error = cls("boom", key="k")
    assert isinstance(error, FlyteCacheError)
    assert error.code == code
    assert str(error) == "boom"
    assert error.key == "k"
    assert error.fields == {"key": "k"}
