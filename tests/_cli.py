"""Helpers the CLI tests share: invoking the app, checking exit codes, opening a store, putting
entries and writing rows behind the store's back, on either backend."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import pytest
import sqlalchemy as sa
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import identifier_pb2, literals_pb2
from typer.testing import CliRunner, Result

from flytecache import CacheStore, StoreSettings
from flytecache.cli import app
from flytecache.store import codec
from flytecache.store.admin import _base as admin_base
from flytecache.store.keyhash import key_hash
from flytecache.store.models import Entry

ENTRIES = cast(sa.Table, Entry.__table__)
BACKENDS = ["sqlite", "postgresql"]
WITH_PAYLOAD = admin_base.WITH_PAYLOAD
OUTPUTS_TABLE = admin_base.OUTPUTS
PAYLOAD = admin_base.PAYLOAD
CHECK_ITEMS = [
    *("filesystem", "permissions", "connect", "schema", "models", "keys", "integrity", "wal"),
]
"""The items of ``db check``, in order, on every backend."""

runner = CliRunner()


def run(db: str | None, *args: str, input: str | bytes | None = None, **env: str) -> Result:
    """Invoke the app in-process with ``FLYTECACHE_DB=db`` (stdin is not a TTY)."""
    environ = {"FLYTECACHE_DB": db} if db is not None else {}
    environ.update(env)
    return runner.invoke(app, list(args), input=input, env=environ)


def ok(result: Result) -> Result:
    """Assert exit 0 (showing stderr otherwise) and return the result."""
    assert result.exit_code == 0, (result.exit_code, result.stdout, result.stderr, result.exception)
    return result


def fails(result: Result, code: int = 1) -> str:
    """Assert the exit code and a one-line, traceback-free error; return the line."""
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def as_json(result: Result) -> Any:
    """The command's stdout, parsed."""
    return json.loads(ok(result).stdout)


class Clock:
    """A settable clock near the real time (the CLI itself measures ages with the real clock)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def at(self, ago: timedelta) -> Clock:
        """Set the clock ``ago`` before the real now; returns self."""
        self.now = datetime.now(UTC) - ago
        return self


def identifier(
    project: str = "p", domain: str = "development", name: str = "t", version: str = "v1"
):
    return identifier_pb2.Identifier(
        resource_type=identifier_pb2.TASK,
        project=project,
        domain=domain,
        name=name,
        version=version,
    )


def put_uri(store: CacheStore, key: str, uri: str | None = None, **ident: str) -> None:
    """An entry whose outputs live at a URI, with a source identifier and a key map."""
    metadata = cs.Metadata(source_identifier=identifier(**ident))
    metadata.key_map.values.update({"exec-attempt": "0", "execution-name": "run-1"})
    store.put(
        key,
        cs.CachedOutput(output_uri=uri or f"s3://bucket/{key}", metadata=metadata),
        overwrite=True,
    )


def put_inline(store: CacheStore, key: str, literals: dict[str, literals_pb2.Literal]) -> None:
    """An entry with inline outputs."""
    literal_map = literals_pb2.LiteralMap()
    for name, literal in literals.items():
        literal_map.literals[name].CopyFrom(literal)
    store.put(key, cs.CachedOutput(output_literals=literal_map), overwrite=True)


def inline_size(literals: dict[str, literals_pb2.Literal]) -> int:
    """An inline entry's size: its serialized literal map."""
    return int(literals_pb2.LiteralMap(literals=literals).ByteSize())


def int_literal(value: int) -> literals_pb2.Literal:
    literal = literals_pb2.Literal()
    literal.scalar.primitive.integer = value
    return literal


def open_store(path: str, clock: Clock | None = None, **settings: Any) -> CacheStore:
    return CacheStore.open(path, clock=clock, settings=StoreSettings(**settings))


@contextlib.contextmanager
def connect(db: str) -> Iterator[sa.Connection]:
    """A SQLAlchemy connection to ``db`` (either backend) in a transaction committed on exit.

    For looking at or changing rows behind the store's back. No schema check, so it also works
    on a database that was downgraded; the engine is disposed afterwards.
    """
    from flytecache.store import opening

    engine = opening.open_engine(db)
    try:
        with engine.begin() as conn:
            yield conn
    finally:
        engine.dispose()


def is_postgres(db: str) -> bool:
    """Whether ``db`` (a path or URL from the fixtures) is a PostgreSQL database."""
    return db.startswith("postgresql")


def table_names(db: str) -> set[str]:
    """The tables in ``db``'s default schema."""
    with connect(db) as conn:
        return set(sa.inspect(conn).get_table_names())


def bulk_insert(
    db: str, count: int, *, updated_us: int, prefix: str = "bulk", inline_every: int = 10
) -> None:
    """Insert ``count`` entries fast (one transaction, executemany) on either backend.

    Every ``inline_every``-th entry has one inline output; the others have a URI. The rows are
    exactly what CacheStore.put would write (size included).
    """
    literal = int_literal(7).SerializeToString()
    rows = []
    for i in range(count):
        uri = None if i % inline_every == 0 else f"s3://bucket/{prefix}/{i}"
        key = f"{prefix}-{i:07d}"
        rows.append(
            {
                "key": key,
                "key_hash": key_hash(key),
                "resource_type": 1,
                "project": "bulk",
                "domain": "development",
                "name": f"task-{i % 7}",
                "version": "v1",
                "org": "",
                "created_at": updated_us,
                "last_updated_at": updated_us,
                "output_uri": uri,
                "size": len(literal) if uri is None else len(uri),
                "payload": codec.payload_from_parts(
                    output_uri=uri,
                    literals=[] if uri else [("o", literal)],
                    metadata=codec.metadata_from_columns(
                        1, "bulk", "development", f"task-{i % 7}", "v1", "", None
                    ),
                    created_at=updated_us,
                    last_updated_at=updated_us,
                ),
            }
        )
    with connect(db) as conn:
        conn.execute(sa.insert(ENTRIES), rows)


def new_db(tmp_path: Path) -> str:
    """A migrated, empty SQLite database file under ``tmp_path``."""
    path = str(tmp_path / "cache.db")
    CacheStore.open(path).close()
    return path


def new_db_on(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database on ``backend`` (a SQLite file or a PostgreSQL URL)."""
    if backend == "sqlite":
        return new_db(tmp_path)
    return str(request.getfixturevalue("migrated_pg_url"))
