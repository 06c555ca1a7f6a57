"""The driver-error table: SQLite and PostgreSQL (psycopg) errors and SQLAlchemy's, turned into
flytecache's error tree in one place, so callers never see a driver exception."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from typing import NoReturn

from sqlalchemy import exc

from flytecache.errors import (
    FlyteCacheError,
    ResourceExhaustedError,
    StorageBusyError,
    StorageError,
    UnavailableError,
)

__all__ = ["BUSY_MESSAGE", "reraise_translated", "translate_errors", "translated"]

BUSY_MESSAGE = re.compile(r"database is locked|database table is locked|database is busy", re.I)
_FULL = re.compile(r"database or disk is full|disk I/O error.*space|no space left", re.I)
_CORRUPT = re.compile(r"file is not a database|malformed|file is encrypted|corrupt", re.I)
_READONLY = re.compile(r"readonly database|read-only|attempt to write a readonly", re.I)
_CANT_OPEN = re.compile(r"unable to open database file", re.I)
_PG_BUSY_STATES = {"55P03", "40001", "40P01", "57014"}  # lock/serialization/deadlock/timeout
_PG_UNAVAILABLE_PREFIXES = ("08", "57P", "53")


def _classify(error: BaseException) -> FlyteCacheError:
    original = getattr(error, "orig", None) or error
    message = str(original).strip().splitlines()[0] if str(original).strip() else repr(original)
    sqlstate = getattr(original, "sqlstate", None)
    if sqlstate:
        if sqlstate in _PG_BUSY_STATES:
            return StorageBusyError(
                f"database busy ({message}); retry the operation", sqlstate=sqlstate
            )
        if sqlstate == "53100":
            return ResourceExhaustedError(f"database disk full: {message}", sqlstate=sqlstate)
        if sqlstate.startswith(_PG_UNAVAILABLE_PREFIXES):
            return UnavailableError(f"database unavailable: {message}", sqlstate=sqlstate)
        if sqlstate.startswith("28"):
            return UnavailableError(f"database refused the credentials: {message}")
        return StorageError(f"database error: {message}", sqlstate=sqlstate)
    module = type(original).__module__ or ""
    if module.startswith("psycopg") and "connect" in message.lower():
        return UnavailableError(f"database unavailable: {message}")
    if isinstance(original, sqlite3.Error) or module.startswith("sqlite3"):
        if BUSY_MESSAGE.search(message):
            return StorageBusyError(
                f"database is locked by another writer ({message}); the busy timeout expired, "
                "retry the operation"
            )
        if _FULL.search(message):
            return ResourceExhaustedError(
                f"database or disk is full ({message}); nothing was written"
            )
        if _CORRUPT.search(message):
            return StorageError(
                f"the database file is damaged or not a SQLite database ({message}); "
                "run `flytecache db check`"
            )
        if _READONLY.search(message):
            return StorageError(
                f"the database is read-only ({message}); check file permissions and whether "
                "its filesystem is mounted read-only"
            )
        if _CANT_OPEN.search(message):
            return UnavailableError(
                f"cannot open the database file ({message}); check the path and permissions"
            )
    return StorageError(f"database error: {message}")


def translated(error: BaseException) -> BaseException:
    """The flytecache error for a driver/SQLAlchemy ``error``; anything else unchanged."""
    if isinstance(error, FlyteCacheError):
        return error
    if isinstance(error, exc.DBAPIError | sqlite3.Error):
        return _classify(error)
    if isinstance(error, exc.SQLAlchemyError):
        return StorageError(f"database error: {error}")
    if isinstance(error, Exception) and type(error).__module__.startswith("psycopg"):
        return _classify(error)
    return error


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Turn driver and SQLAlchemy exceptions into the flytecache error tree (one place)."""
    try:
        yield
    except BaseException as error:
        reraise_translated(error)


def reraise_translated(error: BaseException) -> NoReturn:
    """Raise the flytecache error for ``error`` (chained), or ``error`` itself when it has no
    translation: the one "translate, and re-raise if unchanged" step, for ``except`` blocks."""
    replacement = translated(error)
    if replacement is error:
        raise error
    raise replacement from error
