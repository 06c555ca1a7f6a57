"""Between a ``CachedOutput`` message and an ``entries`` row (schema revision 0002).

A row carries the entry's **payload**: the ``CachedOutput`` wire bytes a get returns — the
output field as the writer sent it (inline literals never re-encoded) and the metadata field
(source identifier, key map, and the store's ``created_at`` and ``last_updated_at``). A get is
one ``SELECT`` of those bytes and one parse, like a plain key-value store; the columns beside
the payload (identifier parts, timestamps, size) exist for listings and age checks.

Payloads over :data:`SPILL_BYTES` live in the ``outputs`` table (one row per entry) so the
``entries`` b-tree keeps many rows per page for listings and the ``last_updated_at`` walk.

Public for the store, the migrations, imports and the tests; the row layout follows the schema and
is not a stable API.
"""

from __future__ import annotations

from typing import Any

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2

from flytecache.errors import InvalidArgumentError
from flytecache.store.keyhash import key_hash
from flytecache.timeutil import timestamp_to_us
from flytecache.validation import check_storable

__all__ = [
    "SPILL_BYTES",
    "cached_output",
    "entry_params",
    "key_map",
    "literal_map_bytes",
    "literal_map_entries",
    "metadata_from_columns",
    "payload",
    "payload_from_parts",
]

SPILL_BYTES = 2048
"""Payloads larger than this (bytes) are stored in ``outputs`` rather than in the entry row."""


def _tag(message: Any, field: str) -> bytes:
    number = message.DESCRIPTOR.fields_by_name[field].number
    return bytes([(number << 3) | 2])  # length-delimited; every number here is < 16


# Field numbers come from the generated descriptors, so a renumbering cannot go unnoticed.
_OUTPUT_LITERALS = _tag(cs.CachedOutput, "output_literals")
_OUTPUT_URI = _tag(cs.CachedOutput, "output_uri")
_METADATA = _tag(cs.CachedOutput, "metadata")
_CREATED_AT = _tag(cs.Metadata, "created_at")
_LAST_UPDATED_AT = _tag(cs.Metadata, "last_updated_at")
_LITERALS = _tag(literals_pb2.LiteralMap, "literals")
_MAP_KEY, _MAP_VALUE = b"\x0a", b"\x12"  # protobuf map entries: key = 1, value = 2

_ONE_BYTE = [bytes((n,)) for n in range(0x80)]
_CachedOutput = cs.CachedOutput


def _varint(value: int) -> bytes:
    """A non-negative int as a protobuf varint (unrolled: this runs on every get)."""
    if value < 0x80:
        return _ONE_BYTE[value]
    if value < 0x4000:
        return bytes((value & 0x7F | 0x80, value >> 7))
    if value < 0x200000:
        return bytes((value & 0x7F | 0x80, (value >> 7) & 0x7F | 0x80, value >> 14))
    if value < 0x10000000:
        return bytes(
            (
                value & 0x7F | 0x80,
                (value >> 7) & 0x7F | 0x80,
                (value >> 14) & 0x7F | 0x80,
                value >> 21,
            )
        )
    if value < 0x800000000:  # every Timestamp second until 3058 and every nanos value
        return bytes(
            (
                value & 0x7F | 0x80,
                (value >> 7) & 0x7F | 0x80,
                (value >> 14) & 0x7F | 0x80,
                (value >> 21) & 0x7F | 0x80,
                value >> 28,
            )
        )
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    size = len(payload)
    return tag + (_ONE_BYTE[size] if size < 0x80 else _varint(size)) + payload


# -- put: validate and flatten ------------------------------------------------------------


def entry_params(key: str, output: Any) -> dict[str, Any]:
    """Validate a ``CachedOutput`` and return the ``entries`` column values for it.

    Keys: ``key``, ``key_hash`` (:func:`~flytecache.store.keyhash.key_hash`),
    ``resource_type`` (None without a source identifier), ``project``, ``domain``, ``name``,
    ``version``, ``org``, ``output_uri`` (None when inline), ``size`` (bytes: the serialized
    literal map, or the URI's UTF-8 length), ``created_at`` (the writer's, in µs, or None),
    and the payload's two parts for :func:`payload`: ``head`` (the output field) and ``meta``
    (the metadata's fields other than its timestamps). The store decides the timestamps and
    builds ``payload``.

    Raises :class:`InvalidArgumentError` for a non-CachedOutput, one with neither output
    form, or text a database cannot store (NUL, lone surrogates).
    """
    if type(output) is not _CachedOutput and not isinstance(output, cs.CachedOutput):
        raise InvalidArgumentError(
            f"output must be a CachedOutput, got {type(output).__name__}", field="output"
        )
    which = output.WhichOneof("output")
    if which == "output_literals":
        literals = output.output_literals
        serialized = literals.SerializeToString()
        head = _field(_OUTPUT_LITERALS, serialized)
        # Names are keys of the map: one joined scan for the common case, and the field is
        # named only when there is a NUL.
        names = literals.literals
        if "\x00" in "".join(names):
            for name in names:
                check_storable(name, "output name")
        output_uri: str | None = None
        size = len(serialized)
    elif which == "output_uri":
        uri = output.output_uri
        if not uri:
            raise InvalidArgumentError("output.output_uri must not be empty", field="output")
        check_storable(uri, "output.output_uri")
        encoded = uri.encode("utf-8")
        head = _field(_OUTPUT_URI, encoded)
        output_uri = uri
        size = len(encoded)
    else:
        raise InvalidArgumentError(
            "output has neither output_uri nor output_literals", field="output"
        )
    metadata = output.metadata
    meta = _metadata_bytes(metadata)
    params: dict[str, Any] = {
        "key": key,
        "key_hash": key_hash(key),
        "output_uri": output_uri,
        "size": size,
        "head": head,
        "meta": meta,
        "created_at": (
            timestamp_to_us(metadata.created_at, field="metadata.created_at")
            if metadata.HasField("created_at")
            else None
        ),
    }
    if metadata.HasField("source_identifier"):
        ident = metadata.source_identifier
        params["resource_type"] = ident.resource_type
        params["project"] = ident.project
        params["domain"] = ident.domain
        params["name"] = ident.name
        params["version"] = ident.version
        params["org"] = ident.org
    else:
        params.update(resource_type=None, project="", domain="", name="", version="", org="")
    return params


def _metadata_bytes(metadata: cs.Metadata, *, nul_ok: bool = False) -> bytes:
    """The writer's Metadata serialized without its timestamps (the store sets those).

    Raises :class:`InvalidArgumentError` for a NUL in its text (identifier, key map): the
    columns and exports hold that text, and PostgreSQL cannot.
    """
    if metadata.HasField("created_at") or metadata.HasField("last_updated_at"):
        kept = cs.Metadata()
        kept.CopyFrom(metadata)
        kept.ClearField("created_at")
        kept.ClearField("last_updated_at")
        metadata = kept
    serialized: bytes = metadata.SerializeToString()
    # Text is UTF-8 in the wire bytes: without a zero byte anywhere there is no NUL in any
    # string, which spares walking the map and identifier in the common case.
    if not nul_ok and b"\x00" in serialized:
        ident = metadata.source_identifier
        for field in ("project", "domain", "name", "version", "org"):
            check_storable(getattr(ident, field), f"metadata.source_identifier.{field}")
        for name, value in metadata.key_map.values.items():
            check_storable(name, "metadata.key_map")
            check_storable(value, "metadata.key_map")
    return serialized


def payload(head: bytes, meta: bytes, created_at: int, last_updated_at: int) -> bytes:
    """The stored bytes: ``head`` and ``meta`` from :func:`entry_params` with the timestamps
    (µs since the epoch) appended to the metadata."""
    return head + _field(_METADATA, meta + _timestamps_field(created_at, last_updated_at))


def metadata_from_columns(
    resource_type: int | None,
    project: str,
    domain: str,
    name: str,
    version: str,
    org: str,
    key_map: dict[str, str] | None,
) -> cs.Metadata:
    """Metadata from an entry's columns and key map (None or empty: no key map), as imports
    and revision 0001's rows without a metadata blob describe an entry."""
    metadata = cs.Metadata()
    if resource_type is not None:
        ident = metadata.source_identifier
        ident.resource_type = resource_type
        ident.project, ident.domain, ident.name = project, domain, name
        ident.version, ident.org = version, org
    if key_map:
        metadata.key_map.values.update(key_map)
    return metadata


def payload_from_parts(
    *,
    output_uri: str | None,
    literals: list[tuple[str, bytes]],
    metadata: cs.Metadata,
    created_at: int,
    last_updated_at: int,
    nul_ok: bool = False,
) -> bytes:
    """A payload from its parts: serialized literals by name (kept byte for byte), or a URI;
    the metadata without timestamps; the timestamps in µs. For migrations and imports.

    ``nul_ok`` accepts NUL in the metadata's text (SQLite can hold what it already holds).
    """
    if output_uri is not None:
        head = _field(_OUTPUT_URI, output_uri.encode("utf-8"))
    else:
        head = _field(_OUTPUT_LITERALS, literal_map_bytes(literals))
    return payload(head, _metadata_bytes(metadata, nul_ok=nul_ok), created_at, last_updated_at)


def literal_map_bytes(literals: list[tuple[str, bytes]]) -> bytes:
    """A serialized ``LiteralMap`` of serialized literals by name (kept byte for byte); its
    length is an inline entry's ``size``."""
    return b"".join(
        [
            _field(_LITERALS, _field(_MAP_KEY, name.encode("utf-8")) + _field(_MAP_VALUE, v))
            for name, v in literals
        ]
    )


# -- timestamps --------------------------------------------------------------------------------


def _timestamp_bytes(us: int) -> bytes:
    """A ``google.protobuf.Timestamp`` for ``us`` µs, serialized (zero fields omitted)."""
    seconds, micros = divmod(us, 1_000_000)  # nanos stay non-negative, as Timestamp requires
    out = b"\x08" + _varint(seconds & 0xFFFFFFFFFFFFFFFF) if seconds else b""  # int64 varint
    return out + b"\x10" + _varint(micros * 1000) if micros else out


_PADDED_MIN, _PADDED_END = 1 << 28, 1 << 35  # seconds 1978-06-04 .. 3058-09-05


def _timestamps_field(created_at: int, last_updated_at: int) -> bytes:
    """Metadata's ``created_at`` and ``last_updated_at`` fields, serialized.

    The common case is one ``bytes()`` of fixed-width varints (protobuf parsers accept a
    varint padded with continuation bytes; a parsed message re-serializes canonically).
    """
    cs_, cn = divmod(created_at, 1_000_000)
    us_, un = divmod(last_updated_at, 1_000_000)
    if not (_PADDED_MIN <= cs_ < _PADDED_END and _PADDED_MIN <= us_ < _PADDED_END):
        return _field(_CREATED_AT, _timestamp_bytes(created_at)) + _field(
            _LAST_UPDATED_AT, _timestamp_bytes(last_updated_at)
        )
    cn *= 1000
    un *= 1000
    return bytes(
        (
            0x1A, 12, 0x08,  # created_at (3), 12 bytes: seconds (1) ...
            cs_ & 0x7F | 0x80, cs_ >> 7 & 0x7F | 0x80, cs_ >> 14 & 0x7F | 0x80,
            cs_ >> 21 & 0x7F | 0x80, cs_ >> 28,
            0x10,  # ... nanos (2)
            cn & 0x7F | 0x80, cn >> 7 & 0x7F | 0x80, cn >> 14 & 0x7F | 0x80,
            cn >> 21 & 0x7F | 0x80, cn >> 28,
            0x22, 12, 0x08,  # last_updated_at (4), the same shape
            us_ & 0x7F | 0x80, us_ >> 7 & 0x7F | 0x80, us_ >> 14 & 0x7F | 0x80,
            us_ >> 21 & 0x7F | 0x80, us_ >> 28,
            0x10,
            un & 0x7F | 0x80, un >> 7 & 0x7F | 0x80, un >> 14 & 0x7F | 0x80,
            un >> 21 & 0x7F | 0x80, un >> 28,
        )
    )  # fmt: skip


# -- get ------------------------------------------------------------------------------------------


def cached_output(payload: bytes) -> cs.CachedOutput:
    """The ``CachedOutput`` a get returns for a stored payload (any bytes-like). Raises
    protobuf's ``DecodeError`` only for a corrupt payload."""
    return cs.CachedOutput.FromString(payload if type(payload) is bytes else bytes(payload))


def key_map(payload: bytes) -> dict[str, str]:
    """A stored payload's key map, sorted by name (protobuf maps have no stable order)."""
    return dict(sorted(cached_output(payload).metadata.key_map.values.items()))


def literal_map_entries(payload: bytes) -> list[tuple[str, bytes]]:
    """The inline literals of a payload as ``(name, serialized Literal)``, bytes exactly as
    stored (not re-encoded); empty for a URI entry. For migrating to older revisions."""
    entries: list[tuple[str, bytes]] = []
    for number, value in _fields(bytes(payload)):
        if number != 1:  # CachedOutput.output_literals
            continue
        for entry_number, entry in _fields(value):
            if entry_number != 1:  # LiteralMap.literals
                continue
            name, literal = "", b""
            for part_number, part in _fields(entry):
                if part_number == 1:
                    name = part.decode("utf-8")
                elif part_number == 2:
                    literal = part
            entries.append((name, literal))
    return entries


def _fields(data: bytes) -> list[tuple[int, bytes]]:
    """The length-delimited fields of a message's wire bytes as (number, bytes)."""
    out: list[tuple[int, bytes]] = []
    pos, end = 0, len(data)
    while pos < end:
        tag, pos = _read_varint(data, pos)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 2:
            size, pos = _read_varint(data, pos)
            out.append((number, data[pos : pos + size]))
            pos += size
        elif wire_type == 0:
            _, pos = _read_varint(data, pos)
        elif wire_type == 1:
            pos += 8
        elif wire_type == 5:
            pos += 4
        else:
            raise ValueError(f"unsupported wire type {wire_type} in a stored payload")
    return out


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
