"""Many processes at once: reservation cycles, mixed get/put and puts, every backend, wall clock.

Workloads (one "op" is what a Flyte task does with the cache, minus its work):

* ``reserve`` — a lease cycle on 10 hot keys shared by every process: GetOrExtendReservation,
  then ReleaseReservation if the lease was granted (a live lease of another owner is a normal
  answer, not a wait). The diskcache peer is ``diskcache.Lock`` acquire+release, which
  *blocks* (polling every 1 ms) while another process holds the key.
* ``mixed`` — 90 % get (a hit among 1,000 stored entries), 10 % put (a new key).
* ``put`` — every op stores a typical inline output under a new key.

Targets, measured cell by cell in the same run (rotating order, so drift hits all alike):

* ``flytecache-sqlite`` — the library (``CacheStore``) on one SQLite file;
* ``limit-sqlite`` — ``benchmarks.limit`` on one SQLite file: one statement per operation;
* ``diskcache`` — ``Cache.get``/``Cache.set``/``Lock`` on one diskcache directory;
* ``flytecache-postgresql`` — the library on a throwaway local PostgreSQL (when available);
* ``limit-postgresql`` — ``benchmarks.limit`` on the same server: raw psycopg, one round trip
  per operation;
* ``serve`` — ``flytecache serve`` (SQLite) through flyteidl2's generated Connect client;
* ``serve-noop`` — the same server stack over a service that does nothing (not in the
  default run): the transport's ceiling. It always sends both reservation requests.

Every process starts on the same instant and stops on the same deadline; each op's latency is
recorded. A cell reports ops/s (sum over processes, wall clock), p50/p99/max latency, and
errors, split into *busy* (database locked / lock timeout / UNAVAILABLE) and other. After
timing each cell is checked against the database: every counted put is stored, every released
lease is gone.

    python -m benchmarks.concurrency [--quick] [--seconds S] [--procs 1,4,8] [--json PATH]
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import random
import sqlite3
import sys
import tempfile
import time
import traceback
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from benchmarks._common import median, percentile, write_json

CTX = multiprocessing.get_context("spawn")
WORKLOADS = ("reserve", "mixed", "put")
HOT_KEYS = 10
STORED = 1_000
"""Entries every target holds before timing: the keys the gets of ``mixed`` hit."""
PUT_SHARE = 0.1
LIBRARY = (
    "flytecache-sqlite",
    "limit-sqlite",
    "diskcache",
    "flytecache-postgresql",
    "limit-postgresql",
)
SERVER = ("serve", "serve-noop")
TARGETS = LIBRARY + SERVER
DEFAULT_TARGETS = (*LIBRARY, "serve")
POSTGRES = ("flytecache-postgresql", "limit-postgresql")


def stored_key(j: int) -> str:
    """The key of stored entry ``j`` (as the caller sends it; serve scopes it)."""
    return f"bench/stored/{j:04d}"


# -- worker side ------------------------------------------------------------------------------


class _Busy(Exception):
    """An error that means "the database is busy, retry" in the target's vocabulary."""


def _store_target(url: str) -> tuple[Callable[..., Any], Callable[[], None]]:
    from benchmarks._common import typical_output
    from flytecache import CacheStore
    from flytecache.errors import StorageBusyError

    store = CacheStore.open(url)
    output = typical_output(1)
    get, put = store.get, store.put
    reserve, release = store.get_or_extend_reservation, store.release_reservation

    def do(op: str, key: str, owner: str) -> int:
        try:
            if op == "get":
                get(key)
                return 1
            if op == "put":
                put(key, output)
                return 1
            if reserve(key, owner).owner_id == owner:
                release(key, owner)
                return 2
            return 1
        except StorageBusyError as error:
            raise _Busy(str(error)) from error

    return do, store.close


def _limit_target(resource: str) -> tuple[Callable[..., Any], Callable[[], None]]:
    from benchmarks._common import typical_output
    from benchmarks.limit import Limit

    limit = Limit.open(resource)
    output = typical_output(1)

    def do(op: str, key: str, owner: str) -> int:
        try:
            if op == "get":
                if limit.get(key) is None:
                    raise LookupError(f"{key} not found")
                return 1
            if op == "put":
                limit.put(key, output)
                return 1
            if limit.acquire(key, owner):
                limit.release(key, owner)
                return 2
            return 1
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise _Busy(str(error)) from error
            raise

    return do, limit.close


def _diskcache_target(directory: str) -> tuple[Callable[..., Any], Callable[[], None]]:
    import diskcache

    from benchmarks._common import typical_output

    cache = diskcache.Cache(directory)
    value = typical_output(1).SerializeToString()

    def do(op: str, key: str, owner: str) -> int:
        try:
            if op == "get":
                if cache.get(key) is None:
                    raise LookupError(f"{key} not found")
                return 1
            if op == "put":
                cache.set(key, value)
                return 1
            lock = diskcache.Lock(cache, key, expire=30)
            lock.acquire()
            lock.release()
            return 2
        except diskcache.Timeout as error:
            raise _Busy("diskcache timeout") from error

    return do, cache.close


def _server_target(url: str, noop: bool) -> tuple[Callable[..., Any], Callable[[], None]]:
    from connectrpc.code import Code
    from connectrpc.errors import ConnectError
    from flyteidl2.cacheservice import cacheservice_pb2 as cs
    from flyteidl2.cacheservice.v2 import cacheservice_pb2 as v2
    from flyteidl2.cacheservice.v2.cacheservice_connect import CacheServiceClientSync

    from benchmarks._common import typical_output

    client = CacheServiceClientSync(url, timeout_ms=30_000, send_compression=None)
    ident = v2.Identifier(org="bench", project="proj", domain="dev")
    output = typical_output(1)
    keep = cs.OverwriteOutput(overwrite=False)

    def do(op: str, key: str, owner: str) -> int:
        try:
            if op == "get":
                client.get(
                    v2.GetCacheRequest(base_request=cs.GetCacheRequest(key=key), identifier=ident)
                )
                return 1
            if op == "put":
                client.put(
                    v2.PutCacheRequest(
                        base_request=cs.PutCacheRequest(key=key, output=output, overwrite=keep),
                        identifier=ident,
                    )
                )
                return 1
            answer = client.get_or_extend_reservation(
                v2.GetOrExtendReservationRequest(
                    base_request=cs.GetOrExtendReservationRequest(key=key, owner_id=owner),
                    identifier=ident,
                )
            )
            if noop or answer.reservation.owner_id == owner:
                client.release_reservation(
                    v2.ReleaseReservationRequest(
                        base_request=cs.ReleaseReservationRequest(key=key, owner_id=owner),
                        identifier=ident,
                    )
                )
                return 2
            return 1
        except ConnectError as error:
            if error.code in (Code.UNAVAILABLE, Code.RESOURCE_EXHAUSTED):
                raise _Busy(f"{error.code.value}: {error}") from error
            raise

    return do, client.close


def _open_target(target: str, resource: str) -> tuple[Callable[..., Any], Callable[[], None]]:
    if target in ("flytecache-sqlite", "flytecache-postgresql"):
        return _store_target(resource)
    if target in ("limit-sqlite", "limit-postgresql"):
        return _limit_target(resource)
    if target == "diskcache":
        return _diskcache_target(resource)
    return _server_target(resource, noop=target == "serve-noop")


def _run_cell(
    do: Callable[..., Any],
    worker: int,
    workload: str,
    run_id: str,
    start_at: float,
    seconds: float,
) -> dict[str, Any]:
    rng = random.Random(f"{run_id}/{worker}")
    prefix = f"bench/{run_id}/"
    owner = f"{prefix}owner-{worker}"
    hot = [f"{prefix}hot-{k}" for k in range(HOT_KEYS)]
    stored = [stored_key(j) for j in range(STORED)]
    latencies = array("q")
    record = latencies.append
    ops = errors = busy = requests = writes = 0
    first_error = ""
    clock = time.perf_counter_ns
    time.sleep(max(0.0, start_at - time.time()))
    began = clock()
    deadline = began + int(seconds * 1e9)
    now = began
    for i in itertools.count():
        if now >= deadline:
            break
        if workload == "reserve":
            op, key = "reserve", hot[rng.randrange(HOT_KEYS)]
        elif workload == "put" or rng.random() < PUT_SHARE:
            op, key = "put", f"{prefix}w{worker}-{i}"
        else:
            op, key = "get", stored[rng.randrange(STORED)]
        try:
            requests += do(op, key, owner)
            ops += 1
            writes += op == "put"
        except _Busy as error:
            busy += 1
            first_error = first_error or str(error)
        except Exception as error:
            errors += 1
            first_error = first_error or f"{type(error).__name__}: {error}"
        end = clock()
        record(end - now)
        now = end
    return {
        "ops": ops,
        "writes": writes,
        "requests": requests,
        "errors": errors,
        "busy": busy,
        "elapsed": (now - began) / 1e9,
        "latencies": latencies.tobytes(),
        "first_error": first_error,
    }


def _worker_main(conn: Connection, worker: int) -> None:
    opened: dict[str, tuple[Callable[..., Any], Callable[[], None]]] = {}
    try:
        while True:
            message = conn.recv()
            if message[0] == "stop":
                break
            try:
                if message[0] == "open":
                    _, target, resource = message
                    if target not in opened:
                        opened[target] = _open_target(target, resource)
                    conn.send(("ok", None))
                elif message[0] == "run":
                    _, target, workload, run_id, start_at, seconds = message
                    do = opened[target][0]
                    conn.send(("ok", _run_cell(do, worker, workload, run_id, start_at, seconds)))
            except Exception:
                conn.send(("error", traceback.format_exc()))
    finally:
        for _, close in opened.values():
            with contextlib.suppress(Exception):
                close()


# -- parent side ------------------------------------------------------------------------------


class Gang:
    """Persistent spawned worker processes, driven cell by cell over pipes."""

    def __init__(self, size: int) -> None:
        self.pipes: list[Connection] = []
        self.procs: list[Any] = []
        for worker in range(size):
            parent, child = CTX.Pipe()
            proc = CTX.Process(target=_worker_main, args=(child, worker), daemon=True)
            proc.start()
            child.close()
            self.pipes.append(parent)
            self.procs.append(proc)

    def _ask(self, n: int, message: tuple[Any, ...], timeout: float) -> list[Any]:
        for pipe in self.pipes[:n]:
            pipe.send(message)
        answers = []
        for worker, pipe in enumerate(self.pipes[:n]):
            if not pipe.poll(timeout):
                raise SystemExit(f"benchmark worker {worker} did not answer {message[0]!r}")
            status, value = pipe.recv()
            if status != "ok":
                raise SystemExit(f"benchmark worker {worker} failed:\n{value}")
            answers.append(value)
        return answers

    def open(self, n: int, target: str, resource: str) -> None:
        self._ask(n, ("open", target, resource), timeout=120)

    def run(
        self, n: int, target: str, workload: str, run_id: str, seconds: float
    ) -> list[dict[str, Any]]:
        start_at = time.time() + 0.05
        message = ("run", target, workload, run_id, start_at, seconds)
        return self._ask(n, message, timeout=seconds + 120)

    def close(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send(("stop",))
        for proc in self.procs:
            proc.join(30)
            if proc.is_alive():
                proc.kill()
                proc.join()


@dataclass
class Environment:
    """Where every target lives for one run, and how to check a cell after timing."""

    workdir: Path
    resources: dict[str, str] = field(default_factory=dict)
    notes: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    _cleanup: list[Callable[[], None]] = field(default_factory=list)
    _checkers: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        for checker in self._checkers.values():
            checker.close()
        for cleanup in reversed(self._cleanup):
            try:
                cleanup()
            except Exception as error:  # pragma: no cover - best effort teardown
                print(f"cleanup failed: {error}", file=sys.stderr)

    def count(self, target: str, what: str, prefix: str) -> int | None:
        """Entries or leases (``what``) whose key starts with ``prefix`` (None: not checked)."""
        if target == "serve-noop":
            return None
        if target not in self._checkers:
            self._checkers[target] = _Counter(target, self.resources[target], self.workdir)
        if target == "serve":
            prefix = f"proj-dev-{prefix}"
        return int(self._checkers[target].count(what, prefix))


class _Counter:
    """A connection to one target's database, for the checks after timing."""

    def __init__(self, target: str, resource: str, workdir: Path) -> None:
        self.target = target
        self.thing: Any
        if target.startswith("limit-"):
            from benchmarks.limit import Limit

            self.thing = Limit.open(resource)
        elif target == "diskcache":
            self.thing = sqlite3.connect(Path(resource) / "cache.db", check_same_thread=False)
        else:
            from flytecache import CacheStore

            self.thing = CacheStore.open(workdir / "serve.db" if target == "serve" else resource)

    def count(self, what: str, prefix: str) -> int:
        if self.target.startswith("limit-"):
            return int(self.thing.count("kv" if what == "entries" else "lease", prefix))
        if self.target == "diskcache":
            # A released diskcache lock is a deleted key: both live in the Cache table.
            query = "SELECT count(*) FROM Cache WHERE key >= ? AND key < ?"
            return int(self.thing.execute(query, (prefix, prefix + "\uffff")).fetchone()[0])
        import sqlalchemy as sa

        # The design's table names and their key column: stable across schema revisions.
        table = "entries" if what == "entries" else "reservations"
        counted = sa.text(f"SELECT count(*) FROM {table} WHERE key >= :lo AND key < :hi")
        with self.thing.engine.connect() as conn:
            return int(conn.execute(counted, {"lo": prefix, "hi": prefix + "\uffff"}).scalar())

    def close(self) -> None:
        self.thing.close()


def _store_some(target: str, resource: str) -> None:
    """Store the STORED entries the gets of ``mixed`` read, through the target's own API."""
    from benchmarks._common import stored_output

    if target.startswith("limit-"):
        from benchmarks.limit import Limit

        with Limit.open(resource) as limit:
            for j in range(STORED):
                limit.put(stored_key(j), stored_output(j))
    elif target == "diskcache":
        import diskcache

        with diskcache.Cache(resource) as cache:
            for j in range(STORED):
                cache.set(stored_key(j), stored_output(j).SerializeToString())
    else:
        from flytecache import CacheStore

        # serve scopes every key as <project>-<domain>-<key>; it is filled before it starts.
        scope = "proj-dev-" if target == "serve" else ""
        with CacheStore.open(resource) as store:
            for j in range(STORED):
                store.put(scope + stored_key(j), stored_output(j))


def prepare(targets: list[str], workdir: Path, pg: Any) -> Environment:
    """Create each target's database (and start its server); unavailable ones get a note.

    ``pg`` is a ``benchmarks._postgres.Databases``, or a note saying why PostgreSQL is not
    available.
    """
    env = Environment(workdir)
    for name in ("flytecache-sqlite", "limit-sqlite"):
        if name in targets:
            env.resources[name] = str(workdir / f"{name}.db")
    if "diskcache" in targets:
        env.resources["diskcache"] = str(workdir / "diskcache")
    for name in POSTGRES:
        if name in targets:
            if isinstance(pg, str):
                env.notes[name] = pg
            else:
                env.resources[name] = pg.new_url()
                env.versions["postgresql"] = pg.version
    if "serve" in targets:
        _store_some("serve", str(workdir / "serve.db"))
    for name, resource in env.resources.items():
        _store_some(name, resource)
    if "serve" in targets or "serve-noop" in targets:
        _prepare_servers(env, targets)
    return env


def _prepare_servers(env: Environment, targets: list[str]) -> None:
    from benchmarks.bench_server import _Server

    python = sys.executable
    servers = []
    if "serve" in targets:
        real = _Server(
            "flytecache serve",
            [
                python,
                "-c",
                "import sys; from flytecache.cli import main; sys.argv[0] = 'flytecache'; main()",
                "serve",
                "--db",
                str(env.workdir / "serve.db"),
                "--port",
                "0",
                "--log-level",
                "warning",
            ],
            env.workdir / "serve.log",
        )
        servers.append(("serve", real))
    if "serve-noop" in targets:
        noop = _Server(
            "no-op server",
            [python, "-m", "benchmarks.bench_server", "serve-noop", "--port", "0"],
            env.workdir / "noop.log",
        )
        servers.append(("serve-noop", noop))
    for name, server in servers:
        env._cleanup.append(server.stop)
        env.resources[name] = server.wait_ready()


def _check(env: Environment, target: str, workload: str, run_id: str, writes: int) -> str:
    """After timing: the database holds exactly what the counted ops wrote ('' when it does)."""
    prefix = f"bench/{run_id}/"
    if workload == "reserve":
        left = env.count(target, "reservations", prefix)
        return f"{target} reserve: {left} leases left after release" if left else ""
    stored = env.count(target, "entries", prefix)
    if stored is not None and stored != writes:
        return f"{target} {workload}: {writes} puts counted, {stored} entries stored"
    return ""


def _summarize(answers: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    latencies: list[int] = []
    for answer in answers:
        latencies.extend(array("q", answer["latencies"]))
    latencies.sort()
    ops = sum(a["ops"] for a in answers)
    elapsed = max(a["elapsed"] for a in answers) or seconds
    return {
        "ops": ops,
        "writes": sum(a["writes"] for a in answers),
        "ops_per_s": ops / elapsed,
        "requests_per_s": sum(a["requests"] for a in answers) / elapsed,
        "p50_ms": percentile(latencies, 0.50) / 1e6,
        "p99_ms": percentile(latencies, 0.99) / 1e6,
        "max_ms": (latencies[-1] / 1e6) if latencies else float("nan"),
        "busy": sum(a["busy"] for a in answers),
        "errors": sum(a["errors"] for a in answers),
        "first_error": next((a["first_error"] for a in answers if a["first_error"]), ""),
    }


def run(
    *,
    seconds: float,
    repeats: int,
    procs: list[int],
    targets: list[str],
    workloads: list[str] | None = None,
    pg: Any = None,
    workdir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Measure every cell ``repeats`` times; per cell the medians (and every sample).

    ``pg``: see :func:`prepare`; None starts a PostgreSQL server for this call when a
    PostgreSQL target is asked for.
    """
    if pg is None and any(t in POSTGRES for t in targets):
        from benchmarks._postgres import databases

        with databases() as dbs:
            return run(
                seconds=seconds,
                repeats=repeats,
                procs=procs,
                targets=targets,
                workloads=workloads,
                pg=dbs,
                workdir=workdir,
                log=log,
            )
    workloads = workloads or list(WORKLOADS)
    say = log or (lambda line: print(line, flush=True))
    with tempfile.TemporaryDirectory(prefix="flytecache-concurrency-") as tmp:
        env = prepare(targets, Path(workdir or tmp), pg)
        active = [t for t in targets if t in env.resources]
        gang = Gang(max(procs))
        samples: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
        problems: list[str] = []
        try:
            for target in active:
                gang.open(max(procs), target, env.resources[target])
            for rep in range(repeats):
                for workload, n in itertools.product(workloads, procs):
                    shift = (rep + n) % len(active)
                    for target in active[shift:] + active[:shift]:
                        run_id = f"{rep}-{workload}-{n}-{target}-{time.time_ns()}"
                        answers = gang.run(n, target, workload, run_id, seconds)
                        cell = _summarize(answers, seconds)
                        problem = _check(env, target, workload, run_id, cell["writes"])
                        if problem:
                            problems.append(problem)
                        samples.setdefault((target, workload, n), []).append(cell)
                say(f"  repeat {rep + 1}/{repeats} done")
        finally:
            gang.close()
            env.close()
    cells = []
    for (target, workload, n), runs in samples.items():
        cells.append(
            {
                "target": target,
                "workload": workload,
                "procs": n,
                "ops_per_s": median([r["ops_per_s"] for r in runs]),
                "requests_per_s": median([r["requests_per_s"] for r in runs]),
                "p50_ms": median([r["p50_ms"] for r in runs]),
                "p99_ms": median([r["p99_ms"] for r in runs]),
                "max_ms": max(r["max_ms"] for r in runs),
                "busy": sum(r["busy"] for r in runs),
                "errors": sum(r["errors"] for r in runs),
                "first_error": next((r["first_error"] for r in runs if r["first_error"]), ""),
                "samples": [r["ops_per_s"] for r in runs],
                "requests_samples": [r["requests_per_s"] for r in runs],
            }
        )
    return {
        "seconds": seconds,
        "repeats": repeats,
        "procs": procs,
        "workloads": workloads,
        "targets": active,
        "notes": env.notes,
        "versions": env.versions,
        "problems": problems,
        "cells": cells,
    }


def _print(results: dict[str, Any]) -> None:
    print(
        f"{'target':<22} {'workload':<8} {'procs':>5} {'ops/s':>9} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'busy':>5} {'err':>4}"
    )
    for c in sorted(results["cells"], key=lambda c: (c["workload"], c["target"], c["procs"])):
        print(
            f"{c['target']:<22} {c['workload']:<8} {c['procs']:>5} "
            f"{c['ops_per_s']:>9,.0f} {c['p50_ms']:>7.2f} {c['p99_ms']:>7.2f} "
            f"{c['max_ms']:>7.1f} {c['busy']:>5} {c['errors']:>4}"
        )
    for target, note in results["notes"].items():
        print(f"{target}: {note}")
    for problem in results["problems"]:
        print(f"CHECK FAILED: {problem}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="0.4 s cells, 3 repeats")
    parser.add_argument("--seconds", type=float, help="seconds per cell")
    parser.add_argument("--repeats", type=int, help="repeats per cell (medians are reported)")
    parser.add_argument("--procs", default="1,4,8", help="process counts")
    parser.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated")
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}; choose from {', '.join(TARGETS)}")
    results = run(
        seconds=args.seconds or (0.4 if args.quick else 1.5),
        repeats=args.repeats or (3 if args.quick else 5),
        procs=[int(p) for p in args.procs.split(",")],
        targets=targets,
        workloads=[w for w in args.workloads.split(",") if w],
    )
    _print(results)
    if args.json:
        write_json(args.json, results)
    if results["problems"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
