"""Connection abuse against the real server on 127.0.0.1, bounded in count and time.

Reproductions from issue 15: half-open requests by the thousand (the server under
``ulimit -n 1024``), 30 concurrent 15.5 MiB puts, 500 keep-alive clients; and each limit alone:
header and body deadlines, idle timeout, the connection cap's eviction and refusal.
"""

from __future__ import annotations

import contextlib
import json
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from _server_helpers import SERVICE, ServerProcess, get_req, put_req, uri_output
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2

MiB = 1024 * 1024
HALF_OPEN = b"POST /x HTTP/1.1\r\nHost: x\r\n"


def _healthz(server: ServerProcess) -> None:
    """/healthz within 1 s, on a new connection (the timeout is the assertion)."""
    with httpx.Client(timeout=1.0) as http:
        assert http.get(server.url + "/healthz").status_code == 200


def _metric(server: ServerProcess, name: str) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def _open(server: ServerProcess, payload: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    if payload:
        sock.sendall(payload)
    return sock


def _closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` (EOF or reset) within ``within`` seconds."""
    sock.settimeout(within)
    try:
        while True:
            if not sock.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _request(sock: socket.socket, path: str = "/healthz") -> bytes:
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    while len(body) < length:
        body += sock.recv(65536)
    return head


@contextlib.contextmanager
def _sockets() -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    try:
        yield opened
    finally:
        for sock in opened:
            sock.close()


@pytest.fixture
def enough_files() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 1400
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"this test opens {need} sockets; ulimit -Hn is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))


def test_half_open_flood_never_blocks_healthz_and_clears_itself(
    tmp_path: Path, enough_files: None
) -> None:
    with (
        ServerProcess(
            tmp_path / "cache.db",
            "--header-timeout",
            "3s",
            log_path=tmp_path / "server.log",
            open_files=1024,
        ) as server,
        _sockets() as flood,
    ):
        for n in range(1100):
            flood.append(_open(server, HALF_OPEN))
            if n % 100 == 99:
                _healthz(server)
        # Throughout the header deadline and past it, /healthz answers.
        deadline = time.monotonic() + 4
        while time.monotonic() < deadline:
            _healthz(server)
            time.sleep(0.2)
        # Every half-open socket is closed by the server (evicted at the cap, or its header
        # deadline passed), without anyone closing them from this side.
        assert all(_closed_by_server(sock, within=5) for sock in flood)
        _healthz(server)
        client = server.client()
        client.put(put_req("after-flood", uri_output()))
        assert client.get(get_req("after-flood")).output.output_uri == uri_output().output_uri


def _big_put(size: int) -> bytes:
    literals = literals_pb2.LiteralMap()
    literals.literals["blob"].scalar.binary.value = b"\x5a" * size
    request = put_req("big", cs.CachedOutput(output_literals=literals), overwrite=True)
    return request.SerializeToString()


def _rss_peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


RSS_BOUND_MIB = 450
"""docs/operations.md: peak RSS stays under this with the default limits (measured ~⅓ lower)."""


def test_thirty_concurrent_big_puts_are_bounded_and_excess_is_told_to_retry(
    tmp_path: Path,
) -> None:
    body = _big_put(int(15.5 * MiB))
    results: list[tuple[int, dict[str, str], bytes]] = []
    start = threading.Barrier(30)

    def put() -> None:
        with httpx.Client(timeout=120) as http:
            start.wait()
            response = http.post(
                server.url + f"{SERVICE}/Put",
                content=body,
                headers={"content-type": "application/proto", "connect-protocol-version": "1"},
            )
            results.append((response.status_code, dict(response.headers), response.content))

    with ServerProcess(tmp_path / "cache.db", log_path=tmp_path / "server.log") as server:
        threads = [threading.Thread(target=put) for _ in range(30)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(180)
        assert len(results) == 30
        ok = [r for r in results if r[0] == 200]
        refused = [r for r in results if r[0] != 200]
        assert ok and refused
        for status, headers, content in refused:
            assert status == 429
            assert json.loads(content)["code"] == "resource_exhausted"
            assert "--max-inflight-bytes" in json.loads(content)["message"]
            assert headers["retry-after"] == "1"
        peak_mib = _rss_peak_kib(server.pid) / 1024
        print(f"served {len(ok)}, refused {len(refused)}, peak RSS {peak_mib:.0f} MiB")
        assert peak_mib < RSS_BOUND_MIB, f"peak RSS {peak_mib:.0f} MiB"
        assert _metric(server, "flytecache_requests_over_budget_total") == len(refused)
        assert _metric(server, "flytecache_request_bytes_in_flight") == 0
        got = server.client().get(get_req("big")).output
        assert len(got.output_literals.literals["blob"].scalar.binary.value) == int(15.5 * MiB)


def test_five_hundred_keep_alive_clients_leave_room_for_a_well_behaved_one(
    tmp_path: Path, enough_files: None
) -> None:
    with (
        ServerProcess(tmp_path / "cache.db", log_path=tmp_path / "server.log") as server,
        _sockets() as idle,
    ):
        for _ in range(500):
            sock = _open(server)
            assert b" 200 " in _request(sock)
            idle.append(sock)
        client = server.client()
        for n in range(20):
            client.put(put_req(f"polite-{n}", uri_output(f"s3://{n}")))
            assert client.get(get_req(f"polite-{n}")).output.output_uri == f"s3://{n}"
        # The 500 were kept alive, not dropped to make room.
        assert all(b" 200 " in _request(sock) for sock in idle)


def test_header_body_and_idle_deadlines(tmp_path: Path) -> None:
    with (
        ServerProcess(
            tmp_path / "cache.db",
            "--header-timeout",
            "1s",
            "--body-timeout",
            "1s",
            "--keep-alive-timeout",
            "1s",
            log_path=tmp_path / "server.log",
        ) as server,
        _sockets() as opened,
    ):
        # Headers trickled one byte at a time do not extend the header deadline.
        trickle = _open(server, b"P")
        opened.append(trickle)
        closed = False
        for byte in b"OST /x HTTP/1.1\r\nHost: x\r\n":
            time.sleep(0.2)
            try:
                trickle.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
        assert closed or _closed_by_server(trickle, within=3)

        # A body that stops coming is answered DEADLINE_EXCEEDED, and the connection closed.
        slow = _open(
            server,
            f"POST {SERVICE}/Put HTTP/1.1\r\nHost: x\r\ncontent-type: application/proto\r\n"
            "content-length: 1000\r\n\r\n".encode()
            + b"\x0a",
        )
        opened.append(slow)
        slow.settimeout(5)
        answer = b""
        with contextlib.suppress(ConnectionResetError):
            while chunk := slow.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
        assert b'"deadline_exceeded"' in answer and b"--body-timeout" in answer

        # An idle keep-alive connection is closed after the idle timeout.
        idle = _open(server)
        opened.append(idle)
        assert b" 200 " in _request(idle)
        assert _closed_by_server(idle, within=4)
        _healthz(server)


def test_connection_cap_evicts_idle_connections_then_refuses_clearly(tmp_path: Path) -> None:
    with (
        ServerProcess(
            tmp_path / "cache.db",
            "--max-connections",
            "16",
            # Long enough to outlast opening the stalled bodies and asking /healthz (well under
            # a second), short because the test then waits for it to pass.
            "--body-timeout",
            "3s",
            log_path=tmp_path / "server.log",
        ) as server,
        _sockets() as opened,
    ):
        # 16 idle keep-alive connections: a 17th evicts the oldest and is served.
        for _ in range(16):
            sock = _open(server)
            _request(sock)
            opened.append(sock)
        _healthz(server)
        assert _closed_by_server(opened[0], within=3)
        for sock in opened:
            sock.close()
        opened.clear()
        time.sleep(0.5)  # let the server see those closes
        # 16 connections each in the middle of a request (a body still coming): the 17th is
        # refused with a Connect error and a retry hint, and nothing else breaks.
        for _ in range(16):
            opened.append(
                _open(
                    server,
                    f"POST {SERVICE}/Put HTTP/1.1\r\nHost: x\r\n"
                    "content-type: application/proto\r\ncontent-length: 100\r\n\r\n".encode(),
                )
            )
        time.sleep(0.5)
        response = httpx.get(server.url + "/healthz", timeout=5)
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert response.json()["code"] == "unavailable"
        assert "--max-connections" in response.json()["message"]
        # Once the stalled bodies time out, the server takes connections again by itself.
        for sock in opened:
            assert _closed_by_server(sock, within=10)
        _healthz(server)
        assert _metric(server, "flytecache_connections_evicted_total") >= 1
        assert _metric(server, "flytecache_connections_refused_total") >= 1


def _answer(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends on ``sock`` until it closes it (``within`` seconds)."""
    sock.settimeout(within)
    answer = b""
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def test_refused_requests_whose_bodies_stall_do_not_hold_connections(tmp_path: Path) -> None:
    """A request answered without its body (wrong content type, no token, too large) drops
    the body only within --body-timeout: a client that stops sending never holds its place
    under --max-connections for longer, and one declaring more than is worth reading is
    answered at once and disconnected."""
    token = tmp_path / "token"
    token.write_text("s3cret")
    token.chmod(0o600)
    with (
        ServerProcess(
            tmp_path / "cache.db",
            "--max-connections",
            "16",
            "--body-timeout",
            "2s",
            "--auth-token-file",
            str(token),
            log_path=tmp_path / "server.log",
        ) as server,
        _sockets() as opened,
    ):
        stalled = [
            # A content type the service does not take, and then silence.
            f"POST {SERVICE}/Put HTTP/1.1\r\nHost: x\r\ncontent-type: text/plain\r\n"
            "authorization: Bearer s3cret\r\ncontent-length: 1000000\r\n\r\nab",
            # No token: refused before the body, which never comes.
            f"POST {SERVICE}/Put HTTP/1.1\r\nHost: x\r\ncontent-type: application/proto\r\n"
            "content-length: 100\r\n\r\n",
        ]
        for n in range(16):
            opened.append(_open(server, stalled[n % 2].encode()))
        time.sleep(0.5)
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 503  # all busy
        started = time.monotonic()
        answers = [_answer(sock, within=10) for sock in opened]
        assert time.monotonic() - started < 8  # the 2 s body deadline, not forever
        assert all(a.startswith((b"HTTP/1.1 415", b"HTTP/1.1 401")) for a in answers), answers
        assert sum(b'"unauthenticated"' in a for a in answers) == 8
        _healthz(server)

        # Declaring far more than the server would ever read: answered at once, then closed.
        huge = _open(
            server,
            f"POST {SERVICE}/Put HTTP/1.1\r\nHost: x\r\ncontent-type: application/proto\r\n"
            "authorization: Bearer s3cret\r\ncontent-length: 209715200\r\n\r\nx".encode(),
        )
        opened.append(huge)
        started = time.monotonic()
        answer = _answer(huge, within=5)
        assert time.monotonic() - started < 1.5
        assert answer.startswith(b"HTTP/1.1 429") and b'"resource_exhausted"' in answer
        assert "Traceback" not in server.log()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_stalled_upload_does_not_hold_a_stop(tmp_path: Path, sig: int) -> None:
    """Requests still waiting for their bodies (one accepted, one refused and being drained)
    are let go at once when the server stops, not after the 30 s graceful timeout, and
    without a traceback; a request already answered is unaffected."""
    with (
        ServerProcess(tmp_path / "cache.db", log_path=tmp_path / "server.log") as server,
        _sockets() as opened,
    ):
        for content_type in ("application/proto", "text/plain"):
            opened.append(
                _open(
                    server,
                    f"POST {SERVICE}/Put HTTP/1.1\r\nHost: x\r\ncontent-type: {content_type}\r\n"
                    "content-length: 1000\r\n\r\nab".encode(),
                )
            )
        _healthz(server)
        time.sleep(0.3)
        started = time.monotonic()
        assert server.stop(sig, timeout=20) == 0
        assert time.monotonic() - started < 5
        assert all(_closed_by_server(sock, within=1) for sock in opened)
        assert "Traceback" not in server.log()
