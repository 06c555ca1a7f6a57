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
    "resource_type",
    "project",
    "domain",
    "name",
    "version",
    "org",
    "key_map",
    "created_at",
    "last_updated_at",
    "output_uri",
    "size",
)
"""The columns of ``entries`` that carry an entry's data (everything but ids and counters)."""


class Base(DeclarativeBase):
    """Declarative base carrying the naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Entry(Base):
    """One cached task result, addressed by its (scoped) cache key."""

    __tablename__ = "entries"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    key: Mapped[str] = mapped_column(Text, unique=True)
    """The stored key, opaque (the server stores ``<project>-<domain>-<cache key>``)."""
    resource_type: Mapped[int | None] = mapped_column(Integer)
    """Source identifier's resource type; NULL means the entry has no source identifier."""
    project: Mapped[str] = mapped_column(String(255), default="", server_default="")
    domain: Mapped[str] = mapped_column(String(255), default="", server_default="")
    name: Mapped[str] = mapped_column(Text, default="", server_default="")
    version: Mapped[str] = mapped_column(Text, default="", server_default="")
    org: Mapped[str] = mapped_column(String(255), default="", server_default="")
    key_map: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    """Flyte ``KeyMapMetadata.values`` as a JSON object (execution name, node, attempt...)."""
    created_at: Mapped[int] = mapped_column(BigInteger)
    """Microseconds since the epoch, UTC; kept across overwrites unless the writer sets it."""
    last_updated_at: Mapped[int] = mapped_column(BigInteger)
    """Microseconds since the epoch, UTC; always the store clock at the last put."""
    output_uri: Mapped[str | None] = mapped_column(Text)
    """Where the outputs live; NULL when they are stored inline in ``outputs``."""
    size: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    """Payload bytes: the serialized inline literals, or the URI's length."""
    metadata_pb: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The writer's Flyte ``Metadata`` without its timestamps, serialized: lets ``get`` return
    it exactly as written with one protobuf parse. NULL when the row was written without it
    (an import): ``get`` then rebuilds the metadata from the columns above."""
    writes: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    """How many times the entry was overwritten (0: written once). Lets a put skip clearing
    outputs of an entry it just created."""

    __table_args__ = (
        Index(None, "project", "domain", "name"),
        Index(None, "last_updated_at"),
    )


class Output(Base):
    """One named inline output of an entry: a serialized ``flyteidl2.core.Literal``."""

    __tablename__ = "outputs"

    entry_id: Mapped[int] = mapped_column(
        Integer, ForeignKey("entries.id", ondelete="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    literal: Mapped[bytes] = mapped_column(LargeBinary)
    """``Literal.SerializeToString()`` exactly as received, so outputs round-trip byte-for-byte."""


class Reservation(Base):
    """A lease on a key: the owner runs the task, others wait until it expires or is released."""

    __tablename__ = "reservations"

    key: Mapped[str] = mapped_column(Text, primary_key=True)
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

    __table_args__ = (
        Index(None, "expires_at"),
        Index(None, "owner_id"),
    )
