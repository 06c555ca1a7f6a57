"""Tests for flytecache.keys: Flyte-compatible cache keys.

The reference for every literal-map property is the SPEC's literal definition, computed the slow
way: ``hashify`` each literal into a new ``LiteralMap`` and ``pbhash`` it (``MessageToDict`` then
objecthash). The module's shortcut must agree with it on arbitrary literals.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from flyteidl2.core import (
    artifact_id_pb2,
    identifier_pb2,
    interface_pb2,
    literals_pb2,
    types_pb2,
)
from google.protobuf import duration_pb2, struct_pb2, timestamp_pb2
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from flytecache.errors import InvalidArgumentError
from flytecache.keys import (
    CatalogKey,
    cache_key,
    catalog,
    hash_identifier_except_version,
    hash_literal_map,
    hashify,
    normalize_float,
    objecthash,
    pbhash,
    signature_hash,
)

Literal = literals_pb2.Literal
LiteralMap = literals_pb2.LiteralMap
LiteralCollection = literals_pb2.LiteralCollection

EMPTY_MAP_HASH = "GKw-c0PwFokMUQ6T-TUmEWnZ4_VlQ2Qpgw-vCTT0-OQ"
ONE_TWO_HASH = "GQid5LjHbakcW68DS3P2jp80QLbiF0olFHF2hTh5bg8"
IDENTIFIER_HASH = "+UmrGhEwHv3FesdpA4gliBluF3FUXz4tshmuOlw1FSk="


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def b64url(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def integer(value: int) -> Any:
    return Literal(scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(integer=value)))


def floating(value: float) -> Any:
    return Literal(scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(float_value=value)))


def string(value: str) -> Any:
    return Literal(scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(string_value=value)))


def collection(*items: Any, **fields: Any) -> Any:
    return Literal(collection=LiteralCollection(literals=list(items)), **fields)


def mapping(items: dict[str, Any], **fields: Any) -> Any:
    return Literal(map=LiteralMap(literals=items), **fields)


def literal_map(items: list[tuple[str, Any]]) -> Any:
    built = LiteralMap()
    for name, literal in items:
        built.literals[name].CopyFrom(literal)
    return built


def reference_hash(literals: Any | None, ignore: tuple[str, ...] = ()) -> str:
    """The SPEC's inputs hash computed the slow way: hashify into a new map, then pbhash it."""
    hashified = LiteralMap()
    if literals is not None:
        for name, literal in literals.literals.items():
            if name not in ignore:
                hashified.literals[name].CopyFrom(hashify(literal))
    return b64url(pbhash(hashified))


def variables(*names: str) -> Any:
    return interface_pb2.VariableMap(
        variables=[
            interface_pb2.VariableEntry(
                key=name,
                value=interface_pb2.Variable(
                    type=types_pb2.LiteralType(simple=types_pb2.INTEGER), description=name
                ),
            )
            for name in names
        ]
    )


def identifier(version: str = "v1", **fields: Any) -> Any:
    defaults = {"project": "project_1", "domain": "domain_1", "name": "name_1", "org": "org_1"}
    return identifier_pb2.Identifier(version=version, **{**defaults, **fields})


def catalog_key(**overrides: Any) -> CatalogKey:
    fields: dict[str, Any] = {
        "identifier": identifier(),
        "cache_version": "1.0",
        "typed_interface": interface_pb2.TypedInterface(
            inputs=variables("a", "b"), outputs=variables("o0")
        ),
        "inputs": literal_map([("a", integer(1)), ("b", string("x"))]),
    }
    fields.update(overrides)
    return CatalogKey(**fields)


# --- known vectors (SPEC §5.2) --------------------------------------------------------------


def test_empty_literal_map_vector() -> None:
    assert hash_literal_map(LiteralMap()) == EMPTY_MAP_HASH
    assert hash_literal_map(None) == EMPTY_MAP_HASH


@pytest.mark.parametrize("order", [["1", "2"], ["2", "1"]])
def test_two_integers_vector(order: list[str]) -> None:
    values = {"1": integer(1), "2": integer(2)}
    assert hash_literal_map(literal_map([(name, values[name]) for name in order])) == ONE_TWO_HASH


def test_ignored_input_vector() -> None:
    inputs = literal_map([("3", integer(3)), ("1", integer(1)), ("2", integer(2))])
    assert hash_literal_map(inputs, ignore=["3"]) == ONE_TWO_HASH


@pytest.mark.parametrize("version", ["", "v1", "abc123", "a-very-long-version-string"])
def test_identifier_vector(version: str) -> None:
    assert hash_identifier_except_version(identifier(version)) == IDENTIFIER_HASH


def test_empty_variable_map_prefix() -> None:
    empty = "GKw-c0Pw"
    assert EMPTY_MAP_HASH.startswith(empty)
    assert signature_hash(interface_pb2.TypedInterface()) == f"{empty}-{empty}"
    present_but_empty = interface_pb2.TypedInterface(
        inputs=interface_pb2.VariableMap(), outputs=interface_pb2.VariableMap()
    )
    assert signature_hash(present_but_empty) == f"{empty}-{empty}"


def test_cache_key_format() -> None:
    key = catalog_key()
    expected = "-".join(
        [
            IDENTIFIER_HASH,
            signature_hash(key.typed_interface),
            hash_literal_map(key.inputs),  # type: ignore[arg-type]
            "1.0",
        ]
    )
    assert cache_key(key) == expected


# --- objecthash -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, sha256(b"n")),
        (True, sha256(b"b1")),
        (False, sha256(b"b0")),
        ("", sha256(b"u")),
        ("foo", sha256(b"ufoo")),
        ("\u00e9\u4e2d", sha256(b"u" + "\u00e9\u4e2d".encode())),
        ([], sha256(b"l")),
        ({}, sha256(b"d")),
        (0, sha256(b"f+0:")),
        (-0.0, sha256(b"f+0:")),
        (1, sha256(b"f+0:1")),
        (1.0, sha256(b"f+0:1")),
        (2, sha256(b"f+1:1")),
        (3, sha256(b"f+2:011")),
        (0.5, sha256(b"f+-1:1")),
        (1.5, sha256(b"f+1:011")),
        (-0.75, sha256(b"f-0:011")),
        (float("inf"), sha256(b"fInfinity")),
        (float("-inf"), sha256(b"f-Infinity")),
        (float("nan"), sha256(b"fNaN")),
        (["foo"], sha256(b"l" + sha256(b"ufoo"))),
        (["foo", 1], sha256(b"l" + sha256(b"ufoo") + sha256(b"f+0:1"))),
        ({"a": 1}, sha256(b"d" + sha256(b"ua") + sha256(b"f+0:1"))),
        (
            {"b": None, "a": True},
            sha256(
                b"d"
                + b"".join(sorted([sha256(b"ub") + sha256(b"n"), sha256(b"ua") + sha256(b"b1")]))
            ),
        ),
    ],
)
def test_objecthash_hand_computed(value: Any, expected: bytes) -> None:
    assert objecthash(value) == expected


@pytest.mark.parametrize(
    ("json_text", "expected_hex"),
    [
        # The golden vectors of Go objecthash's common_json.test (and its Go examples).
        ("[]", "acac86c0e609ca906f632b0e2dacccb2b77d22b0621f20ebece1a4835b93f6f0"),
        ('["foo"]', "268bc27d4974d9d576222e4cdbb8f7c6bd6791894098645a19eeca9c102d0964"),
        ('["foo", "bar"]', "32ae896c413cfdc79eec68be9139c86ded8b279238467c216cf2bec4d5f1e4a2"),
        ("{}", "18ac3e7343f016890c510e93f935261169d9e3f565436429830faf0934f4f8e4"),
        ('{"foo": "bar"}', "7ef5237c3027d6c58100afadf37796b3d351025cf28038280147d42fdc53b960"),
        (
            '{"foo": ["bar", "baz"], "qux": ["norf"]}',
            "f1a9389f27558538a064f3cc250f8686a0cebb85f1cab7f4d4dcc416ceda3c92",
        ),
        ("true", "7dc96f776c8423e57a2785489a3f9c43fb6e756876d6ad9a9cac4aa4e72ec193"),
        ("false", "c02c0b965e023abee808f2b548d8d5193a8b5229be6f3121a6f16e2d41a449b3"),
        (
            '["foo", {"bar": ["baz", null, 1.0, 1.5, 0.0001, 1000.0, 2.0, -23.1234, 2.0]}]',
            "783a423b094307bcb28d005bc2f026ff44204442ef3513585e7e73b66e3c2213",
        ),
        (
            '["foo", {"bar": ["baz", null, 1, 1.5, 0.0001, 1000, 2, -23.1234, 2]}]',
            "783a423b094307bcb28d005bc2f026ff44204442ef3513585e7e73b66e3c2213",
        ),
        (
            '["foo", {"b4r": ["baz", null, 1, 1.5, 0.0001, 1000, 2, -23.1234, 2]}]',
            "7e01f8b45da35386e4f9531ff1678147a215b8d2b1d047e690fd9ade6151e431",
        ),
        (
            '{"k1": "v1", "k2": "v2", "k3": "v3"}',
            "ddd65f1f7568269a30df7cafc26044537dc2f02a1a0d830da61762fc3e687057",
        ),
        (
            '{"k2": "v2", "k1": "v1", "k3": "v3"}',
            "ddd65f1f7568269a30df7cafc26044537dc2f02a1a0d830da61762fc3e687057",
        ),
    ],
)
def test_objecthash_golden_vectors(json_text: str, expected_hex: str) -> None:
    assert objecthash(json.loads(json_text)).hex() == expected_hex


@pytest.mark.parametrize("value", [b"bytes", object(), {1: "non-string key"}, 10**400])
def test_objecthash_rejects_non_json(value: Any) -> None:
    with pytest.raises(InvalidArgumentError):
        objecthash(value)


# --- float normalization against independent exact computations -----------------------------


def normalize_by_fraction(value: float) -> str:
    """Go's floatNormalize loop run on exact rationals, so no step can round."""
    if value == 0:
        return "+0:"
    sign = "-" if value < 0 else "+"
    f = abs(Fraction(value))
    exponent = 0
    while f > 1:
        f /= 2
        exponent += 1
    while f <= Fraction(1, 2):
        f *= 2
        exponent -= 1
    out = f"{sign}{exponent}:"
    while f != 0:
        if f >= 1:
            out += "1"
            f -= 1
        else:
            out += "0"
        f *= 2
    return out


def normalize_by_hex(value: float) -> str:
    """The same text read straight off float.hex(): significand digits and binary exponent."""
    if value == 0:
        return "+0:"
    match = re.fullmatch(r"(-?)0x([01])\.([0-9a-f]+)p([+-]\d+)", value.hex())
    assert match is not None
    sign = "-" if match[1] else "+"
    fraction_digits = match[3]
    significand = int(match[2] + fraction_digits, 16)  # value = significand * 2**scale
    scale = int(match[4]) - 4 * len(fraction_digits)
    width = significand.bit_length()
    exponent = scale + width  # value = (significand / 2**width) * 2**exponent, m in [0.5, 1)
    if significand == 1 << (width - 1):
        return f"{sign}{exponent - 1}:1"  # m == 0.5 becomes m == 1 one exponent lower
    return f"{sign}{exponent}:0{format(significand, 'b').rstrip('0')}"


SPECIAL_FLOATS = [
    5e-324,  # smallest subnormal
    2.225073858507201e-308,  # largest subnormal
    2.2250738585072014e-308,  # smallest normal
    1.7976931348623157e308,  # largest finite
    0.1,
    1 / 3,
    -23.1234,
    2.0**-1074 * 3,
    2.0**1023,
    -(2.0**-1022),
    1.0000000000000002,
    0.9999999999999999,
]


@settings(max_examples=600, deadline=None)  # exact Decimal arithmetic; slow under load
@given(st.floats(allow_nan=False, allow_infinity=False))
@example(0.0)
@example(-0.0)
def test_normalize_float_matches_exact_references(value: float) -> None:
    expected = normalize_by_fraction(value)
    assert normalize_float(value) == expected
    assert normalize_by_hex(value) == expected
    assert objecthash(value) == sha256(b"f" + expected.encode())


@pytest.mark.parametrize("value", SPECIAL_FLOATS + [-v for v in SPECIAL_FLOATS])
def test_normalize_float_edge_values(value: float) -> None:
    assert normalize_float(value) == normalize_by_fraction(value) == normalize_by_hex(value)


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_normalize_float_on_raw_bit_patterns(bits: int) -> None:
    value = struct.unpack("<d", struct.pack("<Q", bits))[0]
    if math.isnan(value):
        assert normalize_float(value) == "NaN"
    elif math.isinf(value):
        assert normalize_float(value) == ("Infinity" if value > 0 else "-Infinity")
    else:
        assert normalize_float(value) == normalize_by_fraction(value)


def test_normalize_float_zero_and_specials() -> None:
    assert normalize_float(0.0) == "+0:"
    assert normalize_float(-0.0) == "+0:"
    assert normalize_float(math.inf) == "Infinity"
    assert normalize_float(-math.inf) == "-Infinity"
    assert normalize_float(math.nan) == "NaN"


@given(st.integers(min_value=-(2**60), max_value=2**60))
def test_integers_hash_as_floats(value: int) -> None:
    assert objecthash(value) == objecthash(float(value))


# --- hashify --------------------------------------------------------------------------------


def test_hashify_replaces_hashed_literal_by_its_hash() -> None:
    literal = collection(integer(1), metadata={"k": "v"}, hash="abc")
    assert hashify(literal) == Literal(hash="abc")


def test_hashify_rebuilds_containers_and_drops_their_metadata() -> None:
    scalar_with_metadata = Literal(
        scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(integer=7)),
        metadata={"kept": "yes"},
    )
    literal = collection(
        mapping(
            {"hashed": Literal(scalar=integer(5).scalar, hash="h1"), "plain": scalar_with_metadata}
        ),
        collection(floating(1.5), metadata={"inner": "dropped"}),
        metadata={"outer": "dropped"},
    )
    expected = collection(
        mapping({"hashed": Literal(hash="h1"), "plain": scalar_with_metadata}),
        collection(floating(1.5)),
    )
    assert hashify(literal) == expected


def test_hashify_returns_other_literals_unchanged() -> None:
    literal = Literal(
        scalar=literals_pb2.Scalar(
            blob=literals_pb2.Blob(uri="s3://bucket/key", metadata=literals_pb2.BlobMetadata())
        ),
        metadata={"m": "1"},
    )
    assert hashify(literal) is literal


# --- arbitrary literals: the shortcut equals the SPEC's slow definition ---------------------

names = st.text(min_size=0, max_size=6)
short_text = st.text(max_size=12)
json_scalars = (
    st.none() | st.booleans() | short_text | st.floats(allow_nan=False, allow_infinity=False)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(short_text, children, max_size=3)
    ),
    max_leaves=6,
)


def build_struct(values: dict[str, Any]) -> Any:
    generic = struct_pb2.Struct()
    generic.update(values)
    return generic


primitives = st.one_of(
    st.integers(min_value=-(2**63), max_value=2**63 - 1).map(
        lambda v: literals_pb2.Primitive(integer=v)
    ),
    st.floats().map(lambda v: literals_pb2.Primitive(float_value=v)),
    short_text.map(lambda v: literals_pb2.Primitive(string_value=v)),
    st.booleans().map(lambda v: literals_pb2.Primitive(boolean=v)),
    st.builds(
        lambda s, n: literals_pb2.Primitive(datetime=timestamp_pb2.Timestamp(seconds=s, nanos=n)),
        st.integers(min_value=0, max_value=2**33),
        st.integers(min_value=0, max_value=999_999_999),
    ),
    st.builds(
        lambda s, n: literals_pb2.Primitive(duration=duration_pb2.Duration(seconds=s, nanos=n)),
        st.integers(min_value=0, max_value=10**9),
        st.integers(min_value=0, max_value=999_999_999),
    ),
)

scalars = st.one_of(
    primitives.map(lambda p: literals_pb2.Scalar(primitive=p)),
    st.builds(
        lambda uri, fmt: literals_pb2.Scalar(
            blob=literals_pb2.Blob(
                uri=uri,
                metadata=literals_pb2.BlobMetadata(
                    type=types_pb2.BlobType(format=fmt, dimensionality=types_pb2.BlobType.MULTIPART)
                ),
            )
        ),
        short_text,
        short_text,
    ),
    st.builds(
        lambda value, tag: literals_pb2.Scalar(binary=literals_pb2.Binary(value=value, tag=tag)),
        st.binary(max_size=8),
        st.sampled_from(["", "msgpack"]),
    ),
    st.just(literals_pb2.Scalar(none_type=literals_pb2.Void())),
    st.dictionaries(short_text, json_values, max_size=3).map(
        lambda d: literals_pb2.Scalar(generic=build_struct(d))
    ),
)

leaf_values = st.one_of(
    scalars.map(lambda s: Literal(scalar=s)),
    st.builds(
        lambda uri, size: Literal(
            offloaded_metadata=literals_pb2.LiteralOffloadedMetadata(uri=uri, size_bytes=size)
        ),
        short_text,
        st.integers(min_value=0, max_value=2**64 - 1),
    ),
    st.just(Literal()),
)


@st.composite
def decorated(draw: st.DrawFn, base: st.SearchStrategy[Any]) -> Any:
    literal = Literal()
    literal.CopyFrom(draw(base))
    if draw(st.booleans()):
        literal.metadata.update(draw(st.dictionaries(short_text, short_text, max_size=2)))
    if draw(st.integers(min_value=0, max_value=4)) == 0:
        literal.artifact_id.CopyFrom(
            artifact_id_pb2.ArtifactVersionId(
                key=artifact_id_pb2.ArtifactKey(project="p", name=draw(short_text)), version="v"
            )
        )
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        literal.hash = draw(short_text)
    return literal


literals = st.recursive(
    decorated(leaf_values),
    lambda children: decorated(
        st.lists(children, max_size=3).map(lambda items: collection(*items))
        | st.dictionaries(names, children, max_size=3).map(mapping)
    ),
    max_leaves=10,
)
literal_items = st.lists(st.tuples(names, literals), max_size=5, unique_by=lambda item: item[0])

property_settings = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@property_settings
@given(literal_items, st.lists(names, max_size=3))
def test_shortcut_equals_spec_definition(items: list[tuple[str, Any]], ignore: list[str]) -> None:
    inputs = literal_map(items)
    assert hash_literal_map(inputs, ignore) == reference_hash(inputs, tuple(ignore))


@property_settings
@given(literal_items, st.randoms(use_true_random=False))
def test_insertion_order_never_changes_the_hash(items: list[tuple[str, Any]], rnd: Any) -> None:
    shuffled = list(items)
    rnd.shuffle(shuffled)
    assert hash_literal_map(literal_map(items)) == hash_literal_map(literal_map(shuffled))


@property_settings
@given(literal_items, st.data())
def test_ignoring_a_name_equals_removing_it(items: list[tuple[str, Any]], data: Any) -> None:
    ignored = data.draw(st.sets(st.sampled_from([n for n, _ in items] + ["absent"])))
    kept = [(name, literal) for name, literal in items if name not in ignored]
    assert hash_literal_map(literal_map(items), ignore=ignored) == hash_literal_map(
        literal_map(kept)
    )


@property_settings
@given(literals, literals, st.text(min_size=1, max_size=10), literals)
def test_hashed_literal_hashes_the_same_whatever_its_value(
    first: Any, second: Any, producer_hash: str, sibling: Any
) -> None:
    a, b = Literal(), Literal()
    a.CopyFrom(first)
    b.CopyFrom(second)
    a.hash = b.hash = producer_hash

    def top(literal: Any) -> Any:
        return literal_map([("x", literal), ("y", sibling)])

    def in_collection(literal: Any) -> Any:
        return literal_map([("x", collection(sibling, literal))])

    def in_map(literal: Any) -> Any:
        return literal_map([("x", mapping({"deep": collection(mapping({"k": literal}))}))])

    for wrap in (top, in_collection, in_map):
        assert hash_literal_map(wrap(a)) == hash_literal_map(wrap(b))
        assert hash_literal_map(wrap(a)) == hash_literal_map(wrap(Literal(hash=producer_hash)))


def test_hash_distinguishes_different_producer_hashes() -> None:
    assert hash_literal_map(literal_map([("x", Literal(hash="a"))])) != hash_literal_map(
        literal_map([("x", Literal(hash="b"))])
    )


def test_shortcut_handles_non_finite_floats_like_json_format() -> None:
    for value in (math.nan, math.inf, -math.inf, -0.0, 5e-324):
        inputs = literal_map([("f", floating(value))])
        assert hash_literal_map(inputs) == reference_hash(inputs)


def test_empty_containers_match_reference() -> None:
    inputs = literal_map([("c", collection()), ("m", mapping({})), ("e", Literal())])
    assert hash_literal_map(inputs) == reference_hash(inputs)


def test_ignoring_every_input_is_the_empty_map() -> None:
    inputs = literal_map([("a", integer(1)), ("b", integer(2))])
    assert hash_literal_map(inputs, ignore=("a", "b")) == EMPTY_MAP_HASH


def test_hash_literal_map_validates_arguments() -> None:
    with pytest.raises(InvalidArgumentError, match="ignore"):
        hash_literal_map(LiteralMap(), ignore="abc")
    with pytest.raises(InvalidArgumentError, match="literal_map"):
        hash_literal_map(integer(1))


def test_struct_with_nan_cannot_be_keyed() -> None:
    generic = struct_pb2.Struct()
    generic.fields["x"].number_value = math.nan
    inputs = literal_map([("g", Literal(scalar=literals_pb2.Scalar(generic=generic)))])
    with pytest.raises(InvalidArgumentError):
        hash_literal_map(inputs)


# --- identifier and signature ---------------------------------------------------------------


def test_identifier_hash_uses_everything_but_version() -> None:
    base = hash_identifier_except_version(identifier())
    for change in (
        {"project": "other"},
        {"domain": "other"},
        {"name": "other"},
        {"org": "other"},
        {"resource_type": identifier_pb2.TASK},
    ):
        assert hash_identifier_except_version(identifier(**change)) != base
    expected = base64.b64encode(
        pbhash(
            identifier_pb2.Identifier(
                resource_type=identifier_pb2.TASK, project="p", domain="d", name="n", org="o"
            )
        )
    ).decode()
    actual = identifier_pb2.Identifier(
        resource_type=identifier_pb2.TASK, project="p", domain="d", name="n", org="o", version="9"
    )
    assert hash_identifier_except_version(actual) == expected


def test_signature_depends_on_variable_order() -> None:
    forward = interface_pb2.TypedInterface(inputs=variables("a", "b"))
    backward = interface_pb2.TypedInterface(inputs=variables("b", "a"))
    assert signature_hash(forward)[:8] != signature_hash(backward)[:8]
    assert signature_hash(forward)[9:] == signature_hash(backward)[9:]


@given(st.lists(names, max_size=4), st.lists(names, max_size=4))
def test_signature_matches_pbhash_of_variable_maps(inputs: list[str], outputs: list[str]) -> None:
    typed = interface_pb2.TypedInterface(inputs=variables(*inputs), outputs=variables(*outputs))
    expected_in = b64url(pbhash(typed.inputs))[:8]
    expected_out = b64url(pbhash(typed.outputs))[:8]
    assert signature_hash(typed) == f"{expected_in}-{expected_out}"


def test_signature_follows_mutation_of_the_interface() -> None:
    typed = interface_pb2.TypedInterface(inputs=variables("a"))
    before = signature_hash(typed)
    typed.inputs.variables[0].value.description = "changed"
    assert signature_hash(typed) != before
    assert signature_hash(typed)[:8] == b64url(pbhash(typed.inputs))[:8]


# --- cache_key --------------------------------------------------------------------------------


def test_task_version_does_not_change_the_key_but_cache_version_does() -> None:
    v1 = cache_key(catalog_key(identifier=identifier("v1")))
    v2 = cache_key(catalog_key(identifier=identifier("v2")))
    assert v1 == v2
    bumped = cache_key(catalog_key(cache_version="2.0"))
    assert bumped != v1
    assert bumped.removesuffix("-2.0") == v1.removesuffix("-1.0")


@pytest.mark.parametrize(
    "typed_interface",
    [
        interface_pb2.TypedInterface(outputs=variables("o")),
        interface_pb2.TypedInterface(inputs=interface_pb2.VariableMap(), outputs=variables("o")),
    ],
)
def test_inputs_callable_not_called_without_declared_inputs(typed_interface: Any) -> None:
    def explode() -> Any:
        raise AssertionError("inputs must not be read")

    key = catalog_key(typed_interface=typed_interface, inputs=explode)
    assert cache_key(key).endswith(f"-{EMPTY_MAP_HASH}-1.0")


def test_inputs_ignored_without_declared_inputs() -> None:
    typed = interface_pb2.TypedInterface()
    with_inputs = catalog_key(typed_interface=typed)
    without = catalog_key(typed_interface=typed, inputs=None)
    assert cache_key(with_inputs) == cache_key(without)


def test_inputs_callable_called_once_when_inputs_declared() -> None:
    calls: list[int] = []
    inputs = literal_map([("a", integer(1)), ("b", string("x"))])

    def read() -> Any:
        calls.append(1)
        return inputs

    assert cache_key(catalog_key(inputs=read)) == cache_key(catalog_key(inputs=inputs))
    assert calls == [1]


def test_declared_inputs_but_none_given_hash_as_empty() -> None:
    assert cache_key(catalog_key(inputs=None)).endswith(f"-{EMPTY_MAP_HASH}-1.0")


def test_cache_ignore_input_vars_in_the_key() -> None:
    ignoring = catalog_key(cache_ignore_input_vars=["b"])
    assert ignoring.cache_ignore_input_vars == ("b",)
    only_a = catalog_key(inputs=literal_map([("a", integer(1))]))
    assert cache_key(ignoring) == cache_key(only_a)
    assert cache_key(ignoring) != cache_key(catalog_key())


def test_keys_of_the_two_integer_example() -> None:
    key = catalog_key(
        inputs=literal_map([("2", integer(2)), ("1", integer(1))]),
        typed_interface=interface_pb2.TypedInterface(inputs=variables("1", "2")),
    )
    parts = cache_key(key)
    assert parts.startswith(IDENTIFIER_HASH + "-")
    assert parts.endswith(f"-{ONE_TWO_HASH}-1.0")


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"identifier": "project/domain/name"}, "identifier"),
        ({"cache_version": 1}, "cache_version"),
        ({"typed_interface": None}, "typed_interface"),
        ({"inputs": {"a": 1}}, "inputs"),
        ({"cache_ignore_input_vars": "abc"}, "cache_ignore_input_vars"),
        ({"cache_ignore_input_vars": ["a", 1]}, "cache_ignore_input_vars"),
    ],
)
def test_catalog_key_validates_fields(overrides: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidArgumentError, match=field) as info:
        catalog_key(**overrides)
    assert info.value.code == "INVALID_ARGUMENT"


def test_inputs_callable_returning_wrong_type_is_rejected() -> None:
    bad: Callable[[], Any] = lambda: {"a": 1}  # noqa: E731
    with pytest.raises(InvalidArgumentError, match="inputs"):
        cache_key(catalog_key(inputs=bad))


# --- memoization: a remembered key is the key ---------------------------------------------------


def test_changing_an_input_in_place_changes_the_key() -> None:
    inputs = literal_map([("a", integer(1)), ("b", string("x"))])
    key = catalog_key(inputs=inputs)
    before = cache_key(key)
    inputs.literals["a"].scalar.primitive.integer = 2
    after = cache_key(key)
    assert after != before
    assert after.endswith(f"-{reference_hash(inputs)}-1.0")
    inputs.literals["a"].scalar.primitive.integer = 1
    assert cache_key(key) == before


def test_changing_the_interface_in_place_changes_the_key() -> None:
    key = catalog_key()
    before = cache_key(key)
    key.typed_interface.outputs.variables[0].value.description = "changed"
    assert cache_key(key) != before
    del key.typed_interface.inputs.variables[:]
    # No declared inputs any more: the inputs are not read and hash as the empty map.
    assert cache_key(key).endswith(f"-{EMPTY_MAP_HASH}-1.0")


def test_ignored_inputs_are_part_of_what_is_remembered() -> None:
    inputs = literal_map([("a", integer(1)), ("b", string("x"))])
    assert hash_literal_map(inputs) == reference_hash(inputs)
    assert hash_literal_map(inputs, ignore=["b"]) == reference_hash(inputs, ("b",))
    assert hash_literal_map(inputs) == reference_hash(inputs)


def test_memos_stay_bounded_and_skip_large_messages() -> None:
    memo = catalog._INPUTS_MEMO
    for value in range(memo._max_entries + 50):
        hash_literal_map(literal_map([("a", integer(value))]))
    assert len(memo) <= memo._max_entries
    large = literal_map([("s", string("x" * memo.max_key_bytes))])
    memo.clear()
    assert hash_literal_map(large) == reference_hash(large)
    assert len(memo) == 0


def test_a_failure_is_not_remembered() -> None:
    generic = struct_pb2.Struct()
    generic.fields["x"].number_value = math.nan
    inputs = literal_map([("g", Literal(scalar=literals_pb2.Scalar(generic=generic)))])
    for _ in range(2):
        with pytest.raises(InvalidArgumentError):
            hash_literal_map(inputs)


def test_threads_sharing_the_memos_get_the_right_keys() -> None:
    catalog._INPUTS_MEMO.clear()
    catalog._INTERFACE_MEMO.clear()
    maps = [literal_map([("a", integer(i % 40)), ("b", string(str(i % 7)))]) for i in range(400)]
    expected = [reference_hash(m) for m in maps]
    failures: list[int] = []

    def work(offset: int) -> None:
        for step in range(len(maps)):
            index = (offset * 37 + step) % len(maps)
            if hash_literal_map(maps[index]) != expected[index]:
                failures.append(index)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert failures == []


# --- docs -------------------------------------------------------------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "keys.md"


def test_docs_examples_run() -> None:
    if not DOCS.exists():
        pytest.skip("docs/keys.md not present")
    blocks = re.findall(r"```python\n(.*?)```", DOCS.read_text(), flags=re.DOTALL)
    assert blocks, "docs/keys.md has no python examples"
    for block in blocks:
        exec(compile(block, str(DOCS), "exec"), {})
