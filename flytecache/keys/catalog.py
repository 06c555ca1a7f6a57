"""Flyte's catalog cache key.

A cache key is ``identifier_hash-signature_hash-inputs_hash-cache_version``, byte for byte what
Flyte 2's catalog client computes (``flyteplugins/.../catalog/cache_service/client.go`` and
``flytestdlib/pbhash``): each part hashes a protobuf message rendered as proto3 JSON with Ben
Laurie's *objecthash*, in which every JSON number is a float.

Everything here is a pure function of its arguments: no I/O, no clock, no global state other than
small bounded memo tables keyed by serialized messages, whose entries depend only on their keys.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import hashlib
import math
from collections import OrderedDict
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


def _field(message_type: Any, name: str) -> Any:
    return message_type.DESCRIPTOR.fields_by_name[name]


_HASH_KEY = _json_name_digest(Literal, "hash")
_COLLECTION_KEY = _json_name_digest(Literal, "collection")
_MAP_KEY = _json_name_digest(Literal, "map")
_LITERALS_KEY = _json_name_digest(LiteralMap, "literals")
_EMPTY_COLLECTION_LITERAL_DIGEST = _h(b"d", _COLLECTION_KEY + _EMPTY_DICT_DIGEST)
_EMPTY_MAP_LITERAL_DIGEST = _h(b"d", _MAP_KEY + _EMPTY_DICT_DIGEST)

# A one-entry JSON object {name: value} hashes as sha256(b"d" + H(name) + H(value)); the constant
# prefixes are built once.
_HASH_PREFIX = b"d" + _HASH_KEY
_SCALAR_PREFIX = b"d" + _json_name_digest(Literal, "scalar")
_PRIMITIVE_PREFIX = b"d" + _json_name_digest(literals_pb2.Scalar, "primitive")
_COLLECTION_PREFIX = b"d" + _COLLECTION_KEY
_MAP_PREFIX = b"d" + _MAP_KEY
_LITERALS_PREFIX = b"d" + _LITERALS_KEY

# ListFields() yields these very descriptor objects, so they are compared by identity.
_LITERAL_SCALAR = _field(Literal, "scalar")
_LITERAL_COLLECTION = _field(Literal, "collection")
_LITERAL_MAP = _field(Literal, "map")
_LITERAL_HASH = _field(Literal, "hash")
_SCALAR_PRIMITIVE = _field(literals_pb2.Scalar, "primitive")
_INTEGER = _field(literals_pb2.Primitive, "integer")
_FLOAT = _field(literals_pb2.Primitive, "float_value")
_STRING = _field(literals_pb2.Primitive, "string_value")
_BOOLEAN = _field(literals_pb2.Primitive, "boolean")
_INTEGER_PREFIX = b"d" + _json_name_digest(literals_pb2.Primitive, "integer")
_FLOAT_PREFIX = b"d" + _json_name_digest(literals_pb2.Primitive, "float_value")
_STRING_PREFIX = b"d" + _json_name_digest(literals_pb2.Primitive, "string_value")
_BOOLEAN_PREFIXES = {
    value: b"d" + _json_name_digest(literals_pb2.Primitive, "boolean") + digest
    for value, digest in ((True, _TRUE_DIGEST), (False, _FALSE_DIGEST))
}


def _hashified_literal_digest(literal: Any) -> bytes:
    """objecthash(MessageToDict(hashify(literal))), without building either.

    ``MessageToDict`` renders a message from its ``ListFields()`` (set fields only), so a literal
    whose only set field is a scalar primitive, a collection or a map has a JSON shape fixed by
    that one field, hashed here directly; a hash replaces everything; anything else (metadata,
    artifact ids, blobs, well-known types, non-finite floats...) goes through ``pbhash`` so it is
    rendered exactly as Go renders it.
    """
    fields = literal.ListFields()
    if len(fields) == 1:
        field, value = fields[0]
        if field is _LITERAL_SCALAR:
            # {"scalar": {"primitive": {<field>: <value>}}}: four digests, innermost first.
            inner = value.ListFields()
            if len(inner) == 1 and inner[0][0] is _SCALAR_PRIMITIVE:
                primitive = inner[0][1].ListFields()
                if len(primitive) == 1:
                    kind, raw = primitive[0]
                    if kind is _INTEGER:  # int64: a JSON string
                        digest = _sha256(b"u" + str(raw).encode()).digest()
                        digest = _sha256(_INTEGER_PREFIX + digest).digest()
                    elif kind is _STRING:
                        digest = _sha256(b"u" + raw.encode("utf-8")).digest()
                        digest = _sha256(_STRING_PREFIX + digest).digest()
                    elif kind is _FLOAT and raw - raw == 0.0:  # finite: a JSON number
                        digest = _sha256(_FLOAT_PREFIX + _hash_number(raw)).digest()
                    elif kind is _BOOLEAN:
                        digest = _sha256(_BOOLEAN_PREFIXES[raw]).digest()
                    else:
                        return pbhash(literal)
                    digest = _sha256(_PRIMITIVE_PREFIX + digest).digest()
                    return _sha256(_SCALAR_PREFIX + digest).digest()
            return pbhash(literal)
        if field is _LITERAL_COLLECTION:
            return _collection_digest(value.literals)
        if field is _LITERAL_MAP:
            return _map_literal_digest(value.literals)
        if field is _LITERAL_HASH:
            return _sha256(_HASH_PREFIX + _hash_str(value)).digest()
        return pbhash(literal)
    if literal.hash:
        return _sha256(_HASH_PREFIX + _hash_str(literal.hash)).digest()
    # Containers without a hash drop their metadata (and anything else) when hashified.
    kind = literal.WhichOneof("value")
    if kind == "collection":
        return _collection_digest(literal.collection.literals)
    if kind == "map":
        return _map_literal_digest(literal.map.literals)
    return pbhash(literal)


def _collection_digest(children: Sequence[Any]) -> bytes:
    if not children:
        return _EMPTY_COLLECTION_LITERAL_DIGEST
    items = _sha256(b"l" + b"".join([_hashified_literal_digest(child) for child in children]))
    inner = _sha256(_LITERALS_PREFIX + items.digest()).digest()
    return _sha256(_COLLECTION_PREFIX + inner).digest()


def _map_literal_digest(entries: Mapping[str, Any]) -> bytes:
    pairs = [_hash_key(name) + _hashified_literal_digest(child) for name, child in entries.items()]
    if not pairs:
        return _EMPTY_MAP_LITERAL_DIGEST
    pairs.sort()
    inner = _sha256(_LITERALS_PREFIX + _sha256(b"d" + b"".join(pairs)).digest()).digest()
    return _sha256(_MAP_PREFIX + inner).digest()


class _Memo:
    """A bounded map from a message's serialized bytes to a value derived from the message.

    Sound for any serialization, deterministic or not: equal bytes parse to equal messages, so a
    hit returns exactly what the derivation would; unequal bytes for an equal message merely
    miss. Oldest entries go first when full. Safe to share between threads: every operation is a
    single dict call under the GIL, and a lost race costs at most a recomputation.
    """

    def __init__(self, max_entries: int, max_key_bytes: int) -> None:
        # An OrderedDict drops its oldest entry in O(1); a dict's next(iter()) would walk
        # past every slot freed by earlier evictions, making each insertion O(size).
        self._data: OrderedDict[Any, Any] = OrderedDict()
        self._max_entries = max_entries
        self.max_key_bytes = max_key_bytes
        self.get = self._data.get

    def put(self, key: Any, value: Any) -> None:
        data = self._data
        if len(data) >= self._max_entries:
            # Another thread may have emptied it meanwhile; then there is nothing to drop.
            with contextlib.suppress(KeyError):
                data.popitem(last=False)
        data[key] = value

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


# Sizes: a typical task's serialized inputs are ~1 KiB and its interface ~0.5 KiB, so each memo
# holds at most a few MiB; larger messages are hashed every time (their hashing dominates the
# serialization the memo would save anyway).
_INPUTS_MEMO = _Memo(max_entries=1024, max_key_bytes=16 * 1024)
_INTERFACE_MEMO = _Memo(max_entries=1024, max_key_bytes=16 * 1024)


def _literal_map_digest(literal_map: Any, ignored: AbstractSet[str]) -> bytes:
    if literal_map is None:
        return _EMPTY_DICT_DIGEST
    pairs = [
        _hash_key(name) + _hashified_literal_digest(literal)
        for name, literal in literal_map.literals.items()
        if name not in ignored
    ]
    if not pairs:
        # Flyte hashes an empty map (or one whose every input is ignored) as a LiteralMap with
        # no literals, which renders as {}.
        return _EMPTY_DICT_DIGEST
    pairs.sort()
    return _h(b"d", _LITERALS_KEY + _h(b"d", b"".join(pairs)))


def _inputs_hash(literal_map: Any, ignored: frozenset[str]) -> str:
    if literal_map is None:
        return _EMPTY_MAP_HASH
    # The same inputs are keyed several times per task execution (a catalog client derives the
    # key for get, put, reserve and release alike), so the whole map is memoized by its bytes.
    memo_key = (literal_map.SerializeToString(), ignored)
    found: str | None = _INPUTS_MEMO.get(memo_key)
    if found is None:
        found = _b64url(_literal_map_digest(literal_map, ignored))
        if len(memo_key[0]) <= _INPUTS_MEMO.max_key_bytes:
            _INPUTS_MEMO.put(memo_key, found)
    return found


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
    return _inputs_hash(literal_map, frozenset(names_of(ignore, "ignore")))


def _b64url(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


_EMPTY_MAP_HASH = _b64url(_EMPTY_DICT_DIGEST)


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


def _variable_map_prefix(variables: Any) -> str:
    if not variables.variables:
        return _EMPTY_VARIABLE_MAP_PREFIX
    return _b64url(pbhash(variables))[:_SIGNATURE_PREFIX_LENGTH]


_EMPTY_VARIABLE_MAP_PREFIX = _b64url(_EMPTY_DICT_DIGEST)[:_SIGNATURE_PREFIX_LENGTH]


def _interface_parts(typed_interface: Any) -> tuple[str, bool]:
    """The signature hash of ``typed_interface`` and whether it declares inputs.

    Memoized by the interface's bytes: a task's interface is the same on every call, and
    rendering its variable maps as JSON is the slowest step of a key.
    """
    serialized = typed_interface.SerializeToString()
    found: tuple[str, bool] | None = _INTERFACE_MEMO.get(serialized)
    if found is None:
        inputs, outputs = typed_interface.inputs, typed_interface.outputs
        signature = f"{_variable_map_prefix(inputs)}-{_variable_map_prefix(outputs)}"
        found = (signature, len(inputs.variables) > 0)
        if len(serialized) <= _INTERFACE_MEMO.max_key_bytes:
            _INTERFACE_MEMO.put(serialized, found)
    return found


def signature_hash(typed_interface: interface_pb2.TypedInterface) -> str:
    """Return the interface part of a cache key: ``in8-out8``.

    Each half is the first 8 characters of the unpadded URL-safe base64 ``pbhash`` of the
    interface's inputs or outputs ``VariableMap`` (an empty map when absent or without
    variables). flyteidl2 keeps variables as an ordered list, so their order matters.
    """
    if not isinstance(typed_interface, TypedInterface):
        raise wrong_type("typed_interface", "flyteidl2.core.TypedInterface", typed_interface)
    return _interface_parts(typed_interface)[0]


def cache_key(key: CatalogKey) -> str:
    """Return the cache key Flyte 2 derives for ``key``.

    ``identifier_hash-signature_hash-inputs_hash-cache_version``. The inputs (or the callable
    producing them) are touched only if the interface declares at least one input; otherwise
    the inputs hash is that of the empty map.
    """
    if not isinstance(key, CatalogKey):
        raise wrong_type("key", "CatalogKey", key)
    signature, declares_inputs = _interface_parts(key.typed_interface)
    inputs: Any = None
    if declares_inputs:
        inputs = key.inputs() if callable(key.inputs) else key.inputs
        if inputs is not None and not isinstance(inputs, LiteralMap):
            raise wrong_type("inputs", "flyteidl2.core.LiteralMap or None", inputs)
    inputs_hash = _inputs_hash(inputs, frozenset(key.cache_ignore_input_vars))
    return (
        f"{hash_identifier_except_version(key.identifier)}-{signature}"
        f"-{inputs_hash}-{key.cache_version}"
    )
