"""The Flyte 2 SDK's own cache key: what the SDK sends as ``TaskAction.Spec.CacheKey`` and keys
its local cache by, and what the Flyte 2 executor then uses as the catalog key's fourth part
(the cache version). Pure functions of their arguments, no I/O.

The rule is the Python SDK's (flyte 2.12, ``flyte._internal.runtime.convert``). It differs from
the catalog key's in every respect (SHA-256 over protobuf bytes rather than objecthash over JSON,
standard base64, inputs in call order), so the two share no hashing code.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeAlias

from flyteidl2.core import interface_pb2, literals_pb2
from flyteidl2.task import common_pb2

from flytecache.errors import InvalidArgumentError
from flytecache.keys.catalog import names_of, wrong_type

__all__ = ["SdkInputs", "flyte_sdk_cache_key", "flyte_sdk_inputs_hash", "flyte_sdk_interface_hash"]

Literal = literals_pb2.Literal
TypedInterface = interface_pb2.TypedInterface
Inputs = common_pb2.Inputs
NamedLiteral = common_pb2.NamedLiteral
_sha256 = hashlib.sha256

_MSGPACK_TAG = "msgpack"

SdkInputs: TypeAlias = (
    "common_pb2.Inputs | Mapping[str, literals_pb2.Literal]"
    " | Iterable[tuple[str, literals_pb2.Literal] | common_pb2.NamedLiteral]"
)
"""A task call's inputs, in order: ``Inputs``, a mapping, or ``(name, Literal)`` pairs."""


def _b64_sha256(data: bytes) -> str:
    return base64.b64encode(_sha256(data).digest()).decode("ascii")


def _utf8(value: str, field: str) -> bytes:
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError as exc:
        # Lone surrogates: the SDK cannot encode them either, so no key exists.
        raise InvalidArgumentError(f"{field} is not valid UTF-8: {exc}", field=field) from None


def _named_literals(inputs: object) -> list[tuple[str, Any]]:
    if isinstance(inputs, Inputs):
        return [(named.name, named.value) for named in inputs.literals]
    if isinstance(inputs, Mapping):
        # Protobuf map fields (LiteralMap.literals) iterate in hash order, which is not the
        # inputs' order and may change when the message is parsed again.
        if hasattr(inputs, "GetEntryClass"):
            raise InvalidArgumentError(
                "inputs must not be a protobuf map such as LiteralMap.literals: its order is "
                "undefined; pass (name, Literal) pairs in the interface's input order",
                field="inputs",
            )
        items = list(inputs.items())
    elif isinstance(inputs, Iterable) and not isinstance(inputs, str | bytes | bytearray):
        items = []
        for position, item in enumerate(inputs):
            if isinstance(item, NamedLiteral):
                items.append((item.name, item.value))
            elif isinstance(item, tuple | list) and len(item) == 2:
                items.append((item[0], item[1]))
            else:
                raise InvalidArgumentError(
                    f"inputs[{position}] must be a (name, Literal) pair, not {type(item).__name__}",
                    field="inputs",
                )
    else:
        raise wrong_type(
            "inputs",
            "flyteidl2.task.Inputs, a mapping or a sequence of (name, Literal) pairs",
            inputs,
        )
    for name, literal in items:
        if not isinstance(name, str):
            raise InvalidArgumentError(
                f"inputs names must be strings, found {type(name).__name__}", field="inputs"
            )
        if not isinstance(literal, Literal):
            raise InvalidArgumentError(
                f"inputs[{name!r}] must be a flyteidl2.core.Literal, not {type(literal).__name__}",
                field="inputs",
            )
    return items


def _import_msgpack() -> Any:
    try:
        import msgpack  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        raise InvalidArgumentError(
            "the inputs hold a msgpack-tagged binary literal, which the Flyte SDK key "
            "canonicalizes with msgpack: install msgpack (pip install msgpack)",
            field="inputs",
        ) from None
    return msgpack


def _sort_msgpack_maps(value: Any, pack: Callable[[Any], bytes]) -> Any:
    if isinstance(value, dict):
        ordered = sorted(value, key=pack)
        return {key: _sort_msgpack_maps(value[key], pack) for key in ordered}
    # msgpack's ExtType is a namedtuple, so it lands here too and is re-encoded as a two-item
    # array, as the SDK does; map keys are left as they are.
    if isinstance(value, list | tuple):
        return [_sort_msgpack_maps(item, pack) for item in value]
    return value


def _canonical_msgpack(packed: bytes) -> bytes:
    msgpack = _import_msgpack()
    try:
        decoded = msgpack.unpackb(packed, strict_map_key=False)
        canonical: bytes = msgpack.packb(_sort_msgpack_maps(decoded, msgpack.packb))
    except Exception:
        # The SDK keys undecodable or unencodable payloads (not msgpack, trailing bytes, a list
        # as a map key, nesting past msgpack's limit...) by their bytes as given, whatever failed.
        return packed
    return canonical


def _sdk_literal_repr(literal: Any) -> bytes:
    # A producer's content hash stands for the whole value, at any depth.
    if literal.hash:
        return str(literal.hash).encode("utf-8")
    kind = literal.WhichOneof("value")
    # Children are concatenated without separators or lengths, as the SDK does, so distinct
    # collections can share a representation (["ab", "c"] and ["a", "bc"] by hash).
    if kind == "collection":
        return b"".join([_sdk_literal_repr(child) for child in literal.collection.literals])
    if kind == "map":
        children = literal.map.literals
        return b"".join(
            [_utf8(name, "inputs") + _sdk_literal_repr(children[name]) for name in sorted(children)]
        )
    if (
        kind == "scalar"
        and literal.scalar.WhichOneof("value") == "binary"
        and literal.scalar.binary.tag == _MSGPACK_TAG
    ):
        packed = literal.scalar.binary.value
        canonical = _canonical_msgpack(packed)
        if canonical != packed:
            rewritten = Literal()
            rewritten.CopyFrom(literal)
            rewritten.scalar.binary.value = canonical
            literal = rewritten
    serialized: bytes = literal.SerializeToString(deterministic=True)
    return serialized


def flyte_sdk_inputs_hash(inputs: SdkInputs, ignored_inputs: Iterable[str] = ()) -> str:
    """Return the Flyte 2 SDK's hash of a task's inputs, ``""`` when none are left.

    The SDK's ``generate_filtered_inputs_hash`` (``generate_inputs_hash_from_proto`` when
    nothing is ignored): inputs named in ``ignored_inputs`` are dropped, each remaining one is
    written as ``name:repr;`` in order, and the SHA-256 of the whole is returned in padded
    standard base64. ``repr`` is the literal's ``hash`` when set; for a collection the
    concatenated reprs of its items, for a map those of its entries (``name`` then ``repr``) by
    sorted name; for a msgpack-tagged binary, the literal with its payload re-encoded with map
    keys sorted; otherwise the literal's deterministic protobuf serialization. ``inputs`` takes
    the forms ``flyte_sdk_cache_key`` accepts, and their order matters.
    """
    named = _named_literals(inputs)
    ignored = frozenset(names_of(ignored_inputs, "ignored_inputs"))
    digest = _sha256()
    empty = True
    for name, literal in named:
        if name in ignored:
            continue
        digest.update(_utf8(name, "inputs") + b":" + _sdk_literal_repr(literal) + b";")
        empty = False
    if empty:
        return ""
    return base64.b64encode(digest.digest()).decode("ascii")


def _variable_key(entry: Any) -> str:
    return str(entry.key)


def flyte_sdk_interface_hash(typed_interface: interface_pb2.TypedInterface | None) -> str:
    """Return the Flyte 2 SDK's hash of a task interface, ``""`` for ``None``.

    The SDK's ``generate_interface_hash``: the interface with its input and output variables
    each sorted by name (so, unlike ``signature_hash``, their order does not matter; their
    types and descriptions do), serialized deterministically, SHA-256, padded standard base64.
    """
    if typed_interface is None:
        return ""
    if not isinstance(typed_interface, TypedInterface):
        raise wrong_type(
            "typed_interface", "flyteidl2.core.TypedInterface or None", typed_interface
        )
    ordered = TypedInterface()
    ordered.CopyFrom(typed_interface)
    for variables in (ordered.inputs.variables, ordered.outputs.variables):
        # Sorting a short list would be a no-op, and touching it must not mark the map present.
        if len(variables) > 1:
            variables.sort(key=_variable_key)  # stable, like the SDK's sorted()
    return _b64_sha256(ordered.SerializeToString(deterministic=True))


def flyte_sdk_cache_key(
    task_name: str,
    inputs: SdkInputs,
    typed_interface: interface_pb2.TypedInterface | None,
    cache_version: str,
    ignored_inputs: Iterable[str] = (),
) -> str:
    """Return the cache key the Flyte 2 SDK computes for a task call.

    This is the value the SDK sends as ``TaskAction.Spec.CacheKey`` and the key of its own
    local cache; the Flyte 2 executor passes it to the catalog as the cache version, the
    fourth part of the ``cache_key``. The rule is the Python SDK's
    ``flyte._internal.runtime.convert.generate_cache_key_hash`` (``flyte`` 2.12): SHA-256, in
    padded standard base64, of ``inputs_hash + task_name + interface_hash + cache_version``,
    with the two hashes from ``flyte_sdk_inputs_hash`` and ``flyte_sdk_interface_hash``.

    ``task_name`` is the SDK task's name (``"env_name.function_name"``) and ``cache_version``
    the task's cache version (its ``discovery_version``). ``inputs`` is a
    ``flyteidl2.task.Inputs`` (its ``literals``, in order), a sequence of ``(name, Literal)``
    pairs (or ``NamedLiteral``), or a ``Mapping[str, Literal]`` (in iteration order). Order
    matters: give the inputs in the interface's input order, as the SDK does (a protobuf map
    such as ``LiteralMap.literals`` has no defined order and is refused). ``ignored_inputs``
    names inputs left out of the key. Raises ``InvalidArgumentError``, naming the field, for a
    malformed argument.
    """
    if not isinstance(task_name, str):
        raise wrong_type("task_name", "str", task_name)
    if not isinstance(cache_version, str):
        raise wrong_type("cache_version", "str", cache_version)
    _utf8(task_name, "task_name")
    _utf8(cache_version, "cache_version")
    inputs_hash = flyte_sdk_inputs_hash(inputs, ignored_inputs)
    interface_hash = flyte_sdk_interface_hash(typed_interface)
    return _b64_sha256(f"{inputs_hash}{task_name}{interface_hash}{cache_version}".encode())
