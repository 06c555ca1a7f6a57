"""Cache-key derivation speed for a typical 20-input task, and its cost next to a store get.

``pytest benchmarks/bench_keys.py --benchmark-only`` times ``cache_key`` on the same inputs again
(the case a catalog client meets: it derives the key for get, put, reserve and release alike),
on inputs never seen before (every value new), and the literal definition of the key (hashify
into a new map, render it with ``MessageToDict``, objecthash the JSON) as the baseline; all give
the same key.

``python -m benchmarks.bench_keys`` (or :func:`run`) answers issue #14's question, what a key
costs next to a store lookup: in one process, in blocks interleaved in rotating order, it times
the key (both cases), flytecache's ``CacheStore.get`` of a stored entry and the limit's get (one
``SELECT`` + ``CachedOutput.FromString``, :mod:`benchmarks.limit`), in CPU time, and reports each
key cost as a multiple of each get: the median over repetitions, with its range.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from flyteidl2.core import identifier_pb2, interface_pb2, literals_pb2, types_pb2

from benchmarks._common import entry_key, typical_output
from benchmarks.limit import KvLimit
from flytecache import CacheStore
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


def _inputs(variant: int = 0) -> Any:
    """20 deterministic inputs: ints, floats, strings and one nested collection.

    Every value depends on ``variant``, so distinct variants share no literal.
    """
    literals: dict[str, Any] = {}
    shift = variant * 1_000
    for index in range(19):
        name = f"input_{index:02d}"
        if index % 3 == 0:
            literals[name] = _primitive(integer=index * 1_000_003 - 7 + shift)
        elif index % 3 == 1:
            literals[name] = _primitive(float_value=index / 7 + 1e-9 + shift)
        else:
            path = f"s3://bucket/path/{index}/part-{variant:04d}.parquet"
            literals[name] = _primitive(string_value=path)
    nested = Literal(
        collection=literals_pb2.LiteralCollection(
            literals=[
                Literal(
                    collection=literals_pb2.LiteralCollection(
                        literals=[_primitive(integer=row * 10 + col + shift) for col in range(3)]
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
IDENTIFIER = identifier_pb2.Identifier(
    resource_type=identifier_pb2.TASK,
    project="flytesnacks",
    domain="development",
    name="workflows.example.train",
    version="v42",
    org="acme",
)
INTERFACE = _interface(sorted(INPUTS.literals))
KEY = CatalogKey(
    identifier=IDENTIFIER, cache_version="1.0", typed_interface=INTERFACE, inputs=INPUTS
)

_variants = itertools.count(1)


def new_keys(n: int) -> list[CatalogKey]:
    """``n`` keys of the same task whose inputs were never hashed before in this process."""
    return [
        CatalogKey(
            identifier=IDENTIFIER,
            cache_version="1.0",
            typed_interface=INTERFACE,
            inputs=_inputs(next(_variants)),
        )
        for _ in range(n)
    ]


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


def test_cache_key_20_inputs_new_inputs(benchmark: Any) -> None:
    benchmark.extra_info.update(op="cache_key", impl="flytecache, new inputs", size=0)
    keys: Iterator[CatalogKey] = iter(())

    def setup() -> tuple[tuple[CatalogKey], dict[str, Any]]:
        nonlocal keys
        try:
            return (next(keys),), {}
        except StopIteration:  # built in batches: one key per round, never hashed before
            keys = iter(new_keys(500))
            return (next(keys),), {}

    result = benchmark.pedantic(cache_key, setup=setup, rounds=2000, warmup_rounds=10)
    assert result.endswith("-1.0")


def test_cache_key_20_inputs_baseline_definition(benchmark: Any) -> None:
    benchmark.extra_info.update(op="cache_key", impl="definition", size=0)
    result = benchmark(_reference_key, KEY)
    assert result == cache_key(KEY)


# -- the key's cost next to a store get, interleaved ----------------------------------------

STORED = 256
"""Entries in each store; the gets cycle over them."""


def _cpu_us_per_call(n: int, fn: Callable[[int], Any]) -> float:
    start = time.process_time()
    for i in range(n):
        fn(i)
    return (time.process_time() - start) / n * 1e6


def _spread(values: list[float]) -> dict[str, Any]:
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "samples": values,
    }


IMPLS = ("cache_key", "cache_key_new_inputs", "store_get", "limit_get")
RATIOS = {
    "key_vs_limit_get": ("cache_key", "limit_get"),
    "key_vs_store_get": ("cache_key", "store_get"),
    "new_inputs_key_vs_limit_get": ("cache_key_new_inputs", "limit_get"),
    "new_inputs_key_vs_store_get": ("cache_key_new_inputs", "store_get"),
}
"""Each ratio: the first operation's CPU cost per call divided by the second's."""


def run(repeats: int = 7, n: int = 2_000) -> dict[str, Any]:
    """Time the 20-input key and the two gets in ``repeats`` rounds of ``n`` calls each.

    Returns ``{"us": {impl: {median, min, max, samples}}, "ratios": {name: {...}}, "n",
    "repeats"}``: CPU µs per call of each of ``IMPLS``, and the cost ratios of ``RATIOS``
    taken per round (the operations ran back to back) then summarized. The gets read a stored
    typical output (``typical_output``: two inline outputs and Flyte's metadata).
    """
    with tempfile.TemporaryDirectory(prefix="flytecache-bench-keys-") as tmp:
        store = CacheStore.open(Path(tmp) / "store.db")
        limit = KvLimit(Path(tmp) / "limit.db")
        try:
            keys = [entry_key(i) for i in range(STORED)]
            for i, key in enumerate(keys):
                store.put(key, typical_output(i))
                limit.put(key, typical_output(i))
            get, limit_get = store.get, limit.get
            fns: dict[str, Callable[[int], Any]] = {
                "cache_key": lambda i: cache_key(KEY),
                "store_get": lambda i: get(keys[i % STORED]),
                "limit_get": lambda i: limit_get(keys[i % STORED]),
            }
            samples: dict[str, list[float]] = {impl: [] for impl in IMPLS}
            for name in ("cache_key", "store_get", "limit_get"):  # warm caches and pages alike
                _cpu_us_per_call(min(n, 500), fns[name])
            for rep in range(repeats):
                fresh = new_keys(n)
                fns["cache_key_new_inputs"] = lambda i: cache_key(fresh[i])  # noqa: B023
                order = IMPLS[rep % len(IMPLS) :] + IMPLS[: rep % len(IMPLS)]
                for impl in order:
                    samples[impl].append(_cpu_us_per_call(n, fns[impl]))
            # Checked after timing: every implementation answered what it should.
            assert cache_key(KEY) == _reference_key(KEY)
            assert cache_key(fresh[-1]) == _reference_key(fresh[-1])
            assert limit_get(keys[3]) == typical_output(3)
            assert get(keys[3]).output_literals == typical_output(3).output_literals
        finally:
            limit.close()
            store.close()
    ratios = {
        name: _spread([a / b for a, b in zip(samples[top], samples[bottom], strict=True)])
        for name, (top, bottom) in RATIOS.items()
    }
    return {
        "us": {impl: _spread(values) for impl, values in samples.items()},
        "ratios": ratios,
        "n": n,
        "repeats": repeats,
    }


def test_key_cost_vs_get(benchmark: Any) -> None:
    """The interleaved comparison; its numbers are in ``extra_info`` of the JSON output."""
    benchmark.extra_info.update(op="key_vs_get", impl="ratios", size=0)
    results = benchmark.pedantic(run, kwargs={"repeats": 3, "n": 500}, rounds=1)
    benchmark.extra_info["ratios"] = {k: v["median"] for k, v in results["ratios"].items()}
    benchmark.extra_info["us"] = {k: v["median"] for k, v in results["us"].items()}
    assert all(value > 0 for value in benchmark.extra_info["ratios"].values())


def _print(results: dict[str, Any]) -> None:
    print(f"CPU µs per call, median [min–max] of {results['repeats']} × {results['n']} calls")
    for impl, row in results["us"].items():
        print(f"  {impl:<22} {row['median']:8.2f}  [{row['min']:.2f}–{row['max']:.2f}]")
    print("cost ratios, median [min–max] of the per-round ratios")
    for name, row in results["ratios"].items():
        print(f"  {name:<28} {row['median']:6.2f}×  [{row['min']:.2f}–{row['max']:.2f}]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("-n", type=int, default=2_000, help="calls per timed block")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results = run(repeats=args.repeats, n=args.n)
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
