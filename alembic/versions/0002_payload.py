"""one-lookup entries: the row carries the payload; outputs hold only large payloads

Revision ID: 0002_payload
Revises: 0001_initial
Create Date: 2026-11-30

Revision 0001 kept an entry in 1 + N rows (the entry, one ``outputs`` row per inline literal)
with its key map as JSON and its metadata in ``metadata_pb``. 0002 stores the ``CachedOutput``
wire bytes a get returns (``payload``, see flytecache/store/codec.py) in the entry row;
payloads over 2,048 bytes move to ``outputs`` (one row per entry). The index on
(project, domain, name) gains last_updated_at (a task's entries list newest first without a
sort); the two reservation indexes go: nothing used them, and every heartbeat wrote them.

The data migration is resumable. ``prepare()`` (run by ``flytecache db upgrade`` before
alembic) adds ``payload`` and fills it in committed batches, marking each converted row
``writes = -1``; a SIGKILL loses at most the batch in flight, and a re-run continues. The
revision's ``upgrade()`` then converts whatever is left (everything, when run by alembic alone;
rows a 0001 writer touched since, whose ``writes`` is no longer -1) and reshapes the tables in
one transaction. Literal bytes are copied, never re-encoded, in both directions.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache.store import codec

revision: str = "0002_payload"
down_revision: str | None = "0001_initial"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SPILL_BYTES = 2048
"""Frozen here: a later change of codec.SPILL_BYTES must not change what this revision does
(reads accept both places whatever the threshold)."""
CONVERTED = -1
"""``writes`` of a row whose payload is filled (0001 writers reset it on every write)."""
BATCH = 5_000

Progress = Callable[[int, int], None]
"""Called with (rows converted so far, rows to convert)."""

_meta = sa.MetaData()
_entries = sa.Table(
    "entries",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("resource_type", sa.Integer),
    sa.Column("project", sa.String(255)),
    sa.Column("domain", sa.String(255)),
    sa.Column("name", sa.Text),
    sa.Column("version", sa.Text),
    sa.Column("org", sa.String(255)),
    sa.Column("key_map", sa.Text),
    sa.Column("created_at", sa.BigInteger),
    sa.Column("last_updated_at", sa.BigInteger),
    sa.Column("output_uri", sa.Text),
    sa.Column("size", sa.BigInteger),
    sa.Column("metadata_pb", sa.LargeBinary),
    sa.Column("writes", sa.Integer),
    sa.Column("payload", sa.LargeBinary),
)
_old_outputs = sa.Table(
    "outputs",
    _meta,
    sa.Column("entry_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("literal", sa.LargeBinary),
)
_PENDING = sa.or_(_entries.c.payload.is_(None), _entries.c.writes != CONVERTED)


# -- upgrade ----------------------------------------------------------------------------------


def _payload(row: Any, literals: list[tuple[str, bytes]]) -> bytes:
    """The 0002 payload of a 0001 row and its outputs rows (what 0001's get returned)."""
    if row.metadata_pb is not None:
        metadata = cs.Metadata.FromString(bytes(row.metadata_pb))
    else:  # written by 0001's import: identifier and key map from the columns
        try:
            key_map = json.loads(row.key_map) if row.key_map else None
        except ValueError:
            key_map = None
        metadata = codec.metadata_from_columns(
            row.resource_type, row.project, row.domain, row.name, row.version, row.org, key_map
        )
    return codec.payload_from_parts(
        output_uri=row.output_uri,
        literals=literals,
        metadata=metadata,
        created_at=row.created_at,
        last_updated_at=row.last_updated_at,
        nul_ok=True,  # an old SQLite file may hold a NUL; it stays as it was
    )


def _convert(conn: sa.Connection, after: int, limit: int) -> tuple[int, int]:
    """Convert up to ``limit`` pending rows with ids above ``after``; (converted, last id)."""
    rows = conn.execute(
        sa.select(
            _entries.c.id,
            _entries.c.resource_type,
            _entries.c.project,
            _entries.c.domain,
            _entries.c.name,
            _entries.c.version,
            _entries.c.org,
            _entries.c.key_map,
            _entries.c.created_at,
            _entries.c.last_updated_at,
            _entries.c.output_uri,
            _entries.c.size,
            _entries.c.metadata_pb,
        )
        .where(_entries.c.id > after, _PENDING)
        .order_by(_entries.c.id)
        .limit(limit)
    ).all()
    if not rows:
        return 0, after
    ids = [row.id for row in rows]
    literals: dict[int, list[tuple[str, bytes]]] = {}
    for entry_id, name, literal in conn.execute(
        sa.select(_old_outputs.c.entry_id, _old_outputs.c.name, _old_outputs.c.literal)
        .where(_old_outputs.c.entry_id.in_(ids))
        .order_by(_old_outputs.c.entry_id, _old_outputs.c.name)
    ):
        literals.setdefault(entry_id, []).append((name, bytes(literal)))
    conn.execute(
        sa.update(_entries)
        .where(_entries.c.id == sa.bindparam("b_id"))
        .values(payload=sa.bindparam("b_payload"), size=sa.bindparam("b_size"), writes=CONVERTED),
        [
            {
                "b_id": row.id,
                "b_payload": _payload(row, literals.get(row.id, [])),
                # 0002 counts an inline entry's size as its serialized literal map.
                "b_size": (
                    row.size
                    if row.output_uri is not None
                    else len(codec.literal_map_bytes(literals.get(row.id, [])))
                ),
            }
            for row in rows
        ],
    )
    return len(rows), ids[-1]


def _columns(conn: sa.Connection, table: str) -> set[str]:
    return {column["name"] for column in sa.inspect(conn).get_columns(table)}


def prepare(
    begin: Callable[[], Any], progress: Progress | None = None, batch: int = BATCH
) -> None:
    """Fill ``payload`` in committed batches before the revision's own upgrade.

    ``begin()`` returns a context manager yielding a connection inside a new write
    transaction (flytecache's ``write_connection``), holding the migration lock.
    """
    with begin() as conn:
        if "payload" in _columns(conn, "entries"):
            pass
        elif "metadata_pb" in _columns(conn, "entries"):
            blob = conn.dialect.type_compiler_instance.process(sa.LargeBinary())
            conn.execute(sa.text(f"ALTER TABLE entries ADD COLUMN payload {blob}"))
        else:
            return  # not a 0001 database
        total = conn.execute(sa.select(sa.func.count()).select_from(_entries).where(_PENDING))
        total_rows = int(total.scalar_one())
    done, after = 0, 0
    if progress is not None:
        progress(0, total_rows)
    while True:
        with begin() as conn:
            if "writes" not in _columns(conn, "entries"):
                return  # another process finished the upgrade meanwhile
            converted, after = _convert(conn, after, batch)
        if not converted:
            return
        done += converted
        if progress is not None:
            progress(min(done, total_rows), total_rows)


def upgrade() -> None:
    conn = op.get_bind()
    if "payload" not in _columns(conn, "entries"):
        op.add_column("entries", sa.Column("payload", sa.LargeBinary(), nullable=True))
    after = 0
    while True:
        converted, after = _convert(conn, after, BATCH)
        if not converted:
            break

    # Every statement below alters in place (no batch-mode table copy): on SQLite a copy
    # drops the old table, and with foreign keys on that would cascade into outputs.
    op.drop_table("outputs")
    op.drop_index(op.f("ix_entries_project_domain_name"), table_name="entries")
    op.create_index(
        op.f("ix_entries_project_domain_name_last_updated_at"),
        "entries",
        ["project", "domain", "name", "last_updated_at"],
    )
    op.drop_column("entries", "key_map")
    op.drop_column("entries", "metadata_pb")
    op.drop_column("entries", "writes")
    op.drop_index(op.f("ix_reservations_owner_id"), table_name="reservations")
    op.drop_index(op.f("ix_reservations_expires_at"), table_name="reservations")
    _create_outputs(
        sa.Column("payload", sa.LargeBinary(), nullable=False), primary_key=("entry_id",)
    )
    large = sa.func.length(_entries.c.payload) > SPILL_BYTES
    conn.execute(
        sa.insert(sa.table("outputs", sa.column("entry_id"), sa.column("payload"))).from_select(
            ["entry_id", "payload"], sa.select(_entries.c.id, _entries.c.payload).where(large)
        )
    )
    conn.execute(sa.update(_entries).where(large).values(payload=None))


def _create_outputs(*columns: sa.Column[Any], primary_key: tuple[str, ...]) -> None:
    op.create_table(
        "outputs",
        sa.Column("entry_id", sa.Integer(), nullable=False),
        *columns,
        sa.ForeignKeyConstraint(
            ["entry_id"],
            ["entries.id"],
            name=op.f("fk_outputs_entry_id_entries"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(*primary_key, name=op.f("pk_outputs")),
    )


# -- downgrade --------------------------------------------------------------------------------


def downgrade() -> None:
    conn = op.get_bind()
    spilled = sa.table("outputs", sa.column("entry_id"), sa.column("payload"))
    large = dict(conn.execute(sa.select(spilled.c.entry_id, spilled.c.payload)).all())
    op.drop_table("outputs")
    op.add_column("entries", sa.Column("key_map", sa.Text(), server_default="{}", nullable=False))
    op.add_column("entries", sa.Column("metadata_pb", sa.LargeBinary(), nullable=True))
    op.add_column("entries", sa.Column("writes", sa.Integer(), server_default="0", nullable=False))
    _create_outputs(
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("literal", sa.LargeBinary(), nullable=False),
        primary_key=("entry_id", "name"),
    )
    after = 0
    while True:
        rows = conn.execute(
            sa.select(_entries.c.id, _entries.c.payload, _entries.c.output_uri, _entries.c.size)
            .where(_entries.c.id > after)
            .order_by(_entries.c.id)
            .limit(BATCH)
        ).all()
        if not rows:
            break
        after = rows[-1].id
        updates: list[dict[str, Any]] = []
        outputs: list[dict[str, Any]] = []
        for row in rows:
            payload = bytes(row.payload if row.payload is not None else large[row.id])
            literals = codec.literal_map_entries(payload)
            update = {"b_id": row.id, "b_size": row.size, **_old_metadata(payload)}
            if row.output_uri is None:  # 0001 counted the literals alone
                update["b_size"] = sum(len(literal) for _, literal in literals)
            updates.append(update)
            outputs.extend(
                {"entry_id": row.id, "name": name, "literal": literal} for name, literal in literals
            )
        conn.execute(
            sa.update(_entries)
            .where(_entries.c.id == sa.bindparam("b_id"))
            .values(
                key_map=sa.bindparam("b_key_map"),
                metadata_pb=sa.bindparam("b_metadata_pb"),
                size=sa.bindparam("b_size"),
            ),
            updates,
        )
        if outputs:
            conn.execute(sa.insert(_old_outputs), outputs)

    op.drop_column("entries", "payload")
    op.drop_index(op.f("ix_entries_project_domain_name_last_updated_at"), table_name="entries")
    op.create_index(
        op.f("ix_entries_project_domain_name"), "entries", ["project", "domain", "name"]
    )
    op.create_index(op.f("ix_reservations_expires_at"), "reservations", ["expires_at"])
    op.create_index(op.f("ix_reservations_owner_id"), "reservations", ["owner_id"])


def _old_metadata(payload: bytes) -> dict[str, Any]:
    """0001's ``key_map`` (sorted JSON) and ``metadata_pb`` (metadata without timestamps)."""
    metadata = codec.cached_output(payload).metadata
    metadata.ClearField("created_at")
    metadata.ClearField("last_updated_at")
    values = dict(metadata.key_map.values)
    return {
        "b_key_map": json.dumps(values, sort_keys=True) if values else "{}",
        "b_metadata_pb": metadata.SerializeToString(),
    }
