"""Codecs and compression of the Connect app: malformed input is the client's error, never a crash.

The connectrpc defaults answer an undecodable body with UNKNOWN/500 and a logged traceback;
these answer INVALID_ARGUMENT. gzip inflates at most the request limit (no decompression
bombs), charges what it inflates to the request's :class:`~flytecache.server.limits.RequestLedger`,
and leaves small Connect responses uncompressed.
"""

from __future__ import annotations

import contextvars
import zlib
from typing import Any

from connectrpc.code import Code
from connectrpc.errors import ConnectError
from google.protobuf.json_format import MessageToJson, Parse, ParseError
from google.protobuf.message import DecodeError, Message

from flytecache.server.limits import current_ledger

__all__ = ["COMPRESS_MIN_BYTES", "BoundedGzip", "JSONCodec", "ProtoCodec", "skipped_compression"]

COMPRESS_MIN_BYTES = 1024
"""Connect responses smaller than this are sent as they are: gzip's 18-byte frame makes an empty
``PutCacheResponse`` 20 bytes instead of 0, and small protobufs barely shrink."""

skipped_compression: contextvars.ContextVar[list[bool] | None] = contextvars.ContextVar(
    "flytecache_skipped_compression", default=None
)
"""Set by the app for a Connect unary request (the only kind whose body is compressed whole);
the codec appends True when it sent a small response as is, so the app drops its
``content-encoding`` header. Enveloped (gRPC, gRPC-Web) messages are always compressed as
negotiated, since their flag byte has already been promised."""


class ProtoCodec:
    """Binary protobuf; an undecodable body is INVALID_ARGUMENT (the runtime would say UNKNOWN)."""

    def name(self) -> str:
        return "proto"

    def encode(self, message: Message) -> bytes:
        return message.SerializeToString()

    def decode(self, data: bytes | bytearray, message: Any) -> Any:
        try:
            message.ParseFromString(bytes(data))
        except (DecodeError, ValueError, RuntimeError) as error:
            raise ConnectError(
                Code.INVALID_ARGUMENT, "request body is not a valid protobuf message"
            ) from error
        return message


class JSONCodec:
    """Protobuf JSON, compact, unknown fields ignored (like connect-go); bad JSON is rejected."""

    def name(self) -> str:
        return "json"

    def encode(self, message: Message) -> bytes:
        return MessageToJson(message, indent=None).encode()

    def decode(self, data: bytes | bytearray, message: Any) -> Any:
        try:
            Parse(bytes(data), message, ignore_unknown_fields=True)
        except (ParseError, ValueError, RuntimeError, RecursionError) as error:
            raise ConnectError(
                Code.INVALID_ARGUMENT, f"request body is not valid protobuf JSON: {error}"[:300]
            ) from error
        return message


class BoundedGzip:
    """gzip that refuses to inflate past the request limit (no decompression bombs)."""

    def __init__(self, limit: int) -> None:
        self._limit = limit

    def name(self) -> str:
        return "gzip"

    def compress(self, data: bytes | bytearray | memoryview) -> bytes:
        skipped = skipped_compression.get()
        if skipped is not None and len(data) < COMPRESS_MIN_BYTES:
            skipped.append(True)
            return bytes(data)
        # Responses are small; level 1 costs a fraction of the default for the same result.
        compressor = zlib.compressobj(1, zlib.DEFLATED, 31)
        return compressor.compress(bytes(data)) + compressor.flush()

    def decompress(self, data: bytes | bytearray | memoryview) -> bytes:
        out = bytearray()
        pending = bytes(data)
        try:
            while pending:
                inflater = zlib.decompressobj(47)  # gzip or zlib header, auto-detected
                out += inflater.decompress(pending, self._limit + 1 - len(out))
                if len(out) > self._limit or inflater.unconsumed_tail:
                    raise ConnectError(
                        Code.RESOURCE_EXHAUSTED,
                        f"request body is larger than the limit of {self._limit} bytes",
                    )
                if not inflater.eof:
                    raise ConnectError(Code.INVALID_ARGUMENT, "truncated gzip request body")
                pending = inflater.unused_data  # the next gzip member, if any
        except zlib.error as error:
            raise ConnectError(Code.INVALID_ARGUMENT, "request body is not valid gzip") from error
        ledger = current_ledger.get()
        if ledger is not None:
            ledger.charge(len(out))  # the inflated copy lives beside the compressed one
        return bytes(out)
