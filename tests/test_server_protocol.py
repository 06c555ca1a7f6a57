"""SPEC §3–§4 through the real server (a subprocess) with flyteidl2's generated client."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from _server_helpers import (
    ServerProcess,
    delete_req,
    get_req,
    ident,
    put_req,
    release_req,
    reserve_req,
    uri_output,
)
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.cacheservice.v2 import cacheservice_pb2 as v2
from flyteidl2.cacheservice.v2.cacheservice_connect import CacheServiceClientSync
from flyteidl2.core import identifier_pb2, literals_pb2
from google.protobuf.timestamp_pb2 import Timestamp

from flytecache import CacheStore
from flytecache.scoping import scoped_key

MAX_HB = timedelta(seconds=2)
GRACE = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("server")
    with ServerProcess(
        tmp / "cache.db",
        "--max-heartbeat",
        "2s",
        "--grace-multiplier",
        str(GRACE),
        log_path=tmp / "server.log",
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> CacheServiceClientSync:
    return server.client()


@pytest.fixture(scope="module", params=["proto", "json"])
def any_client(request: pytest.FixtureRequest, server: ServerProcess) -> CacheServiceClientSync:
    """The generated client with either Connect encoding."""
    return server.client(json=request.param == "json")


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    """A key unique to the test (opaque: dashes, plus, slash and equals on purpose)."""
    return f"k-{request.node.name}-a+b/c=="


def _code(excinfo: pytest.ExceptionInfo[ConnectError]) -> Code:
    return excinfo.value.code


def _ts_us(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def _now_us() -> int:
    return time.time_ns() // 1000


def _literals() -> literals_pb2.LiteralMap:
    literals = literals_pb2.LiteralMap()
    literals.literals["n"].scalar.primitive.integer = 42
    literals.literals["s"].scalar.primitive.string_value = "héllo"
    literals.literals["f"].scalar.primitive.float_value = 0.1
    coll = literals.literals["c"].collection.literals
    coll.add().scalar.primitive.boolean = True
    coll.add().scalar.blob.uri = "s3://bucket/blob"
    literals.literals["m"].map.literals["inner"].scalar.primitive.integer = -7
    literals.literals["h"].hash = "abc123"
    return literals


# -- §3 entries -----------------------------------------------------------------------------


def test_get_of_a_missing_key_is_not_found_with_the_scoped_key(
    any_client: CacheServiceClientSync, key: str
) -> None:
    with pytest.raises(ConnectError) as excinfo:
        any_client.get(get_req(key))
    assert _code(excinfo) is Code.NOT_FOUND
    assert excinfo.value.message == f'cache entry "proj-dev-{key}" not found'


def test_put_then_get_round_trips_the_uri_and_metadata(
    any_client: CacheServiceClientSync, key: str
) -> None:
    output = uri_output("s3://bucket/run/outputs.pb")
    source = identifier_pb2.Identifier(
        resource_type=identifier_pb2.TASK,
        project="proj",
        domain="dev",
        name="wf.t1",
        version="v1",
        org="acme",
    )
    output.metadata.source_identifier.CopyFrom(source)
    output.metadata.key_map.values.update({"task-version": "v1", "exec-attempt": "0"})
    before = _now_us()
    any_client.put(put_req(key, output))
    after = _now_us()
    got = any_client.get(get_req(key)).output
    assert got.output_uri == "s3://bucket/run/outputs.pb"
    assert got.metadata.source_identifier == source
    assert dict(got.metadata.key_map.values) == {"task-version": "v1", "exec-attempt": "0"}
    assert got.metadata.HasField("created_at") and got.metadata.HasField("last_updated_at")
    assert before <= _ts_us(got.metadata.last_updated_at) <= after
    assert got.metadata.created_at == got.metadata.last_updated_at


def test_inline_literals_round_trip_byte_for_byte(
    any_client: CacheServiceClientSync, key: str
) -> None:
    literals = _literals()
    any_client.put(put_req(key, cs.CachedOutput(output_literals=literals)))
    got = any_client.get(get_req(key)).output
    assert got.WhichOneof("output") == "output_literals"
    for name, literal in literals.literals.items():
        assert got.output_literals.literals[name].SerializeToString(
            deterministic=True
        ) == literal.SerializeToString(deterministic=True)
    assert set(got.output_literals.literals) == set(literals.literals)


def test_put_over_a_live_entry_is_already_exists_unless_overwrite(
    client: CacheServiceClientSync, key: str
) -> None:
    client.put(put_req(key, uri_output("s3://first")))
    for request in (
        put_req(key, uri_output("s3://second")),
        put_req(key, uri_output("s3://second"), overwrite=False),
    ):
        with pytest.raises(ConnectError) as excinfo:
            client.put(request)
        assert _code(excinfo) is Code.ALREADY_EXISTS
        assert excinfo.value.message == f'cache entry "proj-dev-{key}" already exists'
    assert client.get(get_req(key)).output.output_uri == "s3://first"
    client.put(put_req(key, uri_output("s3://second"), overwrite=True))
    assert client.get(get_req(key)).output.output_uri == "s3://second"


def test_created_at_is_kept_and_last_updated_at_is_server_time(
    client: CacheServiceClientSync, key: str
) -> None:
    client.put(put_req(key, uri_output("s3://one")))
    first = client.get(get_req(key)).output.metadata
    time.sleep(0.01)

    # No created_at in the request: the existing entry's is kept; the client's
    # last_updated_at (year 2000) is ignored for the server's clock.
    output = uri_output("s3://two")
    output.metadata.last_updated_at.FromDatetime(datetime(2000, 1, 1, tzinfo=UTC))
    before = _now_us()
    client.put(put_req(key, output, overwrite=True))
    second = client.get(get_req(key)).output.metadata
    assert second.created_at == first.created_at
    assert _ts_us(second.last_updated_at) >= before > _ts_us(first.last_updated_at)

    # A created_at in the request wins.
    output = uri_output("s3://three")
    output.metadata.created_at.FromDatetime(datetime(2021, 5, 4, 3, 2, 1, 123456, tzinfo=UTC))
    client.put(put_req(key, output, overwrite=True))
    third = client.get(get_req(key)).output.metadata
    assert third.created_at == output.metadata.created_at
    assert _ts_us(third.last_updated_at) >= _ts_us(second.last_updated_at)


def test_max_age_expires_existing_entries(client: CacheServiceClientSync, key: str) -> None:
    client.put(put_req(key, uri_output("s3://v1")))
    # Present and large: the entry is fresh.
    with pytest.raises(ConnectError) as excinfo:
        client.put(put_req(key, uri_output("s3://v2"), max_age=timedelta(hours=1)))
    assert _code(excinfo) is Code.ALREADY_EXISTS
    # Present but zero: Flyte's quirk, every existing entry counts as expired.
    client.put(put_req(key, uri_output("s3://v2"), max_age=timedelta(0)))
    assert client.get(get_req(key)).output.output_uri == "s3://v2"
    # Small: expired once the entry is older than max_age.
    time.sleep(0.25)
    client.put(put_req(key, uri_output("s3://v3"), max_age=timedelta(milliseconds=50)))
    assert client.get(get_req(key)).output.output_uri == "s3://v3"
    # Absent, no overwrite: never expired.
    with pytest.raises(ConnectError) as excinfo:
        client.put(put_req(key, uri_output("s3://v4")))
    assert _code(excinfo) is Code.ALREADY_EXISTS


def test_delete_blob_is_accepted_and_ignored(client: CacheServiceClientSync, key: str) -> None:
    client.put(put_req(key, uri_output("s3://keep")))
    client.put(put_req(key, uri_output("s3://new"), overwrite=True, delete_blob=True))
    assert client.get(get_req(key)).output.output_uri == "s3://new"


@pytest.mark.parametrize(
    "request_",
    [
        put_req("", uri_output()),
        put_req("k-no-output"),
        put_req("k-empty-uri", cs.CachedOutput(output_uri="")),
        put_req("k-neither", cs.CachedOutput(metadata=cs.Metadata())),
    ],
    ids=["empty-key", "no-output", "empty-uri", "neither"],
)
def test_invalid_puts_are_invalid_argument(
    any_client: CacheServiceClientSync, request_: v2.PutCacheRequest
) -> None:
    with pytest.raises(ConnectError) as excinfo:
        any_client.put(request_)
    assert _code(excinfo) is Code.INVALID_ARGUMENT


def test_delete(any_client: CacheServiceClientSync, key: str) -> None:
    any_client.put(put_req(key, uri_output()))
    any_client.delete(delete_req(key))
    with pytest.raises(ConnectError) as excinfo:
        any_client.get(get_req(key))
    assert _code(excinfo) is Code.NOT_FOUND
    with pytest.raises(ConnectError) as excinfo:
        any_client.delete(delete_req(key))
    assert _code(excinfo) is Code.NOT_FOUND
    assert excinfo.value.message == f'cache entry "proj-dev-{key}" not found'
    with pytest.raises(ConnectError) as excinfo:
        any_client.delete(delete_req(""))
    assert _code(excinfo) is Code.INVALID_ARGUMENT
    with pytest.raises(ConnectError) as excinfo:
        any_client.get(get_req(""))
    assert _code(excinfo) is Code.INVALID_ARGUMENT


def test_put_and_delete_never_touch_reservations(client: CacheServiceClientSync, key: str) -> None:
    held = client.get_or_extend_reservation(reserve_req(key, "owner-a")).reservation
    client.put(put_req(key, uri_output()))
    client.delete(delete_req(key))
    other = client.get_or_extend_reservation(reserve_req(key, "owner-b")).reservation
    assert other.owner_id == "owner-a"
    assert other.expires_at == held.expires_at


# -- §4 reservations ------------------------------------------------------------------------


def test_acquire_returns_the_requesters_lease_in_flytes_key_form(
    any_client: CacheServiceClientSync, key: str
) -> None:
    before = _now_us()
    lease = any_client.get_or_extend_reservation(
        reserve_req(key, "owner-a", timedelta(milliseconds=500))
    ).reservation
    after = _now_us()
    assert lease.key == f"reservation:proj-dev-{key}"
    assert lease.owner_id == "owner-a"
    assert lease.heartbeat_interval.ToTimedelta() == timedelta(milliseconds=500)
    expires = _ts_us(lease.expires_at)
    assert before + 1_500_000 <= expires <= after + 1_500_000


def test_extend_live_lease_and_holder_sees_the_holders_lease(
    any_client: CacheServiceClientSync, key: str
) -> None:
    hb = timedelta(seconds=1)
    first = any_client.get_or_extend_reservation(reserve_req(key, "owner-a", hb)).reservation
    time.sleep(0.01)
    extended = any_client.get_or_extend_reservation(reserve_req(key, "owner-a", hb)).reservation
    assert extended.owner_id == "owner-a"
    assert _ts_us(extended.expires_at) > _ts_us(first.expires_at)
    # Another owner, live lease: the holder's lease comes back unchanged (not an error).
    other = any_client.get_or_extend_reservation(
        reserve_req(key, "owner-b", timedelta(milliseconds=100))
    ).reservation
    assert other.owner_id == "owner-a"
    assert other.key == f"reservation:proj-dev-{key}"
    assert other.heartbeat_interval == extended.heartbeat_interval
    assert other.expires_at == extended.expires_at


def test_expired_lease_is_taken_over_and_extendable_by_its_owner(
    client: CacheServiceClientSync, key: str
) -> None:
    short = timedelta(milliseconds=100)  # lease = 300 ms
    client.get_or_extend_reservation(reserve_req(key, "owner-a", short))
    time.sleep(0.45)
    taken = client.get_or_extend_reservation(reserve_req(key, "owner-b", short)).reservation
    assert taken.owner_id == "owner-b"
    time.sleep(0.45)
    # Its own expired lease is extended (not treated as someone else's).
    again = client.get_or_extend_reservation(
        reserve_req(key, "owner-b", timedelta(seconds=1))
    ).reservation
    assert again.owner_id == "owner-b"
    assert _ts_us(again.expires_at) > _now_us() + 2_000_000


@pytest.mark.parametrize(
    ("requested", "effective"),
    [
        (None, MAX_HB),
        (timedelta(0), MAX_HB),
        (timedelta(seconds=-1), MAX_HB),
        (MAX_HB, MAX_HB),
        (timedelta(hours=1), MAX_HB),
        (timedelta(milliseconds=250), timedelta(milliseconds=250)),
    ],
    ids=["absent", "zero", "negative", "equal-to-max", "too-large", "within"],
)
def test_heartbeat_is_clamped_to_max_heartbeat(
    client: CacheServiceClientSync,
    key: str,
    requested: timedelta | None,
    effective: timedelta,
) -> None:
    lease = client.get_or_extend_reservation(reserve_req(key, "owner-a", requested)).reservation
    assert lease.heartbeat_interval.ToTimedelta() == effective
    expected_expiry = _now_us() + int(effective * GRACE / timedelta(microseconds=1))
    assert abs(_ts_us(lease.expires_at) - expected_expiry) < 1_000_000


def test_release(any_client: CacheServiceClientSync, key: str) -> None:
    hb = timedelta(seconds=1)
    any_client.get_or_extend_reservation(reserve_req(key, "owner-a", hb))
    # Not the holder: succeeds, changes nothing.
    any_client.release_reservation(release_req(key, "owner-b"))
    held = any_client.get_or_extend_reservation(reserve_req(key, "owner-b", hb)).reservation
    assert held.owner_id == "owner-a"
    any_client.release_reservation(release_req(key, "owner-a"))
    mine = any_client.get_or_extend_reservation(reserve_req(key, "owner-b", hb)).reservation
    assert mine.owner_id == "owner-b"
    # Nothing to release: succeeds.
    any_client.release_reservation(release_req(key + "-none", "owner-a"))


@pytest.mark.parametrize("field", ["key", "owner"])
def test_empty_key_or_owner_is_invalid_argument(
    any_client: CacheServiceClientSync, field: str
) -> None:
    key, owner = ("", "owner") if field == "key" else ("k-empty-owner", "")
    for call, request_ in (
        (any_client.get_or_extend_reservation, reserve_req(key, owner)),
        (any_client.release_reservation, release_req(key, owner)),
    ):
        with pytest.raises(ConnectError) as excinfo:
            call(request_)
        assert _code(excinfo) is Code.INVALID_ARGUMENT


# -- scoping --------------------------------------------------------------------------------


def test_same_key_in_another_project_or_domain_is_another_entry(
    client: CacheServiceClientSync, key: str
) -> None:
    client.put(put_req(key, uri_output("s3://a"), identifier=ident("pa", "dev")))
    client.put(put_req(key, uri_output("s3://b"), identifier=ident("pb", "dev")))
    client.put(put_req(key, uri_output("s3://c"), identifier=ident("pa", "prod")))
    assert client.get(get_req(key, ident("pa", "dev"))).output.output_uri == "s3://a"
    assert client.get(get_req(key, ident("pb", "dev"))).output.output_uri == "s3://b"
    assert client.get(get_req(key, ident("pa", "prod"))).output.output_uri == "s3://c"
    # org is not part of the scope (Flyte's form): same project/domain, same entry.
    assert client.get(get_req(key, ident("pa", "dev", org="other"))).output.output_uri == "s3://a"
    client.delete(delete_req(key, ident("pb", "dev")))
    assert client.get(get_req(key, ident("pa", "dev"))).output.output_uri == "s3://a"


def test_reservations_are_scoped_too(client: CacheServiceClientSync, key: str) -> None:
    a = client.get_or_extend_reservation(reserve_req(key, "owner-a", identifier=ident("pa", "d")))
    b = client.get_or_extend_reservation(reserve_req(key, "owner-b", identifier=ident("pb", "d")))
    assert a.reservation.owner_id == "owner-a" and b.reservation.owner_id == "owner-b"
    assert a.reservation.key == f"reservation:pa-d-{key}"
    assert b.reservation.key == f"reservation:pb-d-{key}"


def test_missing_identifier_scopes_to_dash_dash(client: CacheServiceClientSync, key: str) -> None:
    request = v2.GetOrExtendReservationRequest(
        base_request=cs.GetOrExtendReservationRequest(key=key, owner_id="o")
    )
    assert client.get_or_extend_reservation(request).reservation.key == f"reservation:--{key}"
    with pytest.raises(ConnectError) as excinfo:
        client.get(v2.GetCacheRequest(base_request=cs.GetCacheRequest(key=key)))
    assert excinfo.value.message == f'cache entry "--{key}" not found'


# -- one file, two doors: server and local store see the same entries -----------------------


def test_entries_written_through_the_server_are_local_hits_and_back(
    server: ServerProcess, client: CacheServiceClientSync, key: str
) -> None:
    client.put(
        put_req(key, cs.CachedOutput(output_literals=_literals()), identifier=ident("p", "d"))
    )
    with CacheStore.open(server.database) as store:
        local = store.get(scoped_key("p", "d", key))
        assert local == client.get(get_req(key, ident("p", "d"))).output
        store.put(scoped_key("p", "d", key + "-local"), uri_output("s3://local"))
        lease = store.get_or_extend_reservation(scoped_key("p", "d", key), "local-owner")
    assert client.get(get_req(key + "-local", ident("p", "d"))).output.output_uri == "s3://local"
    seen = client.get_or_extend_reservation(
        reserve_req(key, "remote-owner", identifier=ident("p", "d"))
    )
    assert seen.reservation.owner_id == "local-owner"
    assert seen.reservation.expires_at == lease.expires_at


# -- health and metrics ---------------------------------------------------------------------


def test_healthz(server: ServerProcess) -> None:
    response = httpx.get(server.url + "/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_metrics_count_requests_reservations_and_entries(
    server: ServerProcess, client: CacheServiceClientSync, key: str
) -> None:
    client.put(put_req(key, uri_output()))
    with pytest.raises(ConnectError):
        client.get(get_req(key + "-missing"))
    client.get_or_extend_reservation(reserve_req(key, "m-a"))
    client.get_or_extend_reservation(reserve_req(key, "m-a"))
    client.get_or_extend_reservation(reserve_req(key, "m-b"))
    client.release_reservation(release_req(key, "m-a"))
    text = httpx.get(server.url + "/metrics").text
    values = _samples(text)
    assert values['flytecache_requests_total{code="ok",rpc="Put"}'] >= 1
    assert values['flytecache_requests_total{code="not_found",rpc="Get"}'] >= 1
    assert values['flytecache_request_duration_seconds_count{code="ok",rpc="Put"}'] >= 1
    for outcome in ("acquired", "extended", "held_by_other", "released"):
        assert values[f'flytecache_reservations_total{{outcome="{outcome}"}}'] >= 1
    assert 'flytecache_reservations_total{outcome="taken_over"}' in values
    with CacheStore.open(server.database) as store, store.engine.connect() as conn:
        count = conn.exec_driver_sql("SELECT count(*) FROM entries").scalar_one()
    assert values["flytecache_entries"] == count


def _samples(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_server_log_carries_no_payloads(
    server: ServerProcess, client: CacheServiceClientSync
) -> None:
    client.put(put_req("k-secret", uri_output("s3://bucket/SECRET-PAYLOAD")))
    with pytest.raises(ConnectError):
        client.put(put_req("k-secret", uri_output("s3://bucket/SECRET-PAYLOAD")))
    assert "SECRET-PAYLOAD" not in server.log()


def test_startup_line_names_the_database(server: ServerProcess) -> None:
    assert server.database.startswith("sqlite:///") and server.database.endswith("cache.db")
    assert server.url.startswith("http://127.0.0.1:")


def test_grpc_web_is_served_and_grpc_over_http1_is_refused_clearly(
    server: ServerProcess, key: str
) -> None:
    web = server.client(protocol=ProtocolType.GRPC_WEB)
    web.put(put_req(key, uri_output("s3://web")))
    assert web.get(get_req(key)).output.output_uri == "s3://web"
    with pytest.raises(ConnectError) as excinfo:
        web.get(get_req(key + "-missing"))
    assert _code(excinfo) is Code.NOT_FOUND
    with pytest.raises(ConnectError) as excinfo:
        server.client(protocol=ProtocolType.GRPC).get(get_req(key))
    assert _code(excinfo) is Code.UNIMPLEMENTED
    assert "HTTP/2" in excinfo.value.message
