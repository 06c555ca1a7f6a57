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


def _tables(engine: sa.Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_single_head() -> None:
    assert len(migrate._script().get_heads()) == 1
    assert migrate.head_revision() == "0004_key_hash"


def test_empty_to_head(empty_engine: sa.Engine) -> None:
    migrate.upgrade(empty_engine)
    assert {"entries", "outputs", "reservations", "alembic_version"} <= _tables(empty_engine)
    with migrate.read_connection(empty_engine) as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()


def test_head_to_base_to_head(empty_engine: sa.Engine) -> None:
    migrate.upgrade(empty_engine)
    migrate.downgrade(empty_engine, "base")
    assert _tables(empty_engine) <= {"alembic_version"}
    migrate.upgrade(empty_engine)
    assert {"entries", "outputs", "reservations"} <= _tables(empty_engine)


def test_models_match_migrations(empty_engine: sa.Engine) -> None:
    migrate.upgrade(empty_engine)
    assert migrate.check_models_match(empty_engine) == []


def test_upgrade_keeps_data_and_is_idempotent(empty_url: str) -> None:
    with CacheStore.open(empty_url) as store:
        store.put("k", cs.CachedOutput(output_uri="s3://b/k"))
    empty_engine = create_store_engine(normalize_url(empty_url), StoreSettings())
    try:
        migrate.upgrade(empty_engine)  # already at head: nothing happens
    finally:
        empty_engine.dispose()
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


def test_newer_database_is_refused_on_any_backend(empty_engine: sa.Engine, empty_url: str) -> None:
    migrate.upgrade(empty_engine)
    with empty_engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999_future'")
    with pytest.raises(SchemaError, match="9999_future"):
        CacheStore.open(empty_url)


def test_empty_database_without_migrate_is_refused_on_any_backend(empty_url: str) -> None:
    with pytest.raises(SchemaError, match="flytecache db upgrade"):
        CacheStore.open(empty_url, migrate=False)


def _entry_columns(engine: sa.Engine) -> set[str]:
    return {column["name"] for column in sa.inspect(engine).get_columns("entries")}


def test_0003_adds_accessed_at_and_its_downgrade_keeps_the_entries(
    empty_engine: sa.Engine, empty_url: str
) -> None:
    migrate.upgrade(empty_engine, "0002_payload")
    assert "accessed_at" not in _entry_columns(empty_engine)
    with empty_engine.begin() as conn:  # a row as a 0002 store wrote it
        conn.exec_driver_sql(
            "INSERT INTO entries (key, project, domain, name, version, org, created_at,"
            " last_updated_at, output_uri, size, payload)"
            " VALUES ('k', '', '', '', '', '', 1, 2, 's3://b/k', 8, NULL)"
        )
    migrate.upgrade(empty_engine)
    assert "accessed_at" in _entry_columns(empty_engine)
    with empty_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT key, accessed_at FROM entries").all() == [("k", None)]
        conn.exec_driver_sql("UPDATE entries SET accessed_at = 3")
        conn.commit()
    migrate.downgrade(empty_engine, "0002_payload")
    assert "accessed_at" not in _entry_columns(empty_engine)
    with empty_engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT key, size FROM entries").all() == [("k", 8)]
    migrate.upgrade(empty_engine)
    assert migrate.check_models_match(empty_engine) == []
