"""Run the real ``flytecache serve`` as a subprocess and drive it with flyteidl2's client.

Also holds the process entry points of the server concurrency tests (importable by spawned
children).
"""

from __future__ import annotations

import os
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any, Self

import httpx
from connectrpc.codec import proto_json_codec
from connectrpc.errors import ConnectError
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.cacheservice.v2 import cacheservice_pb2 as v2
from flyteidl2.cacheservice.v2.cacheservice_connect import CacheServiceClientSync

# `python -m flytecache` needs a __main__; the CLI entry point works from any venv layout.
FLYTECACHE = [
    sys.executable,
    "-c",
    "import sys; from flytecache.cli import main; sys.argv[0] = 'flytecache'; main()",
]
SERVICE = "/flyteidl2.cacheservice.v2.CacheService"
_LISTENING = re.compile(r"serving CacheService \([^)]*\) on (http://\S+) for (\S+)")


class ServerProcess:
    """``flytecache serve --port 0`` on a temp database; the URL is read from its startup line."""

    def __init__(
        self,
        db: str | os.PathLike[str] | None,
        *args: str,
        log_path: Path,
        env: dict[str, str] | None = None,
        open_files: int | None = None,
    ) -> None:
        self.args = ([] if db is None else ["--db", str(db)]) + list(args)
        if db is not None and "--port" not in args:
            self.args += ["--port", "0"]
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.open_files = open_files
        """``ulimit -n`` (soft and hard) of the server, when given."""
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = ""
        self.database = ""

    def start(self, timeout: float = 30.0) -> Self:
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*FLYTECACHE, "serve", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                preexec_fn=None if self.open_files is None else self._limit_files,
            )
        deadline = time.monotonic() + timeout
        while not self.url:
            match = _LISTENING.search(self.log())
            if match:
                self.url, self.database = match.group(1), match.group(2)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server did not start:\n{self.log()}")
            else:
                time.sleep(0.02)
        while True:
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"server never became healthy:\n{self.log()}")
            time.sleep(0.02)

    def _limit_files(self) -> None:
        assert self.open_files is not None
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, self.open_files))

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def client(self, *, json: bool = False, **kwargs: Any) -> CacheServiceClientSync:
        """flyteidl2's generated client (binary protobuf, or JSON)."""
        if json:
            kwargs["codec"] = proto_json_codec()
        kwargs.setdefault("timeout_ms", 30_000)
        return CacheServiceClientSync(self.url, **kwargs)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        """Send ``sig`` and wait for the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"server ignored signal {sig}:\n{self.log()}") from None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.stop()
            finally:
                self.kill()


def free_port() -> int:
    """A port with nothing listening on it (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- request builders ----------------------------------------------------------------------


def ident(project: str = "proj", domain: str = "dev", org: str = "") -> v2.Identifier:
    return v2.Identifier(org=org, project=project, domain=domain)


def get_req(key: str, identifier: v2.Identifier | None = None) -> v2.GetCacheRequest:
    return v2.GetCacheRequest(
        base_request=cs.GetCacheRequest(key=key), identifier=identifier or ident()
    )


def put_req(
    key: str,
    output: cs.CachedOutput | None = None,
    *,
    overwrite: bool | None = None,
    max_age: timedelta | None = None,
    delete_blob: bool = False,
    identifier: v2.Identifier | None = None,
) -> v2.PutCacheRequest:
    base = cs.PutCacheRequest(key=key)
    if output is not None:
        base.output.CopyFrom(output)
    if overwrite is not None or max_age is not None or delete_blob:
        base.overwrite.overwrite = bool(overwrite)
        base.overwrite.delete_blob = delete_blob
        if max_age is not None:
            base.overwrite.max_age.FromTimedelta(max_age)
    return v2.PutCacheRequest(base_request=base, identifier=identifier or ident())


def delete_req(key: str, identifier: v2.Identifier | None = None) -> v2.DeleteCacheRequest:
    return v2.DeleteCacheRequest(
        base_request=cs.DeleteCacheRequest(key=key), identifier=identifier or ident()
    )


def reserve_req(
    key: str,
    owner: str,
    heartbeat: timedelta | None = None,
    identifier: v2.Identifier | None = None,
) -> v2.GetOrExtendReservationRequest:
    base = cs.GetOrExtendReservationRequest(key=key, owner_id=owner)
    if heartbeat is not None:
        base.heartbeat_interval.FromTimedelta(heartbeat)
    return v2.GetOrExtendReservationRequest(base_request=base, identifier=identifier or ident())


def release_req(
    key: str, owner: str, identifier: v2.Identifier | None = None
) -> v2.ReleaseReservationRequest:
    return v2.ReleaseReservationRequest(
        base_request=cs.ReleaseReservationRequest(key=key, owner_id=owner),
        identifier=identifier or ident(),
    )


def uri_output(uri: str = "s3://bucket/outputs.pb") -> cs.CachedOutput:
    return cs.CachedOutput(output_uri=uri)


# -- process entry points -------------------------------------------------------------------


def lease_worker(
    urls: Sequence[str], owner: str, keys: list[str], start_at: float, seconds: float, seed: int
) -> dict[str, Any]:
    """Race for leases through the server(s), alternating URLs; log each holding interval."""
    rng = random.Random(seed)
    clients = [CacheServiceClientSync(url, timeout_ms=30_000) for url in urls]
    held: list[tuple[str, int, int, bool]] = []
    errors: list[str] = []
    calls = 0
    time.sleep(max(0.0, start_at - time.time()))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        key = rng.choice(keys)
        client = clients[calls % len(clients)]
        calls += 1
        try:
            lease = client.get_or_extend_reservation(
                reserve_req(key, owner, timedelta(seconds=1))
            ).reservation
        except ConnectError as error:
            errors.append(f"reserve: {error.code.name} {error.message}")
            continue
        if lease.owner_id != owner:
            continue
        start = time.monotonic_ns()
        expires_wall_ns = lease.expires_at.seconds * 10**9 + lease.expires_at.nanos
        time.sleep(rng.random() * 0.002)
        end = time.monotonic_ns()
        # Descheduled past our own lease: a takeover by someone else is then legitimate.
        overran = time.time_ns() >= expires_wall_ns
        held.append((key, start, end, overran))
        try:
            clients[calls % len(clients)].release_reservation(release_req(key, owner))
        except ConnectError as error:
            errors.append(f"release: {error.code.name} {error.message}")
        calls += 1
    return {"owner": owner, "held": held, "errors": errors, "calls": calls}
