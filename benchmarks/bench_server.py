"""``flytecache serve`` against the same server stack with a no-op service and with the
limit, in one run.

The ceiling is the very stack the real server runs (uvicorn, the gateway with auth/limits/
metrics, flyteidl2's Connect app) over a CacheService that does nothing. The ratio
server/ceiling (``ratio``, issue #15's target) is therefore what the store, the thread hop and
key scoping cost on top of the transport, for 1, 4 and 8 concurrent client processes using
flyteidl2's generated client.

The limit is the same stack over a CacheService whose RPCs are the limit's statements
(``benchmarks/limit_service.py``: one upsert per put, committed). limit/ceiling
(``limit_vs_ceiling``) is the most any store that commits each put can reach on this stack;
server/limit (``server_vs_limit``) is how far flytecache is from that.

    python -m benchmarks.bench_server [--quick] [--seconds S] [--rounds R] [--clients 1,4,8]
                                      [--workers N] [--no-limit] [--json PATH]

Each cell runs ``--rounds`` times (default 3), the three targets one after the other in an
order that rotates round by round; it reports the medians with the min–max over rounds, the
median of the per-round ratios, and each server process's CPU time per request (with
``--workers``, the workers' sum; the other two always run one process).

All three servers and all clients share this machine's cores, as they would in a sandbox.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

CTX = multiprocessing.get_context("spawn")
ROOT = Path(__file__).resolve().parent.parent
OPS = ("get", "put", "reserve")
GET_KEYS = 256
_LISTENING = re.compile(r"on (http://\S+)")


# -- the servers ----------------------------------------------------------------------------


def serve_noop(port: int) -> None:
    """Run the no-op service on the real stack (the ``serve-noop`` subcommand)."""
    from benchmarks.noop_service import build_noop_app
    from flytecache.server import ServerSettings
    from flytecache.server.run import bind, configure_logging, listen_url, run_app

    settings = ServerSettings(port=port, log_level="warning")
    log_config = configure_logging(settings.log_level)
    sock = bind(settings.host, settings.port)
    print(f"no-op CacheService on {listen_url(sock)}", flush=True)
    run_app(build_noop_app(settings), sock, settings, log_config=log_config)


def serve_limit(port: int, db: Path) -> None:
    """Run the limit's service on the real stack (the ``serve-limit`` subcommand)."""
    from benchmarks.limit_service import build_limit_app
    from flytecache.server import ServerSettings
    from flytecache.server.run import bind, configure_logging, listen_url, run_app

    settings = ServerSettings(port=port, log_level="warning")
    log_config = configure_logging(settings.log_level)
    app = build_limit_app(db, settings)
    try:
        sock = bind(settings.host, settings.port)
        print(f"the limit's CacheService on {listen_url(sock)}", flush=True)
        run_app(app, sock, settings, log_config=log_config)
    finally:
        app.close()


class _Server:
    def __init__(self, name: str, args: list[str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=ROOT
            )
        self.url = ""

    def wait_ready(self, timeout: float = 60) -> str:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.url:
                match = _LISTENING.search(self.log.read_text(errors="replace"))
                if match:
                    self.url = match.group(1)
            if self.url:
                try:
                    if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                        return self.url
                except httpx.TransportError:
                    pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise SystemExit(f"{self.name} did not start:\n{self.log.read_text(errors='replace')}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the clients (run in spawned processes) -------------------------------------------------


def _warm(_: int) -> int:
    import flyteidl2.cacheservice.v2.cacheservice_connect  # noqa: F401

    time.sleep(0.2)  # so that every worker process takes one and is started
    return os.getpid()


def _client_loop(
    url: str, op: str, worker: int, run: str, start_at: float, seconds: float
) -> tuple[int, float, int]:
    """Issue ``op`` back to back for ``seconds``; (requests, elapsed, errors)."""
    from connectrpc.errors import ConnectError
    from flyteidl2.cacheservice import cacheservice_pb2 as cs
    from flyteidl2.cacheservice.v2 import cacheservice_pb2 as v2
    from flyteidl2.cacheservice.v2.cacheservice_connect import CacheServiceClientSync

    client = CacheServiceClientSync(url, timeout_ms=30_000, send_compression=None)
    ident = v2.Identifier(org="bench", project="proj", domain="dev")
    output = cs.CachedOutput(output_uri="s3://bucket/bench/outputs.pb")
    count = errors = 0
    time.sleep(max(0.0, start_at - time.time()))
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        try:
            if op == "get":
                client.get(
                    v2.GetCacheRequest(
                        base_request=cs.GetCacheRequest(key=f"bench-get-{count % GET_KEYS}"),
                        identifier=ident,
                    )
                )
            elif op == "put":
                client.put(
                    v2.PutCacheRequest(
                        base_request=cs.PutCacheRequest(
                            key=f"bench-put-{run}-{worker}-{count}", output=output
                        ),
                        identifier=ident,
                    )
                )
            else:
                client.get_or_extend_reservation(
                    v2.GetOrExtendReservationRequest(
                        base_request=cs.GetOrExtendReservationRequest(
                            key=f"bench-res-{worker}-{count % 64}", owner_id=f"owner-{worker}"
                        ),
                        identifier=ident,
                    )
                )
        except ConnectError:
            errors += 1
        count += 1
    return count - errors, time.perf_counter() - started, errors


def _preload(url: str) -> None:
    from flyteidl2.cacheservice import cacheservice_pb2 as cs
    from flyteidl2.cacheservice.v2 import cacheservice_pb2 as v2
    from flyteidl2.cacheservice.v2.cacheservice_connect import CacheServiceClientSync

    client = CacheServiceClientSync(url, timeout_ms=30_000)
    ident = v2.Identifier(org="bench", project="proj", domain="dev")
    for i in range(GET_KEYS):
        client.put(
            v2.PutCacheRequest(
                base_request=cs.PutCacheRequest(
                    key=f"bench-get-{i}",
                    output=cs.CachedOutput(output_uri=f"s3://bucket/bench/{i}/outputs.pb"),
                    overwrite=cs.OverwriteOutput(overwrite=True),
                ),
                identifier=ident,
            )
        )


def _entries(url: str) -> float:
    import httpx

    for line in httpx.get(url + "/metrics", timeout=30).text.splitlines():
        if line.startswith("flytecache_entries "):
            return float(line.split()[1])
    raise SystemExit("the server reported no flytecache_entries")


# -- the run --------------------------------------------------------------------------------


def run(
    seconds: float,
    clients: list[int],
    ops: list[str],
    workdir: Path,
    workers: int = 1,
    rounds: int = 1,
    *,
    with_limit: bool = True,
) -> list[dict[str, Any]]:
    """Measure every (op, clients) cell against each server ``rounds`` times, interleaved;
    returns one row per cell: medians, and each round's values in ``*_runs``. Without
    ``with_limit`` only the server and the ceiling run (and the rows have no limit fields)."""
    python = sys.executable
    servers = {
        "server": _Server(
            "flytecache serve",
            [
                python,
                "-c",
                "import sys; from flytecache.cli import main; sys.argv[0] = 'flytecache'; main()",
                "serve",
                "--db",
                str(workdir / "bench.db"),
                "--port",
                "0",
                "--log-level",
                "warning",
                "--workers",
                str(workers),
            ],
            workdir / "server.log",
        ),
        "ceiling": _Server(
            "no-op server",
            [python, "-m", "benchmarks.bench_server", "serve-noop", "--port", "0"],
            workdir / "noop.log",
        ),
    }
    if with_limit:
        servers["limit"] = _Server(
            "the limit's server",
            [
                python,
                "-m",
                "benchmarks.bench_server",
                "serve-limit",
                "--port",
                "0",
                "--db",
                str(workdir / "limit.db"),
            ],
            workdir / "limit.log",
        )
    names = list(servers)
    runs: dict[tuple[str, int], dict[str, list[float]]] = {}
    try:
        urls = {name: server.wait_ready() for name, server in servers.items()}
        pids = {name: server.proc.pid for name, server in servers.items()}
        for name in ("server", "limit"):
            if name in urls:
                _preload(urls[name])
        with ProcessPoolExecutor(max(clients), mp_context=CTX) as pool:
            list(pool.map(_warm, range(max(clients))))
            puts = dict.fromkeys(names, 0)
            for round_ in range(rounds):
                # Rotate which target goes first round by round (with two: alternate), and
                # run the targets cell by cell, so drift hits all alike.
                shift = round_ % len(names)
                targets = names[shift:] + names[:shift]
                for op in ops:
                    for n in clients:
                        cell = runs.setdefault((op, n), {})
                        for target in targets:
                            run_id = f"{target}-{op}-{n}-{time.time_ns()}"
                            start_at = time.time() + 0.2
                            cpu_before = _cpu_seconds(pids[target])
                            futures = [
                                pool.submit(
                                    _client_loop, urls[target], op, w, run_id, start_at, seconds
                                )
                                for w in range(n)
                            ]
                            results = [f.result() for f in futures]
                            cpu = _cpu_seconds(pids[target]) - cpu_before
                            errors = sum(r[2] for r in results)
                            if errors:
                                raise SystemExit(f"{target} {op} x{n}: {errors} requests failed")
                            requests = sum(r[0] for r in results)
                            cell.setdefault(target, []).append(sum(r[0] / r[1] for r in results))
                            cell.setdefault(f"{target}_cpu_us", []).append(
                                cpu / max(requests, 1) * 1e6
                            )
                            if op == "put":
                                puts[target] += requests
                        cell.setdefault("ratio", []).append(
                            cell["server"][-1] / cell["ceiling"][-1]
                        )
                        if with_limit:
                            cell.setdefault("limit_vs_ceiling", []).append(
                                cell["limit"][-1] / cell["ceiling"][-1]
                            )
                            cell.setdefault("server_vs_limit", []).append(
                                cell["server"][-1] / cell["limit"][-1]
                            )
                        if rounds == 1:
                            _print_row(_row(op, n, cell))
                if rounds > 1:
                    print(f"round {round_ + 1}/{rounds} done", flush=True)
            # Check after timing: every put the clients counted is in the database.
            stored = _entries(urls["server"])
            if stored != GET_KEYS + puts["server"]:
                raise SystemExit(
                    f"expected {GET_KEYS + puts['server']} entries after the run, found {stored}"
                )
            if with_limit:
                from benchmarks.limit import Limit

                with Limit.open(workdir / "limit.db") as limit:
                    stored = limit.count("kv", "proj-dev-bench-")
                if stored != GET_KEYS + puts["limit"]:
                    raise SystemExit(
                        f"expected {GET_KEYS + puts['limit']} rows in the limit after the run, "
                        f"found {stored}"
                    )
    except BaseException:
        for server in servers.values():
            tail = server.log.read_text(errors="replace").splitlines()[-30:]
            print(f"--- {server.name} log (tail)", *tail, sep="\n", file=sys.stderr)
        raise
    finally:
        for server in servers.values():
            server.stop()
    if servers["server"].proc.returncode != 0:
        raise SystemExit(f"flytecache serve exited {servers['server'].proc.returncode} on SIGTERM")
    rows = [_row(op, n, cell) for (op, n), cell in runs.items()]
    if rounds > 1:
        for row in rows:
            _print_row(row)
    return rows


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of process ``pid`` and its children (``--workers``) so far;
    NaN where /proc has none."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        total = 0
        for process in (pid, *map(int, children)):
            fields = Path(f"/proc/{process}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return total / os.sysconf("SC_CLK_TCK")


def _row(op: str, n: int, cell: dict[str, list[float]]) -> dict[str, Any]:
    row: dict[str, Any] = {"op": op, "clients": n}
    for name, values in cell.items():
        row[name] = statistics.median(values)
        row[f"{name}_runs"] = values
    return row


def _print_row(row: dict[str, Any]) -> None:
    def spread(name: str) -> str:
        runs = row[f"{name}_runs"]
        if len(runs) < 2:
            return ""
        digits = 0 if name in ("server", "ceiling", "limit") else 2
        return f" ({min(runs):,.{digits}f}–{max(runs):,.{digits}f})"

    line = (
        f"{row['op']:<8} {row['clients']:>7} {row['server']:>9,.0f}{spread('server')}"
        f" {row['ceiling']:>9,.0f}{spread('ceiling')} {row['ratio']:>6.2f}{spread('ratio')}"
    )
    cpu = f"{row['server_cpu_us']:,.0f} vs {row['ceiling_cpu_us']:,.0f}"
    if "limit" in row:
        line += (
            f" | limit {row['limit']:,.0f}{spread('limit')}"
            f" limit/ceiling {row['limit_vs_ceiling']:.2f}{spread('limit_vs_ceiling')}"
            f" server/limit {row['server_vs_limit']:.2f}{spread('server_vs_limit')}"
        )
        cpu += f" vs {row['limit_cpu_us']:,.0f} (limit)"
    print(f"{line}   cpu/request {cpu} µs", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "command", nargs="?", choices=["bench", "serve-noop", "serve-limit"], default="bench"
    )
    parser.add_argument("--quick", action="store_true", help="1 s per cell instead of 5 s")
    parser.add_argument("--seconds", type=float, help="seconds per cell")
    parser.add_argument("--clients", default="1,4,8", help="client process counts")
    parser.add_argument("--ops", default=",".join(OPS), help="get,put,reserve")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON here")
    parser.add_argument("--workers", type=int, default=1, help="serve --workers for the server")
    parser.add_argument("--rounds", type=int, default=3, help="repetitions (medians reported)")
    parser.add_argument("--port", type=int, default=0, help="serve-noop, serve-limit: port")
    parser.add_argument("--db", type=Path, help="serve-limit: the limit's SQLite file")
    parser.add_argument(
        "--no-limit", action="store_true", help="measure the server and the ceiling only"
    )
    args = parser.parse_args(argv)
    if args.command == "serve-noop":
        serve_noop(args.port)
        return
    if args.command == "serve-limit":
        if args.db is None:
            parser.error("serve-limit needs --db")
        serve_limit(args.port, args.db)
        return
    seconds = args.seconds or (1.0 if args.quick else 5.0)
    clients = [int(c) for c in args.clients.split(",")]
    ops = [op for op in args.ops.split(",") if op]
    if not clients or min(clients) < 1 or not set(ops) <= set(OPS):
        parser.error("--clients must be positive integers, --ops a subset of get,put,reserve")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    print(
        f"{seconds:g} s per cell, {args.rounds} rounds, {os.cpu_count()} CPUs; requests/s (sum "
        "over clients), medians (min–max); the server processes' CPU time per request"
    )
    print(
        f"{'op':<8} {'clients':>7} {'server':>9} {'ceiling':>9} {'ratio':>6}"
        + ("" if args.no_limit else " | limit, limit/ceiling, server/limit")
    )
    with tempfile.TemporaryDirectory(prefix="flytecache-bench-") as tmp:
        rows = run(
            seconds,
            clients,
            ops,
            Path(tmp),
            args.workers,
            args.rounds,
            with_limit=not args.no_limit,
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
