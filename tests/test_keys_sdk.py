"""Tests for flytecache.keys' Flyte 2 SDK cache key, against the installed SDK itself.

The reference is the SDK's own ``generate_cache_key_hash``, fed the way its controllers feed it
(the inputs hash from ``generate_inputs_hash_from_proto``); the whole file is skipped when the
``flyte`` package is absent.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import sys
from typing import Any

import pytest
from flyteidl2.core import interface_pb2, literals_pb2, types_pb2
from flyteidl2.task import common_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flytecache.errors import InvalidArgumentError
from flytecache.keys import (
    flyte_sdk_cache_key,
    flyte_sdk_inputs_hash,
    flyte_sdk_interface_hash,
)

pytest.importorskip("flyte")

# Imported only once the SDK is known to be present; msgpack comes with it.
import msgpack
from flyte._internal.runtime import convert

Literal = literals_pb2.Literal
Scalar = literals_pb2.Scalar
Primitive = literals_pb2.Primitive


def sdk_cache_key(
    task_name: str,
    named: list[tuple[str, Any]],
    interface: Any,
    version: str,
    ignored: list[str],
) -> str:
    """The SDK's key, computed the way its controllers compute it."""
    proto = inputs_proto(named)
    inputs_hash = convert.generate_inputs_hash_from_proto(proto)
    return str(
        convert.generate_cache_key_hash(task_name, inputs_hash, interface, version, ignored, proto)
    )


def inputs_proto(named: list[tuple[str, Any]]) -> Any:
    return common_pb2.Inputs(
        literals=[common_pb2.NamedLiteral(name=name, value=value) for name, value in named]
    )


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def primitive(**field: Any) -> Any:
    return Literal(scalar=Scalar(primitive=Primitive(**field)))


def integer(value: int) -> Any:
    return primitive(integer=value)


def floating(value: float) -> Any:
    return primitive(float_value=value)


def blob(uri: str, **fields: Any) -> Any:
    return Literal(scalar=Scalar(blob=literals_pb2.Blob(uri=uri)), **fields)


def binary(value: bytes, tag: str = "msgpack") -> Any:
    return Literal(scalar=Scalar(binary=literals_pb2.Binary(value=value, tag=tag)))


def collection(*items: Any, **fields: Any) -> Any:
    return Literal(collection=literals_pb2.LiteralCollection(literals=list(items)), **fields)


def mapping(items: dict[str, Any], **fields: Any) -> Any:
    return Literal(map=literals_pb2.LiteralMap(literals=items), **fields)


def variables(*entries: tuple[str, int, str]) -> Any:
    return interface_pb2.VariableMap(
        variables=[
            interface_pb2.VariableEntry(
                key=name,
                value=interface_pb2.Variable(
                    type=types_pb2.LiteralType(simple=simple), description=description
                ),
            )
            for name, simple, description in entries
        ]
    )


def interface(inputs: list[str], outputs: list[str]) -> Any:
    return interface_pb2.TypedInterface(
        inputs=variables(*[(name, types_pb2.INTEGER, "") for name in inputs]),
        outputs=variables(*[(name, types_pb2.INTEGER, "") for name in outputs]),
    )


ADD = interface(["x", "y"], ["o0"])

# --- strategies -----------------------------------------------------------------------------

names = st.text(max_size=6)
content_hashes = st.none() | st.none() | st.none() | st.text(min_size=1, max_size=6)
special_floats = st.sampled_from([0.0, -0.0, math.nan, -math.nan, math.inf, -math.inf, 5e-324])


def shuffled_dicts(keys: Any, values: Any) -> Any:
    """Dicts whose keys are inserted in the (random) order drawn, which msgpack keeps."""
    return st.lists(st.tuples(keys, values), max_size=5, unique_by=lambda item: item[0]).map(dict)


msgpack_leaves = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=5)
    | st.binary(max_size=5)
    | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=3))
)
msgpack_values = st.recursive(
    msgpack_leaves,
    lambda children: (
        st.lists(children, max_size=4)
        | shuffled_dicts(st.text(max_size=4) | st.integers(-3, 3), children)
    ),
    max_leaves=8,
)
msgpack_payloads = (
    shuffled_dicts(st.text(max_size=4), msgpack_values).map(msgpack.packb)
    | msgpack_values.map(msgpack.packb)
    | st.binary(max_size=12)  # mostly not msgpack, or with trailing bytes: kept as they are
)

scalars = st.one_of(
    st.integers(-(2**63), 2**63 - 1).map(integer),
    (st.floats() | special_floats).map(floating),
    st.text(max_size=8).map(lambda value: primitive(string_value=value)),
    st.booleans().map(lambda value: primitive(boolean=value)),
    st.builds(lambda: Literal(scalar=Scalar(none_type=literals_pb2.Void()))),
    st.builds(blob, st.text(max_size=5).map(lambda path: f"s3://bucket/{path}")),
    st.builds(binary, msgpack_payloads),
    st.builds(binary, msgpack_payloads, st.sampled_from(["", "json", "msgpack2"])),
)


def decorate(literal: Any, content_hash: str | None, metadata: dict[str, str]) -> Any:
    if content_hash is not None:
        literal.hash = content_hash
    for key, value in metadata.items():
        literal.metadata[key] = value
    return literal


def decorated(literals: Any) -> Any:
    """``literals`` with maybe a content hash and some metadata, at whatever level they sit."""
    metadata = st.dictionaries(st.text(max_size=3), st.text(max_size=3), max_size=2)
    return st.builds(decorate, literals, content_hashes, metadata)


literals = st.recursive(
    decorated(scalars),
    lambda children: decorated(
        st.lists(children, max_size=4).map(lambda items: collection(*items))
        | shuffled_dicts(names, children).map(mapping)
    ),
    max_leaves=6,
)

simple_types = st.sampled_from(
    [types_pb2.INTEGER, types_pb2.FLOAT, types_pb2.STRING, types_pb2.BOOLEAN]
)
variable_maps = st.lists(
    st.tuples(names, simple_types, st.text(max_size=6)), min_size=1, max_size=5
).map(lambda entries: variables(*entries))
typed_interfaces = st.builds(
    interface_pb2.TypedInterface,
    inputs=variable_maps | st.none(),
    outputs=variable_maps | st.none(),
)
interfaces = typed_interfaces | st.none()


@st.composite
def calls(draw: Any) -> tuple[str, list[tuple[str, Any]], Any, str, list[str]]:
    # The small parts first: hypothesis simplifies whatever is drawn once its budget runs out.
    task_name, typed_interface, version = draw(names), draw(interfaces), draw(names)
    ignored = draw(st.lists(names, max_size=2))
    named = draw(st.lists(st.tuples(names, literals), max_size=5))
    present = [name for name, _ in named]
    ignored += draw(st.lists(st.sampled_from(present), max_size=3)) if present else []
    return task_name, named, typed_interface, version, ignored


# --- against the SDK ------------------------------------------------------------------------


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(calls())
def test_matches_the_sdk(call: tuple[str, list[tuple[str, Any]], Any, str, list[str]]) -> None:
    task_name, named, typed_interface, version, ignored = call
    expected = sdk_cache_key(task_name, named, typed_interface, version, ignored)
    proto = inputs_proto(named)

    assert flyte_sdk_cache_key(task_name, proto, typed_interface, version, ignored) == expected
    assert flyte_sdk_cache_key(task_name, named, typed_interface, version, ignored) == expected
    if len({name for name, _ in named}) == len(named):
        assert (
            flyte_sdk_cache_key(task_name, dict(named), typed_interface, version, ignored)
            == expected
        )
    assert flyte_sdk_inputs_hash(proto, ignored) == convert.generate_filtered_inputs_hash(
        proto, ignored
    )
    assert flyte_sdk_interface_hash(typed_interface) == (
        convert.generate_interface_hash(typed_interface)
    )


def test_matches_a_real_sdk_task() -> None:
    import flyte
    from flyte._internal.runtime.types_serde import transform_native_to_typed_interface

    env = flyte.TaskEnvironment("flytecache_tests")

    @env.task
    async def summarize(x: int, options: dict, tags: list[str], verbose: bool = False) -> int:
        return x

    converted = asyncio.run(
        convert.convert_from_native_to_inputs(
            summarize.native_interface, 3, {"b": {"y": 1, "x": 2}, "a": 1.5}, ["é", "中"]
        )
    )
    proto = converted.proto_inputs
    typed_interface = transform_native_to_typed_interface(summarize.interface)
    for ignored in ([], ["verbose"]):
        expected = convert.generate_cache_key_hash(
            summarize.name,
            convert.generate_inputs_hash_from_proto(proto),
            typed_interface,
            "v7",
            ignored,
            proto,
        )
        key = flyte_sdk_cache_key(summarize.name, proto, typed_interface, "v7", ignored)
        assert key == expected
    # The dict input is msgpack; its key order does not matter.
    reordered = asyncio.run(
        convert.convert_from_native_to_inputs(
            summarize.native_interface, 3, {"a": 1.5, "b": {"x": 2, "y": 1}}, ["é", "中"]
        )
    )
    assert flyte_sdk_cache_key(
        summarize.name, reordered.proto_inputs, typed_interface, "v7"
    ) == flyte_sdk_cache_key(summarize.name, proto, typed_interface, "v7")


# --- fixed examples -------------------------------------------------------------------------


def test_no_inputs_no_interface_vector() -> None:
    # Both hashes are empty, so the key is the hash of the name and the version alone.
    assert flyte_sdk_cache_key("env.task", [], None, "v1") == b64_sha256(b"env.taskv1")
    assert sdk_cache_key("env.task", [], None, "v1", []) == b64_sha256(b"env.taskv1")


def test_known_vector() -> None:
    named = [("x", integer(1)), ("y", integer(2))]
    inputs_hash = b64_sha256(
        b"x:" + named[0][1].SerializeToString() + b";y:" + named[1][1].SerializeToString() + b";"
    )
    interface_hash = b64_sha256(ADD.SerializeToString(deterministic=True))
    expected = b64_sha256(f"{inputs_hash}my_env.add{interface_hash}1.0".encode())
    assert flyte_sdk_inputs_hash(named) == inputs_hash
    assert flyte_sdk_interface_hash(ADD) == interface_hash
    assert flyte_sdk_cache_key("my_env.add", named, ADD, "1.0") == expected
    assert expected == "QlYfRdST1bxNR4dHXpKho29TKHuW+9X2a4np5Q3lFkY="
    assert sdk_cache_key("my_env.add", named, ADD, "1.0", []) == expected


def test_forms_agree() -> None:
    named = [("y", integer(2)), ("x", collection(integer(1), blob("s3://b/k"))), ("z", blob("u"))]
    as_pairs = flyte_sdk_cache_key("t", named, ADD, "1", ["z"])
    as_lists = flyte_sdk_cache_key("t", [list(pair) for pair in named], ADD, "1", ["z"])
    as_mapping = flyte_sdk_cache_key("t", dict(named), ADD, "1", ("z",))
    as_proto = flyte_sdk_cache_key("t", inputs_proto(named), ADD, "1", {"z"})
    as_named = flyte_sdk_cache_key("t", inputs_proto(named).literals, ADD, "1", ["z"])
    as_generator = flyte_sdk_cache_key("t", iter(named), ADD, "1", iter(["z"]))
    assert as_pairs == as_lists == as_mapping == as_proto == as_named == as_generator
    assert as_pairs == sdk_cache_key("t", named, ADD, "1", ["z"])


def test_input_order_matters() -> None:
    forward = [("x", integer(1)), ("y", integer(2))]
    assert flyte_sdk_cache_key("t", forward, ADD, "1") != flyte_sdk_cache_key(
        "t", forward[::-1], ADD, "1"
    )


def test_interface_variable_order_does_not_matter_but_descriptions_do() -> None:
    shuffled = interface(["y", "x"], ["o0"])
    described = interface_pb2.TypedInterface()
    described.CopyFrom(ADD)
    described.inputs.variables[0].value.description = "the first addend"
    assert flyte_sdk_interface_hash(shuffled) == flyte_sdk_interface_hash(ADD)
    assert flyte_sdk_interface_hash(described) != flyte_sdk_interface_hash(ADD)
    assert flyte_sdk_interface_hash(None) == ""
    assert flyte_sdk_interface_hash(interface_pb2.TypedInterface()) == b64_sha256(b"")
    # Sorting leaves a missing map missing: {} and an absent map serialize differently.
    present = interface_pb2.TypedInterface(inputs=interface_pb2.VariableMap())
    assert flyte_sdk_interface_hash(present) == convert.generate_interface_hash(present)
    assert flyte_sdk_interface_hash(present) != b64_sha256(b"")


def test_ignoring_every_input_is_having_none() -> None:
    named = [("x", integer(1)), ("y", integer(2))]
    assert flyte_sdk_inputs_hash(named, ["x", "y", "absent"]) == ""
    assert flyte_sdk_cache_key("t", named, ADD, "1", ["y", "x"]) == flyte_sdk_cache_key(
        "t", [], ADD, "1"
    )
    assert flyte_sdk_cache_key("t", named, ADD, "1", ["absent"]) == flyte_sdk_cache_key(
        "t", named, ADD, "1"
    )


def test_content_hash_replaces_the_value_at_any_depth() -> None:
    first = collection(integer(1), blob("s3://run-1/df", hash="h1"))
    second = collection(integer(1), blob("s3://run-2/df", hash="h1"))
    assert flyte_sdk_inputs_hash([("a", first)]) == flyte_sdk_inputs_hash([("a", second)])
    first_map = mapping({"df": blob("s3://run-1/df", hash="h1")})
    second_map = mapping({"df": blob("s3://run-2/df", hash="h1")})
    assert flyte_sdk_inputs_hash([("a", first_map)]) == flyte_sdk_inputs_hash([("a", second_map)])
    unhashed = [("a", collection(integer(1), blob("s3://run-1/df")))]
    assert flyte_sdk_inputs_hash(unhashed) != flyte_sdk_inputs_hash([("a", first)])


def test_sdk_quirks_are_reproduced() -> None:
    def same(left: Any, right: Any) -> bool:
        ours = flyte_sdk_inputs_hash([("a", left)]) == flyte_sdk_inputs_hash([("a", right)])
        theirs = convert.generate_inputs_hash_from_proto(
            inputs_proto([("a", left)])
        ) == convert.generate_inputs_hash_from_proto(inputs_proto([("a", right)]))
        assert ours == theirs
        return ours

    # Items are concatenated unframed, so these collide; so do all empty containers.
    assert same(
        collection(Literal(hash="ab"), Literal(hash="c")),
        collection(Literal(hash="a"), Literal(hash="bc")),
    )
    assert same(collection(), mapping({}))
    assert same(mapping({"k": Literal(hash="v")}), collection(Literal(hash="kv")))
    # A collection's own metadata is dropped; a scalar's is kept.
    assert same(collection(integer(1)), collection(integer(1), metadata={"m": "1"}))
    assert not same(integer(1), Literal(scalar=integer(1).scalar, metadata={"m": "1"}))
    # Floats are compared by their bits.
    assert not same(floating(0.0), floating(-0.0))


def test_msgpack_map_order_is_canonical() -> None:
    forward = msgpack.packb({"a": 1, "b": {"c": [1, {"e": 2, "d": 3}]}})
    backward = msgpack.packb({"b": {"c": [1, {"d": 3, "e": 2}]}, "a": 1})
    assert forward != backward
    assert flyte_sdk_inputs_hash([("d", binary(forward))]) == flyte_sdk_inputs_hash(
        [("d", binary(backward))]
    )
    # Only the msgpack tag is canonicalized.
    assert flyte_sdk_inputs_hash([("d", binary(forward, "json"))]) != flyte_sdk_inputs_hash(
        [("d", binary(backward, "json"))]
    )
    # An extension value inside is re-encoded as a two-item array, as the SDK does.
    extension = binary(msgpack.packb({"b": [msgpack.ExtType(1, b"x")], "a": 1}))
    as_array = binary(msgpack.packb({"a": 1, "b": [[1, b"x"]]}))
    assert flyte_sdk_inputs_hash([("d", extension)]) == flyte_sdk_inputs_hash([("d", as_array)])
    assert flyte_sdk_inputs_hash([("d", extension)]) == convert.generate_inputs_hash_from_proto(
        inputs_proto([("d", extension)])
    )
    # Payloads that do not decode are hashed as they are.
    for payload in (b"\xc1", forward + b"\x00", forward[:-1], msgpack.packb({(1,): 2})):
        assert flyte_sdk_inputs_hash([("d", binary(payload))]) == b64_sha256(
            b"d:" + binary(payload).SerializeToString(deterministic=True) + b";"
        )


def test_missing_msgpack_is_an_invalid_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "msgpack", None)
    with pytest.raises(InvalidArgumentError, match="install msgpack") as info:
        flyte_sdk_cache_key("t", {"d": binary(msgpack.packb({}))}, None, "1")
    assert info.value.fields == {"field": "inputs"}
    # Without a msgpack-tagged literal, msgpack is never needed.
    assert flyte_sdk_cache_key("t", {"x": integer(1)}, None, "1")


# --- argument errors ------------------------------------------------------------------------

GOOD: dict[str, Any] = {
    "task_name": "t",
    "inputs": [("x", integer(1))],
    "typed_interface": ADD,
    "cache_version": "1",
    "ignored_inputs": (),
}


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"task_name": 1}, "task_name"),
        ({"task_name": None}, "task_name"),
        ({"task_name": "\ud800"}, "task_name"),
        ({"cache_version": 1.0}, "cache_version"),
        ({"cache_version": "\udfff"}, "cache_version"),
        ({"typed_interface": "x"}, "typed_interface"),
        ({"typed_interface": interface_pb2.VariableMap()}, "typed_interface"),
        ({"inputs": None}, "inputs"),
        ({"inputs": 5}, "inputs"),
        ({"inputs": "xy"}, "inputs"),
        ({"inputs": b"xy"}, "inputs"),
        ({"inputs": literals_pb2.LiteralMap(literals={"x": integer(1)})}, "inputs"),
        ({"inputs": literals_pb2.LiteralMap(literals={"x": integer(1)}).literals}, "inputs"),
        ({"inputs": [("x",)]}, "inputs"),
        ({"inputs": [("x", integer(1), "extra")]}, "inputs"),
        ({"inputs": [integer(1)]}, "inputs"),
        ({"inputs": [(1, integer(1))]}, "inputs"),
        ({"inputs": [("x", 1)]}, "inputs"),
        ({"inputs": {"x": "1"}}, "inputs"),
        ({"inputs": {"\ud800": integer(1)}}, "inputs"),
        ({"ignored_inputs": "x"}, "ignored_inputs"),
        ({"ignored_inputs": [1]}, "ignored_inputs"),
        ({"ignored_inputs": None}, "ignored_inputs"),
    ],
)
def test_bad_arguments_name_the_field(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field) as info:
        flyte_sdk_cache_key(**{**GOOD, **overrides})
    assert info.value.code == "INVALID_ARGUMENT"
    assert info.value.fields == {"field": field}
