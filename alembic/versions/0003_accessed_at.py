"""entries.accessed_at: when a get last read the entry, for least-recently-used eviction

Revision ID: 0003_accessed_at
Revises: 0002_payload
Create Date: 2026-11-30

A nullable column and nothing else: adding it rewrites no row on SQLite or PostgreSQL (both
record a NULL default in the catalog), so the upgrade is instant however large the table.
No index: victims are found by a scan outside the write lock (see flytecache/store/eviction.py),
and an index would be one more b-tree page written by every recency flush and every put.
NULL means "never read since it was stored" (the entry's recency is then its last put).
Downgrade drops the column; only recency is lost.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_accessed_at"
down_revision: str | None = "0002_payload"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("entries", sa.Column("accessed_at", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    # In place (no batch-mode table copy): on SQLite a copy drops the old table, and with
    # foreign keys on that would cascade into outputs.
    op.drop_column("entries", "accessed_at")
