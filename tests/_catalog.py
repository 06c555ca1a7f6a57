"""Builders for catalog keys and literals shared by the client tests and their worker processes."""

from __future__ import annotations

import os
import time
from datetime import timedelta
from pathlib import Path

from flyteidl2.core import identifier_pb2, interface_pb2, literals_pb2, types_pb2

from flytecache import CatalogClient, CatalogKey


def int_literal(value: int) -> literals_pb2.Literal:
    return literals_pb2.Literal(
        scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(integer=value))
    )


def literal_map(**values: int) -> literals_pb2.LiteralMap:
    return literals_pb2.LiteralMap(literals={k: int_literal(v) for k, v in values.items()})


def interface(inputs: tuple[str, ...] = ("a", "b"), outputs: tuple[str, ...] = ("o",)):
    int_type = types_pb2.LiteralType(simple=types_pb2.SimpleType.INTEGER)

    def variables(names: tuple[str, ...]) -> interface_pb2.VariableMap:
        return interface_pb2.VariableMap(
            variables=[
                interface_pb2.VariableEntry(key=n, value=interface_pb2.Variable(type=int_type))
                for n in names
            ]
        )

    return interface_pb2.TypedInterface(inputs=variables(inputs), outputs=variables(outputs))


def make_key(
    *,
    name: str = "my.task",
    version: str = "v1",
    cache_version: str = "1.0",
    project: str = "flytesnacks",
    domain: str = "development",
    inputs: literals_pb2.LiteralMap | None = None,
    ignore: tuple[str, ...] = (),
) -> CatalogKey:
    return CatalogKey(
        identifier=identifier_pb2.Identifier(
            resource_type=identifier_pb2.ResourceType.TASK,
            project=project,
            domain=domain,
            name=name,
            version=version,
            org="org",
        ),
        cache_version=cache_version,
        typed_interface=interface(),
        inputs=inputs if inputs is not None else literal_map(a=1, b=2),
        cache_ignore_input_vars=ignore,
    )


def compute_worker(target: str, log_path: str, sleep_s: float, barrier=None) -> int:
    """get_or_compute one shared key; the compute appends a line to ``log_path``."""
    if barrier is not None:
        barrier.wait()

    def compute() -> literals_pb2.LiteralMap:
        with open(log_path, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(sleep_s)
        return literal_map(o=42)

    with CatalogClient(target) as client:
        entry = client.get_or_compute(
            make_key(),
            compute,
            heartbeat_interval=timedelta(milliseconds=300),
            poll_interval=timedelta(milliseconds=50),
            timeout=timedelta(seconds=60),
        )
    return entry.outputs.literals["o"].scalar.primitive.integer


def slow_owner(target: str, started_path: str) -> None:
    """Take the lease and start computing forever (the test SIGKILLs us)."""

    def compute() -> literals_pb2.LiteralMap:
        Path(started_path).write_text("started")
        time.sleep(3600)
        raise AssertionError("unreachable")

    with CatalogClient(target) as client:
        client.get_or_compute(make_key(), compute, heartbeat_interval=timedelta(milliseconds=300))
