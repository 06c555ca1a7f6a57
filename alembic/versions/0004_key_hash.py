"""entries.key_hash: the unique index holds the key's 64-bit hash instead of the key text

Revision ID: 0004_key_hash
Revises: 0003_accessed_at
Create Date: 2026-11-30

A stored key is ~150 characters of base64 hashes; its unique index took 164 bytes per entry
(a quarter of the file) and was the costliest b-tree a put wrote. 0004 indexes
``key_hash`` = XXH3-64 of the key (flytecache/store/keyhash.py; every lookup still compares
the key). ``reservations.key_hash`` (no index) carries the same value, so a lease joins its
entry through that index. Measured in docs/benchmarks-details.md.

The data migration is resumable, as 0002's: ``prepare()`` (run by ``flytecache db upgrade``
before alembic) adds the nullable columns and fills them in committed batches; a SIGKILL loses
at most the batch in flight and a re-run continues. ``upgrade()`` then fills what is left (all
of it, when run by alembic alone; rows a 0003 writer added since), makes the columns NOT NULL
and swaps the unique constraint in one transaction. SQLite cannot drop a table's UNIQUE constraint in place, so
there ``entries`` is rebuilt (alembic's batch mode): ``outputs`` is copied aside first, because
dropping the old ``entries`` with foreign keys on would cascade into it.

Two distinct stored keys with one hash (odds about n**2 / 2**65) stop the upgrade with a
SchemaError naming them, before the schema changes (the file stays a valid 0003 one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from xxhash import xxh3_64_intdigest

from flytecache.errors import SchemaError

revision: str = "0004_key_hash"
down_revision: str | None = "0003_accessed_at"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 5_000

Progress = Callable[[int, int], None]
"""Called with (rows filled so far, rows to fill)."""

_entries = sa.table(
    "entries", sa.column("id", sa.Integer), sa.column("key"), sa.column("key_hash", sa.BigInteger)
)
_reservations = sa.table("reservations", sa.column("key"), sa.column("key_hash", sa.BigInteger))


def key_hash(key: str) -> int:
    """Frozen here (flytecache/store/keyhash.py must keep computing the same): XXH3-64 of the
    UTF-8 bytes as a signed 64-bit integer."""
    value = xxh3_64_intdigest(key.encode())
    return value - (1 << 64) if value >= 1 << 63 else value


def _columns(conn: sa.Connection, table: str) -> set[str]:
    return {column["name"] for column in sa.inspect(conn).get_columns(table)}


def _fill(conn: sa.Connection, limit: int) -> int:
    """Hash up to ``limit`` rows (entries, then leases) that have no hash yet; how many."""
    for table, order in ((_entries, _entries.c.id), (_reservations, _reservations.c.key)):
        rows = conn.execute(
            sa.select(order, table.c.key)
            .where(table.c.key_hash.is_(None))
            .order_by(order)
            .limit(limit)
        ).all()
        if rows:
            conn.execute(
                sa.update(table)
                .where(order == sa.bindparam("b_row"))
                .values(key_hash=sa.bindparam("b_hash")),
                [{"b_row": row[0], "b_hash": key_hash(row.key)} for row in rows],
            )
            return len(rows)
    return 0


def _pending(conn: sa.Connection) -> int:
    return sum(
        int(
            conn.execute(
                sa.select(sa.func.count()).select_from(table).where(table.c.key_hash.is_(None))
            ).scalar_one()
        )
        for table in (_entries, _reservations)
    )


def prepare(
    begin: Callable[[], Any], progress: Progress | None = None, batch: int = BATCH
) -> None:
    """Add ``key_hash`` to both tables and fill it in committed batches before the revision's
    own upgrade.

    ``begin()`` returns a context manager yielding a connection inside a new write
    transaction (flytecache's ``write_connection``), holding the migration lock.
    """
    with begin() as conn:
        for table in ("entries", "reservations"):
            if "key_hash" not in _columns(conn, table):
                conn.execute(sa.text(f"ALTER TABLE {table} ADD COLUMN key_hash BIGINT"))
        total = _pending(conn)
    done = 0
    if progress is not None:
        progress(0, total)
    while True:
        with begin() as conn:
            filled = _fill(conn, batch)
        if not filled:
            return
        done += filled
        if progress is not None:
            progress(min(done, total), total)


def _check_unique(conn: sa.Connection) -> None:
    twice = (
        sa.select(_entries.c.key_hash)
        .group_by(_entries.c.key_hash)
        .having(sa.func.count() > 1)
        .limit(1)
        .scalar_subquery()
    )
    keys = conn.execute(sa.select(_entries.c.key).where(_entries.c.key_hash == twice)).all()
    if keys:
        raise SchemaError(
            f"cannot upgrade to 0004: the stored keys {keys[0].key!r} and {keys[1].key!r} share "
            "one 64-bit hash; delete one of them (`flytecache entries rm KEY` of the release "
            "that wrote this database, or SQL) and upgrade again"
        )


def upgrade() -> None:
    conn = op.get_bind()
    for table in ("entries", "reservations"):
        if "key_hash" not in _columns(conn, table):
            op.add_column(table, sa.Column("key_hash", sa.BigInteger(), nullable=True))
    while _fill(conn, BATCH):
        pass
    _check_unique(conn)
    if conn.dialect.name != "sqlite":
        op.drop_constraint(op.f("uq_entries_key"), "entries", type_="unique")
        op.alter_column("entries", "key_hash", existing_type=sa.BigInteger(), nullable=False)
        op.create_unique_constraint(op.f("uq_entries_key_hash"), "entries", ["key_hash"])
        op.alter_column(
            "reservations", "key_hash", existing_type=sa.BigInteger(), nullable=False
        )
        return
    with _outputs_aside(conn), op.batch_alter_table("entries", recreate="always") as batch:
        batch.drop_constraint(op.f("uq_entries_key"), type_="unique")
        batch.alter_column("key_hash", existing_type=sa.BigInteger(), nullable=False)
        batch.create_unique_constraint(op.f("uq_entries_key_hash"), ["key_hash"])
    # No table refers to reservations: a plain rebuild.
    with op.batch_alter_table("reservations", recreate="always") as batch:
        batch.alter_column("key_hash", existing_type=sa.BigInteger(), nullable=False)


def downgrade() -> None:
    conn = op.get_bind()
    # In place on both backends (a column without constraints).
    op.drop_column("reservations", "key_hash")
    if conn.dialect.name != "sqlite":
        op.drop_constraint(op.f("uq_entries_key_hash"), "entries", type_="unique")
        op.create_unique_constraint(op.f("uq_entries_key"), "entries", ["key"])
        op.drop_column("entries", "key_hash")
        return
    with _outputs_aside(conn), op.batch_alter_table("entries", recreate="always") as batch:
        batch.drop_constraint(op.f("uq_entries_key_hash"), type_="unique")
        batch.drop_column("key_hash")
        batch.create_unique_constraint(op.f("uq_entries_key"), ["key"])


@contextlib.contextmanager
def _outputs_aside(conn: sa.Connection) -> Iterator[None]:
    """Move ``outputs`` into a temporary table while ``entries`` is rebuilt, then back.

    Batch mode drops the old ``entries``; with foreign keys on (they cannot be switched off
    inside a transaction) that would delete every row of ``outputs`` by ON DELETE CASCADE.
    """
    ddl = conn.exec_driver_sql(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = 'outputs'"
    ).scalar_one()
    conn.exec_driver_sql("CREATE TEMP TABLE flytecache_outputs_0004 AS SELECT * FROM outputs")
    conn.exec_driver_sql("DROP TABLE outputs")
    # An error in between propagates: the transaction rolls back, outputs with it.
    yield
    conn.exec_driver_sql(str(ddl))
    conn.exec_driver_sql("INSERT INTO outputs SELECT * FROM temp.flytecache_outputs_0004")
    conn.exec_driver_sql("DROP TABLE temp.flytecache_outputs_0004")
