"""One port, every protocol: SPEC §3–§4 through Connect (HTTP/1.1 and h2c), gRPC (h2c) and
gRPC-Web (HTTP/1.1), each with a real client against the real ``flytecache serve``; plus the
transport's own answers (content types, compression, startup line, port in use)."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from _server_helpers import (
    FLYTECACHE,
    SERVICE,
    ServerProcess,
    delete_req,
    get_req,
    put_req,
    release_req,
    reserve_req,
    uri_output,
)
from _transports import DRIVERS, Driver, RpcError, connect_error, v2_ident
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2

MAX_HB = timedelta(seconds=2)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("transports")
    with ServerProcess(
        tmp / "cache.db", "--max-heartbeat", "2s", log_path=tmp / "server.log"
    ) as proc:
        yield proc


@pytest.fixture(params=sorted(DRIVERS))
def driver(request: pytest.FixtureRequest, server: ServerProcess) -> Iterator[Driver]:
    client: Driver = DRIVERS[request.param](server.url)
    yield client
    client.close()


@pytest.fixture
def key(request: pytest.FixtureRequest) -> str:
    return f"k-{request.node.name}-a+b/c=="


def _code(driver: Driver, rpc: str, request: object) -> str:
    with pytest.raises(RpcError) as excinfo:
        driver.call(rpc, request)  # type: ignore[arg-type]
    return excinfo.value.code


def _inline(n: int = 3) -> cs.CachedOutput:
    literals = literals_pb2.LiteralMap()
    for i in range(n):
        literals.literals[f"o{i}"].scalar.primitive.integer = i
    return cs.CachedOutput(output_literals=literals)


def test_entries_through_every_protocol(driver: Driver, key: str) -> None:
    missing = _code(driver, "Get", get_req(key))
    assert missing == "not_found"
    assert _code(driver, "Get", get_req("")) == "invalid_argument"
    assert _code(driver, "Put", put_req(key)) == "invalid_argument"  # no output

    driver.call("Put", put_req(key, uri_output("s3://first")))
    got = driver.call("Get", get_req(key)).output
    assert got.output_uri == "s3://first"
    assert got.metadata.HasField("created_at") and got.metadata.HasField("last_updated_at")
    assert _code(driver, "Put", put_req(key, uri_output("s3://second"))) == "already_exists"
    driver.call("Put", put_req(key, _inline(), overwrite=True))
    assert driver.call("Get", get_req(key)).output.output_literals == _inline().output_literals
    # A present-but-zero max_age makes the existing entry expired (the Flyte quirk).
    driver.call("Put", put_req(key, uri_output("s3://third"), max_age=timedelta(0)))
    assert driver.call("Get", get_req(key)).output.output_uri == "s3://third"

    driver.call("Delete", delete_req(key))
    assert _code(driver, "Delete", delete_req(key)) == "not_found"
    assert _code(driver, "Get", get_req(key)) == "not_found"


def test_scoping_through_every_protocol(driver: Driver, key: str) -> None:
    driver.call("Put", put_req(key, uri_output("s3://a"), identifier=v2_ident("pa", "dev")))
    driver.call("Put", put_req(key, uri_output("s3://b"), identifier=v2_ident("pb", "dev")))
    assert driver.call("Get", get_req(key, v2_ident("pa", "dev"))).output.output_uri == "s3://a"
    assert driver.call("Get", get_req(key, v2_ident("pb", "dev"))).output.output_uri == "s3://b"
    with pytest.raises(RpcError) as excinfo:
        driver.call("Get", get_req(key, v2_ident("pa", "prod")))
    assert excinfo.value.code == "not_found"
    assert f'"pa-prod-{key}"' in excinfo.value.message


def test_reservations_through_every_protocol(driver: Driver, key: str) -> None:
    assert _code(driver, "GetOrExtendReservation", reserve_req(key, "")) == "invalid_argument"
    mine = driver.call("GetOrExtendReservation", reserve_req(key, "a", MAX_HB)).reservation
    assert mine.owner_id == "a" and mine.key == f"reservation:proj-dev-{key}"
    theirs = driver.call("GetOrExtendReservation", reserve_req(key, "b")).reservation
    assert theirs.owner_id == "a" and theirs.expires_at == mine.expires_at  # the holder's lease
    driver.call("ReleaseReservation", release_req(key, "b"))  # not the holder: a no-op
    assert driver.call("GetOrExtendReservation", reserve_req(key, "b")).reservation.owner_id == "a"
    driver.call("ReleaseReservation", release_req(key, "a"))
    assert driver.call("GetOrExtendReservation", reserve_req(key, "b")).reservation.owner_id == "b"
    driver.call("ReleaseReservation", release_req(key, "b"))


def test_all_protocols_share_one_store(server: ServerProcess, key: str) -> None:
    drivers = [cls(server.url) for cls in DRIVERS.values()]
    try:
        for n, writer in enumerate(drivers):
            writer.call("Put", put_req(f"{key}-{n}", uri_output(f"s3://{writer.name}")))
        for reader in drivers:
            for n, writer in enumerate(drivers):
                got = reader.call("Get", get_req(f"{key}-{n}")).output.output_uri
                assert got == f"s3://{writer.name}"
    finally:
        for client in drivers:
            client.close()


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl on this machine")
@pytest.mark.parametrize(
    ("flag", "version"), [("--http2-prior-knowledge", "2"), ("--http2", "1.1")]
)
def test_curl_http2(
    server: ServerProcess, tmp_path: Path, key: str, flag: str, version: str
) -> None:
    """The new user's first try from issue 15 (prior knowledge: it used to get an empty
    reply); ``--http2`` asks to upgrade and is answered over HTTP/1.1, its body read."""
    body = tmp_path / "get.bin"
    body.write_bytes(get_req(key).SerializeToString())
    result = subprocess.run(
        [
            "curl",
            "-sS",
            flag,
            "-H",
            "content-type: application/proto",
            "--data-binary",
            f"@{body}",
            "-w",
            "\n%{http_version} %{http_code}",
            server.url + f"{SERVICE}/Get",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    text, _, status = result.stdout.rpartition("\n")
    assert status == f"{version} 404"
    assert '"code":"not_found"' in text.replace(" ", "")


# -- the transport's own answers ------------------------------------------------------------


@pytest.mark.parametrize("http2", [False, True], ids=["http1", "h2c"])
def test_every_4xx_carries_a_connect_error_body(server: ServerProcess, http2: bool) -> None:
    with httpx.Client(http1=not http2, http2=http2, timeout=30) as http:
        unsupported = http.post(
            server.url + f"{SERVICE}/Get", content=b"k", headers={"content-type": "text/plain"}
        )
        assert unsupported.status_code == 415
        assert connect_error(unsupported)["code"] == "unimplemented"
        assert "application/proto" in unsupported.headers["accept-post"]
        wrong_method = http.get(server.url + f"{SERVICE}/Get")
        assert wrong_method.status_code == 405
        assert connect_error(wrong_method)["code"] == "unimplemented"
        # An empty message (HEADERS ending the stream on h2c): answered, not left waiting.
        empty = http.post(
            server.url + f"{SERVICE}/Get",
            content=b"",
            headers={"content-type": "application/proto"},
        )
        assert empty.status_code == 400
        assert connect_error(empty)["code"] == "invalid_argument"
        unknown = http.post(server.url + "/nope", content=b"")
        assert unknown.status_code == 404
        assert connect_error(unknown)["code"] == "unimplemented"


@pytest.mark.parametrize(
    "head",
    [
        "content-length: 5\r\ncontent-length: 6",
        "content-length: -1",
        "transfer-encoding: chunked\r\ncontent-length: 5",
    ],
)
def test_a_malformed_http1_request_gets_a_connect_error_body(
    server: ServerProcess, head: str
) -> None:
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(
            f"POST {SERVICE}/Get HTTP/1.1\r\nHost: x\r\ncontent-type: application/proto\r\n"
            f"{head}\r\n\r\nhello".encode()
        )
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status, _, rest = answer.partition(b"\r\n")
    assert status == b"HTTP/1.1 400 Bad Request", answer
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert b"content-type: application/json" in headers.lower()
    assert json.loads(body) == {"code": "invalid_argument", "message": "malformed HTTP/1.1 request"}


def test_small_responses_are_not_compressed_large_ones_are(server: ServerProcess, key: str) -> None:
    headers = {
        "content-type": "application/proto",
        "connect-protocol-version": "1",
        "accept-encoding": "gzip",
    }
    put = httpx.post(
        server.url + f"{SERVICE}/Put",
        content=put_req(key, _inline(500)).SerializeToString(),
        headers=headers,
    )
    assert put.status_code == 200
    assert "content-encoding" not in put.headers  # was a 20-byte gzip of nothing
    assert put.content == b""
    with httpx.Client() as http:
        request = http.build_request(
            "POST",
            server.url + f"{SERVICE}/Get",
            content=get_req(key).SerializeToString(),
            headers=headers,
        )
        got = http.send(request, stream=True)
        raw = b"".join(got.iter_raw())
    assert got.headers["content-encoding"] == "gzip"
    answer = cs.GetCacheResponse.FromString(gzip.decompress(raw))
    assert answer.output.output_literals == _inline(500).output_literals


def test_port_in_use_names_the_option_and_variable(server: ServerProcess, tmp_path: Path) -> None:
    result = subprocess.run(
        [*FLYTECACHE, "serve", "--db", str(tmp_path / "other.db"), "--port", str(server.port)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "--port" in result.stderr and "FLYTECACHE_PORT" in result.stderr, result.stderr


def test_wildcard_host_prints_a_usable_url(tmp_path: Path) -> None:
    with ServerProcess(
        tmp_path / "cache.db", "--host", "0.0.0.0", log_path=tmp_path / "server.log"
    ) as proc:
        assert proc.url.startswith("http://127.0.0.1:")
        assert "from other machines: http://" in proc.log()
        assert httpx.get(proc.url + "/healthz", timeout=10).status_code == 200


def _grpc_over_h2(
    url: str, rpc: str, message: bytes, headers: dict[str, str], *, framed: bool = True
) -> dict[str, str]:
    """A gRPC call over h2c with exactly ``headers`` (grpcio sets grpc-timeout itself) and
    ``message`` in its 5-byte envelope (as it is, not ``framed``): the response's headers and
    trailers, merged."""
    import socket
    import struct

    import h2.config
    import h2.connection
    import h2.events

    host, port = url.removeprefix("http://").rsplit(":", 1)
    answer: dict[str, str] = {}
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        conn = h2.connection.H2Connection(h2.config.H2Configuration(header_encoding="utf-8"))
        conn.initiate_connection()
        request = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", f"{host}:{port}"),
            (":path", f"{SERVICE}/{rpc}"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            *headers.items(),
        ]
        conn.send_headers(1, request)
        body = b"\x00" + struct.pack(">I", len(message)) + message if framed else message
        conn.send_data(1, body, end_stream=True)
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            assert data, "the server closed the connection without ending the stream"
            for event in conn.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                    answer.update(dict(event.headers))  # type: ignore[arg-type]
                if isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                    return answer
            sock.sendall(conn.data_to_send())


@pytest.mark.parametrize("timeout", ["garbage", "1", "1x", "S", "999999999S", "-5S"])
def test_a_malformed_grpc_timeout_is_invalid_argument(server: ServerProcess, timeout: str) -> None:
    """gRPC's timeout is at most 8 digits and a unit: anything else is the caller's mistake
    (INVALID_ARGUMENT), over gRPC and gRPC-Web alike, never an internal error."""
    message = get_req("timeout-key").SerializeToString()
    grpc = _grpc_over_h2(server.url, "Get", message, {"grpc-timeout": timeout})
    assert grpc["grpc-status"] == "3", grpc
    assert "grpc-timeout" in grpc["grpc-message"]
    web = httpx.post(
        server.url + f"{SERVICE}/Get",
        content=b"\x00" + len(message).to_bytes(4, "big") + message,
        headers={"content-type": "application/grpc-web+proto", "grpc-timeout": timeout},
    )
    assert b"grpc-status: 3\r\n" in web.content, web.content
    # A well-formed one is honoured as before.
    fine = _grpc_over_h2(server.url, "Get", message, {"grpc-timeout": "5S"})
    assert fine["grpc-status"] == "5", fine  # NOT_FOUND: the key was never stored
    assert "Traceback" not in server.log()


@pytest.mark.parametrize("timeout", ["-5", "abc", "1.5", "12345678901"])
def test_a_malformed_connect_timeout_is_invalid_argument(
    server: ServerProcess, timeout: str
) -> None:
    response = httpx.post(
        server.url + f"{SERVICE}/Get",
        content=get_req("timeout-key").SerializeToString(),
        headers={
            "content-type": "application/proto",
            "connect-protocol-version": "1",
            "connect-timeout-ms": timeout,
        },
    )
    assert response.status_code == 400
    error = connect_error(response)
    assert error["code"] == "invalid_argument" and "connect-timeout-ms" in error["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00\x00\x64" + b"x" * 10,  # promises 100 bytes, holds 10
        b"\x00\xff\xff\xff\xff",  # promises 4 GiB, holds nothing
        b"\x00\x00",  # not even a whole prefix
    ],
)
def test_a_grpc_message_shorter_than_its_prefix_is_invalid_argument(
    server: ServerProcess, body: bytes
) -> None:
    grpc = _grpc_over_h2(server.url, "Get", body, {}, framed=False)
    assert grpc["grpc-status"] == "3" and "prefix" in grpc["grpc-message"], grpc
    web = httpx.post(
        server.url + f"{SERVICE}/Get",
        content=body,
        headers={"content-type": "application/grpc-web+proto"},
    )
    assert b"grpc-status: 3\r\n" in web.content, web.content
    assert b"prefix" in web.content
    assert "Traceback" not in server.log()
