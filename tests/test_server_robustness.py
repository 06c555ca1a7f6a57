"""Malformed input, limits, busy database, health, auth, configuration and shutdown."""

from __future__ import annotations

import contextlib
import gzip
import os
import signal
import socket
import sqlite3
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from _server_helpers import (
    FLYTECACHE,
    SERVICE,
    ServerProcess,
    get_req,
    ident,
    put_req,
    reserve_req,
    uri_output,
)
from _store import wait_until
from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.rpc.error_details_pb2 import ErrorInfo
from typer.testing import CliRunner

from flytecache import CacheStore
from flytecache.cli import app as cli_app
from flytecache.errors import DeadlineExceededError, StorageBusyError, UnauthenticatedError
from flytecache.remote import RemoteCache
from flytecache.scoping import Scope
from flytecache.store.migrate import downgrade, upgrade

MiB = 1 << 20


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp("server")
    with ServerProcess(
        tmp / "cache.db",
        log_path=tmp / "server.log",
        env={"FLYTECACHE_BUSY_TIMEOUT": "300ms"},
    ) as proc:
        yield proc


def _db_path(server: ServerProcess) -> str:
    return server.database.removeprefix("sqlite:///")


@contextlib.contextmanager
def write_locked(path: str) -> Iterator[None]:
    """Hold SQLite's write lock from this process (a real slow writer)."""
    conn = sqlite3.connect(path, isolation_level=None, timeout=10)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _still_serving(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/healthz").status_code == 200
    with pytest.raises(ConnectError) as excinfo:
        server.client().get(get_req("k-after-abuse"))
    assert excinfo.value.code is Code.NOT_FOUND


def _big_chunks(total: int) -> Iterator[bytes]:
    for _ in range(total // MiB):
        yield b"\x0a" * MiB


PROTO = {"content-type": "application/proto"}
JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    ("path", "content", "headers", "status", "code"),
    [
        ("Get", b"\xff\xff\xff\xff\xff", PROTO, 400, "invalid_argument"),
        ("Put", b"\x0a\x05ab", PROTO, 400, "invalid_argument"),  # truncated field
        ("Get", b"{nope", JSON, 400, "invalid_argument"),
        ("Get", b'{"baseRequest": {"key": 5}}', JSON, 400, "invalid_argument"),
        ("Get", b"[1, 2]", JSON, 400, "invalid_argument"),
        ("Get", b"", JSON, 400, "invalid_argument"),
        ("Get", b"", PROTO, 400, "invalid_argument"),  # empty message: empty key
        ("Get", b"key=k", {"content-type": "text/plain"}, 415, "unimplemented"),
        ("Get", b"key=k", {}, 415, "unimplemented"),
        ("Get", b"\x00" * 5, {"content-type": "application/grpc"}, 415, "unimplemented"),
        ("Get", b"garbage", {**PROTO, "content-encoding": "gzip"}, 400, "invalid_argument"),
        ("Get", b"x" * (32 * MiB), PROTO, 429, "resource_exhausted"),
        (
            "Put",
            gzip.compress(b"\x0a" * (32 * MiB)),
            {**PROTO, "content-encoding": "gzip"},
            429,
            "resource_exhausted",
        ),
        ("Put", None, PROTO, 429, "resource_exhausted"),  # 40 MiB, chunked (no length)
        ("Nope", b"", PROTO, 404, "unimplemented"),
        ("../../healthz/x", b"", PROTO, 404, "unimplemented"),
    ],
    ids=[
        "garbage-proto",
        "truncated-proto",
        "invalid-json",
        "wrong-json-type",
        "json-array",
        "empty-json",
        "empty-proto",
        "text-plain",
        "no-content-type",
        "grpc-over-http1",
        "bad-gzip",
        "32MiB",
        "gzip-bomb",
        "40MiB-chunked",
        "unknown-rpc",
        "unknown-path",
    ],
)
def test_malformed_requests_get_connect_errors_and_the_server_keeps_serving(
    server: ServerProcess,
    path: str,
    content: bytes | None,
    headers: dict[str, str],
    status: int,
    code: str | None,
) -> None:
    body = _big_chunks(40 * MiB) if content is None else content
    response = httpx.post(
        f"{server.url}{SERVICE}/{path}", content=body, headers=headers, timeout=60
    )
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["code"] == code
    if status == 415:  # says what it takes (the docs' error table)
        assert "application/proto" in response.headers["accept-post"]
    _still_serving(server)


def test_get_on_an_rpc_is_method_not_allowed(server: ServerProcess) -> None:
    assert httpx.get(f"{server.url}{SERVICE}/Get?message=%7B%7D&encoding=json").status_code == 405
    assert httpx.post(server.url + "/healthz").status_code == 405
    _still_serving(server)


@pytest.mark.parametrize("compressed", [False, True], ids=["identity", "gzip"])
def test_a_32MiB_put_through_the_generated_client_is_resource_exhausted(
    server: ServerProcess, compressed: bool
) -> None:
    client = (
        server.client()  # gzip by default: the limit applies after decompression
        if compressed
        else server.client(send_compression=None)
    )
    uri = "s3://" + ("x" * (32 * MiB) if compressed else os.urandom(16 * MiB).hex())
    with pytest.raises(ConnectError) as excinfo:
        client.put(put_req("k-huge", uri_output(uri)))
    assert excinfo.value.code is Code.RESOURCE_EXHAUSTED
    _still_serving(server)


def test_a_busy_database_is_unavailable_marked_busy(server: ServerProcess) -> None:
    client = server.client()
    remote = RemoteCache(server.url)
    with write_locked(_db_path(server)):
        with pytest.raises(ConnectError) as excinfo:
            client.put(put_req("k-busy", uri_output()))
        with pytest.raises(StorageBusyError) as busy:
            remote.put(Scope(project="proj", domain="dev"), "k-busy", uri_output())
        with (
            RemoteCache(server.url, timeout=0.1) as impatient,
            pytest.raises(DeadlineExceededError),
        ):
            impatient.put(Scope(project="proj", domain="dev"), "k-busy", uri_output())
        # Reads never wait for the writer (WAL).
        with pytest.raises(ConnectError) as miss:
            client.get(get_req("k-busy"))
    assert excinfo.value.code is Code.UNAVAILABLE
    info = ErrorInfo()
    assert excinfo.value.details and excinfo.value.details[0].Unpack(info)
    assert (info.domain, info.reason) == ("flytecache", "STORAGE_BUSY")
    assert server.url in str(busy.value)
    assert miss.value.code is Code.NOT_FOUND
    # Works again (overwrite: the impatient put above may still have landed after the lock).
    client.put(put_req("k-busy", uri_output(), overwrite=True))
    assert "k-busy" in server.log()  # logged with its key...
    assert "s3://bucket/outputs.pb" not in server.log()  # ...never with its payload


def test_writes_queued_behind_a_stuck_lock_fail_within_the_busy_timeout(
    server: ServerProcess,
) -> None:
    # One writer thread: twelve writes queued behind a lock held elsewhere must not wait
    # 12 x busy_timeout (300 ms) in turn; each gives up once it has waited that long.
    def put(i: int) -> Code | None:
        try:
            server.client().put(put_req(f"k-queued-{i}", uri_output()))
        except ConnectError as error:
            return error.code
        return None

    with ThreadPoolExecutor(12) as pool:
        with write_locked(_db_path(server)):
            futures = [pool.submit(put, i) for i in range(12)]
            time.sleep(2)  # waiting in turn, the later writes would outlast the lock
        codes = [future.result() for future in futures]
    assert codes == [Code.UNAVAILABLE] * 12
    _still_serving(server)


def test_a_write_waits_for_a_lock_held_elsewhere_while_the_loop_keeps_serving(
    tmp_path: Path,
) -> None:
    # Writes are tried on the event loop without waiting: refused by the lock another process
    # holds, they wait on the writer thread and complete once it is free. The busy timeout is
    # far longer than the lock is held, however slow a loaded machine makes the gets below.
    with ServerProcess(
        tmp_path / "cache.db",
        log_path=tmp_path / "server.log",
        env={"FLYTECACHE_BUSY_TIMEOUT": "120s"},
    ) as server:
        client = server.client()
        client.put(put_req("k-before", uri_output()))
        with ThreadPoolExecutor(2) as pool:
            with write_locked(_db_path(server)):
                put = pool.submit(client.put, put_req("k-waiting", uri_output()))
                lease = pool.submit(client.get_or_extend_reservation, reserve_req("k-r", "o"))
                wait_until(lambda: _in_flight(server) == 2, "both writes to be in flight")
                for _ in range(20):
                    assert client.get(get_req("k-before")).output.output_uri
                    assert httpx.get(server.url + "/healthz").status_code == 200
                time.sleep(1)
                assert not put.done() and not lease.done()
            put.result(timeout=10)
            assert lease.result(timeout=10).reservation.owner_id == "o"
        assert client.get(get_req("k-waiting")).output.output_uri
        # Nothing queued any more: the next write runs on the loop again.
        client.put(put_req("k-after", uri_output()))


def test_healthz_is_503_unless_the_schema_is_at_head(server: ServerProcess) -> None:
    with CacheStore.open(_db_path(server)) as store:
        downgrade(store.engine, "base")
        try:
            response = httpx.get(server.url + "/healthz")
            assert response.status_code == 503
            assert response.json()["status"] == "unavailable"
        finally:
            upgrade(store.engine, "head")
    assert httpx.get(server.url + "/healthz").status_code == 200


# -- auth -----------------------------------------------------------------------------------


def test_auth_token(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("s3cr3t-t0ken\n")
    token_file.chmod(0o644)
    with ServerProcess(
        tmp_path / "cache.db", "--auth-token-file", str(token_file), log_path=tmp_path / "log"
    ) as server:
        assert "accessible by group or others" in server.log()
        assert "s3cr3t" not in server.log()
        for headers in (
            None,
            {"authorization": "Bearer wrong"},
            {"authorization": "Bearer s3cr3t-t0ke"},
            {"authorization": "Basic s3cr3t-t0ken"},
            {"authorization": "s3cr3t-t0ken"},
        ):
            with pytest.raises(ConnectError) as excinfo:
                server.client().get(get_req("k"), headers=headers)
            assert excinfo.value.code is Code.UNAUTHENTICATED
        with pytest.raises(ConnectError) as excinfo:
            server.client().get(get_req("k"), headers={"authorization": "Bearer s3cr3t-t0ken"})
        assert excinfo.value.code is Code.NOT_FOUND  # authenticated, then a plain miss
        assert httpx.get(server.url + "/healthz").status_code == 200  # exempt
        assert httpx.get(server.url + "/metrics").status_code == 401
        metrics = httpx.get(
            server.url + "/metrics", headers={"authorization": "Bearer s3cr3t-t0ken"}
        )
        assert metrics.status_code == 200
        assert 'flytecache_requests_total{code="unauthenticated",rpc="Get"} 5.0' in metrics.text

        with RemoteCache(server.url, auth_token="s3cr3t-t0ken") as remote:
            remote.put(Scope(project="p", domain="d"), "k", uri_output())
            assert remote.get(Scope(project="p", domain="d"), "k").output_uri
        with (
            RemoteCache(server.url, auth_token="nope") as remote,
            pytest.raises(UnauthenticatedError),
        ):
            remote.get(Scope(project="p", domain="d"), "k")
        assert server.stop(signal.SIGINT) == 0


def test_auth_off_ignores_authorization_headers(server: ServerProcess) -> None:
    with pytest.raises(ConnectError) as excinfo:
        server.client().get(get_req("k"), headers={"authorization": "Bearer anything"})
    assert excinfo.value.code is Code.NOT_FOUND


# -- configuration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--port", "http"], "not a port number"),
        (["--port", "70000"], "not a port number"),
        (["--max-request-bytes", "lots"], "is not a size"),
        (["--max-heartbeat", "soon"], "is not a duration"),
        (["--grace-multiplier", "0"], "'--grace-multiplier': must be in (0, 1000], got 0.0"),
        (["--log-level", "loud"], "'--log-level': must be one of critical,"),
        (["--max-inflight-bytes", "1MiB"], "max_inflight_bytes (1048576) must"),
        (["--max-connections", "0"], "'--max-connections': must be a positive integer"),
        (["--workers", "0"], "'--workers': must be a positive integer, got 0"),
        (["--header-timeout", "0s"], "'--header-timeout': must be a positive"),
        (["--body-timeout", "later"], "is not a duration"),
        (["--keep-alive-timeout", "-1s"], "is not a duration"),
        (["--max-entries", "0"], "'--max-entries': must be a positive integer, got 0 (leave it"),
        (["--lease-clock", "ntp"], "'--lease-clock': must be 'auto', 'database' or 'host'"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli_app, ["serve", *args])
    assert result.exit_code == 2
    # rich wraps the message inside a box: read it back as one line.
    text = " ".join(" ".join(line.strip(" │╭╮╰╯─") for line in result.output.splitlines()).split())
    assert message in text


def test_unreadable_token_file_is_a_one_line_error(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [
            *FLYTECACHE,
            "serve",
            "--db",
            str(tmp_path / "c.db"),
            "--port",
            "0",
            "--auth-token-file",
            str(tmp_path / "missing"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "error: cannot read the auth token file" in result.stderr
    assert "Traceback" not in result.stderr


def test_kubernetes_style_port_variable_is_understood() -> None:
    from flytecache.cli.serve import _port

    assert _port("8094") == 8094
    assert _port("tcp://10.0.0.7:8094") == 8094


def test_env_configuration_and_graceful_sigterm_with_a_request_in_flight(
    tmp_path: Path,
) -> None:
    db = tmp_path / "cache.db"
    env = {
        "FLYTECACHE_DB": str(db),
        "FLYTECACHE_HOST": "127.0.0.1",
        "FLYTECACHE_PORT": "0",
        "FLYTECACHE_MAX_HEARTBEAT": "1s",
        "FLYTECACHE_GRACE_MULTIPLIER": "2",
        "FLYTECACHE_MAX_REQUEST_BYTES": "1MiB",
        "FLYTECACHE_LOG_LEVEL": "debug",
        "FLYTECACHE_BUSY_TIMEOUT": "20s",
    }
    server = ServerProcess(None, log_path=tmp_path / "log", env=env).start()
    try:
        client = server.client(send_compression=None)
        assert server.database.endswith(str(db))
        # Every option came from the environment.
        lease = client.get_or_extend_reservation(reserve_req("k-env", "o")).reservation
        assert lease.heartbeat_interval.ToTimedelta() == timedelta(seconds=1)
        assert abs(lease.expires_at.ToNanoseconds() - time.time_ns() - 2 * 10**9) < 10**9
        with pytest.raises(ConnectError) as excinfo:
            client.put(put_req("k-env", uri_output("s3://" + "x" * (2 * MiB))))
        assert excinfo.value.code is Code.RESOURCE_EXHAUSTED
        client.put(put_req("k-env", uri_output("s3://bucket/PAYLOAD-MARKER")))
        assert "'proj-dev-k-env'" in server.log() or "'k-env'" in server.log()
        assert "PAYLOAD-MARKER" not in server.log()

        with ThreadPoolExecutor(1) as pool:
            with write_locked(str(db)):
                slow = pool.submit(
                    client.put, put_req("k-slow", uri_output("s3://slow"), identifier=ident())
                )
                wait_until(lambda: _in_flight(server) == 1, "the put to be in flight")
                # One write waiting for the lock does not stall anything else.
                for _ in range(5):
                    with pytest.raises(ConnectError) as excinfo:
                        client.get(get_req("k-slow"))
                    assert excinfo.value.code is Code.NOT_FOUND
                signalled = time.monotonic()
                os.kill(server.pid, signal.SIGTERM)
                wait_until(lambda: not _accepts(server.port), "the listener to close")
                assert not slow.done()
            # The lock is gone: the in-flight put completes, then the process exits 0.
            slow.result(timeout=10)
        assert server.proc is not None
        assert server.proc.wait(timeout=10) == 0
        assert time.monotonic() - signalled < 5
        assert "database closed" in server.log()
    finally:
        server.kill()
    with CacheStore.open(db) as store:
        assert store.get("proj-dev-k-slow").output_uri == "s3://slow"


def _in_flight(server: ServerProcess) -> float:
    for line in httpx.get(server.url + "/metrics").text.splitlines():
        if line.startswith("flytecache_requests_in_flight "):
            return float(line.split()[1])
    raise AssertionError("no in-flight gauge")


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True
