"""Every store operation at 1k, 100k and 1M entries, with its baselines in the same run.

Run with ``pytest benchmarks/bench_store.py --benchmark-only`` (``benchmarks.run`` does, with
its options). ``FLYTECACHE_BENCH_SIZES=1000,100000`` picks the database sizes.

Each operation is timed three ways where a peer exists:

* ``flytecache`` — the public ``CacheStore`` method (validation, pooling, protobuf in and out);
* ``limit`` — ``benchmarks.limit``: one statement per operation on a ``kv`` and a ``lease``
  table with the store's PRAGMAs (issue #14's limit);
* ``diskcache`` — the same key and serialized value in diskcache (``Cache.get``/``Cache.set``;
  ``Lock`` acquire+release as the peer of a lease). ``diskcache+parse`` adds
  ``CachedOutput.FromString`` so it returns what ``CacheStore.get`` returns.

Databases come pre-populated from ``benchmarks.populate`` (cached) and are copied per session,
so writes never touch the cached files. Write benchmarks use a fresh key per call (or per
round, via ``pedantic`` setup) so each measures the same state; every benchmark checks its
result after timing. ``client_get`` is ``CatalogClient.get``: Flyte's cache-key derivation for
a 20-input task, then the scoped store read.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import diskcache
import pytest
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from benchmarks import populate
from benchmarks._common import (
    LONG_HEARTBEAT,
    entry_key,
    lease_key,
    stored_output,
    typical_output,
)
from benchmarks.limit import Limit
from flytecache import CacheStore, StoreSettings
from flytecache.errors import NotFoundError

SIZES = [int(s) for s in os.environ.get("FLYTECACHE_BENCH_SIZES", "1000,100000,1000000").split(",")]
ROUNDS = int(os.environ.get("FLYTECACHE_BENCH_ROUNDS", "500"))
"""Rounds for the benchmarks that need a setup per call (release)."""
SAMPLE = 1000
HIT_SAMPLE = 20_000
"""Distinct random keys a get cycles over: more than any page cache holds at 1M entries."""
OWNER = "bench-owner"


@dataclass
class Db:
    """One populated database and everything opened on it."""

    size: int
    store: CacheStore
    limit: Limit
    cache: diskcache.Cache
    hits: list[int]
    fresh: Iterator[int] = field(default_factory=lambda: itertools.count())

    def new_index(self) -> int:
        """An entry index that is in neither database (never used before in this session)."""
        return self.size + 1 + next(self.fresh)


@pytest.fixture(scope="module", params=SIZES, ids=lambda size: f"{size}")
def db(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Db]:
    size = request.param
    tmp = tmp_path_factory.mktemp(f"db{size}")
    settings = StoreSettings(max_heartbeat=LONG_HEARTBEAT)
    store = CacheStore.open(populate.copy("store", size, tmp), settings=settings)
    limit = Limit.open(populate.copy("limit", size, tmp))
    cache = diskcache.Cache(str(populate.copy("diskcache", size, tmp)))
    hits = random.Random(size).sample(range(size), min(HIT_SAMPLE, size))
    yield Db(size, store, limit, cache, hits)
    cache.close()
    limit.close()
    store.close()


def _tag(benchmark: Any, db: Db, op: str, impl: str) -> None:
    benchmark.group = f"{op} @ {db.size}"
    benchmark.extra_info.update(op=op, impl=impl, size=db.size)


def _cycle(values: list[Any]) -> Callable[[], Any]:
    return itertools.cycle(values).__next__


# -- get ------------------------------------------------------------------------------------


IMPLS_GET = ["flytecache", "limit", "diskcache", "diskcache+parse"]


@pytest.mark.parametrize("impl", IMPLS_GET)
def test_get_hit(benchmark: Any, db: Db, impl: str) -> None:
    _tag(benchmark, db, "get_hit", impl)
    keys = [entry_key(i) for i in db.hits]
    key = _cycle(keys)
    fn: Callable[[], Any]
    if impl == "flytecache":
        get = db.store.get

        def fn() -> Any:
            return get(key())

    elif impl == "limit":
        get = db.limit.get

        def fn() -> Any:
            return get(key())

    elif impl == "diskcache":
        get = db.cache.get

        def fn() -> Any:
            return get(key())

    else:
        get, parse = db.cache.get, cs.CachedOutput.FromString

        def fn() -> Any:
            return parse(get(key()))

    benchmark(fn)
    # Checked after timing: every impl found the entry.
    first = entry_key(db.hits[0])
    expected = stored_output(db.hits[0])
    assert db.store.get(first).output_literals == expected.output_literals
    assert db.limit.get(first) == expected
    assert cs.CachedOutput.FromString(db.cache.get(first)) == expected


@pytest.mark.parametrize("impl", ["flytecache", "limit", "diskcache"])
def test_get_miss(benchmark: Any, db: Db, impl: str) -> None:
    _tag(benchmark, db, "get_miss", impl)
    key = _cycle([entry_key(db.size + 10_000_000 + i) for i in range(SAMPLE)])
    fn: Callable[[], Any]
    if impl == "flytecache":
        get = db.store.get

        def fn() -> Any:
            try:
                return get(key())
            except NotFoundError:
                return None

    elif impl == "limit":
        get = db.limit.get

        def fn() -> Any:
            return get(key())

    else:
        get = db.cache.get

        def fn() -> Any:
            return get(key())

    benchmark(fn)
    assert fn() is None


# -- put ------------------------------------------------------------------------------------


def _put_fn(
    db: Db, impl: str, next_key: Callable[[], str], *, overwrite: bool
) -> Callable[[], Any]:
    output = typical_output(db.size + 1)
    if impl == "flytecache":
        put = db.store.put

        def fn() -> Any:
            return put(next_key(), output, overwrite=overwrite)

        return fn
    if impl == "limit":
        limit_put = db.limit.put

        def limit_fn() -> Any:
            return limit_put(next_key(), output, overwrite=overwrite)

        return limit_fn
    set_ = db.cache.set

    def dc_fn() -> Any:
        # The serialization is diskcache's side of what put() does to a CachedOutput.
        return set_(next_key(), output.SerializeToString())

    return dc_fn


@pytest.mark.parametrize("impl", ["flytecache", "limit", "diskcache"])
def test_put_new(benchmark: Any, db: Db, impl: str) -> None:
    _tag(benchmark, db, "put_new", impl)
    written: list[str] = []

    def next_key() -> str:
        written.append(entry_key(db.new_index()))
        return written[-1]

    benchmark(_put_fn(db, impl, next_key, overwrite=False))
    last = written[-1]
    if impl == "diskcache":
        assert db.cache.get(last) is not None
    elif impl == "limit":
        assert db.limit.get(last) == typical_output(db.size + 1)
    else:
        assert db.store.get(last).output_literals == typical_output(db.size + 1).output_literals


@pytest.mark.parametrize("impl", ["flytecache", "limit", "diskcache"])
def test_put_overwrite(benchmark: Any, db: Db, impl: str) -> None:
    _tag(benchmark, db, "put_overwrite", impl)
    key = _cycle([entry_key(i) for i in db.hits])
    benchmark(_put_fn(db, impl, key, overwrite=True))
    first = entry_key(db.hits[0])
    expected = typical_output(db.size + 1)
    if impl == "diskcache":
        assert cs.CachedOutput.FromString(db.cache.get(first)) == expected
    elif impl == "limit":
        assert db.limit.get(first) == expected
        db.limit.put(first, stored_output(db.hits[0]), overwrite=True)
    else:
        stored = db.store.get(first)
        assert stored.output_literals == expected.output_literals
        # Restore the original entry so later benchmarks read what populate wrote.
        db.store.put(first, stored_output(db.hits[0]), overwrite=True)


# -- reservations -----------------------------------------------------------------------------


def _reserve_fn(db: Db, impl: str, next_key: Callable[[], str], owner: str) -> Callable[[], Any]:
    """One GetOrExtendReservation; returns whether ``owner`` holds the lease afterwards."""
    if impl == "flytecache":
        reserve, hb = db.store.get_or_extend_reservation, LONG_HEARTBEAT

        def fn() -> Any:
            return reserve(next_key(), owner, hb).owner_id == owner

        return fn
    acquire, ttl = db.limit.acquire, int(LONG_HEARTBEAT.total_seconds() * 1_000_000) * 3

    def limit_fn() -> Any:
        return acquire(next_key(), owner, ttl)

    return limit_fn


def _hold(db: Db, impl: str, key: str, owner: str) -> None:
    if impl == "flytecache":
        db.store.get_or_extend_reservation(key, owner, LONG_HEARTBEAT)
    else:
        db.limit.acquire(key, owner, int(LONG_HEARTBEAT.total_seconds() * 1_000_000) * 3)


@pytest.mark.parametrize("impl", ["flytecache", "limit"])
def test_reserve_new(benchmark: Any, db: Db, impl: str) -> None:
    _tag(benchmark, db, "reserve_new", impl)
    keys: list[str] = []

    def next_key() -> str:
        keys.append(lease_key(db.new_index()))
        return keys[-1]

    benchmark(_reserve_fn(db, impl, next_key, OWNER))
    assert not _reserve_fn(db, impl, lambda: keys[-1], "someone-else")()


@pytest.mark.parametrize("impl", ["flytecache", "limit"])
def test_reserve_extend(benchmark: Any, db: Db, impl: str) -> None:
    _tag(benchmark, db, "reserve_extend", impl)
    key = lease_key(db.new_index())
    _hold(db, impl, key, OWNER)
    fn = _reserve_fn(db, impl, lambda: key, OWNER)
    benchmark(fn)
    assert fn()


@pytest.mark.parametrize("impl", ["flytecache", "limit"])
def test_reserve_held_by_other(benchmark: Any, db: Db, impl: str) -> None:
    _tag(benchmark, db, "reserve_held", impl)
    key = lease_key(db.new_index())
    _hold(db, impl, key, "holder")
    fn = _reserve_fn(db, impl, lambda: key, OWNER)
    benchmark(fn)
    assert not fn()


@pytest.mark.parametrize("impl", ["flytecache", "limit"])
def test_release(benchmark: Any, db: Db, impl: str) -> None:
    _tag(benchmark, db, "release", impl)
    keys: list[str] = []

    def setup() -> tuple[tuple[str], dict[str, Any]]:
        keys.append(lease_key(db.new_index()))
        if impl == "flytecache":
            db.store.get_or_extend_reservation(keys[-1], OWNER, LONG_HEARTBEAT)
        else:
            db.limit.acquire(keys[-1], OWNER)
        return (keys[-1],), {}

    if impl == "flytecache":
        release = db.store.release_reservation

        def fn(key: str) -> Any:
            return release(key, OWNER)

    else:
        limit_release = db.limit.release

        def fn(key: str) -> Any:
            return limit_release(key, OWNER)

    benchmark.pedantic(fn, setup=setup, rounds=ROUNDS, iterations=1, warmup_rounds=5)
    if impl == "flytecache":
        assert (
            db.store.get_or_extend_reservation(keys[-1], "someone-else").owner_id == "someone-else"
        )
    else:
        assert db.limit.acquire(keys[-1], "someone-else")


@pytest.mark.parametrize("impl", ["flytecache", "limit", "diskcache"])
def test_lease_cycle(benchmark: Any, db: Db, impl: str) -> None:
    """Acquire a free lease and release it: the peer of diskcache.Lock acquire+release."""
    _tag(benchmark, db, "lease_cycle", impl)
    key = _cycle([lease_key(db.new_index()) for _ in range(SAMPLE)])
    fn: Callable[[], Any]
    if impl == "flytecache":
        reserve, release = db.store.get_or_extend_reservation, db.store.release_reservation

        def fn() -> Any:
            k = key()
            reserve(k, OWNER)
            release(k, OWNER)

    elif impl == "limit":
        acquire, release = db.limit.acquire, db.limit.release

        def fn() -> Any:
            k = key()
            acquire(k, OWNER)
            release(k, OWNER)

    else:
        cache = db.cache

        def fn() -> Any:
            lock = diskcache.Lock(cache, key(), expire=30)
            lock.acquire()
            lock.release()

    benchmark(fn)
    probe = key()
    if impl == "diskcache":
        assert probe not in db.cache
    elif impl == "limit":
        assert db.limit.acquire(probe, "someone-else")
        db.limit.release(probe, "someone-else")
    else:
        assert db.store.get_or_extend_reservation(probe, "someone-else").owner_id == "someone-else"
        db.store.release_reservation(probe, "someone-else")


# -- the catalog client: Flyte's key derivation plus the store read ---------------------------


def test_client_get(benchmark: Any, db: Db) -> None:
    from benchmarks.bench_keys import KEY
    from flytecache import CatalogClient

    _tag(benchmark, db, "client_get", "flytecache")
    client = CatalogClient(db.store)
    client.update(KEY, typical_output(0).output_literals)
    entry = benchmark(client.get, KEY)
    assert entry.outputs == typical_output(0).output_literals
