"""0001 -> 0002: the data migration, on a populated 0001 database made by tests/_schema_0001.py.

Every entry must read back identical after the upgrade, after the downgrade (0001's rows byte
for byte) and after upgrading again; the batched pass must survive SIGKILL and 0001 writers
that keep writing between its batches.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import _schema_0001 as old
import pytest
import sqlalchemy as sa
from _upgrade import check_reads, kill_upgrade_after, upgrade_with_the_cli
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache import CacheStore, StoreSettings
from flytecache.errors import SchemaError
from flytecache.store import migrate
from flytecache.store.engine import create_store_engine, write_connection
from flytecache.store.urls import normalize_url

BULK = 60


def _populate(engine: sa.Engine, n: int = BULK) -> list[old.Case]:
    migrate.upgrade(engine, "0001_initial")
    with write_connection(engine) as conn:
        return old.populate(conn, n) + [old.generated(i) for i in range(n)]


def _rows(engine: sa.Engine) -> dict[str, Any]:
    """0001's tables as plain values: entries by key (without ids), outputs by key and name."""
    with engine.connect() as conn:
        entries = {
            row.key: {k: v for k, v in row._asdict().items() if k not in ("id", "key")}
            for row in conn.execute(sa.select(old.ENTRIES))
        }
        outputs = {
            (key, name): bytes(literal)
            for key, name, literal in conn.execute(
                sa.select(old.ENTRIES.c.key, old.OUTPUTS.c.name, old.OUTPUTS.c.literal).join(
                    old.OUTPUTS, old.OUTPUTS.c.entry_id == old.ENTRIES.c.id
                )
            )
        }
        leases = conn.execute(sa.select(old.RESERVATIONS).order_by("key")).all()
    for row in entries.values():
        if row["metadata_pb"] is not None:
            # Compared as messages: protobuf may serialize the key map in any order.
            row["metadata_pb"] = cs.Metadata.FromString(bytes(row["metadata_pb"]))
    return {"entries": entries, "outputs": outputs, "leases": leases}


def test_upgrade_downgrade_upgrade_keeps_every_entry(
    empty_url: str, empty_engine: sa.Engine
) -> None:
    cases = _populate(empty_engine)
    before = _rows(empty_engine)
    migrate.upgrade(empty_engine)
    check_reads(empty_url, cases)

    migrate.downgrade(empty_engine, "0001_initial")
    after = _rows(empty_engine)
    assert after["outputs"] == before["outputs"]  # literal bytes exactly as 0001 stored them
    assert after["leases"] == before["leases"]
    for key, row in before["entries"].items():
        back = after["entries"][key]
        assert back["writes"] == 0
        if row["metadata_pb"] is None:  # an imported row now has the blob 0001 could read
            assert back["metadata_pb"] is not None
        for column in ("writes", "metadata_pb") if row["metadata_pb"] is None else ("writes",):
            row, back = dict(row, **{column: None}), dict(back, **{column: None})
        assert back == row, key

    migrate.upgrade(empty_engine)
    check_reads(empty_url, cases)
    assert migrate.check_models_match(empty_engine) == []


def test_large_payloads_move_to_outputs(empty_url: str, empty_engine: sa.Engine) -> None:
    cases = _populate(empty_engine, 0)
    migrate.upgrade(empty_engine)
    with empty_engine.connect() as conn:
        spilled = conn.execute(
            sa.text("SELECT e.key FROM entries e JOIN outputs o ON o.entry_id = e.id")
        ).all()
        inline_nulls = conn.execute(
            sa.text("SELECT count(*) FROM entries WHERE payload IS NULL")
        ).scalar_one()
    assert [row.key for row in spilled] == ["big-output"]
    assert inline_nulls == 1
    check_reads(empty_url, cases)


def test_writes_between_batches_are_converted_again(
    empty_url: str, empty_engine: sa.Engine
) -> None:
    """A 0001 writer that overwrites or adds an entry after the batched pass (it resets
    ``writes``) has that entry converted again by the final step."""
    cases = _populate(empty_engine)
    prepare = migrate._script().get_revision("0002_payload").module.prepare
    prepare(lambda: write_connection(empty_engine))
    replaced = old.generated(10_000)
    replaced = old.Case(cases[0].key, replaced.written, cases[0].created_at, old.BASE_US + 99, 3)
    added = old.generated(10_001)
    with write_connection(empty_engine) as conn:
        entry_id = conn.execute(
            sa.select(old.ENTRIES.c.id).where(old.ENTRIES.c.key == replaced.key)
        ).scalar_one()
        conn.execute(sa.delete(old.OUTPUTS).where(old.OUTPUTS.c.entry_id == entry_id))
        conn.execute(sa.delete(old.ENTRIES).where(old.ENTRIES.c.id == entry_id))
        conn.execute(sa.delete(old.RESERVATIONS))
        old.write_cases(conn, [replaced, added])
    migrate.upgrade(empty_engine)
    check_reads(empty_url, [replaced, added, *cases[1:]])


def test_sigkill_during_the_batched_pass_loses_nothing(db_path: str, tmp_path: Path) -> None:
    empty_engine = create_store_engine(normalize_url(db_path), StoreSettings())
    try:
        cases = _populate(empty_engine, 3 * old_batch() + 7)
    finally:
        empty_engine.dispose()
    kill_upgrade_after(db_path, old_batch(), tmp_path)
    # Still a 0001 database (the new code will not open it unmigrated), part of it converted.
    with pytest.raises(SchemaError, match="0001_initial"):
        CacheStore.open(db_path, migrate=False)
    with sqlite3.connect(db_path) as conn:
        converted = conn.execute("SELECT count(*) FROM entries WHERE writes = -1").fetchone()[0]
    conn.close()
    assert converted >= old_batch()
    stderr = upgrade_with_the_cli(db_path)
    assert migrate.head_revision() in stderr
    check_reads(db_path, cases)


def old_batch() -> int:
    return int(migrate._script().get_revision("0002_payload").module.BATCH)
