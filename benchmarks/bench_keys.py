"""Cache-key derivation speed for a typical 20-input task.

Run with ``pytest benchmarks/bench_keys.py --benchmark-only``. The baseline is the literal
definition of the key (hashify into a new map, render it with ``MessageToDict``, objecthash the
JSON), measured in the same run so the result reads as a ratio; both produce the same key.
"""

from __future__ import annotations

import base64
from typing import Any

from flyteidl2.core import identifier_pb2, interface_pb2, literals_pb2, types_pb2

from flytecache.keys import (
    CatalogKey,
    cache_key,
    hash_identifier_except_version,
    hashify,
    pbhash,
    signature_hash,
)

Literal = literals_pb2.Literal
Primitive = literals_pb2.Primitive
Scalar = literals_pb2.Scalar


def _primitive(**value: Any) -> Any:
    return Literal(scalar=Scalar(primitive=Primitive(**value)))


def _inputs() -> Any:
    """20 deterministic inputs: ints, floats, strings and one nested collection."""
    literals: dict[str, Any] = {}
    for index in range(19):
        name = f"input_{index:02d}"
        if index % 3 == 0:
            literals[name] = _primitive(integer=index * 1_000_003 - 7)
        elif index % 3 == 1:
            literals[name] = _primitive(float_value=index / 7 + 1e-9)
        else:
            literals[name] = _primitive(string_value=f"s3://bucket/path/{index}/part-0000.parquet")
    nested = Literal(
        collection=literals_pb2.LiteralCollection(
            literals=[
                Literal(
                    collection=literals_pb2.LiteralCollection(
                        literals=[_primitive(integer=row * 10 + col) for col in range(3)]
                    )
                )
                for row in range(3)
            ]
        )
    )
    literals["input_19"] = nested
    return literals_pb2.LiteralMap(literals=literals)


def _interface(names: list[str]) -> Any:
    def variable(literal_type: Any) -> Any:
        return interface_pb2.Variable(type=literal_type)

    scalar = types_pb2.LiteralType(simple=types_pb2.INTEGER)
    entries = [interface_pb2.VariableEntry(key=name, value=variable(scalar)) for name in names]
    outputs = [interface_pb2.VariableEntry(key="o0", value=variable(scalar))]
    return interface_pb2.TypedInterface(
        inputs=interface_pb2.VariableMap(variables=entries),
        outputs=interface_pb2.VariableMap(variables=outputs),
    )


INPUTS = _inputs()
KEY = CatalogKey(
    identifier=identifier_pb2.Identifier(
        resource_type=identifier_pb2.TASK,
        project="flytesnacks",
        domain="development",
        name="workflows.example.train",
        version="v42",
        org="acme",
    ),
    cache_version="1.0",
    typed_interface=_interface(sorted(INPUTS.literals)),
    inputs=INPUTS,
)


def _reference_key(key: CatalogKey) -> str:
    """The key computed straight from the definition, with no shortcut."""
    hashified = literals_pb2.LiteralMap()
    for name, literal in key.inputs.literals.items():  # type: ignore[union-attr]
        hashified.literals[name].CopyFrom(hashify(literal))
    inputs_hash = base64.urlsafe_b64encode(pbhash(hashified)).rstrip(b"=").decode()
    identifier_hash = hash_identifier_except_version(key.identifier)
    return (
        f"{identifier_hash}-{signature_hash(key.typed_interface)}-{inputs_hash}-{key.cache_version}"
    )


def test_cache_key_20_inputs(benchmark: Any) -> None:
    benchmark.extra_info.update(op="cache_key", impl="flytecache", size=0)
    result = benchmark(cache_key, KEY)
    assert result == _reference_key(KEY)


def test_cache_key_20_inputs_baseline_definition(benchmark: Any) -> None:
    benchmark.extra_info.update(op="cache_key", impl="definition", size=0)
    result = benchmark(_reference_key, KEY)
    assert result == cache_key(KEY)
