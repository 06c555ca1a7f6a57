"""Sustained mixed load through the server (process entry point for the load tests)."""

from __future__ import annotations

import random
import time
from datetime import timedelta
from typing import Any

from _server_helpers import get_req, put_req, release_req, reserve_req
from connectrpc.errors import ConnectError
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.cacheservice.v2.cacheservice_connect import CacheServiceClientSync
from flyteidl2.core import literals_pb2


def mixed_worker(url: str, name: str, seconds: float, seed: int) -> dict[str, Any]:
    """Gets, puts (new and overwrite), reservations and releases for ``seconds``."""
    rng = random.Random(seed)
    client = CacheServiceClientSync(url, timeout_ms=30_000)
    errors: list[str] = []
    latencies: list[float] = []
    deadline = time.monotonic() + seconds
    i = 0
    while time.monotonic() < deadline:
        i += 1
        op = rng.random()
        key = f"{name}-{rng.randrange(200)}"
        begin = time.perf_counter()
        try:
            if op < 0.45:
                try:
                    client.get(get_req(key))
                except ConnectError as error:
                    if error.code.name != "NOT_FOUND":
                        raise
            elif op < 0.75:
                literals = literals_pb2.LiteralMap()
                literals.literals["o"].scalar.binary.value = rng.randbytes(rng.randrange(64, 2048))
                client.put(put_req(key, cs.CachedOutput(output_literals=literals), overwrite=True))
            elif op < 0.9:
                client.get_or_extend_reservation(
                    reserve_req(f"hot-{rng.randrange(10)}", name, timedelta(seconds=2))
                )
            else:
                client.release_reservation(release_req(f"hot-{rng.randrange(10)}", name))
        except ConnectError as error:
            errors.append(f"{error.code.name}: {error.message}")
        latencies.append(time.perf_counter() - begin)
    return {"errors": errors, "latencies": latencies, "calls": i}
