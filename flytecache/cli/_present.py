"""How the admin commands show things to people and scripts: JSON shapes of the admin results,
descriptions of stored literals, resource-type names (presentation only the CLI uses)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flytecache.store.admin import (
        CheckItem,
        EntryDetail,
        EntrySummary,
        ImportResult,
        PruneResult,
        ReservationInfo,
    )

__all__ = [
    "OutputInfo",
    "check_json",
    "describe_literal",
    "detail_json",
    "entry_json",
    "import_json",
    "prune_json",
    "reservation_json",
    "resource_type_name",
]

_SMALL_VALUE = 200  # longest string (in characters) shown as an output's value


def iso_utc(us: int | None) -> str | None:
    """:func:`flytecache.timeutil.iso_utc`, imported when first used (it loads protobuf, which
    ``flytecache --help`` must not)."""
    from flytecache.timeutil import iso_utc as convert

    return convert(us)


_US = 1_000_000


@dataclass(frozen=True, slots=True)
class OutputInfo:
    """One inline output, described for people: its literal type, size and (small) value."""

    name: str
    type: str
    size: int
    value: Any = None
    """The value of a small scalar (int, float, bool, short string, URI...), else None."""
    hash: str = ""

    def as_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        data: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "size": self.size,
            "value": self.value,
        }
        if self.hash:
            data["hash"] = self.hash
        return data


def resource_type_name(value: int | None) -> str | None:
    """The ``flyteidl2.core.ResourceType`` name of ``value`` (``TASK``...), or None."""
    if value is None:
        return None
    from flyteidl2.core import identifier_pb2

    try:
        return str(identifier_pb2.ResourceType.Name(value))
    except ValueError:
        return str(value)


def entry_json(entry: EntrySummary) -> dict[str, Any]:
    """An entry as JSON (timestamps as ISO-8601 UTC strings)."""
    return {
        "key": entry.key,
        "project": entry.project,
        "domain": entry.domain,
        "name": entry.name,
        "version": entry.version,
        "org": entry.org,
        "resource_type": resource_type_name(entry.resource_type),
        "created_at": iso_utc(entry.created_at),
        "last_updated_at": iso_utc(entry.last_updated_at),
        "output_uri": entry.output_uri,
        "inline": entry.inline,
        "size": entry.size,
    }


def detail_json(detail: EntryDetail) -> dict[str, Any]:
    """An entry with its key map and described outputs, as JSON."""
    data = entry_json(detail.entry)
    data["key_map"] = detail.key_map
    data["outputs"] = (
        None
        if detail.outputs is None
        else [describe_literal(name, raw).as_json() for name, raw in detail.outputs]
    )
    return data


def prune_json(result: PruneResult) -> dict[str, Any]:
    """What a prune did, as JSON."""
    return {
        "entries": result.entries,
        "bytes": result.bytes,
        "batches": result.batches,
        "dry_run": result.dry_run,
        "longest_batch_seconds": round(result.longest_batch_seconds, 6),
        "blobs": {
            "deleted": result.blobs.deleted,
            "bytes": result.blobs.bytes,
            "failed": [{"uri": uri, "error": reason} for uri, reason in result.blobs.failed],
            "outside_prefixes": result.blobs.skipped,
        },
    }


def reservation_json(lease: ReservationInfo) -> dict[str, Any]:
    """A lease as JSON (timestamps as ISO-8601 UTC, durations in seconds)."""
    return {
        "key": lease.key,
        "owner_id": lease.owner_id,
        "active": lease.active,
        "expires_at": iso_utc(lease.expires_at),
        "expires_in": lease.expires_in,
        "heartbeat_interval": lease.heartbeat_interval / _US,
        "created_at": iso_utc(lease.created_at),
        "updated_at": iso_utc(lease.updated_at),
        "previous_owner": lease.previous_owner,
    }


def import_json(result: ImportResult) -> dict[str, Any]:
    """What an import did, as JSON."""
    return {
        "entries": result.entries,
        "inserted": result.inserted,
        "replaced": result.replaced,
        "skipped": result.skipped,
        "dry_run": result.dry_run,
    }


def check_json(item: CheckItem) -> dict[str, Any]:
    """One ``db check`` item as JSON."""
    return {"name": item.name, "status": item.status, "detail": item.detail}


def _json_float(value: float) -> float | str:
    return value if math.isfinite(value) else str(value)


def describe_literal(name: str, raw: bytes) -> OutputInfo:
    """Describe a serialized ``flyteidl2.core.Literal``: its type, size and a small value."""
    from flyteidl2.core import literals_pb2
    from google.protobuf.message import DecodeError

    literal = literals_pb2.Literal()
    try:
        literal.ParseFromString(raw)
    except DecodeError:
        return OutputInfo(name=name, type="(undecodable)", size=len(raw))
    kind, value = _describe(literal)
    return OutputInfo(name=name, type=kind, size=len(raw), value=value, hash=literal.hash)


def _describe(literal: Any) -> tuple[str, Any]:
    kind = literal.WhichOneof("value")
    if kind == "scalar":
        return _describe_scalar(literal.scalar)
    if kind == "collection":
        return f"collection[{len(literal.collection.literals)}]", None
    if kind == "map":
        return f"map[{len(literal.map.literals)}]", None
    if kind == "offloaded_metadata":
        return "offloaded", literal.offloaded_metadata.uri
    return "empty", None


def _describe_scalar(scalar: Any) -> tuple[str, Any]:
    kind = scalar.WhichOneof("value")
    if kind == "primitive":
        primitive = scalar.primitive
        which = primitive.WhichOneof("value")
        if which == "integer":
            return "integer", int(primitive.integer)
        if which == "float_value":
            return "float", _json_float(primitive.float_value)
        if which == "string_value":
            text = primitive.string_value
            return "string", text if len(text) <= _SMALL_VALUE else None
        if which == "boolean":
            return "boolean", bool(primitive.boolean)
        if which == "datetime":
            return "datetime", primitive.datetime.ToJsonString()
        if which == "duration":
            return "duration", primitive.duration.ToJsonString()
        return "primitive", None
    if kind == "blob":
        return "blob", scalar.blob.uri
    if kind == "binary":
        tag = scalar.binary.tag
        return (f"binary({tag})" if tag else "binary"), None
    if kind == "schema":
        return "schema", scalar.schema.uri
    if kind == "none_type":
        return "none", None
    if kind == "error":
        return "error", scalar.error.message
    if kind == "generic":
        from google.protobuf.json_format import MessageToDict

        small = scalar.generic.ByteSize() <= _SMALL_VALUE
        return "struct", MessageToDict(scalar.generic) if small else None
    if kind == "structured_dataset":
        return "structured_dataset", scalar.structured_dataset.uri
    if kind == "union":
        inner, value = _describe(scalar.union.value)
        return f"union[{inner}]", value
    return "scalar", None
