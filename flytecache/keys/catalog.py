"""Flyte's catalog cache key.

A cache key is ``identifier_hash-signature_hash-inputs_hash-cache_version``, byte for byte what
Flyte 2's catalog client computes (``flyteplugins/.../catalog/cache_service/client.go`` and
``flytestdlib/pbhash``): each part hashes a protobuf message rendered as proto3 JSON with Ben
Laurie's *objecthash*, in which every JSON number is a float.

Everything here is a pure function of its arguments: no I/O, no clock, no global state other than
small memo tables whose entries depend only on their keys.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any, TypeAlias

from flyteidl2.core import identifier_pb2, interface_pb2, literals_pb2

# The ignore covers environments without protobuf stubs and stays quiet where they exist.
from google.protobuf import json_format  # type: ignore[import-untyped, unused-ignore]
from google.protobuf.message import Message  # type: ignore[import-untyped, unused-ignore]

from flytecache.errors import InvalidArgumentError

__all__ = [
    "CatalogKey",
    "JSONValue",
    "cache_key",
    "hash_identifier_except_version",
    "hash_literal_map",
    "hashify",
    "names_of",
    "normalize_float",
    "objecthash",
    "pbhash",
    "signature_hash",
    "wrong_type",
]

Identifier = identifier_pb2.Identifier
TypedInterface = interface_pb2.TypedInterface
VariableMap = interface_pb2.VariableMap
Literal = literals_pb2.Literal
LiteralCollection = literals_pb2.LiteralCollection
LiteralMap = literals_pb2.LiteralMap

JSONValue: TypeAlias = (
    "bool | int | float | str | Sequence[JSONValue] | Mapping[str, JSONValue] | None"
)
"""A decoded JSON value, as ``json.loads`` or ``MessageToDict`` produce it."""

_SIGNATURE_PREFIX_LENGTH = 8
_sha256 = hashlib.sha256


@dataclass(frozen=True)
class CatalogKey:
    """What identifies a cached task result: the task, its interface, its inputs, a version.

    ``inputs`` is a ``LiteralMap`` or a zero-argument callable returning one; it is read only when
    ``typed_interface.inputs`` declares at least one variable, so an expensive input reader is
    never called for a task without inputs. ``cache_ignore_input_vars`` names top-level inputs
    left out of the key. The identifier's ``version`` is not part of the key: bumping a task's
    version keeps its cache, bumping ``cache_version`` starts a new one.
    """

    identifier: identifier_pb2.Identifier
    cache_version: str
    typed_interface: interface_pb2.TypedInterface
    inputs: literals_pb2.LiteralMap | Callable[[], literals_pb2.LiteralMap] | None = None
    cache_ignore_input_vars: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.identifier, Identifier):
            raise wrong_type("identifier", "flyteidl2.core.Identifier", self.identifier)
        if not isinstance(self.cache_version, str):
            raise wrong_type("cache_version", "str", self.cache_version)
        if not isinstance(self.typed_interface, TypedInterface):
            raise wrong_type(
                "typed_interface", "flyteidl2.core.TypedInterface", self.typed_interface
            )
        if not (
            self.inputs is None or isinstance(self.inputs, LiteralMap) or callable(self.inputs)
        ):
            raise wrong_type("inputs", "flyteidl2.core.LiteralMap, a callable or None", self.inputs)
        names = names_of(self.cache_ignore_input_vars, "cache_ignore_input_vars")
        # A list is accepted for convenience; the frozen key keeps a tuple.
        object.__setattr__(self, "cache_ignore_input_vars", names)


def wrong_type(field: str, expected: str, value: object) -> InvalidArgumentError:
    """The error for an argument ``field`` of the wrong type (shared with the SDK key)."""
    return InvalidArgumentError(
        f"{field} must be {expected}, not {type(value).__name__}", field=field
    )


def names_of(value: object, field: str) -> tuple[str, ...]:
    """``value`` as a tuple of input names; :class:`InvalidArgumentError` otherwise."""
    # A bare string is iterable too; taking it as a list of characters would silently ignore
    # the wrong inputs.
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise wrong_type(field, "a sequence of input names", value)
    names = tuple(value)
    for name in names:
        if not isinstance(name, str):
            raise InvalidArgumentError(
                f"{field} must contain only strings, found {type(name).__name__}", field=field
            )
    return names


# --- objecthash -----------------------------------------------------------------------------


def _h(tag: bytes, data: bytes) -> bytes:
    return _sha256(tag + data).digest()


def _hash_str(value: str) -> bytes:
    return _sha256(b"u" + value.encode("utf-8")).digest()


@functools.lru_cache(maxsize=4096)
def _hash_key(name: str) -> bytes:
    # Field and input names repeat across every key, unlike values, so only names are memoized.
    return _sha256(b"u" + name.encode("utf-8")).digest()


_NULL_DIGEST = _h(b"n", b"")
_TRUE_DIGEST = _h(b"b", b"1")
_FALSE_DIGEST = _h(b"b", b"0")
_EMPTY_DICT_DIGEST = _h(b"d", b"")


def normalize_float(value: float) -> str:
    """Return objecthash's canonical text for a float (Go objecthash ``floatNormalize``).

    Zero (either sign) is ``"+0:"``. Otherwise: the sign, the binary exponent ``e`` such that
    ``|value| = m * 2**e`` with ``m`` in (0.5, 1], ``":"``, then the bits of ``m`` from the
    units place down to its last one bit (so ``m = 1`` gives ``"1"`` and ``m = 0.75`` gives
    ``"011"``). Infinities and NaN give ``"Infinity"``, ``"-Infinity"`` and ``"NaN"``.
    """
    if value != value:
        return "NaN"
    if value == math.inf:
        return "Infinity"
    if value == -math.inf:
        return "-Infinity"
    if value == 0:
        return "+0:"
    sign = "-" if value < 0 else "+"
    # frexp is exact (subnormals included) and gives m in [0.5, 1); objecthash wants (0.5, 1].
    mantissa, exponent = math.frexp(abs(value))
    if mantissa == 0.5:
        return f"{sign}{exponent - 1}:1"
    # m < 1 has at most 53 significant bits, all at or above 2**-53, so m * 2**53 is an exact
    # integer whose 53-digit binary form is m's fractional bits; the units bit is "0".
    fraction_bits = format(int(math.ldexp(mantissa, 53)), "053b").rstrip("0")
    return f"{sign}{exponent}:0{fraction_bits}"


def _hash_number(value: float) -> bytes:
    return _sha256(b"f" + normalize_float(value).encode("ascii")).digest()


def objecthash(value: JSONValue) -> bytes:
    """Return the objecthash (SHA-256 digest) of a decoded JSON value.

    Numbers (``int`` included) are hashed as float64, as Go's ``encoding/json`` decodes them;
    dict entries are sorted by their hashed key/value pair, so insertion order never matters.
    """
    # Exact-type checks first: they are the fast path for what MessageToDict produces.
    if type(value) is str:
        return _hash_str(value)
    if type(value) is dict:
        return _hash_dict(value)
    if type(value) is list:
        return _hash_list(value)
    if type(value) is float:
        return _hash_number(value)
    if value is None:
        return _NULL_DIGEST
    # bool before int: bool is an int subclass but hashes as a boolean.
    if isinstance(value, bool):
        return _TRUE_DIGEST if value else _FALSE_DIGEST
    if isinstance(value, int | float):
        try:
            return _hash_number(float(value))
        except OverflowError:
            raise InvalidArgumentError(
                f"integer {value} does not fit in a float64", field="value"
            ) from None
    if isinstance(value, str):
        return _hash_str(str(value))
    if isinstance(value, Mapping):
        return _hash_dict(value)
    # bytes is a Sequence of ints but not a JSON value; proto3 JSON renders bytes as base64 text.
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return _hash_list(value)
    raise InvalidArgumentError(
        f"cannot objecthash a {type(value).__name__}: not a JSON value", field="value"
    )


def _hash_list(items: Sequence[JSONValue]) -> bytes:
    return _sha256(b"l" + b"".join([objecthash(item) for item in items])).digest()


def _hash_dict(mapping: Mapping[str, JSONValue]) -> bytes:
    pairs = []
    for key, item in mapping.items():
        if not isinstance(key, str):
            raise InvalidArgumentError(
                f"JSON object keys must be strings, found {type(key).__name__}", field="value"
            )
        pairs.append(_hash_key(key) + objecthash(item))
    pairs.sort()
    return _sha256(b"d" + b"".join(pairs)).digest()


def pbhash(message: Message) -> bytes:
    """Return Flyte's ``pbhash.ComputeHash`` of a protobuf message (32 raw bytes).

    The message is rendered the way Go's ``jsonpb.Marshaler{}`` does by default (lowerCamelCase
    names, unset fields omitted, enums by name, 64-bit integers as strings), which is
    ``MessageToDict`` with default options, and that JSON value is objecthashed.
    """
    try:
        rendered = json_format.MessageToDict(message)
    except (json_format.Error, ValueError) as exc:
        # Go's jsonpb refuses the same messages (e.g. NaN in a Struct), so Flyte cannot key them.
        raise InvalidArgumentError(
            f"cannot render {message.DESCRIPTOR.full_name} as JSON: {exc}",
            field=message.DESCRIPTOR.full_name,
        ) from exc
    return objecthash(rendered)


# --- literal maps ---------------------------------------------------------------------------


def hashify(literal: literals_pb2.Literal) -> literals_pb2.Literal:
    """Return the literal Flyte hashes in place of ``literal`` (Flyte's catalog ``hashify``).

    A literal with a non-empty ``hash`` becomes ``Literal(hash=...)``: its value, metadata and
    everything else are replaced by the hash its producer computed. A collection or map without
    a hash is rebuilt from its hashified children, dropping its own metadata. Any other literal
    is returned unchanged (the same object).
    """
    if literal.hash:
        return Literal(hash=literal.hash)
    kind = literal.WhichOneof("value")
    if kind == "collection":
        return Literal(
            collection=LiteralCollection(
                literals=[hashify(child) for child in literal.collection.literals]
            )
        )
    if kind == "map":
        return Literal(
            map=LiteralMap(
                literals={name: hashify(child) for name, child in literal.map.literals.items()}
            )
        )
    return literal


def _json_name_digest(message_type: Any, field: str) -> bytes:
    return _hash_key(message_type.DESCRIPTOR.fields_by_name[field].json_name)


_HASH_KEY = _json_name_digest(Literal, "hash")
_SCALAR_KEY = _json_name_digest(Literal, "scalar")
_COLLECTION_KEY = _json_name_digest(Literal, "collection")
_MAP_KEY = _json_name_digest(Literal, "map")
_LITERALS_KEY = _json_name_digest(LiteralMap, "literals")
_PRIMITIVE_KEY = _json_name_digest(literals_pb2.Scalar, "primitive")
# Hash inputs are b"d" + key digest + value digest; the constant prefixes are built once.
_PRIMITIVE_FIELD_PREFIXES = {
    name: b"d" + _json_name_digest(literals_pb2.Primitive, name)
    for name in ("integer", "float_value", "string_value", "boolean")
}
_PRIMITIVE_PREFIX = b"d" + _PRIMITIVE_KEY
_SCALAR_PREFIX = b"d" + _SCALAR_KEY
_EMPTY_COLLECTION_LITERAL_DIGEST = _h(b"d", _COLLECTION_KEY + _EMPTY_DICT_DIGEST)
_EMPTY_MAP_LITERAL_DIGEST = _h(b"d", _MAP_KEY + _EMPTY_DICT_DIGEST)


def _primitive_shortcut_is_exact() -> bool:
    # The shortcut hashes scalar.primitive literals without rendering them, which is only right
    # while Literal has exactly these fields and Scalar/Primitive are single oneofs. A flyteidl2
    # that adds a field turns the shortcut off instead of silently leaving the field out.
    literal_fields = {field.name for field in Literal.DESCRIPTOR.fields}
    known = {"scalar", "collection", "map", "offloaded_metadata", "hash", "metadata", "artifact_id"}
    return literal_fields == known and all(
        len(message.DESCRIPTOR.oneofs) == 1
        and all(field.containing_oneof is not None for field in message.DESCRIPTOR.fields)
        for message in (literals_pb2.Scalar, literals_pb2.Primitive)
    )


_PRIMITIVE_SHORTCUT = _primitive_shortcut_is_exact()


def _primitive_value_digest(field: str, value: Any) -> bytes:
    if field == "integer":
        return _hash_str(str(value))  # int64 renders as a JSON string
    if field == "float_value":
        if math.isnan(value):
            return _hash_str("NaN")  # proto3 JSON spells non-finite doubles as strings
        if math.isinf(value):
            return _hash_str("Infinity" if value > 0 else "-Infinity")
        return _hash_number(value)
    if field == "string_value":
        return _hash_str(value)
    return _TRUE_DIGEST if value else _FALSE_DIGEST


def _hashified_literal_digest(literal: Any) -> bytes:
    """objecthash(MessageToDict(hashify(literal))), without building either.

    The shapes whose JSON is fixed (hash-only, collection, map, plain primitives) are hashed
    directly; anything else goes through ``pbhash`` so it is rendered exactly as Go renders it.
    """
    if literal.hash:
        return _sha256(b"d" + _HASH_KEY + _hash_str(literal.hash)).digest()
    kind = literal.WhichOneof("value")
    if kind == "scalar":
        if _PRIMITIVE_SHORTCUT and not literal.metadata and not literal.HasField("artifact_id"):
            scalar = literal.scalar
            if scalar.WhichOneof("value") == "primitive":
                primitive = scalar.primitive
                field = primitive.WhichOneof("value")
                prefix = _PRIMITIVE_FIELD_PREFIXES.get(field)
                if prefix is not None:
                    value = _primitive_value_digest(field, getattr(primitive, field))
                    value = _sha256(prefix + value).digest()
                    value = _sha256(_PRIMITIVE_PREFIX + value).digest()
                    return _sha256(_SCALAR_PREFIX + value).digest()
    elif kind == "collection":
        children = literal.collection.literals
        if not children:
            return _EMPTY_COLLECTION_LITERAL_DIGEST
        items = _h(b"l", b"".join([_hashified_literal_digest(child) for child in children]))
        return _h(b"d", _COLLECTION_KEY + _h(b"d", _LITERALS_KEY + items))
    elif kind == "map":
        pairs = _entry_pairs(literal.map.literals, frozenset())
        if not pairs:
            return _EMPTY_MAP_LITERAL_DIGEST
        return _h(b"d", _MAP_KEY + _h(b"d", _LITERALS_KEY + _h(b"d", b"".join(pairs))))
    return pbhash(literal)


def _entry_pairs(entries: Mapping[str, Any], ignored: AbstractSet[str]) -> list[bytes]:
    pairs = [
        _hash_key(name) + _hashified_literal_digest(literal)
        for name, literal in entries.items()
        if name not in ignored
    ]
    pairs.sort()
    return pairs


def _literal_map_digest(literal_map: Any, ignored: AbstractSet[str]) -> bytes:
    if literal_map is None:
        return _EMPTY_DICT_DIGEST
    pairs = _entry_pairs(literal_map.literals, ignored)
    if not pairs:
        # Flyte hashes an empty map (or one whose every input is ignored) as a LiteralMap with
        # no literals, which renders as {}.
        return _EMPTY_DICT_DIGEST
    return _h(b"d", _LITERALS_KEY + _h(b"d", b"".join(pairs)))


def hash_literal_map(
    literal_map: literals_pb2.LiteralMap | None, ignore: Iterable[str] = ()
) -> str:
    """Return Flyte's ``HashLiteralMap``: the inputs part of a cache key.

    Top-level names in ``ignore`` are dropped, every literal is hashified (see ``hashify``),
    and the result is the unpadded URL-safe base64 of the resulting map's ``pbhash``. ``None``
    and an empty map hash alike.
    """
    if literal_map is not None and not isinstance(literal_map, LiteralMap):
        raise wrong_type("literal_map", "flyteidl2.core.LiteralMap or None", literal_map)
    ignored = frozenset(names_of(ignore, "ignore"))
    return _b64url(_literal_map_digest(literal_map, ignored))


def _b64url(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# --- identifier and interface ---------------------------------------------------------------


@functools.lru_cache(maxsize=1024)
def _identifier_hash(resource_type: int, project: str, domain: str, name: str, org: str) -> str:
    unversioned = Identifier(
        resource_type=resource_type, project=project, domain=domain, name=name, org=org
    )
    return base64.b64encode(pbhash(unversioned)).decode("ascii")


def hash_identifier_except_version(identifier: identifier_pb2.Identifier) -> str:
    """Return the identifier part of a cache key: padded standard base64 of its ``pbhash``.

    Only resource_type, project, domain, name and org are hashed, so every version of a task
    shares one cache (``cache_version`` is what separates them).
    """
    if not isinstance(identifier, Identifier):
        raise wrong_type("identifier", "flyteidl2.core.Identifier", identifier)
    return _identifier_hash(
        identifier.resource_type,
        identifier.project,
        identifier.domain,
        identifier.name,
        identifier.org,
    )


@functools.lru_cache(maxsize=1024)
def _variable_map_prefix(serialized: bytes) -> str:
    # Keyed by the deterministic serialization: equal bytes mean an equal message, hence an
    # equal JSON rendering, so the memo can never return another interface's hash.
    variables = VariableMap()
    variables.ParseFromString(serialized)
    return _b64url(pbhash(variables))[:_SIGNATURE_PREFIX_LENGTH]


_EMPTY_VARIABLE_MAP_PREFIX = _b64url(_EMPTY_DICT_DIGEST)[:_SIGNATURE_PREFIX_LENGTH]


def _signature_part(variables: Any) -> str:
    if not variables.variables:
        return _EMPTY_VARIABLE_MAP_PREFIX
    return _variable_map_prefix(variables.SerializeToString(deterministic=True))


def signature_hash(typed_interface: interface_pb2.TypedInterface) -> str:
    """Return the interface part of a cache key: ``in8-out8``.

    Each half is the first 8 characters of the unpadded URL-safe base64 ``pbhash`` of the
    interface's inputs or outputs ``VariableMap`` (an empty map when absent or without
    variables). flyteidl2 keeps variables as an ordered list, so their order matters.
    """
    if not isinstance(typed_interface, TypedInterface):
        raise wrong_type("typed_interface", "flyteidl2.core.TypedInterface", typed_interface)
    return f"{_signature_part(typed_interface.inputs)}-{_signature_part(typed_interface.outputs)}"


def _declares_inputs(typed_interface: Any) -> bool:
    return typed_interface.HasField("inputs") and len(typed_interface.inputs.variables) > 0


def cache_key(key: CatalogKey) -> str:
    """Return the cache key Flyte 2 derives for ``key``.

    ``identifier_hash-signature_hash-inputs_hash-cache_version``. The inputs (or the callable
    producing them) are touched only if the interface declares at least one input; otherwise
    the inputs hash is that of the empty map.
    """
    if not isinstance(key, CatalogKey):
        raise wrong_type("key", "CatalogKey", key)
    inputs: Any = None
    if _declares_inputs(key.typed_interface):
        inputs = key.inputs() if callable(key.inputs) else key.inputs
        if inputs is not None and not isinstance(inputs, LiteralMap):
            raise wrong_type("inputs", "flyteidl2.core.LiteralMap or None", inputs)
    inputs_hash = _b64url(_literal_map_digest(inputs, frozenset(key.cache_ignore_input_vars)))
    return (
        f"{hash_identifier_except_version(key.identifier)}-{signature_hash(key.typed_interface)}"
        f"-{inputs_hash}-{key.cache_version}"
    )
