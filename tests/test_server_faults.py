"""The server under hostile bytes, a full disk and sustained load: errors are codes, never
crashes; memory and the WAL stay bounded."""

from __future__ import annotations

import multiprocessing
import statistics
import subprocess
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import _load
import httpx
import pytest
from _server_helpers import SERVICE, ServerProcess, get_req, put_req
from connectrpc.errors import ConnectError
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import literals_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

CTX = multiprocessing.get_context("spawn")
RPCS = ["Get", "Put", "Delete", "GetOrExtendReservation", "ReleaseReservation"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fuzz-server")
    with ServerProcess(tmp / "cache.db", log_path=tmp / "log") as running:
        yield running


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rpc=st.sampled_from(RPCS),
    body=st.binary(max_size=512),
    content_type=st.sampled_from(["application/proto", "application/json"]),
)
def test_random_bodies_get_client_errors_never_internal(
    server: ServerProcess, rpc: str, body: bytes, content_type: str
) -> None:
    response = httpx.post(
        f"{server.url}{SERVICE}/{rpc}", content=body, headers={"content-type": content_type}
    )
    # Random bytes can decode to a valid (if odd) request: then any non-5xx answer is right.
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        assert response.json()["code"] in {
            "invalid_argument",
            "not_found",
            "already_exists",
            "resource_exhausted",
        }


def _nested_literal_bytes(depth: int) -> bytes:
    """A Literal nested ``depth`` collections deep, built on the wire (Python refuses to)."""

    def field(number: int, payload: bytes) -> bytes:
        length, out = len(payload), bytearray([(number << 3) | 2])
        while True:
            byte = length & 0x7F
            length >>= 7
            out.append(byte | (0x80 if length else 0))
            if not length:
                return bytes(out) + payload

    inner = literals_pb2.Literal()
    inner.scalar.primitive.integer = 1
    data = inner.SerializeToString()
    for _ in range(depth):
        # Literal.collection (2) -> LiteralCollection.literals (1)
        data = field(2, field(1, data))
    return data


def test_deeply_nested_literals_are_invalid_argument(server: ServerProcess) -> None:
    literal = _nested_literal_bytes(300)
    # PutCacheRequest(base_request=PutCacheRequest(key, output=CachedOutput(output_literals=
    # LiteralMap(literals={"o": literal})))) assembled by hand around the too-deep literal.
    entry = b"\x0a\x01o" + b"\x12" + _varint(len(literal)) + literal
    literal_map = b"\x0a" + _varint(len(entry)) + entry
    output = b"\x0a" + _varint(len(literal_map)) + literal_map
    base = b"\x0a\x04deep" + b"\x12" + _varint(len(output)) + output
    request = b"\x0a" + _varint(len(base)) + base
    response = httpx.post(
        f"{server.url}{SERVICE}/Put",
        content=request,
        headers={"content-type": "application/proto"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_argument"
    assert httpx.get(server.url + "/healthz").status_code == 200


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def test_disk_full_through_the_server_is_resource_exhausted(tmp_path: Path) -> None:
    disk = tmp_path / "small"
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (disk / "filler").write_bytes(b"\0" * 1024 * 1024)
        with ServerProcess(disk / "cache.db", log_path=tmp_path / "log") as server:
            client = server.client()
            literals = literals_pb2.LiteralMap()
            literals.literals["o"].scalar.binary.value = b"x" * 64 * 1024
            output = cs.CachedOutput(output_literals=literals)
            with pytest.raises(ConnectError) as info:
                for i in range(1000):
                    client.put(put_req(f"k{i}", output))
            assert info.value.code.name == "RESOURCE_EXHAUSTED"
            client.get(get_req("k0"))  # earlier data intact, the server alive
            (disk / "filler").unlink()
            client.put(put_req("after", output))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _sustained(tmp_path: Path, seconds: float) -> dict[str, float]:
    db = tmp_path / "cache.db"
    with ServerProcess(db, log_path=tmp_path / "log") as server:
        with ProcessPoolExecutor(8, mp_context=CTX) as pool:
            futures = [
                pool.submit(_load.mixed_worker, server.url, f"c{n}", seconds, n) for n in range(8)
            ]
            samples: list[tuple[int, int]] = []
            while not all(f.done() for f in futures):
                wal = db.with_name(db.name + "-wal")
                samples.append((_rss_kib(server.pid), wal.stat().st_size if wal.exists() else 0))
                time.sleep(0.5)
            results = [f.result() for f in futures]
        assert httpx.get(server.url + "/healthz").status_code == 200
    errors = [e for r in results for e in r["errors"]]
    assert errors == [], errors[:5]
    latencies = sorted(x for r in results for x in r["latencies"])
    half = len(samples) // 2
    first, second = samples[:half] or samples, samples[half:] or samples
    report = {
        "calls": sum(r["calls"] for r in results),
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)],
        "max_ms": 1000 * latencies[-1],
        "rss_first_half_kib": max(s[0] for s in first),
        "rss_second_half_kib": max(s[0] for s in second),
        "wal_max_bytes": max(s[1] for s in samples),
    }
    # Bounded: memory does not keep growing and checkpoints keep the WAL small.
    assert report["rss_second_half_kib"] < 1.5 * report["rss_first_half_kib"] + 20_000, report
    assert report["wal_max_bytes"] < 64 * 1024 * 1024, report
    return report


def test_sustained_mixed_load_short(tmp_path: Path) -> None:
    print(_sustained(tmp_path, 6.0))


@pytest.mark.slow
def test_sustained_mixed_load_60s(tmp_path: Path) -> None:
    print(f"60 s sustained load: {_sustained(tmp_path, 60.0)}")


def test_invalid_utf8_in_a_protobuf_string_is_invalid_argument(server: ServerProcess) -> None:
    # GetCacheRequest(base_request=GetCacheRequest(key=b"\xff\xfe")) on the wire.
    base = b"\x0a\x02\xff\xfe"
    request = b"\x0a" + _varint(len(base)) + base
    response = httpx.post(
        f"{server.url}{SERVICE}/Get", content=request, headers={"content-type": "application/proto"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_argument"


@pytest.mark.parametrize("seconds", [-(2**62), 2**62, -1])
def test_out_of_range_durations_through_the_server(server: ServerProcess, seconds: int) -> None:
    from _server_helpers import reserve_req

    request = reserve_req("dur", "owner")
    request.base_request.heartbeat_interval.seconds = seconds
    client = server.client()
    try:
        lease = client.get_or_extend_reservation(request).reservation
    except ConnectError as error:
        assert error.code.name == "INVALID_ARGUMENT"
    else:
        assert lease.owner_id == "owner"  # clamped to max_heartbeat, like Flyte
