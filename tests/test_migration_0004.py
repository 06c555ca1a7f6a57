"""0003 -> 0004: the unique index holds the key's 64-bit hash instead of the key text.

The 0003 databases are made by the 0001 generator (tests/_schema_0001.py) upgraded to 0003, so
they hold every shape of entry, spilled payloads included. Every entry must read back identical
after the upgrade, the 0003 rows must come back byte for byte after the downgrade, and the
batched pass must survive SIGKILL and 0003 writers that add rows between its batches.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import _schema_0001 as old
import pytest
import sqlalchemy as sa
from _upgrade import check_reads, kill_upgrade_after, upgrade_with_the_cli

from flytecache import CacheStore, StoreSettings
from flytecache.errors import SchemaError
from flytecache.store import migrate
from flytecache.store.engine import create_store_engine, write_connection
from flytecache.store.keyhash import key_hash
from flytecache.store.urls import normalize_url

BULK = 40
REVISION = "0004_key_hash"


def _populate_0003(engine: sa.Engine, n: int = BULK) -> list[old.Case]:
    migrate.upgrade(engine, "0001_initial")
    with write_connection(engine) as conn:
        cases = old.populate(conn, n) + [old.generated(i) for i in range(n)]
    migrate.upgrade(engine, "0003_accessed_at")
    with write_connection(engine) as conn:  # some entries read since (0003's column)
        conn.execute(sa.text("UPDATE entries SET accessed_at = id * 7 WHERE id % 3 = 0"))
    return cases


def _rows(engine: sa.Engine) -> dict[str, Any]:
    """Entries by key (every column but the hash) and spilled payloads by key."""
    with engine.connect() as conn:
        entries = {
            row["key"]: {k: v for k, v in row.items() if k != "key_hash"}
            for row in conn.execute(sa.text("SELECT * FROM entries")).mappings()
        }
        spilled = dict(
            conn.execute(
                sa.text(
                    "SELECT e.key, o.payload FROM entries e JOIN outputs o ON o.entry_id = e.id"
                )
            ).all()
        )
        leases = [
            {k: v for k, v in row.items() if k != "key_hash"}
            for row in conn.execute(sa.text("SELECT * FROM reservations ORDER BY key")).mappings()
        ]
    return {"entries": entries, "spilled": spilled, "leases": leases}


def _unique_columns(engine: sa.Engine) -> list[list[str]]:
    with engine.connect() as conn:
        return sorted(u["column_names"] for u in sa.inspect(conn).get_unique_constraints("entries"))


def test_upgrade_downgrade_upgrade_keeps_every_entry(
    empty_url: str, empty_engine: sa.Engine
) -> None:
    cases = _populate_0003(empty_engine)
    before = _rows(empty_engine)
    assert before["spilled"]  # the catalogue's large output lives in outputs
    assert _unique_columns(empty_engine) == [["key"]]

    migrate.upgrade(empty_engine)
    check_reads(empty_url, cases)
    assert _rows(empty_engine) == before  # ids, payloads, accessed_at, spilled payloads: all kept
    with empty_engine.connect() as conn:
        hashes = conn.execute(sa.text("SELECT key, key_hash FROM entries")).all()
        hashes += conn.execute(sa.text("SELECT key, key_hash FROM reservations")).all()
    assert before["leases"] and hashes and all(h == key_hash(k) for k, h in hashes)
    assert _unique_columns(empty_engine) == [["key_hash"]]

    migrate.downgrade(empty_engine, "0003_accessed_at")
    assert _rows(empty_engine) == before
    assert _unique_columns(empty_engine) == [["key"]]
    with empty_engine.connect() as conn:
        for table in ("entries", "reservations"):
            assert "key_hash" not in {c["name"] for c in sa.inspect(conn).get_columns(table)}

    migrate.upgrade(empty_engine)
    check_reads(empty_url, cases)
    assert _rows(empty_engine) == before
    assert migrate.check_models_match(empty_engine) == []


def test_rows_a_0003_writer_adds_between_batches_are_hashed(
    empty_url: str, empty_engine: sa.Engine
) -> None:
    cases = _populate_0003(empty_engine, 0)
    prepare = migrate._script().get_revision(REVISION).module.prepare
    prepare(lambda: write_connection(empty_engine))
    with write_connection(empty_engine) as conn:  # what 0003's put writes: no key_hash
        conn.execute(
            sa.text(
                "INSERT INTO entries (key, resource_type, project, domain, name, version, org,"
                " created_at, last_updated_at, output_uri, size, payload) SELECT 'late-' || key,"
                " resource_type, project, domain, name, version, org, created_at,"
                " last_updated_at, output_uri, size, payload FROM entries"
                " WHERE payload IS NOT NULL"
            )
        )
        late = conn.execute(sa.text("SELECT count(*) FROM entries WHERE key_hash IS NULL"))
        assert late.scalar_one() > 0
    migrate.upgrade(empty_engine)
    check_reads(empty_url, cases)
    with CacheStore.open(empty_url, migrate=False) as store:
        inline = [c for c in cases if c.key != "big-output"]
        for case in inline:
            assert store.get("late-" + case.key) == case.expected()


def test_colliding_keys_stop_the_upgrade_and_change_nothing(
    empty_url: str, empty_engine: sa.Engine
) -> None:
    """Two stored keys sharing a hash. A real 64-bit collision cannot be found, so one row's
    hash is overwritten with another's after the batched pass (fault injection)."""
    _populate_0003(empty_engine, 2)
    before = _rows(empty_engine)
    prepare = migrate._script().get_revision(REVISION).module.prepare
    prepare(lambda: write_connection(empty_engine))
    first, second = old.generated(0).key, old.generated(1).key
    with write_connection(empty_engine) as conn:
        conn.execute(
            sa.text("UPDATE entries SET key_hash = :h WHERE key = :k"),
            {"h": key_hash(first), "k": second},
        )
    with pytest.raises(SchemaError, match="share one 64-bit hash") as caught:
        migrate.upgrade(empty_engine)
    assert first in str(caught.value) and second in str(caught.value)
    with empty_engine.connect() as conn:
        assert migrate.current_revision(conn) == "0003_accessed_at"
    assert _rows(empty_engine) == before
    assert _unique_columns(empty_engine) == [["key"]]


def _batch() -> int:
    return int(migrate._script().get_revision(REVISION).module.BATCH)


def test_sigkill_during_the_batched_pass_loses_nothing(db_path: str, tmp_path: Path) -> None:
    empty_engine = create_store_engine(normalize_url(db_path), StoreSettings())
    try:
        cases = _populate_0003(empty_engine, 0)
        # Copies of the catalogue's inline entries under new keys, by SQL: a 0003 database of
        # three and a bit batches without writing each row from Python.
        copies = 3 * _batch() + 7
        with write_connection(empty_engine) as conn:
            conn.execute(
                sa.text(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < :c)"
                    " INSERT INTO entries (key, resource_type, project, domain, name, version,"
                    " org, created_at, last_updated_at, output_uri, size, payload)"
                    " SELECT 'copy-' || n.i || '-' || e.key, e.resource_type, e.project,"
                    " e.domain, e.name, e.version, e.org, e.created_at, e.last_updated_at,"
                    " e.output_uri, e.size, e.payload FROM n, entries e WHERE e.key = :k"
                ),
                {"c": copies, "k": cases[0].key},
            )
    finally:
        empty_engine.dispose()
    kill_upgrade_after(db_path, _batch(), tmp_path)
    with pytest.raises(SchemaError, match="0003_accessed_at"):
        CacheStore.open(db_path, migrate=False)
    with sqlite3.connect(db_path) as conn:
        hashed = conn.execute("SELECT count(*) FROM entries WHERE key_hash IS NOT NULL")
        assert hashed.fetchone()[0] >= _batch()
    conn.close()
    stderr = upgrade_with_the_cli(db_path)
    assert REVISION in stderr
    check_reads(db_path, cases)
    with CacheStore.open(db_path, migrate=False) as store:
        for i in (1, copies // 2, copies):
            assert store.get(f"copy-{i}-{cases[0].key}") == cases[0].expected()
