"""Client fidelity (SPEC §5.3): a stored entry the client counts as a miss is recomputed once and
replaced; ``max_cache_age`` zero means no limit and a positive one travels with every put; one
operation derives its key once; the client follows its store's clock; the memo is an LRU.

Each stale-entry case runs on SQLite, on PostgreSQL and through a real ``flytecache serve``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _catalog import literal_map, make_key
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import catalog_pb2

from flytecache import CacheStore, CatalogClient, CatalogKey, ReservationCache
from flytecache.errors import AlreadyExistsError, NotFoundError, StaleEntryError

HIT = catalog_pb2.CatalogCacheStatus.CACHE_HIT
Res = catalog_pb2.CatalogReservation.Status


class Backend:
    """A place to store entries and a way to make them a day older than they are."""

    def __init__(self, target: CacheStore | str, age: object) -> None:
        self.target = target
        self._age = age

    def client(self, **kwargs: object) -> CatalogClient:
        return CatalogClient(self.target, **kwargs)  # type: ignore[arg-type]

    def age_by(self, delta: timedelta) -> None:
        """Make every stored entry ``delta`` older, as the client sees it."""
        self._age(delta)  # type: ignore[operator]


@pytest.fixture(params=["sqlite", "postgresql", "remote"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock) -> Iterator[Backend]:
    """Locally (the store's fake clock is advanced) or through ``flytecache serve`` (real
    clock: entries are made older by rewriting ``last_updated_at`` in the database, in its
    column and in the stored bytes a get returns)."""
    if request.param == "remote":
        server = request.getfixturevalue("cache_server")
        with CacheStore.open(server.database) as store:
            with store.engine.begin() as conn:  # the server is shared by the session
                conn.exec_driver_sql("DELETE FROM entries")
                conn.exec_driver_sql("DELETE FROM reservations")

            def age(delta: timedelta) -> None:
                with store.engine.begin() as conn:
                    rows = conn.exec_driver_sql("SELECT id, payload FROM entries").all()
                    for entry_id, payload in rows:
                        output = cs.CachedOutput.FromString(bytes(payload))
                        updated = output.metadata.last_updated_at.ToDatetime() - delta
                        output.metadata.last_updated_at.FromDatetime(updated)
                        conn.exec_driver_sql(
                            "UPDATE entries SET payload = ?, "
                            "last_updated_at = last_updated_at - ? WHERE id = ?",
                            (
                                output.SerializeToString(),
                                delta // timedelta(microseconds=1),
                                entry_id,
                            ),
                        )

            yield Backend(server.url, age)
        return
    url = (
        str(tmp_path / "cache.db")
        if request.param == "sqlite"
        else request.getfixturevalue("migrated_pg_url")
    )
    with CacheStore.open(url, clock=clock) as store:
        yield Backend(store, clock.advance)


def _counting(value: int) -> tuple[list[int], object]:
    calls: list[int] = []

    def compute():
        calls.append(value)
        return literal_map(o=value)

    return calls, compute


def test_over_age_entry_is_recomputed_once_then_hits(backend: Backend) -> None:
    with backend.client(max_cache_age=timedelta(days=1)) as client:
        client.put(make_key(), literal_map(o=1))
        backend.age_by(timedelta(days=2))
        with pytest.raises(StaleEntryError, match="over age limit"):
            client.get(make_key())
        calls, compute = _counting(2)
        first = client.get_or_compute(make_key(), compute)  # type: ignore[arg-type]
        assert first.outputs == literal_map(o=2)
        second = client.get_or_compute(make_key(), compute)  # type: ignore[arg-type]
        assert second.outputs == literal_map(o=2)
        assert second.status.cache_status == HIT
        assert calls == [2]


def test_entry_whose_blob_is_gone_is_recomputed_and_replaced(
    backend: Backend, tmp_path: Path
) -> None:
    blob = tmp_path / "outputs.pb"
    blob.write_bytes(literal_map(o=1).SerializeToString())
    with backend.client() as client:
        client.put(make_key(), blob.as_uri())
        blob.unlink()
        with pytest.raises(StaleEntryError, match="no longer exists"):
            client.get(make_key())
        calls, compute = _counting(3)
        assert client.get_or_compute(make_key(), compute).outputs == literal_map(o=3)  # type: ignore[arg-type]
        hit = client.get(make_key())
        assert hit.outputs == literal_map(o=3) and hit.output_uri is None  # now stored inline
        client.get_or_compute(make_key(), compute)  # type: ignore[arg-type]
        assert calls == [3]


def test_entry_whose_blob_is_unreadable_is_recomputed(backend: Backend, tmp_path: Path) -> None:
    blob = tmp_path / "outputs.pb"
    blob.write_bytes(literal_map(o=1).SerializeToString())
    with backend.client() as client:
        client.put(make_key(), str(blob))
        blob.write_bytes(b"\xff\xff\xff\xff")  # not a LiteralMap
        with pytest.raises(StaleEntryError, match="not a serialized LiteralMap"):
            client.get(make_key())
        calls, compute = _counting(4)
        assert client.get_or_compute(make_key(), compute).outputs == literal_map(o=4)  # type: ignore[arg-type]
        assert client.get_or_compute(make_key(), compute).outputs == literal_map(o=4)  # type: ignore[arg-type]
        assert calls == [4]


def test_put_sends_max_age_so_a_stale_entry_is_replaced(backend: Backend) -> None:
    with backend.client(max_cache_age=timedelta(days=1)) as client:
        client.put(make_key(), literal_map(o=1))
        with pytest.raises(AlreadyExistsError):
            client.put(make_key(), literal_map(o=2))  # fresh: kept
        backend.age_by(timedelta(days=2))
        client.put(make_key(), literal_map(o=3))  # over age: replaced, not ALREADY_EXISTS
        assert client.get(make_key()).outputs == literal_map(o=3)


def test_zero_max_cache_age_means_no_limit(backend: Backend) -> None:
    with backend.client(max_cache_age=timedelta(0)) as client:
        client.put(make_key(), literal_map(o=1))
        backend.age_by(timedelta(days=3650))
        assert client.get(make_key()).outputs == literal_map(o=1)
        # No max_age is sent: a present-but-zero one would overwrite every entry (SPEC §3).
        with pytest.raises(AlreadyExistsError):
            client.put(make_key(), literal_map(o=2))
        calls, compute = _counting(5)
        assert client.get_or_compute(make_key(), compute).outputs == literal_map(o=1)  # type: ignore[arg-type]
        assert calls == []


def test_a_slot_can_override_the_age_limit(store: CacheStore, clock) -> None:
    with CatalogClient(store, max_cache_age=timedelta(days=1)) as client:
        client.put(make_key(), literal_map(o=1))
        clock.advance(timedelta(days=2))
        assert client.slot(make_key(), max_cache_age=timedelta(0)).get().outputs == literal_map(o=1)
        with pytest.raises(StaleEntryError):
            client.slot(make_key()).get()
        with pytest.raises(StaleEntryError):
            client.slot(make_key(), max_cache_age=timedelta(days=1, seconds=-1)).get()


def test_plain_miss_is_not_stale(store: CacheStore) -> None:
    with CatalogClient(store) as client:
        with pytest.raises(NotFoundError) as raised:
            client.get(make_key())
        assert not isinstance(raised.value, StaleEntryError)
        assert client.slot(make_key()).lookup() == (None, False)


def test_client_on_a_store_uses_the_store_clock(store: CacheStore, clock) -> None:
    clock.set(datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=UTC))
    with CatalogClient(store, max_cache_age=timedelta(hours=1)) as client:
        client.put(make_key(), literal_map(o=1))
        created = store.get(_stored(client)).metadata.created_at.ToDatetime(tzinfo=UTC)
        assert created == clock.now
        clock.advance(timedelta(hours=2))  # the client sees the store's clock move
        with pytest.raises(StaleEntryError):
            client.get(make_key())
    own = datetime(2040, 1, 1, tzinfo=UTC)
    with CatalogClient(store, clock=lambda: own) as client:  # its own clock wins
        client.update(make_key(), literal_map(o=2))
        assert store.get(_stored(client)).metadata.created_at.ToDatetime(tzinfo=UTC) == own


def _stored(client: CatalogClient) -> str:
    return f"flytesnacks-development-{client.cache_key(make_key())}"


def test_get_or_compute_reads_callable_inputs_once(store: CacheStore) -> None:
    reads: list[int] = []

    def inputs():
        reads.append(1)
        return literal_map(a=1, b=2)

    base = make_key()
    key = CatalogKey(
        identifier=base.identifier,
        cache_version=base.cache_version,
        typed_interface=base.typed_interface,
        inputs=inputs,
    )

    def compute():
        time.sleep(0.35)  # several heartbeats happen meanwhile
        return literal_map(o=1)

    with CatalogClient(store) as client:
        client.get_or_compute(key, compute, heartbeat_interval=timedelta(milliseconds=100))
        assert reads == [1]
        assert client.get(make_key()).outputs == literal_map(o=1)  # the same key as from a map


def test_reservation_memo_is_least_recently_used(store: CacheStore) -> None:
    client = CatalogClient(store, reservation_cache_size=2)
    now = datetime.now(UTC)
    client.update_reservation_cache("a", ReservationCache(now, Res.RESERVATION_ACQUIRED))
    client.update_reservation_cache("b", ReservationCache(now, Res.RESERVATION_EXISTS))
    assert client.get_reservation_cache("a").reservation_status == Res.RESERVATION_ACQUIRED
    client.update_reservation_cache("c", ReservationCache(now, Res.RESERVATION_RELEASED))
    assert client.get_reservation_cache("a").reservation_status == Res.RESERVATION_ACQUIRED
    assert client.get_reservation_cache("b") == ReservationCache()  # evicted
    assert client.get_reservation_cache("c").reservation_status == Res.RESERVATION_RELEASED
