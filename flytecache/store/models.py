"""The schema: typed SQLAlchemy models for ``entries``, ``outputs`` and ``reservations``.

Timestamps are stored as integer microseconds since the Unix epoch (UTC). That is exact on every
backend (no string formats, no time zones, no rounding), compares with plain integer operators in
one SQL statement on SQLite and PostgreSQL alike, and is what the store's clock produces.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Named constraints let alembic's batch mode rebuild SQLite tables and drop/alter them by name.
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


ENTRY_DATA_COLUMNS = (
    "key",
    "key_hash",
    "resource_type",
    "project",
    "domain",
    "name",
    "version",
    "org",
    "created_at",
    "last_updated_at",
    "output_uri",
    "size",
    "payload",
)
"""The columns of ``entries`` that carry an entry's data (everything but the id)."""


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Entry(Base):
    """One cached task result, addressed by its (scoped) cache key.

    Revision 0002 lays the hot path out for one lookup: the row carries the stored bytes
    (``payload``) next to the columns listings filter and sort on. Revision 0004 indexes the
    key's 64-bit hash instead of the key text.
    """

    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(Text)
    """The stored key, opaque (the server stores ``<project>-<domain>-<cache key>``)."""
    key_hash: Mapped[int] = mapped_column(BigInteger, unique=True)
    """``store.keyhash.key_hash(key)``: the key's unique index (revision 0004). Lookups
    compare ``key`` too, so keys sharing a hash never read each other's entry."""
    resource_type: Mapped[int | None] = mapped_column(Integer)
    """Source identifier's resource type; NULL means the entry has no source identifier."""
    project: Mapped[str] = mapped_column(String(255), default="", server_default="")
    domain: Mapped[str] = mapped_column(String(255), default="", server_default="")
    name: Mapped[str] = mapped_column(Text, default="", server_default="")
    version: Mapped[str] = mapped_column(Text, default="", server_default="")
    org: Mapped[str] = mapped_column(String(255), default="", server_default="")
    created_at: Mapped[int] = mapped_column(BigInteger)
    """Microseconds since the epoch, UTC; kept across overwrites unless the writer sets it."""
    last_updated_at: Mapped[int] = mapped_column(BigInteger)
    """Microseconds since the epoch, UTC; always the store clock at the last put."""
    output_uri: Mapped[str | None] = mapped_column(Text)
    """Where the outputs live; NULL when they are stored inline (in the payload)."""
    size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Output bytes: the serialized inline literal map, or the URI's UTF-8 length."""
    payload: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The ``CachedOutput`` wire bytes as written, less the source identifier and the
    timestamps (held by the columns above): see ``store/codec.py``. NULL when the payload is
    larger than ``codec.SPILL_BYTES`` and lives in ``outputs``."""
    accessed_at: Mapped[int | None] = mapped_column(BigInteger)
    """Microseconds since the epoch, UTC: the last get, as flushed in batches by a store
    evicting least-recently-used (revision 0003); NULL when never read (or never flushed).
    Puts do not write it: an entry's recency is the later of this and ``last_updated_at``."""

    # Listings: newest first overall (last_updated_at), and per task newest first without a
    # sort. Each index is one more b-tree page a put writes; none other is kept.
    __table_args__ = (
        Index(None, "last_updated_at"),
        Index(None, "project", "domain", "name", "last_updated_at"),
    )


class Output(Base):
    """The payload of one large entry (over ``codec.SPILL_BYTES``), out of the entry row."""

    __tablename__ = "outputs"

    entry_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("entries.id", ondelete="CASCADE"), primary_key=True
    )
    payload: Mapped[bytes] = mapped_column(LargeBinary)
    """The entry's payload, in the same form as ``entries.payload``."""


class Reservation(Base):
    """A lease on a key: the owner runs the task, others wait until it expires or is released.

    No secondary index: the hot path addresses leases by key only, and every index would be
    written on each heartbeat.
    """

    __tablename__ = "reservations"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
    key_hash: Mapped[int] = mapped_column(BigInteger)
    """``store.keyhash.key_hash(key)`` (revision 0004), not indexed: listings join a lease to
    its entry through ``entries.key_hash``'s unique index."""
    owner_id: Mapped[str] = mapped_column(Text)
    heartbeat_interval: Mapped[int] = mapped_column(BigInteger)
    """Effective heartbeat in microseconds (after clamping to ``max_heartbeat``)."""
    expires_at: Mapped[int] = mapped_column(BigInteger)
    """Microseconds since the epoch; the lease is free for others once ``expires_at <= now``."""
    created_at: Mapped[int] = mapped_column(BigInteger)
    """When the current owner acquired the lease (kept while it extends)."""
    updated_at: Mapped[int] = mapped_column(BigInteger)
    """When the lease was last written (acquired, extended or taken over)."""
    previous_owner: Mapped[str | None] = mapped_column(Text)
    """Owner before the last write (NULL when created); lets one upsert report what it did."""
