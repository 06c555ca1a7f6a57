"""Between a ``CachedOutput`` message and the store's rows: the parameters a put writes (inline
literals kept byte for byte, metadata as written) and the message a get hands back, assembled from
stored bytes and parsed once.

Public for the benchmarks, which measure these steps on their own; the row layout follows the
schema and is not a stable API.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import identifier_pb2, literals_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from flytecache.errors import InvalidArgumentError
from flytecache.timeutil import timestamp_to_us, us_to_timestamp
from flytecache.validation import check_storable

__all__ = ["cached_output", "entry_params", "rows_to_cached_output"]


def entry_params(key: str, output: Any) -> tuple[dict[str, Any], list[tuple[str, bytes]]]:
    """Validate a CachedOutput and flatten it into column values and (name, literal) rows."""
    if not isinstance(output, cs.CachedOutput):
        raise InvalidArgumentError(
            f"output must be a CachedOutput, got {type(output).__name__}", field="output"
        )
    which = output.WhichOneof("output")
    literals: list[tuple[str, bytes]] = []
    if which == "output_uri":
        uri = output.output_uri
        if not uri:
            raise InvalidArgumentError("output.output_uri must not be empty", field="output")
        check_storable(uri, "output.output_uri")
        output_uri: str | None = uri
        size = len(uri.encode("utf-8", "surrogatepass"))
    elif which == "output_literals":
        output_uri = None
        literals = [
            (name, literal.SerializeToString())
            for name, literal in output.output_literals.literals.items()
        ]
        # One scan for the common case; the field is named only when there is a NUL.
        if "\x00" in "".join([name for name, _ in literals]):
            for name, _ in literals:
                check_storable(name, "output name")
        size = sum(len(v) for _, v in literals)
    else:
        raise InvalidArgumentError(
            "output has neither output_uri nor output_literals", field="output"
        )
    metadata = output.metadata
    params: dict[str, Any] = {
        "key": key,
        "output_uri": output_uri,
        "size": size,
        "created_at": (
            timestamp_to_us(metadata.created_at, field="metadata.created_at")
            if metadata.HasField("created_at")
            else None
        ),
    }
    if metadata.HasField("source_identifier"):
        ident = metadata.source_identifier
        if "\x00" in "".join((ident.project, ident.domain, ident.name, ident.version, ident.org)):
            for field in ("project", "domain", "name", "version", "org"):
                check_storable(getattr(ident, field), f"metadata.source_identifier.{field}")
        params.update(
            resource_type=ident.resource_type,
            project=ident.project,
            domain=ident.domain,
            name=ident.name,
            version=ident.version,
            org=ident.org,
        )
    else:
        params.update(resource_type=None, project="", domain="", name="", version="", org="")
    values = dict(metadata.key_map.values)
    if "\x00" in "".join(values) or "\x00" in "".join(values.values()):
        for name, value in values.items():
            check_storable(name, "metadata.key_map")
            check_storable(value, "metadata.key_map")
    params["key_map"] = json.dumps(values, sort_keys=True) if values else "{}"
    if metadata.HasField("created_at") or metadata.HasField("last_updated_at"):
        # Timestamps live in their columns (merged and set by the store): keep them out of the
        # blob, or the second copy appended on read would be merged into this one.
        metadata = cs.Metadata()
        metadata.CopyFrom(output.metadata)
        metadata.ClearField("created_at")
        metadata.ClearField("last_updated_at")
    params["metadata_pb"] = metadata.SerializeToString()
    return params, literals


# -- get: assemble the CachedOutput's wire bytes and parse once -----------------------------
#
# Building the message field by field in Python costs more than the SQL; concatenating the
# stored bytes (literals as received, metadata as written) and parsing once in C does not.
# Field numbers come from the generated descriptors, so a renumbering cannot go unnoticed.


def _tag(message: Any, field: str) -> bytes:
    number = message.DESCRIPTOR.fields_by_name[field].number
    return bytes([(number << 3) | 2])  # length-delimited; every number here is < 16


_OUTPUT_LITERALS = _tag(cs.CachedOutput, "output_literals")
_OUTPUT_URI = _tag(cs.CachedOutput, "output_uri")
_METADATA = _tag(cs.CachedOutput, "metadata")
_CREATED_AT = _tag(cs.Metadata, "created_at")
_LAST_UPDATED_AT = _tag(cs.Metadata, "last_updated_at")
_LITERALS = _tag(literals_pb2.LiteralMap, "literals")
_MAP_KEY, _MAP_VALUE = b"\x0a", b"\x12"  # protobuf map entries: key = 1, value = 2


_ONE_BYTE = [bytes((n,)) for n in range(0x80)]


def _varint(value: int) -> bytes:
    if 0 <= value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    size = len(payload)
    return tag + (_ONE_BYTE[size] if size < 0x80 else _varint(size)) + payload


def _timestamp_bytes(us: int) -> bytes:
    seconds, micros = divmod(us, 1_000_000)
    return Timestamp(seconds=seconds, nanos=micros * 1000).SerializeToString()


def cached_output(rows: list[Any]) -> cs.CachedOutput:
    first = rows[0]
    metadata = (
        first[13]
        + _field(_CREATED_AT, _timestamp_bytes(first[8]))
        + _field(_LAST_UPDATED_AT, _timestamp_bytes(first[9]))
    )
    if first[10] is not None:
        body = _field(_OUTPUT_URI, first[10].encode("utf-8"))
    else:
        body = _field(
            _OUTPUT_LITERALS,
            b"".join(
                [
                    _field(
                        _LITERALS,
                        _field(_MAP_KEY, row[11].encode("utf-8")) + _field(_MAP_VALUE, row[12]),
                    )
                    for row in rows
                    if row[11] is not None
                ]
            ),
        )
    return cs.CachedOutput.FromString(body + _field(_METADATA, bytes(metadata)))


def rows_to_cached_output(rows: Iterable[Any]) -> cs.CachedOutput:
    rows = list(rows)
    (
        _id,
        resource_type,
        project,
        domain,
        name,
        version,
        org,
        key_map,
        created_at,
        last_updated_at,
        output_uri,
        _,
        _,
        _,
    ) = rows[0]
    metadata = cs.Metadata(
        created_at=us_to_timestamp(created_at), last_updated_at=us_to_timestamp(last_updated_at)
    )
    if resource_type is not None:
        metadata.source_identifier.CopyFrom(
            identifier_pb2.Identifier(
                resource_type=resource_type,
                project=project,
                domain=domain,
                name=name,
                version=version,
                org=org,
            )
        )
    if key_map and key_map != "{}":
        metadata.key_map.values.update(json.loads(key_map))
    if output_uri is not None:
        return cs.CachedOutput(output_uri=output_uri, metadata=metadata)
    literal_map = literals_pb2.LiteralMap()
    for row in rows:
        if row[11] is not None:
            literal_map.literals[row[11]].ParseFromString(bytes(row[12]))
    return cs.CachedOutput(output_literals=literal_map, metadata=metadata)
