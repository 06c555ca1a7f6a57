"""What every benchmark shares: the typical payload and keys, raw connections, machine facts.

All data is deterministic (derived from an integer), so a run can be repeated exactly and a
cached database can be checked against the code that built it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import sqlite3
import statistics
import sys
import time
from base64 import b64encode, urlsafe_b64encode
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import identifier_pb2, literals_pb2

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"

PAYLOAD_VERSION = 2
"""Bump when the payload or the key format changes: cached databases are rebuilt."""

TASKS = 500
"""Distinct task identities the synthetic keys are spread over."""

# A reservation lease that outlives any benchmark (the holder never heartbeats during a run).
LONG_HEARTBEAT = timedelta(hours=1)


def typical_output(i: int) -> cs.CachedOutput:
    """A typical inline task result as CatalogClient stores it: two outputs plus metadata.

    Metadata carries the source task identifier and Flyte's seven key-map values, so a get
    exercises every column and the output join, the worst case for flytecache's overhead.
    """
    literals = literals_pb2.LiteralMap()
    literals.literals["n"].scalar.primitive.integer = i
    literals.literals["s"].scalar.primitive.string_value = f"result-{i}"
    output = cs.CachedOutput(output_literals=literals)
    task = i % TASKS
    output.metadata.source_identifier.CopyFrom(
        identifier_pb2.Identifier(
            resource_type=identifier_pb2.TASK,
            project="flytesnacks",
            domain="development",
            name=f"workflows.pipeline.task_{task}",
            version="v42",
            org="acme",
        )
    )
    output.metadata.key_map.values.update(
        {
            "task-version": "v42",
            "execution-name": f"a{i:019d}",
            "exec-domain": "development",
            "exec-project": "flytesnacks",
            "exec-node": "n0",
            "exec-attempt": "0",
            "exec-org": "acme",
        }
    )
    return output


PAYLOADS = 1024
"""Distinct outputs in a populated database: entry i holds ``stored_output(i)``."""


def stored_output(i: int) -> cs.CachedOutput:
    """What populated entry ``i`` holds (one of PAYLOADS distinct typical outputs)."""
    return typical_output(i % PAYLOADS)


def entry_key(i: int) -> str:
    """A stored key shaped like the server's: ``<project>-<domain>-<Flyte cache key>``.

    ~150 characters of base64 hashes, spread uniformly over the key space like real ones.
    """
    task = i % TASKS
    ident = b64encode(hashlib.sha256(b"task-%d" % task).digest()).decode()
    inputs = urlsafe_b64encode(hashlib.sha256(b"inputs-%d" % i).digest()).rstrip(b"=").decode()
    return f"flytesnacks-development-{ident}-GKw-c0Pw-Rl4dUo2X-{inputs}-1.0"


def lease_key(i: int) -> str:
    """A reservation key in the populated database (Flyte's ``reservation:`` form)."""
    return "reservation:" + entry_key(i)


def raw_connection(path: str | os.PathLike[str]) -> sqlite3.Connection:
    """A plain sqlite3 connection with the store's PRAGMAs (WAL, NORMAL, busy timeout)."""
    conn = sqlite3.connect(os.fspath(path), isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 5000")
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def put_args(sql: Any, key: str, output: cs.CachedOutput, *, overwrite: bool) -> tuple[Any, Any]:
    """The exact (put args, output rows) the store binds for ``put(key, output)``.

    Flattened ahead of timing so the raw baseline does only the database work.
    """
    from flytecache.store.codec import entry_params

    params, literals = entry_params(key, output)
    now = time.time_ns() // 1000
    params.update(
        request_created_at=None,
        created_at=now,
        last_updated_at=now,
        overwrite=overwrite,
        writes=0,
        expired_before=-(2**63),
    )
    return sql.put.args(params), literals


class _OwnNames(dict[str, str]):
    """Statement parameters whose every value is its own name."""

    def __missing__(self, name: str) -> str:
        return name


def bind_order(statement: Any) -> tuple[str, ...]:
    """The parameter names of one of ``CacheStore.statements``, in the order the driver binds them.

    Read through the statement's documented ``args(params)``, given each parameter's name as its
    value. The raw helpers bind positionally (sqlite3's paramstyle); a named paramstyle has no
    order and stops the benchmark.
    """
    args = statement.args(_OwnNames())
    if isinstance(args, dict):
        raise SystemExit("the raw baselines need positional statements (SQLite)")
    return tuple(args)


def key_position(sql: Any) -> int:
    """Where the key sits in the put statement's positional arguments."""
    return bind_order(sql.put).index("key")


def raw_put(
    conn: sqlite3.Connection, sql: Any, args: Sequence[Any], literals: list[tuple[str, bytes]]
) -> None:
    """The store's put transaction on a raw connection: upsert, replace outputs, commit."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(sql.put.text, args).fetchone()
        if row is not None:
            entry_id, writes = row
            if writes:
                conn.execute(sql.delete_outputs.text, (entry_id,))
            conn.executemany(sql.insert_output.text, [(entry_id, n, v) for n, v in literals])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def raw_reserve(conn: sqlite3.Connection, sql: Any, key: str, owner: str) -> str:
    """The store's get-or-extend transaction on a raw connection; returns the holder."""
    hb = 10_000_000
    params = {"key": key, "owner_id": owner, "heartbeat_interval": hb, "lease": 3 * hb}
    params["now"] = time.time_ns() // 1000
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute(sql.reserve.text, sql.reserve.args(params)).fetchone()
        holder = owner
        if row is None:
            held = conn.execute(sql.holder.text, (key,)).fetchone()
            holder = held[0] if held is not None else owner
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return str(holder)


def raw_release(conn: sqlite3.Connection, sql: Any, key: str, owner: str) -> None:
    """The store's release transaction on a raw connection."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(sql.release.text, (key, owner))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def check_reserve_sql(sql: Any) -> None:
    """The raw reservation helpers bind these parameters; fail loudly if they change."""
    expected = {"key", "owner_id", "heartbeat_interval", "lease", "now"}
    reserve, release = bind_order(sql.reserve), bind_order(sql.release)
    if set(reserve) != expected or release != ("key", "owner_id"):
        raise SystemExit(f"the store's reservation SQL changed: {reserve}, {release}")


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[index]


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else float("nan")


def rate(n: int, fn: Callable[[int], Any]) -> float:
    """Calls per second of ``fn(0..n-1)`` back to back."""
    start = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - start)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict[str, Any]:
    """The facts a reader needs to compare numbers across machines."""
    from google.protobuf.internal import api_implementation

    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    return {
        "nproc": affinity or os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "sqlite": sqlite3.sqlite_version,
        "sqlalchemy": _version("sqlalchemy"),
        "protobuf": f"{_version('protobuf')} ({api_implementation.Type()})",
        "diskcache": _version("diskcache"),
        "psycopg": _version("psycopg"),
        "flytecache": _version("flytecache"),
        "loadavg": list(os.getloadavg()),
    }


def revision() -> str:
    """The flytecache code measured: its git commit, and whether the store was modified."""
    import subprocess

    explicit = os.environ.get("FLYTECACHE_BENCH_REVISION")
    if explicit:
        return explicit
    try:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--", "flytecache", "alembic"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with uncommitted changes to flytecache/alembic" if dirty else "")


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")
