"""How the web view shows values: stored literals as trees, keys shortened, sizes and times.

Everything returned here is plain data for the templates, which escape it; nothing here
builds HTML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from flytecache.config import format_size
from flytecache.timeutil import iso_utc

__all__ = ["LiteralNode", "format_size", "iso_utc", "literal_tree", "short_key"]

_MAX_CHILDREN = 100  # items of a collection or map shown; the rest are counted
_MAX_DEPTH = 12  # nesting shown; deeper values are summarised
_MAX_TEXT = 2000  # characters of a string shown inline


@dataclass(slots=True)
class LiteralNode:
    """One literal as the entry page shows it: a type, a value or a URI, and children."""

    type: str
    value: str | None = None
    uri: str | None = None
    detail: str = ""
    """Extra facts (a blob's format, a binary's size) in a few words."""
    hash: str = ""
    children: list[tuple[str, LiteralNode]] = field(default_factory=list)
    hidden: int = 0
    """Children not shown (past the display limit)."""


def short_key(key: str, keep: int = 24) -> str:
    """``key`` cut to its first and last characters when it is long (``abc…xyz``).

    Keys share their ``<project>-<domain>-`` prefix and end in the cache version, so both
    ends are kept: the middle (the hashes) is what tells entries apart least readably.
    """
    if len(key) <= 2 * keep + 1:
        return key
    return f"{key[:keep]}…{key[-keep:]}"


def literal_tree(raw: bytes) -> LiteralNode:
    """A serialized ``flyteidl2.core.Literal`` as a tree; undecodable bytes say so."""
    from flyteidl2.core import literals_pb2
    from google.protobuf.message import DecodeError

    literal = literals_pb2.Literal()
    try:
        literal.ParseFromString(raw)
    except (DecodeError, RecursionError):
        return LiteralNode(type="undecodable", detail=f"{format_size(len(raw))} of bytes")
    return _node(literal, 0)


def _node(literal: Any, depth: int) -> LiteralNode:
    if depth >= _MAX_DEPTH:
        return LiteralNode(type="…", detail="nested too deeply to show")
    kind = literal.WhichOneof("value")
    if kind == "scalar":
        node = _scalar(literal.scalar, depth)
    elif kind == "collection":
        items = literal.collection.literals
        node = LiteralNode(type="collection", detail=f"{len(items)} items")
        node.children = [
            (f"[{i}]", _node(item, depth + 1)) for i, item in enumerate(items[:_MAX_CHILDREN])
        ]
        node.hidden = max(0, len(items) - _MAX_CHILDREN)
    elif kind == "map":
        pairs = sorted(literal.map.literals.items())
        node = LiteralNode(type="map", detail=f"{len(pairs)} keys")
        node.children = [(name, _node(item, depth + 1)) for name, item in pairs[:_MAX_CHILDREN]]
        node.hidden = max(0, len(pairs) - _MAX_CHILDREN)
    elif kind == "offloaded_metadata":
        offloaded = literal.offloaded_metadata
        node = LiteralNode(
            type="offloaded literal",
            uri=offloaded.uri,
            detail=format_size(offloaded.size_bytes) if offloaded.size_bytes else "",
        )
    else:
        node = LiteralNode(type="empty")
    node.hash = literal.hash
    return node


def _scalar(scalar: Any, depth: int) -> LiteralNode:
    kind = scalar.WhichOneof("value")
    if kind == "primitive":
        return _primitive(scalar.primitive)
    if kind == "blob":
        blob = scalar.blob
        dims = "multipart" if blob.metadata.type.dimensionality == 1 else "single file"
        fmt = blob.metadata.type.format
        return LiteralNode(type="blob", uri=blob.uri, detail=f"{fmt} ({dims})" if fmt else dims)
    if kind == "structured_dataset":
        dataset = scalar.structured_dataset
        fmt = dataset.metadata.structured_dataset_type.format
        return LiteralNode(type="structured dataset", uri=dataset.uri, detail=fmt)
    if kind == "schema":
        return LiteralNode(type="schema", uri=scalar.schema.uri)
    if kind == "binary":
        tag = scalar.binary.tag
        size = format_size(len(scalar.binary.value))
        return LiteralNode(type="binary", detail=f"{tag}, {size}" if tag else size)
    if kind == "none_type":
        return LiteralNode(type="none", value="None")
    if kind == "error":
        error = scalar.error
        return LiteralNode(type="error", value=error.message, detail=error.failed_node_id)
    if kind == "generic":
        from google.protobuf.json_format import MessageToJson

        return LiteralNode(type="struct", value=_cut(MessageToJson(scalar.generic, indent=2)))
    if kind == "union":
        inner = _node(scalar.union.value, depth + 1)
        return LiteralNode(type="union", children=[("value", inner)])
    return LiteralNode(type="scalar")


def _primitive(primitive: Any) -> LiteralNode:
    which = primitive.WhichOneof("value")
    if which == "integer":
        return LiteralNode(type="integer", value=str(primitive.integer))
    if which == "float_value":
        number = primitive.float_value
        shown = repr(number) if math.isfinite(number) else str(number)
        return LiteralNode(type="float", value=shown)
    if which == "string_value":
        text = primitive.string_value
        detail = f"{len(text)} characters" if len(text) > _MAX_TEXT else ""
        return LiteralNode(type="string", value=_cut(text), detail=detail)
    if which == "boolean":
        return LiteralNode(type="boolean", value=str(primitive.boolean).lower())
    if which == "datetime":
        return LiteralNode(type="datetime", value=primitive.datetime.ToJsonString())
    if which == "duration":
        return LiteralNode(type="duration", value=primitive.duration.ToJsonString())
    return LiteralNode(type="primitive")


def _cut(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "…"
