"""Single-process cells on SQLite: get and put per CPU-second, get latency by size, bytes per entry.

Contenders, each on its own copy of the same 1k-entry database (``benchmarks.populate``):

* ``flytecache`` — ``CacheStore.get`` (returns the parsed ``CachedOutput`` with metadata) and
  ``CacheStore.put`` (a new key);
* ``limit`` — ``benchmarks.limit``: one ``SELECT value`` + ``CachedOutput.FromString``, or
  ``SerializeToString`` + one upsert (issue #14's definition of the limit);
* ``diskcache`` — ``Cache.get`` (the stored bytes, unparsed) and ``Cache.set`` of the
  serialized output: what flytekit's local cache runs on;
* ``sdk`` — the Flyte 2 SDK's local cache, ``LocalTaskCache.get``/``set`` awaited as its
  local controller awaits them (one SELECT + parse into the SDK's ``Outputs``; set is an
  ``INSERT OR REPLACE`` + commit on its own connection), when ``flyte`` is installed.

Each repeat times a block of every contender back to back, in rotating order, on fresh copies,
and counts this process's CPU time (``time.process_time``); ratios are per repeat, reported as
median and min–max over repeats. Results are checked after timing.

    python -m benchmarks.store_harness [--quick] [--json PATH]
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import diskcache
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from benchmarks import populate
from benchmarks._common import (
    cpu_rate,
    entry_key,
    median,
    spread,
    stored_output,
    typical_output,
    write_json,
)
from benchmarks.limit import Limit
from flytecache import CacheStore

SIZE = 1_000
CONTENDERS = ("flytecache", "limit", "diskcache", "sdk")
PEERS = ("limit", "diskcache", "sdk")
SDK_PUTS = 200


@dataclass
class Contender:
    """One implementation's get and put, and how to close it."""

    get: Callable[[str], Any]
    put: Callable[[str, cs.CachedOutput], Any]
    close: Callable[[], None]


def _sdk_outputs(output: cs.CachedOutput) -> Any:
    """The SDK's ``convert.Outputs`` for the literals of ``output`` (what its controller holds)."""
    from flyte._internal.runtime import convert
    from flyteidl2.task import common_pb2

    literals = [
        common_pb2.NamedLiteral(name=name, value=value)
        for name, value in sorted(output.output_literals.literals.items())
    ]
    return convert.Outputs(proto_outputs=common_pb2.Outputs(literals=literals))


def _awaited(coro: Any) -> Any:
    """``await coro`` as a caller already inside a coroutine does: without an event loop
    round trip when the coroutine never suspends (the SDK's sqlite3 path)."""
    try:
        coro.send(None)
    except StopIteration as stop:
        return stop.value
    coro.close()
    raise RuntimeError("the SDK's cache suspended (aiosqlite): not measured")


def sdk_backend() -> str | None:
    """Which SQLite client the installed SDK's cache uses, None without the SDK."""
    try:
        from flyte._persistence import _db
    except ImportError:
        return None
    return "aiosqlite" if _db.HAS_AIOSQLITE else "sqlite3"


def _open_sdk(path: Path) -> Contender | None:
    """The SDK's ``LocalTaskCache`` on ``path``, holding the same 1k keys and outputs."""
    if sdk_backend() != "sqlite3":
        return None
    from flyte._persistence._db import LocalDB
    from flyte._persistence._task_cache import LocalTaskCache

    LocalDB.close_sync()
    # The SDK keeps its file under ~/.flyte; the benchmark points it at a private copy.
    LocalDB._get_db_path = staticmethod(lambda: str(path))  # type: ignore[method-assign]
    LocalDB.initialize_sync()
    conn = LocalDB.get_sync()
    conn.executemany(
        "INSERT INTO task_cache (key, value) VALUES (?, ?)",
        [
            (entry_key(i), _sdk_outputs(stored_output(i)).proto_outputs.SerializeToString())
            for i in range(SIZE)
        ],
    )
    conn.commit()
    get, set_ = LocalTaskCache.get, LocalTaskCache.set
    converted: dict[int, Any] = {}

    def put(key: str, output: cs.CachedOutput) -> Any:
        value = converted.get(id(output))
        if value is None:
            value = converted[id(output)] = _sdk_outputs(output)
        return _awaited(set_(key, value))

    return Contender(lambda key: _awaited(get(key)), put, LocalDB.close_sync)


def open_contenders(directory: Path) -> dict[str, Contender]:
    """Every available contender on its own fresh copy of the 1k database."""
    store = CacheStore.open(populate.copy("store", SIZE, directory))
    limit = Limit.open(populate.copy("limit", SIZE, directory))
    cache = diskcache.Cache(str(populate.copy("diskcache", SIZE, directory)))
    found = {
        "flytecache": Contender(store.get, store.put, store.close),
        "limit": Contender(limit.get, limit.put, limit.close),
        "diskcache": Contender(
            cache.get, lambda key, output: cache.set(key, output.SerializeToString()), cache.close
        ),
    }
    sdk = _open_sdk(directory / "sdk-cache.db")
    if sdk is not None:
        found["sdk"] = sdk
    return found


def _check(contenders: dict[str, Contender], put_key: str, output: cs.CachedOutput) -> None:
    """After timing: each contender returns what was stored."""
    hit = stored_output(3)
    for name, c in contenders.items():
        got, new = c.get(entry_key(3)), c.get(put_key)
        if name == "diskcache":
            got, new = cs.CachedOutput.FromString(got), cs.CachedOutput.FromString(new)
        elif name == "sdk":
            got = {n.name: n.value for n in got.proto_outputs.literals}
            new = {n.name: n.value for n in new.proto_outputs.literals}
            assert got == dict(hit.output_literals.literals), name
            assert new == dict(output.output_literals.literals), name
            continue
        assert got.output_literals == hit.output_literals, name
        assert new.output_literals == output.output_literals, name


def _getter(get: Callable[[str], Any], keys: list[str]) -> Callable[[int], Any]:
    return lambda i: get(keys[i & 4095])


def _putter(
    put: Callable[[str, cs.CachedOutput], Any], keys: list[str], output: cs.CachedOutput
) -> Callable[[int], Any]:
    return lambda i: put(keys[i], output)


def single(n: int, repeats: int) -> dict[str, Any]:
    """get (n×5 calls) and put (n calls) per CPU-second for every contender, ``repeats`` times."""
    output = typical_output(SIZE + 1)
    samples: dict[str, dict[str, list[float]]] = {"get": {}, "put": {}}
    names: list[str] = []
    for rep in range(repeats):
        with tempfile.TemporaryDirectory(prefix="flytecache-single-") as tmp:
            contenders = open_contenders(Path(tmp))
            names = list(contenders)
            order = names[rep % len(names) :] + names[: rep % len(names)]
            keys = [entry_key(i) for i in random.Random(rep).choices(range(SIZE), k=4096)]
            fresh = [entry_key(10_000_000 + rep * n + i) for i in range(n)]
            last = fresh[min(n, SDK_PUTS) - 1]
            try:
                for name in order:  # warm every page and statement cache alike
                    cpu_rate(min(n, 2000), _getter(contenders[name].get, keys))
                for name in order:
                    rate = cpu_rate(n * 5, _getter(contenders[name].get, keys))
                    samples["get"].setdefault(name, []).append(rate)
                for name in order:
                    # The SDK commits each set with an fsync (rollback journal, FULL): a few
                    # hundred calls give its CPU cost without minutes of waiting on the disk.
                    count = min(n, SDK_PUTS) if name == "sdk" else n
                    rate = cpu_rate(count, _putter(contenders[name].put, fresh, output))
                    samples["put"].setdefault(name, []).append(rate)
                _check(contenders, last, output)
            finally:
                for c in contenders.values():
                    c.close()
    result: dict[str, Any] = {"n_get": n * 5, "n_put": n, "repeats": repeats}
    result["sdk_backend"] = sdk_backend()
    for op, by_name in samples.items():
        ours = by_name["flytecache"]
        result[op] = {
            "rates": {name: spread(values) for name, values in by_name.items()},
            "samples": by_name,
            "ratios": {
                peer: spread([a / b for a, b in zip(ours, by_name[peer], strict=True)])
                for peer in PEERS
                if peer in by_name
            },
        }
    return result


def growth(sizes: tuple[int, int], block: int = 500, rounds: int = 10) -> dict[str, Any]:
    """Get latency (hit) at ``sizes[0]`` vs ``sizes[1]`` entries, flytecache and the limit.

    All four databases are open at once and timed in alternating blocks of ``block`` calls on
    uniformly random existing keys, in rotating order, so drift hits all alike; each call is
    timed on its own (wall clock, ``perf_counter_ns``). Per round, each contender's growth is
    median(big) ÷ median(small); the ratio is flytecache's growth ÷ the limit's.
    """
    small, big = sizes
    with tempfile.TemporaryDirectory(prefix="flytecache-growth-") as tmp:
        opened: dict[tuple[str, int], Any] = {}
        for size in sizes:
            store = CacheStore.open(populate.copy("store", size, Path(tmp), flush=False))
            limit = Limit.open(populate.copy("limit", size, Path(tmp), flush=False))
            opened[("flytecache", size)] = store
            opened[("limit", size)] = limit
        cells = list(opened)
        times: dict[tuple[str, int], list[list[int]]] = {cell: [] for cell in cells}
        rng = random.Random(11)
        clock = time.perf_counter_ns
        try:
            for r in range(rounds):
                for cell in cells[r % len(cells) :] + cells[: r % len(cells)]:
                    get = opened[cell].get
                    keys = [entry_key(rng.randrange(cell[1])) for _ in range(block)]
                    record: list[int] = []
                    for key in keys:
                        start = clock()
                        get(key)
                        record.append(clock() - start)
                    times[cell].append(record)
            assert opened[("flytecache", big)].get(entry_key(big - 1)) is not None
            assert opened[("limit", big)].get(entry_key(big - 1)) is not None
        finally:
            for thing in opened.values():
                thing.close()
    per_round: dict[str, list[float]] = {"flytecache": [], "limit": []}
    for name in per_round:
        for r in range(rounds):
            per_round[name].append(median(times[(name, big)][r]) / median(times[(name, small)][r]))
    latency = {
        name: {
            str(size): median([v for block_ in times[(name, size)] for v in block_]) / 1000
            for size in sizes
        }
        for name in per_round
    }
    return {
        "sizes": list(sizes),
        "block": block,
        "rounds": rounds,
        "median_us": latency,
        "growth": {name: spread(values) for name, values in per_round.items()},
        "ratio": spread(
            [a / b for a, b in zip(per_round["flytecache"], per_round["limit"], strict=True)]
        ),
    }


def _file_bytes(path: Path) -> int:
    wal = Path(str(path) + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def footprint(size: int) -> dict[str, Any]:
    """Bytes per entry of each cached ``size`` database (checkpointed when built)."""
    result: dict[str, Any] = {"entries": size}
    for kind in ("store", "limit"):
        path = populate.cached("store" if kind == "store" else "limit", size)
        # immutable: the cached file is checkpointed and never written, so no -shm is needed.
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        table = "entries" if kind == "store" else "kv"
        counted = conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        conn.close()
        assert counted == size, (kind, counted)
        result["flytecache" if kind == "store" else "limit"] = _file_bytes(path) / size
    cache_db = populate.cached("diskcache", size) / "cache.db"
    result["diskcache"] = _file_bytes(cache_db) / size
    result["ratio"] = result["flytecache"] / result["limit"]
    return result


def run(quick: bool = False, repeats: int | None = None, n: int | None = None) -> dict[str, Any]:
    """The single-process cells (see :func:`single`)."""
    return single(n or (2_000 if quick else 10_000), repeats or (5 if quick else 7))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small blocks, 5 repeats")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = run(quick=args.quick)
    for op in ("get", "put"):
        r = results[op]
        rates = "  ".join(f"{k} {v['median']:>8,.0f}/cpu-s" for k, v in r["rates"].items())
        ratios = "  ".join(
            f"÷{k} {v['median']:.2f} ({v['min']:.2f}–{v['max']:.2f})"
            for k, v in r["ratios"].items()
        )
        print(f"{op:4} {rates}\n     flytecache {ratios}")
    if args.json:
        write_json(args.json, results)


if __name__ == "__main__":
    main()
