"""RemoteCache (the CatalogClient's http(s):// transport) against the real server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from _server_helpers import ServerProcess, free_port, uri_output
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2

from flytecache import CacheStore
from flytecache.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    NotFoundError,
    StorageError,
    UnavailableError,
)
from flytecache.remote import RemoteCache
from flytecache.scoping import Scope, scoped_key

SCOPE = Scope(org="acme", project="proj", domain="dev")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("server")
    with ServerProcess(
        tmp / "cache.db", "--max-heartbeat", "2s", log_path=tmp / "server.log"
    ) as proc:
        yield proc


@pytest.fixture
def remote(server: ServerProcess) -> Iterator[RemoteCache]:
    with RemoteCache(server.url + "/") as cache:
        yield cache


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return f"rk-{request.node.name}"


def test_entries_round_trip_with_the_local_errors(remote: RemoteCache, key: str) -> None:
    with pytest.raises(NotFoundError) as missing:
        remote.get(SCOPE, key)
    assert missing.value.code == "NOT_FOUND"
    assert str(missing.value) == f'cache entry "proj-dev-{key}" not found'
    literals = literals_pb2.LiteralMap()
    literals.literals["x"].scalar.primitive.integer = 3
    remote.put(SCOPE, key, cs.CachedOutput(output_literals=literals))
    assert remote.get(SCOPE, key).output_literals == literals
    with pytest.raises(AlreadyExistsError):
        remote.put(SCOPE, key, uri_output())
    remote.put(SCOPE, key, uri_output("s3://b"), max_age=timedelta(0))  # zero: expired
    assert remote.get(SCOPE, key).output_uri == "s3://b"
    with pytest.raises(AlreadyExistsError):
        remote.put(SCOPE, key, uri_output("s3://c"), max_age=timedelta(hours=1))
    remote.put(SCOPE, key, uri_output("s3://c"), overwrite=True)
    assert remote.get(SCOPE, key).output_uri == "s3://c"
    remote.delete(SCOPE, key)
    with pytest.raises(NotFoundError):
        remote.delete(SCOPE, key)


def test_invalid_arguments(remote: RemoteCache) -> None:
    for call in (
        lambda: remote.get(SCOPE, ""),
        lambda: remote.put(SCOPE, "k", cs.CachedOutput()),
        lambda: remote.put(SCOPE, "k", "s3://not-a-message"),  # type: ignore[arg-type]
        lambda: remote.put(SCOPE, "k", uri_output(), max_age=5),  # type: ignore[arg-type]
        lambda: remote.get_or_extend_reservation(SCOPE, "k", "", None),
        lambda: remote.release_reservation(SCOPE, "", "o"),
    ):
        with pytest.raises(InvalidArgumentError):
            call()


def test_reservations(remote: RemoteCache, key: str) -> None:
    mine = remote.get_or_extend_reservation(SCOPE, key, "a", timedelta(milliseconds=500))
    assert mine.key == f"reservation:proj-dev-{key}"
    assert mine.owner_id == "a"
    assert mine.heartbeat_interval.ToTimedelta() == timedelta(milliseconds=500)
    theirs = remote.get_or_extend_reservation(SCOPE, key, "b", None)
    assert theirs.owner_id == "a" and theirs.expires_at == mine.expires_at
    remote.release_reservation(SCOPE, key, "b")  # not the holder: nothing happens
    remote.release_reservation(SCOPE, key, "a")
    assert remote.get_or_extend_reservation(SCOPE, key, "b", None).owner_id == "b"
    clamped = remote.get_or_extend_reservation(SCOPE, key, "b", timedelta(hours=1))
    assert clamped.heartbeat_interval.ToTimedelta() == timedelta(seconds=2)


def test_same_file_as_a_local_store(server: ServerProcess, remote: RemoteCache, key: str) -> None:
    remote.put(SCOPE, key, uri_output("s3://remote"))
    with CacheStore.open(server.database) as store:
        assert store.get(scoped_key("proj", "dev", key)).output_uri == "s3://remote"
        store.put(scoped_key("proj", "dev", key + "-l"), uri_output("s3://local"))
    assert remote.get(SCOPE, key + "-l").output_uri == "s3://local"


def test_thread_safe(remote: RemoteCache) -> None:
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for i in range(40):
                remote.put(SCOPE, f"t-{n}-{i}", uri_output(f"s3://{n}/{i}"))
                assert remote.get(SCOPE, f"t-{n}-{i}").output_uri == f"s3://{n}/{i}"
                lease = remote.get_or_extend_reservation(SCOPE, f"t-{i}", f"o{n}", None)
                if lease.owner_id == f"o{n}":
                    remote.release_reservation(SCOPE, f"t-{i}", f"o{n}")
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []


def test_connection_refused_is_unavailable_with_the_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with RemoteCache(url, timeout=5) as remote, pytest.raises(UnavailableError) as excinfo:
        remote.get(SCOPE, "k")
    assert url in str(excinfo.value)
    assert excinfo.value.code == "UNAVAILABLE"


def test_a_url_that_is_not_the_cache_service(server: ServerProcess) -> None:
    # /healthz/flyteidl2...: no such procedure there, a Connect UNIMPLEMENTED.
    with RemoteCache(server.url + "/healthz") as remote, pytest.raises(StorageError) as excinfo:
        remote.get(SCOPE, "k")
    assert excinfo.value.code == "UNIMPLEMENTED"
    assert server.url in str(excinfo.value)


def test_closed_cache_refuses_calls(server: ServerProcess) -> None:
    remote = RemoteCache(server.url)
    remote.close()
    remote.close()
    with pytest.raises(UnavailableError):
        remote.get(SCOPE, "k")


@pytest.mark.parametrize(
    ("url", "kwargs"),
    [
        ("localhost:8094", {}),
        ("grpc://localhost:8094", {}),
        ("http://", {}),
        ("http://localhost:8094", {"timeout": 0}),
        ("http://localhost:8094", {"auth_token": " "}),
    ],
)
def test_bad_construction(url: str, kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgumentError):
        RemoteCache(url, **kwargs)  # type: ignore[arg-type]
