"""CatalogClient on a real SQLite file: Flyte's catalog semantics, metadata, URIs, the memo."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from _catalog import literal_map, make_key
from flyteidl2.core import catalog_pb2, identifier_pb2

from flytecache import (
    CacheStore,
    CatalogClient,
    CatalogKey,
    ExecutionMetadata,
    ReservationCache,
)
from flytecache.errors import AlreadyExistsError, InvalidArgumentError, NotFoundError

HIT = catalog_pb2.CatalogCacheStatus.CACHE_HIT
POPULATED = catalog_pb2.CatalogCacheStatus.CACHE_POPULATED
Res = catalog_pb2.CatalogReservation.Status


@pytest.fixture(params=["sqlite", "postgresql", "remote"])
def client(request: pytest.FixtureRequest, tmp_path: Path, clock):
    """The same client tests locally on both backends and remotely through ``flytecache serve``.

    ``client.test_store`` is a local store on the same database, to look under the hood.
    """
    if request.param == "remote":
        server = request.getfixturevalue("cache_server")
        with CacheStore.open(server.database) as store:
            with store.engine.begin() as conn:  # the server is shared by the session
                conn.exec_driver_sql("DELETE FROM entries")
                conn.exec_driver_sql("DELETE FROM reservations")
            with CatalogClient(server.url) as opened:
                opened.test_store = store  # type: ignore[attr-defined]
                yield opened
        return
    url = (
        str(tmp_path / "cache.db")
        if request.param == "sqlite"
        else request.getfixturevalue("migrated_pg_url")
    )
    with CacheStore.open(url, clock=clock) as store, CatalogClient(store, clock=clock) as opened:
        opened.test_store = store  # type: ignore[attr-defined]
        yield opened


def task_execution(attempt: int = 2) -> identifier_pb2.TaskExecutionIdentifier:
    return identifier_pb2.TaskExecutionIdentifier(
        task_id=identifier_pb2.Identifier(
            resource_type=identifier_pb2.ResourceType.TASK,
            project="flytesnacks",
            domain="development",
            name="my.task",
            version="v7",
            org="org",
        ),
        node_execution_id=identifier_pb2.NodeExecutionIdentifier(
            node_id="n0",
            execution_id=identifier_pb2.WorkflowExecutionIdentifier(
                project="p1", domain="d1", name="exec-1", org="org"
            ),
        ),
        retry_attempt=attempt,
    )


def test_miss_then_hit(client: CatalogClient) -> None:
    key = make_key()
    with pytest.raises(NotFoundError):
        client.get(key)
    status = client.put(key, literal_map(o=3))
    assert status.cache_status == POPULATED
    entry = client.get(key)
    assert entry.status.cache_status == HIT
    assert entry.outputs == literal_map(o=3)
    assert entry.output_uri is None


def test_put_existing_raises_and_update_overwrites(client: CatalogClient) -> None:
    key = make_key()
    client.put(key, literal_map(o=1))
    with pytest.raises(AlreadyExistsError):
        client.put(key, literal_map(o=2))
    assert client.update(key, literal_map(o=2)).cache_status == POPULATED
    assert client.get(key).outputs == literal_map(o=2)


def test_update_creates_when_absent(client: CatalogClient) -> None:
    assert client.update(make_key(), literal_map(o=5)).cache_status == POPULATED
    assert client.get(make_key()).outputs == literal_map(o=5)


def test_task_version_does_not_change_the_key_but_cache_version_does(
    client: CatalogClient,
) -> None:
    client.put(make_key(version="v1"), literal_map(o=1))
    assert client.get(make_key(version="v2")).outputs == literal_map(o=1)
    with pytest.raises(NotFoundError):
        client.get(make_key(cache_version="2.0"))
    with pytest.raises(NotFoundError):
        client.get(make_key(inputs=literal_map(a=1, b=3)))


def test_ignored_inputs(client: CatalogClient) -> None:
    client.put(make_key(inputs=literal_map(a=1, b=2), ignore=("b",)), literal_map(o=1))
    hit = client.get(make_key(inputs=literal_map(a=1, b=99), ignore=("b",)))
    assert hit.outputs == literal_map(o=1)


def test_entries_are_scoped_by_project_and_domain(client: CatalogClient) -> None:
    store = client.test_store  # type: ignore[attr-defined]
    client.put(make_key(), literal_map(o=1))
    with pytest.raises(NotFoundError):
        client.get(make_key(project="other"))
    stored_key = f"flytesnacks-development-{client.cache_key(make_key())}"
    assert store.get(stored_key).output_literals == literal_map(o=1)


def test_max_cache_age_boundary(store: CacheStore, clock) -> None:
    with CatalogClient(store, clock=clock, max_cache_age=timedelta(hours=1)) as client:
        client.put(make_key(), literal_map(o=1))
        clock.advance(timedelta(hours=1))
        assert client.get(make_key()).outputs == literal_map(o=1)  # exactly the limit: a hit
        clock.advance(timedelta(microseconds=1))
        with pytest.raises(NotFoundError, match="over age limit"):
            client.get(make_key())


def test_metadata_round_trip_from_task_execution(client: CatalogClient, clock) -> None:
    created = datetime(2025, 5, 5, 12, 0, 0, 250000, tzinfo=UTC)
    status = client.put(
        make_key(),
        literal_map(o=1),
        ExecutionMetadata(task_execution_identifier=task_execution(), created_at=created),
    )
    entry = client.get(make_key())
    assert entry.status.metadata == status.metadata
    source = entry.status.metadata.source_task_execution
    assert source.task_id.version == "v7"
    assert source.task_id.name == "my.task"
    assert source.retry_attempt == 2
    assert source.node_execution_id.node_id == "n0"
    assert source.node_execution_id.execution_id == identifier_pb2.WorkflowExecutionIdentifier(
        project="p1", domain="d1", name="exec-1", org="org"
    )
    assert entry.status.metadata.dataset_id == make_key().identifier
    stored = client.test_store.get(  # type: ignore[attr-defined]
        f"flytesnacks-development-{client.cache_key(make_key())}"
    )
    assert stored.metadata.created_at.ToDatetime(tzinfo=UTC) == created
    assert dict(stored.metadata.key_map.values) == {
        "task-version": "v7",
        "execution-name": "exec-1",
        "exec-domain": "d1",
        "exec-project": "p1",
        "exec-node": "n0",
        "exec-attempt": "2",
        "exec-org": "org",
    }


def test_metadata_fallbacks_without_task_execution(client: CatalogClient) -> None:
    node = identifier_pb2.NodeExecutionIdentifier(
        node_id="n3",
        execution_id=identifier_pb2.WorkflowExecutionIdentifier(project="p", domain="d", name="e"),
    )
    client.put(make_key(), literal_map(o=1), ExecutionMetadata(node_execution_identifier=node))
    source = client.get(make_key()).status.metadata.source_task_execution
    assert source.task_id.version == "unknown"
    assert source.retry_attempt == 0
    assert source.node_execution_id.node_id == "n3"
    assert source.node_execution_id.execution_id.name == "e"

    client.update(make_key(), literal_map(o=1))
    source = client.get(make_key()).status.metadata.source_task_execution
    assert source.node_execution_id.node_id == "unknown"
    assert source.node_execution_id.execution_id.name == "unknown"
    assert source.node_execution_id.execution_id.project == "flytesnacks"
    assert source.node_execution_id.execution_id.domain == "development"
    assert source.node_execution_id.execution_id.org == "org"


def test_uri_outputs(client: CatalogClient, tmp_path: Path) -> None:
    blob = tmp_path / "outputs.pb"
    blob.write_bytes(literal_map(o=9).SerializeToString())
    client.put(make_key(), str(blob))
    entry = client.get(make_key())
    assert entry.output_uri == str(blob)
    assert entry.outputs == literal_map(o=9)

    other = make_key(name="other")
    client.put(other, blob.as_uri())  # file:// works too
    assert client.get(other).outputs == literal_map(o=9)

    blob.unlink()
    with pytest.raises(NotFoundError, match="no longer exists"):
        client.get(make_key())


def test_put_of_missing_local_uri_is_refused(client: CatalogClient, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError):
        client.put(make_key(), str(tmp_path / "nope.pb"))
    with pytest.raises(NotFoundError):
        client.put(make_key(), (tmp_path / "nope.pb").as_uri())


def test_reservations(client: CatalogClient) -> None:
    key = make_key()
    mine = client.get_or_extend_reservation(key, "me", timedelta(seconds=5))
    assert mine.owner_id == "me"
    assert mine.key == f"reservation:flytesnacks-development-{client.cache_key(key)}"
    theirs = client.get_or_extend_reservation(key, "you", timedelta(seconds=5))
    assert theirs.owner_id == "me"
    client.release_reservation(key, "you")  # not the holder: nothing happens
    assert client.get_or_extend_reservation(key, "you").owner_id == "me"
    client.release_reservation(key, "me")
    assert client.get_or_extend_reservation(key, "you").owner_id == "you"


def test_reservation_memo_is_bounded_and_thread_safe(store: CacheStore) -> None:
    client = CatalogClient(store, reservation_cache_size=100)
    empty = client.get_reservation_cache("nobody")
    assert empty.timestamp is None and empty.reservation_status == Res.RESERVATION_DISABLED
    now = datetime.now(UTC)
    client.update_reservation_cache("a", ReservationCache(now, Res.RESERVATION_ACQUIRED))
    assert client.get_reservation_cache("a") == ReservationCache(now, Res.RESERVATION_ACQUIRED)

    def hammer(offset: int) -> None:
        for i in range(2000):
            client.update_reservation_cache(f"o{offset}-{i}", ReservationCache(now, 1))
            client.get_reservation_cache(f"o{offset}-{i // 2}")

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(client._memo) == 100
    assert client.get_reservation_cache("a").reservation_status == Res.RESERVATION_DISABLED


def test_invalid_arguments(client: CatalogClient) -> None:
    with pytest.raises(InvalidArgumentError, match="key"):
        client.get("not a key")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="outputs"):
        client.put(make_key(), 42)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="outputs"):
        client.put(make_key(), "")
    with pytest.raises(InvalidArgumentError):
        client.get_or_extend_reservation(make_key(), "")
    with pytest.raises(InvalidArgumentError, match="identifier"):
        CatalogKey(identifier="x", cache_version="1", typed_interface=None)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="max_cache_age"):
        CatalogClient(client.test_store, max_cache_age=5)  # type: ignore[arg-type, attr-defined]
    with pytest.raises(InvalidArgumentError, match="target"):
        CatalogClient(42)  # type: ignore[arg-type]


def test_client_opens_and_closes_a_store_from_a_path(db_path: str) -> None:
    with CatalogClient(db_path) as client:
        client.put(make_key(), literal_map(o=1))
    with CatalogClient(f"sqlite:///{db_path}") as client:
        assert client.get(make_key()).outputs == literal_map(o=1)
