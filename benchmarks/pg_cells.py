"""Single-process cells on PostgreSQL: flytecache against raw psycopg in the fewest round trips.

* ``flytecache`` — ``CacheStore`` on a PostgreSQL database: get (hit), put (new key),
  reserve (a new lease), release (the caller's lease);
* ``psycopg`` — ``benchmarks.limit`` on another database of the same server: each operation is
  one prepared autocommit statement, one round trip (the minimum).

Both hold 1,000 entries first. Each repeat times a block of every operation for both, in
rotating order, by the wall clock: the work happens in the server process, so this process's
CPU time would leave most of it out. Ratios are per repeat, reported as median and min–max.

    python -m benchmarks.pg_cells [--quick]
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from benchmarks._common import (
    LONG_HEARTBEAT,
    entry_key,
    lease_key,
    rate,
    spread,
    stored_output,
    typical_output,
)
from benchmarks._postgres import Databases, databases
from benchmarks.limit import Limit

OPS = ("get", "put", "reserve", "release")
CONTENDERS = ("flytecache", "psycopg")
SIZE = 1_000
OWNER = "bench-owner"


def _ops(store: Any, limit: Limit, n: int, rep: int) -> dict[str, dict[str, Callable[[int], Any]]]:
    output = typical_output(SIZE + 1)
    hits = [entry_key(i % SIZE) for i in range(n)]
    fresh = [entry_key(10_000_000 + rep * n + i) for i in range(n)]
    leases = [lease_key(10_000_000 + rep * n + i) for i in range(n)]
    ttl = int(LONG_HEARTBEAT.total_seconds() * 1_000_000) * 3
    reserve, release = store.get_or_extend_reservation, store.release_reservation
    return {
        "flytecache": {
            "get": lambda i: store.get(hits[i]),
            "put": lambda i: store.put(fresh[i], output),
            "reserve": lambda i: reserve(leases[i], OWNER, LONG_HEARTBEAT),
            "release": lambda i: release(leases[i], OWNER),
        },
        "psycopg": {
            "get": lambda i: limit.get(hits[i]),
            "put": lambda i: limit.put(fresh[i], output),
            "reserve": lambda i: limit.acquire(leases[i], OWNER, ttl),
            "release": lambda i: limit.release(leases[i], OWNER),
        },
    }


def measure(dbs: Databases, n: int, repeats: int) -> dict[str, Any]:
    """Every operation ``repeats`` times for both contenders (blocks of ``n`` calls)."""
    from flytecache import CacheStore, StoreSettings

    settings = StoreSettings(max_heartbeat=LONG_HEARTBEAT)
    store = CacheStore.open(dbs.new_url(), settings=settings)
    limit = Limit.open(dbs.new_url())
    samples: dict[str, dict[str, list[float]]] = {op: {c: [] for c in CONTENDERS} for op in OPS}
    try:
        for i in range(SIZE):
            store.put(entry_key(i), stored_output(i), overwrite=True)
            limit.put(entry_key(i), stored_output(i), overwrite=True)
        for rep in range(repeats):
            fns = _ops(store, limit, n, rep)
            for op in OPS:
                order = CONTENDERS[rep % 2 :] + CONTENDERS[: rep % 2]
                for name in order:
                    samples[op][name].append(rate(n, fns[name][op]))
            # Checked after timing: both stored the last put and released every lease.
            last = entry_key(10_000_000 + rep * n + n - 1)
            assert store.get(last).output_literals == typical_output(SIZE + 1).output_literals
            assert limit.get(last) == typical_output(SIZE + 1)
            assert limit.count("lease", "reservation:") == 0
            probe = lease_key(10_000_000 + rep * n)
            assert store.get_or_extend_reservation(probe, "other").owner_id == "other"
            store.release_reservation(probe, "other")
    finally:
        store.close()
        limit.close()
    return {
        "n": n,
        "repeats": repeats,
        "version": dbs.version,
        "rates": {op: {c: spread(v) for c, v in by.items()} for op, by in samples.items()},
        "samples": samples,
        "ratios": {
            op: spread([a / b for a, b in zip(by["flytecache"], by["psycopg"], strict=True)])
            for op, by in samples.items()
        },
    }


def run(
    dbs: Databases | str, quick: bool = False, n: int | None = None, repeats: int | None = None
) -> dict[str, Any]:
    """The cells, or ``{"note": ...}`` when PostgreSQL is not available."""
    if isinstance(dbs, str):
        return {"note": dbs}
    return measure(dbs, n or (500 if quick else 2_000), repeats or (3 if quick else 5))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    with databases() as dbs:
        print(json.dumps(run(dbs, quick=args.quick), indent=2))


if __name__ == "__main__":
    main()
