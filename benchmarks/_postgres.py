"""A throwaway PostgreSQL server, for the benchmarks' PostgreSQL rows and (through
tests/_postgres.py) the test suite.

Uses the machine's binaries (``/usr/lib/postgresql/<v>/bin`` or ``FLYTECACHE_PG_BINDIR``);
under root the server runs as the ``postgres`` user (PostgreSQL refuses root). Free port, data
in a temporary folder, removed on :meth:`stop`. ``FLYTECACHE_BENCH_PG_URL`` uses an existing
server instead.

By default durability is set to match SQLite's ``synchronous=NORMAL`` in WAL mode rather than
the test suite's "everything off": ``fsync`` stays on (checkpoints are durable) and
``synchronous_commit=off`` (a commit does not wait for its WAL flush), so neither backend
fsyncs per transaction and both survive a process crash.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

USER = "flytecache"


def find_bindir() -> Path | None:
    """The PostgreSQL binaries, or None when the machine has none."""
    explicit = os.environ.get("FLYTECACHE_PG_BINDIR")
    if explicit:
        return Path(explicit)
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if candidates:
        return Path(candidates[0]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _run_as() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "flytecache-pg"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    user = ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin"]
    subprocess.run([*user, "flytecache-pg"], check=True)
    return "flytecache-pg"


BENCH_SETTINGS = "-c synchronous_commit=off -c max_connections=200 -c shared_buffers=128MB"
"""Server settings for measuring: no flush per commit, durable checkpoints (see above)."""


class PostgresServer:
    """initdb + pg_ctl start on a free port; :meth:`stop` removes everything."""

    def __init__(self, bindir: Path, *, settings: str = BENCH_SETTINGS) -> None:
        self.bindir = bindir
        self.settings = settings
        self.user = _run_as()
        self.tmp = Path(tempfile.mkdtemp(prefix="flytecache-pg-"))
        self.data = self.tmp / "data"
        self.port = _free_port()
        self.started = False

    def _run(self, *args: str) -> str:
        kwargs = {}
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
        result = subprocess.run(
            [str(self.bindir / args[0]), *args[1:]],
            capture_output=True,
            text=True,
            cwd=self.tmp,
            **kwargs,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{args[0]} failed: {result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self) -> PostgresServer:
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.tmp, entry.pw_uid, entry.pw_gid)
        os.chmod(self.tmp, 0o700)
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, "--auth=trust", "-E", "UTF8", "--no-sync"
        )
        options = f"-p {self.port} -k {self.tmp} -c listen_addresses=127.0.0.1 {self.settings}"
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.tmp / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            options,
            "start",
        )
        self.started = True
        return self

    def version(self) -> str:
        return self._run("postgres", "--version").strip()

    @property
    def admin_dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} dbname=postgres"

    def dsn(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user={USER} dbname={database}"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = "bench_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "template0"')
        return name

    def stop(self) -> None:
        try:
            if self.started:
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
                self.started = False
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


class Databases:
    """Fresh PostgreSQL databases for one benchmark run, on one server.

    ``FLYTECACHE_BENCH_PG_URL`` names an existing server's database instead: every caller then
    shares it (flytecache's tables and the limit's have different names).
    """

    def __init__(self, server: PostgresServer | None, url: str | None) -> None:
        self.server = server
        self.fixed_url = url
        self.version = server.version() if server is not None else "external server"

    def new_url(self) -> str:
        """A ``postgresql+psycopg://`` URL of an empty database."""
        if self.server is None:
            assert self.fixed_url is not None
            return self.fixed_url
        return self.server.url(self.server.create_database())


@contextlib.contextmanager
def databases() -> Iterator[Databases | str]:
    """A :class:`Databases` for the run, or a note saying why PostgreSQL is not measured."""
    url = os.environ.get("FLYTECACHE_BENCH_PG_URL")
    if url:
        yield Databases(None, url)
        return
    bindir = find_bindir()
    if bindir is None:
        yield "skipped: no PostgreSQL binaries on this machine"
        return
    try:
        server = PostgresServer(bindir).start()
    except Exception as error:
        yield f"skipped: PostgreSQL did not start ({error})"
        return
    try:
        yield Databases(server, None)
    finally:
        server.stop()
