"""Alembic migrations: one head, up/down round trips, models match, data survives."""

from __future__ import annotations

import sqlite3

import pytest
import sqlalchemy as sa
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache import CacheStore, StoreSettings
from flytecache.errors import SchemaError
from flytecache.store import migrate
from flytecache.store.engine import create_store_engine
from flytecache.store.urls import normalize_url


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request: pytest.FixtureRequest, db_path: str) -> str:
    """An empty database on each backend."""
    if request.param == "sqlite":
        return db_path
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
def engine(empty_url: str):
    engine = create_store_engine(normalize_url(empty_url), StoreSettings())
    yield engine
    engine.dispose()


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_single_head() -> None:
    assert len(migrate._script().get_heads()) == 1
    assert migrate.head_revision() == "0002_payload"


def test_empty_to_head(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    assert {"entries", "outputs", "reservations", "alembic_version"} <= _tables(engine)
    with migrate.read_connection(engine) as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def test_head_to_base_to_head(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    migrate.downgrade(engine, "base")
    assert _tables(engine) <= {"alembic_version"}
    migrate.upgrade(engine)
    assert {"entries", "outputs", "reservations"} <= _tables(engine)


def test_models_match_migrations(engine: sa.Engine) -> None:
    migrate.upgrade(engine)
    assert migrate.check_models_match(engine) == []


def test_upgrade_keeps_data_and_is_idempotent(empty_url: str) -> None:
    with CacheStore.open(empty_url) as store:
        store.put("k", cs.CachedOutput(output_uri="s3://b/k"))
    engine = create_store_engine(normalize_url(empty_url), StoreSettings())
    try:
        migrate.upgrade(engine)  # already at head: nothing happens
    finally:
        engine.dispose()
    with CacheStore.open(empty_url, migrate=False) as store:
        assert store.get("k").output_uri == "s3://b/k"


def test_newer_database_is_refused(db_path: str) -> None:
    CacheStore.open(db_path).close()
    with sqlite3.connect(db_path) as conn:
        conn.execute("update alembic_version set version_num = '9999_future'")
    conn.close()
    with pytest.raises(SchemaError) as info:
        CacheStore.open(db_path)
    assert "9999_future" in str(info.value) and migrate.head_revision() in str(info.value)


def test_old_database_without_migrate_is_refused(db_path: str) -> None:
    sqlite3.connect(db_path).close()
    with pytest.raises(SchemaError, match="flytecache db upgrade"):
        CacheStore.open(db_path, migrate=False)


def test_newer_database_is_refused_on_any_backend(engine: sa.Engine, empty_url: str) -> None:
    migrate.upgrade(engine)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(SchemaError, match="9999_future"):
        CacheStore.open(empty_url)


def test_empty_database_without_migrate_is_refused_on_any_backend(empty_url: str) -> None:
    with pytest.raises(SchemaError, match="flytecache db upgrade"):
        CacheStore.open(empty_url, migrate=False)
