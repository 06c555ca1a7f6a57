"""Builders and readers shared by the store tests (``test_store_*``, ``test_settings``...)."""

from __future__ import annotations

import contextlib
import os
import select
import sqlite3
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2
from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from flytecache import CacheStore
from flytecache.errors import FlyteCacheError

US = timedelta(microseconds=1)
MAX_HB = timedelta(seconds=10)  # StoreSettings defaults (Flyte's)
GRACE = 3


def ts(dt: datetime) -> Timestamp:
    out = Timestamp()
    out.FromDatetime(dt)
    return out


def dur(delta: timedelta) -> Duration:
    out = Duration()
    out.FromTimedelta(delta)
    return out


def int_literal(value: int) -> literals_pb2.Literal:
    return literals_pb2.Literal(
        scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(integer=value))
    )


def string_literal(value: str) -> literals_pb2.Literal:
    return literals_pb2.Literal(
        scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(string_value=value))
    )


def uri_output(uri: str, metadata: cs.Metadata | None = None) -> cs.CachedOutput:
    return cs.CachedOutput(output_uri=uri, metadata=metadata)


def inline_output(
    literals: dict[str, literals_pb2.Literal], metadata: cs.Metadata | None = None
) -> cs.CachedOutput:
    return cs.CachedOutput(
        output_literals=literals_pb2.LiteralMap(literals=literals), metadata=metadata
    )


def check_error(error: BaseException, code: str) -> None:
    assert isinstance(error, FlyteCacheError)
    assert error.code == code


def query(target: str | CacheStore, sql: str) -> list[tuple[Any, ...]]:
    """Read the database directly, bypassing the store (a SQLite path, or a store's engine)."""
    if isinstance(target, CacheStore):
        with target.engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(sql).fetchall()]
    with contextlib.closing(sqlite3.connect(target)) as conn:
        return conn.execute(sql).fetchall()


RAW_LEASE = (
    "INSERT INTO reservations (key, key_hash, owner_id, heartbeat_interval, expires_at,"
    " created_at, updated_at) VALUES (?, ?, 'o', 1, 1, 1, 1)"
)
"""An expired lease, written by raw SQL (a write to hold a lock or grow the WAL with): bind
the key and ``flytecache.store.keyhash.key_hash(key)``."""


def lease_rows(target: str | CacheStore) -> list[tuple[Any, ...]]:
    return query(target, "SELECT * FROM reservations ORDER BY key")


def lease(key: str, owner: str, hb: timedelta, expires: datetime) -> cs.Reservation:
    return cs.Reservation(
        key=key, owner_id=owner, heartbeat_interval=dur(hb), expires_at=ts(expires)
    )


def in_forked_child(child: Callable[[], bool], *, timeout: float = 30) -> bool:
    """Run ``child`` in a forked process: whether it returned True (False when it raised or
    did not answer within ``timeout`` seconds, e.g. stuck on a lock it inherited)."""
    read_end, write_end = os.pipe()
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            ok = False
            try:
                ok = child()
            finally:
                os.write(write_end, b"\x00" if ok else b"\x01")
                os._exit(0)
        ready, _, _ = select.select([read_end], [], [], timeout)
        answer = os.read(read_end, 1) if ready else b""
        if not ready:
            os.kill(pid, 9)
        os.waitpid(pid, 0)
        return answer == b"\x00"
    finally:
        os.close(read_end)
        os.close(write_end)


def wait_until(
    condition: Callable[[], object], what: str = "the condition", timeout: float = 30
) -> None:
    """Poll ``condition`` until it is true; AssertionError naming ``what`` after ``timeout``
    seconds (a bound for a hung test, not a measurement: never assert on speed with it)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
