"""A populated revision-0001 database, written the way flytecache 0001's ``put`` wrote it.

The migration tests need an old database with data. A binary fixture would hide what is in
it; this generator writes the rows itself, column for column as the 0001 store did (checked
against that code's own ``CacheStore.put`` when it was written): one ``entries`` row with the
key map as sorted JSON, the writer's ``Metadata`` without timestamps in ``metadata_pb`` (NULL
for imported rows), one ``outputs`` row per inline output holding ``Literal.SerializeToString()``,
``writes`` counting overwrites; plus leases in ``reservations``.

``cases()`` is the catalogue: every shape of entry 0001 could hold, each with the
``CachedOutput`` a ``get`` must return for it on any revision. ``populate(conn, n)`` writes the
catalogue and then ``n`` generated entries (for batch and resume tests).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import sqlalchemy as sa
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import identifier_pb2, literals_pb2
from google.protobuf.timestamp_pb2 import Timestamp

BASE_US = 1_750_000_000_000_000

_meta = sa.MetaData()
ENTRIES = sa.Table(
    "entries",
    _meta,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("key", sa.Text),
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
)
OUTPUTS = sa.Table(
    "outputs",
    _meta,
    sa.Column("entry_id", sa.Integer, primary_key=True),
    sa.Column("name", sa.Text, primary_key=True),
    sa.Column("literal", sa.LargeBinary),
)
RESERVATIONS = sa.Table(
    "reservations",
    _meta,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("owner_id", sa.Text),
    sa.Column("heartbeat_interval", sa.BigInteger),
    sa.Column("expires_at", sa.BigInteger),
    sa.Column("created_at", sa.BigInteger),
    sa.Column("updated_at", sa.BigInteger),
    sa.Column("previous_owner", sa.Text),
)


@dataclass(frozen=True)
class Case:
    """One stored entry: what was written, and what a get returns."""

    key: str
    written: cs.CachedOutput
    """The CachedOutput as the writer passed it to put."""
    created_at: int
    last_updated_at: int
    writes: int = 0
    imported: bool = False
    """Written by 0001's import: no ``metadata_pb``; get rebuilt metadata from the columns."""

    def expected(self) -> cs.CachedOutput:
        """What ``get(key)`` returns: the written output with the store's timestamps."""
        out = cs.CachedOutput()
        out.CopyFrom(self.written)
        if self.imported:
            # An import kept only what the columns hold: identifier and key map.
            meta = cs.Metadata()
            if out.metadata.HasField("source_identifier"):
                meta.source_identifier.CopyFrom(out.metadata.source_identifier)
            meta.key_map.values.update(out.metadata.key_map.values)
            out.metadata.CopyFrom(meta)
        out.metadata.created_at.CopyFrom(_ts(self.created_at))
        out.metadata.last_updated_at.CopyFrom(_ts(self.last_updated_at))
        return out


def _ts(us: int) -> Timestamp:
    return Timestamp(seconds=us // 1_000_000, nanos=us % 1_000_000 * 1000)


def _prim(**value: object) -> literals_pb2.Literal:
    return literals_pb2.Literal(
        scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(**value))  # type: ignore[arg-type]
    )


def _ident(name: str, *, org: str = "") -> identifier_pb2.Identifier:
    return identifier_pb2.Identifier(
        resource_type=identifier_pb2.TASK,
        project="flytesnacks",
        domain="development",
        name=name,
        version="v1",
        org=org,
    )


def _key_map(i: int) -> dict[str, str]:
    return {
        "task-version": "v1",
        "execution-name": f"exec{i:06d}",
        "exec-project": "flytesnacks",
        "exec-domain": "development",
        "exec-node": "n0",
        "exec-attempt": "0",
    }


def generated(i: int) -> Case:
    """Entry ``i`` of the bulk part: a typical inline result."""
    literals = literals_pb2.LiteralMap()
    literals.literals["n"].CopyFrom(_prim(integer=i))
    literals.literals["s"].CopyFrom(_prim(string_value=f"result-{i}"))
    out = cs.CachedOutput(output_literals=literals)
    out.metadata.source_identifier.CopyFrom(_ident(f"wf.task_{i % 7}"))
    out.metadata.key_map.values.update(_key_map(i))
    return Case(f"flytesnacks-development-bulk-{i:07d}", out, BASE_US + i, BASE_US + i)


def cases() -> list[Case]:
    """Every shape of entry revision 0001 could hold."""
    rich = literals_pb2.LiteralMap()
    rich.literals["int"].CopyFrom(_prim(integer=-(2**63)))
    rich.literals["float"].CopyFrom(_prim(float_value=-0.0))
    rich.literals["unicode ☃"].CopyFrom(_prim(string_value="snow ☃ \U0001f600"))
    rich.literals["bool"].CopyFrom(_prim(boolean=True))
    rich.literals["list"].CopyFrom(
        literals_pb2.Literal(
            collection=literals_pb2.LiteralCollection(literals=[_prim(integer=1), _prim(integer=2)])
        )
    )
    nested = literals_pb2.Literal()
    nested.map.literals["b"].CopyFrom(_prim(string_value="x"))
    nested.map.literals["a"].CopyFrom(_prim(integer=7))
    rich.literals["map"].CopyFrom(nested)
    blob = literals_pb2.Literal()
    blob.scalar.blob.uri = "s3://bucket/data/part-0.parquet"
    blob.scalar.blob.metadata.type.format = "parquet"
    rich.literals["blob"].CopyFrom(blob)
    rich.literals["hashed"].CopyFrom(_prim(integer=3))
    rich.literals["hashed"].hash = "abc123"
    big = literals_pb2.LiteralMap()
    big.literals["text"].CopyFrom(_prim(string_value="x" * 10_000))

    def out(literals: literals_pb2.LiteralMap | None = None, uri: str = "") -> cs.CachedOutput:
        message = cs.CachedOutput(output_uri=uri) if uri else cs.CachedOutput()
        if literals is not None:
            message.output_literals.CopyFrom(literals)
        return message

    with_meta = out(rich)
    with_meta.metadata.source_identifier.CopyFrom(_ident("wf.rich", org="acme"))
    with_meta.metadata.key_map.values.update(_key_map(1))

    uri_meta = out(uri="s3://bucket/outputs/abc/outputs.pb")
    uri_meta.metadata.source_identifier.CopyFrom(_ident("wf.offloaded"))

    writer_times = out(rich)
    writer_times.metadata.created_at.CopyFrom(_ts(BASE_US - 10_000_000))
    writer_times.metadata.key_map.values.update({"only": "one"})

    empty_ident = out(rich)
    empty_ident.metadata.source_identifier.CopyFrom(identifier_pb2.Identifier())

    imported = out(rich)
    imported.metadata.source_identifier.CopyFrom(_ident("wf.imported"))
    imported.metadata.key_map.values.update(_key_map(2))

    empty_map = cs.CachedOutput()
    empty_map.output_literals.SetInParent()

    return [
        Case("flytesnacks-development-rich", with_meta, BASE_US + 1, BASE_US + 5, writes=2),
        Case("flytesnacks-development-uri", uri_meta, BASE_US + 2, BASE_US + 2),
        Case("plain-no-metadata", out(rich), BASE_US + 3, BASE_US + 3),
        Case("writer-created-at", writer_times, BASE_US - 10_000_000, BASE_US + 4),
        Case("empty-identifier", empty_ident, BASE_US + 5, BASE_US + 5),
        Case("imported-row", imported, BASE_US + 6, BASE_US + 6, imported=True),
        Case("imported-uri", out(uri="gs://b/o"), BASE_US + 7, BASE_US + 7, imported=True),
        Case("empty-literal-map", empty_map, BASE_US + 8, BASE_US + 8),
        Case("big-output", out(big), BASE_US + 9, BASE_US + 9),
        Case("key with spaces and ☃ unicode", out(uri="file:///tmp/x"), BASE_US + 10, BASE_US + 10),
    ]


def _entry_row(case: Case) -> tuple[dict[str, object], list[tuple[str, bytes]]]:
    """The ``entries`` values and ``outputs`` rows 0001's put wrote for ``case``."""
    output = case.written
    metadata = output.metadata
    literals: list[tuple[str, bytes]] = []
    if output.WhichOneof("output") == "output_uri":
        uri: str | None = output.output_uri
        size = len(output.output_uri.encode())
    else:
        uri = None
        literals = [
            (n, lit.SerializeToString()) for n, lit in output.output_literals.literals.items()
        ]
        size = sum(len(v) for _, v in literals)
    row: dict[str, object] = {
        "key": case.key,
        "output_uri": uri,
        "size": size,
        "created_at": case.created_at,
        "last_updated_at": case.last_updated_at,
        "writes": case.writes,
    }
    if metadata.HasField("source_identifier"):
        ident = metadata.source_identifier
        row.update(
            resource_type=ident.resource_type,
            project=ident.project,
            domain=ident.domain,
            name=ident.name,
            version=ident.version,
            org=ident.org,
        )
    else:
        row.update(resource_type=None, project="", domain="", name="", version="", org="")
    values = dict(metadata.key_map.values)
    row["key_map"] = json.dumps(values, sort_keys=True) if values else "{}"
    stored = cs.Metadata()
    stored.CopyFrom(metadata)
    stored.ClearField("created_at")
    stored.ClearField("last_updated_at")
    row["metadata_pb"] = None if case.imported else stored.SerializeToString()
    return row, literals


def populate(conn: sa.Connection, n: int = 0, *, batch: int = 5_000) -> list[Case]:
    """Write the catalogue and ``n`` generated entries plus some leases into a 0001 schema.

    Returns the catalogue (generated entries are ``generated(i)`` for ``i < n``).
    """
    catalogue = cases()

    def rows() -> Iterator[Case]:
        yield from catalogue
        for i in range(n):
            yield generated(i)

    pending: list[Case] = []
    for case in rows():
        pending.append(case)
        if len(pending) >= batch:
            write_cases(conn, pending)
            pending = []
    if pending:
        write_cases(conn, pending)
    conn.execute(
        RESERVATIONS.insert(),
        [
            {
                "key": "reservation:flytesnacks-development-rich",
                "owner_id": "owner-a",
                "heartbeat_interval": 10_000_000,
                "expires_at": BASE_US + 30_000_000,
                "created_at": BASE_US,
                "updated_at": BASE_US,
                "previous_owner": None,
            },
            {
                "key": "reservation:expired",
                "owner_id": "owner-b",
                "heartbeat_interval": 1_000_000,
                "expires_at": BASE_US - 1,
                "created_at": BASE_US - 3_000_000,
                "updated_at": BASE_US - 3_000_000,
                "previous_owner": "owner-c",
            },
        ],
    )
    return catalogue


def write_cases(conn: sa.Connection, cases_: list[Case]) -> None:
    """Insert ``cases_`` (new keys) as 0001's put would have written them."""
    rows = [_entry_row(case) for case in cases_]
    ids = {
        key: entry_id
        for entry_id, key in conn.execute(
            ENTRIES.insert().returning(ENTRIES.c.id, ENTRIES.c.key, sort_by_parameter_order=True),
            [row for row, _ in rows],
        )
    }
    outputs = [
        {"entry_id": ids[row["key"]], "name": name, "literal": literal}
        for row, literals in rows
        for name, literal in literals
    ]
    if outputs:
        conn.execute(OUTPUTS.insert(), outputs)
