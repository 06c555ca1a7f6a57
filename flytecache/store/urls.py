"""Database URLs and dialects: what a path or URL names, and the dialect-specific constructs."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import exc
from sqlalchemy.engine import URL, Engine, make_url

from flytecache.errors import InvalidArgumentError

__all__ = ["database_name", "dialect_insert", "is_sqlite", "normalize_url", "sqlite_file"]


def is_sqlite(url: URL | Engine) -> bool:
    """Whether ``url`` (or an engine) points at SQLite."""
    name = url.dialect.name if isinstance(url, Engine) else url.get_backend_name()
    return name == "sqlite"


def normalize_url(url_or_path: str | os.PathLike[str]) -> URL:
    """Turn a plain path or a URL string into a SQLAlchemy URL (``sqlite:///`` for paths)."""
    if isinstance(url_or_path, os.PathLike):
        url_or_path = os.fspath(url_or_path)
    if not isinstance(url_or_path, str) or not url_or_path.strip():
        raise InvalidArgumentError("database URL or path must be a non-empty string", field="url")
    text = url_or_path.strip()
    if "://" not in text:
        if text == ":memory:":
            raise InvalidArgumentError(
                "an in-memory database cannot be shared between processes; give a file path",
                field="url",
            )
        return URL.create("sqlite", database=str(Path(text).expanduser().absolute()))
    try:
        url = make_url(text)
    except exc.ArgumentError as error:
        raise InvalidArgumentError(f"not a database URL: {text!r}", field="url") from error
    backend = url.get_backend_name()
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise InvalidArgumentError(
                "an in-memory SQLite database cannot be shared between processes; give a file",
                field="url",
            )
        return url.set(database=str(Path(url.database).expanduser().absolute()))
    if backend == "postgresql":
        if url.drivername != "postgresql+psycopg":
            # psycopg 3 is the only PostgreSQL driver tested (and the one we install).
            url = url.set(drivername="postgresql+psycopg")
        return url
    raise InvalidArgumentError(
        f"unsupported database {backend!r}: use a SQLite path/URL or postgresql+psycopg://",
        field="url",
    )


def sqlite_file(url: URL) -> Path:
    """The file behind a SQLite ``url``, also for the ``file:…?mode=ro`` form of a read-only
    engine (whose ``url.database`` is a URI)."""
    database = str(url.database)
    if database.startswith("file:"):
        import urllib.parse

        database = urllib.parse.unquote(database.removeprefix("file:").split("?")[0])
    return Path(database)


def database_name(url: URL) -> str:
    """The database as a person names it: the SQLite file's path, else the URL without the
    password."""
    if is_sqlite(url) and url.database:
        return str(sqlite_file(url))
    return url.render_as_string(hide_password=True)


def dialect_insert(engine: Engine) -> Callable[..., Any]:
    """The dialect's INSERT construct (with ``on_conflict_do_update``)."""
    if is_sqlite(engine):
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert

        return sqlite_insert
    from sqlalchemy.dialects.postgresql import insert as pg_insert

    return pg_insert
