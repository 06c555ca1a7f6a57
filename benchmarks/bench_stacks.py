"""Which ASGI server stack carries flytecache's app fastest: the same no-op CacheService on each.

Every stack serves :func:`benchmarks.noop_service.build_noop_app` (the gateway with auth/limits/
metrics and flyteidl2's Connect app over a service that does nothing), so the differences are the
HTTP server, its parser and its event loop alone. Clients are flyteidl2's generated Connect client
over HTTP/1.1 (the Flyte executor's protocol) in separate processes; rounds rotate the stacks so
drift hits all alike, and each cell reports the median over rounds with the min-max spread.

    python -m benchmarks.bench_stacks [--seconds S] [--rounds R] [--clients 1,4] [--json PATH]

Stacks (``gRPC`` = serves gRPC over h2c, i.e. has HTTP/2 and the ASGI trailers extension):

* ``uvicorn-h11`` — uvicorn, pure-Python h11 parser, asyncio loop (what 0.x shipped); no gRPC.
* ``uvicorn-httptools`` — uvicorn, httptools parser, uvloop; no gRPC.
* ``uvicorn-zttp`` — uvicorn ``http2=True``: zttp (compiled) for HTTP/1.1 and h2c, uvloop; gRPC.
* ``hypercorn`` — hypercorn (h11 + h2, pure Python), uvloop; gRPC.
* ``granian`` — granian (Rust, hyper), HTTP/1.1; no ASGI trailers, so no gRPC.
* ``flytecache`` — what ``flytecache serve`` runs: uvicorn on uvloop under
  :mod:`flytecache.server.guard` (zttp for HTTP/1.1 and h2c, limits); gRPC.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks._common import median, write_json
from benchmarks.bench_server import CTX, _client_loop, _Server, _warm

STACKS = ("uvicorn-h11", "uvicorn-httptools", "uvicorn-zttp", "hypercorn", "granian", "flytecache")


def _noop_app() -> Any:
    from benchmarks.noop_service import build_noop_app
    from flytecache.server import ServerSettings

    return build_noop_app(ServerSettings(log_level="warning"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(stack: str, port: int) -> None:
    """Serve the no-op app with ``stack`` on 127.0.0.1:``port`` (the ``serve`` subcommand)."""
    print(f"{stack} on http://127.0.0.1:{port}", flush=True)
    if stack == "flytecache":
        from benchmarks.bench_server import serve_noop

        serve_noop(port)
    elif stack.startswith("uvicorn"):
        import uvicorn

        options: dict[str, Any] = {
            "uvicorn-h11": {"http": "h11", "loop": "asyncio"},
            "uvicorn-httptools": {"http": "httptools", "loop": "uvloop"},
            "uvicorn-zttp": {"http": "zttp", "http2": True, "loop": "uvloop"},
        }[stack]
        uvicorn.run(
            _noop_app(),
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="off",
            **options,
        )
    elif stack == "hypercorn":
        import uvloop
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.loglevel = "WARNING"
        config.accesslog = None
        uvloop.run(hypercorn_serve(_noop_app(), config, mode="asgi"))
    elif stack == "granian":
        from granian import Granian

        Granian(
            "benchmarks.bench_stacks:_noop_app",
            factory=True,
            address="127.0.0.1",
            port=port,
            interface="asgi",
            workers=1,
            log_enabled=False,
        ).serve()
    else:
        raise SystemExit(f"unknown stack {stack!r}")


def run(
    stacks: list[str], clients: list[int], seconds: float, rounds: int, workdir: Path
) -> list[dict[str, Any]]:
    """requests/s of a Connect unary Get for every (stack, clients), ``rounds`` times each."""
    servers = {}
    for stack in stacks:
        args = [sys.executable, "-m", "benchmarks.bench_stacks", "serve", stack]
        servers[stack] = _Server(stack, [*args, "--port", str(_free_port())], workdir / stack)
    samples: dict[tuple[str, int], list[float]] = {}
    try:
        urls = {stack: server.wait_ready() for stack, server in servers.items()}
        with ProcessPoolExecutor(max(clients), mp_context=CTX) as pool:
            list(pool.map(_warm, range(max(clients))))
            for round_ in range(rounds):
                order = stacks[round_ % len(stacks) :] + stacks[: round_ % len(stacks)]
                for n in clients:
                    for stack in order:
                        start_at = time.time() + 0.2
                        futures = [
                            pool.submit(_client_loop, urls[stack], "get", w, "x", start_at, seconds)
                            for w in range(n)
                        ]
                        results = [f.result() for f in futures]
                        if any(r[2] for r in results):
                            raise SystemExit(f"{stack} x{n}: requests failed")
                        rate = sum(r[0] / r[1] for r in results)
                        samples.setdefault((stack, n), []).append(rate)
    finally:
        for server in servers.values():
            server.stop()
    rows = []
    for (stack, n), rates in sorted(samples.items(), key=lambda item: (item[0][1], item[0][0])):
        rows.append(
            {
                "stack": stack,
                "clients": n,
                "median": median(rates),
                "min": min(rates),
                "max": max(rates),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", nargs="?", choices=["bench", "serve"], default="bench")
    parser.add_argument("stack", nargs="?", choices=STACKS)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--stacks", default=",".join(STACKS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.command == "serve":
        serve(args.stack, args.port)
        return
    stacks = [s for s in args.stacks.split(",") if s]
    clients = [int(c) for c in args.clients.split(",")]
    print(f"{args.seconds:g} s per cell, {args.rounds} rounds, {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory(prefix="flytecache-stacks-") as tmp:
        rows = run(stacks, clients, args.seconds, args.rounds, Path(tmp))
    base = {r["clients"]: r["median"] for r in rows if r["stack"] == rows[0]["stack"]}
    print(f"{'stack':<20} {'clients':>7} {'median req/s':>13} {'min-max':>15} {'vs first':>8}")
    for r in rows:
        print(
            f"{r['stack']:<20} {r['clients']:>7} {r['median']:>13,.0f} "
            f"{r['min']:>7,.0f}-{r['max']:<7,.0f} {r['median'] / base[r['clients']]:>8.2f}"
        )
    if args.json:
        write_json(args.json, {"rows": rows})


if __name__ == "__main__":
    main()
