"""One CacheService client per protocol and transport, all with one interface.

Each driver calls the five RPCs and raises :class:`RpcError` with the code's lowercase Connect
name, so one test body runs unchanged through Connect over HTTP/1.1 (flyteidl2's generated
client), gRPC over h2c (flyteidl2's grpcio stub), Connect over h2c (httpx, prior knowledge) and
gRPC-Web over HTTP/1.1 (the generated client again).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

import grpc
import httpx
from connectrpc.errors import ConnectError
from connectrpc.protocol import ProtocolType
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.cacheservice.v2 import cacheservice_pb2 as v2
from flyteidl2.cacheservice.v2 import cacheservice_pb2_grpc
from flyteidl2.cacheservice.v2.cacheservice_connect import CacheServiceClientSync
from google.protobuf.message import Message

SERVICE = "/flyteidl2.cacheservice.v2.CacheService"
RESPONSES = {
    "Get": cs.GetCacheResponse,
    "Put": cs.PutCacheResponse,
    "Delete": cs.DeleteCacheResponse,
    "GetOrExtendReservation": cs.GetOrExtendReservationResponse,
    "ReleaseReservation": cs.ReleaseReservationResponse,
}
# gRPC status numbers by Connect name (the gRPC spec's table).
GRPC_NAMES = {
    1: "canceled",
    2: "unknown",
    3: "invalid_argument",
    4: "deadline_exceeded",
    5: "not_found",
    6: "already_exists",
    7: "permission_denied",
    8: "resource_exhausted",
    9: "failed_precondition",
    10: "aborted",
    11: "out_of_range",
    12: "unimplemented",
    13: "internal",
    14: "unavailable",
    15: "data_loss",
    16: "unauthenticated",
}


class RpcError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Driver(Protocol):
    name: str

    def call(self, rpc: str, request: Message) -> Any: ...

    def close(self) -> None: ...


class ConnectHttp1:
    """flyteidl2's generated Connect client (HTTP/1.1, gzip): the Flyte executor's protocol."""

    name = "connect-http1"

    def __init__(self, url: str) -> None:
        self._client = CacheServiceClientSync(url, timeout_ms=30_000)

    def call(self, rpc: str, request: Message) -> Any:
        method = {
            "Get": self._client.get,
            "Put": self._client.put,
            "Delete": self._client.delete,
            "GetOrExtendReservation": self._client.get_or_extend_reservation,
            "ReleaseReservation": self._client.release_reservation,
        }[rpc]
        try:
            return method(request)
        except ConnectError as error:
            raise RpcError(error.code.value, error.message) from None

    def close(self) -> None:
        self._client.close()


class GrpcH2c:
    """flyteidl2's grpcio stub on an insecure channel (gRPC over h2c)."""

    name = "grpc-h2c"

    def __init__(self, url: str) -> None:
        self._channel = grpc.insecure_channel(url.removeprefix("http://"))
        self._stub = cacheservice_pb2_grpc.CacheServiceStub(self._channel)

    def call(self, rpc: str, request: Message) -> Any:
        try:
            return getattr(self._stub, rpc)(request, timeout=30)
        except grpc.RpcError as error:
            code = error.code()  # type: ignore[attr-defined]
            raise RpcError(GRPC_NAMES[code.value[0]], error.details() or "") from None  # type: ignore[attr-defined]

    def close(self) -> None:
        self._channel.close()


class ConnectH2c:
    """Connect unary over HTTP/2 with prior knowledge (httpx ``http2=True``, no HTTP/1.1)."""

    name = "connect-h2c"

    def __init__(self, url: str) -> None:
        self._url = url
        self._client = httpx.Client(http1=False, http2=True, timeout=30)

    def call(self, rpc: str, request: Message) -> Any:
        response = self._client.post(
            self._url + f"{SERVICE}/{rpc}",
            content=request.SerializeToString(),
            headers={"content-type": "application/proto", "connect-protocol-version": "1"},
        )
        assert response.http_version == "HTTP/2", response.http_version
        if response.status_code != 200:
            error = response.json()
            raise RpcError(error["code"], error.get("message", ""))
        return RESPONSES[rpc].FromString(response.content)

    def close(self) -> None:
        self._client.close()


class GrpcWebHttp1(ConnectHttp1):
    """flyteidl2's generated client speaking gRPC-Web (binary) over HTTP/1.1."""

    name = "grpc-web-http1"

    def __init__(self, url: str) -> None:
        self._client = CacheServiceClientSync(
            url, timeout_ms=30_000, protocol=ProtocolType.GRPC_WEB
        )


DRIVERS: dict[str, type[Any]] = {
    driver.name: driver for driver in (ConnectHttp1, GrpcH2c, ConnectH2c, GrpcWebHttp1)
}


def connect_error(response: httpx.Response) -> dict[str, Any]:
    """The Connect error body of a non-200 response (asserting it is one)."""
    assert response.headers["content-type"] == "application/json", response.headers
    body = json.loads(response.content)
    assert set(body) >= {"code", "message"} and body["message"], body
    return dict(body)


def v2_ident(project: str = "proj", domain: str = "dev") -> v2.Identifier:
    return v2.Identifier(org="org", project=project, domain=domain)
