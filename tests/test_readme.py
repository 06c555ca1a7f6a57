"""The README as a newcomer follows it: every command of "Common commands", typed as written.

The default test runs them in a fresh directory with the quick start's ``.venv`` (linked in, as
if the directory were the clone); the slow test (``make test-slow``) makes a real fresh clone and
runs the quick start's ``make serve`` in it.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from flyteidl2.cacheservice import cacheservice_pb2 as cs

from flytecache import CacheStore

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def _section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def _commands(section: str) -> list[str]:
    blocks = re.findall(r"^```sh\n(.*?)^```", section, re.S | re.M)
    return [line.split("  #")[0].strip() for block in blocks for line in block.splitlines()]


def test_every_common_command_runs_as_written(tmp_path: Path) -> None:
    (tmp_path / ".venv").symlink_to(ROOT / ".venv")
    commands = _commands(_section("Common commands"))
    assert commands[0] == ". .venv/bin/activate"
    with CacheStore.open(tmp_path / "flytecache.db") as store:
        store.put("flytesnacks-development-my-key", cs.CachedOutput(output_uri="s3://b/o.pb"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLYTECACHE_")}
    env["HOME"] = str(tmp_path)
    env.pop("VIRTUAL_ENV", None)
    script = "\n".join(
        ["set -e", *(line.replace("<KEY>", "flytesnacks-development-my-key") for line in commands)]
    )
    done = subprocess.run(
        ["bash", "-c", script],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    assert (tmp_path / "other" / "flytecache.db").exists() and (tmp_path / "backup.db").exists()
    assert "imported" in done.stderr


@pytest.mark.slow
def test_a_fresh_clone_serves_after_make_serve(tmp_path: Path) -> None:
    """The quick start's first command on a fresh clone: `make serve` installs and serves."""
    clone = tmp_path / "flytecache"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FLYTECACHE_", "VIRTUAL_"))}
    server = subprocess.Popen(
        ["make", "serve"],
        cwd=clone,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            assert server.poll() is None, server.communicate()[0]
            try:
                if httpx.get("http://127.0.0.1:8094/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(1)
        else:
            raise AssertionError("make serve never answered /healthz")
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.communicate(timeout=60)
    activated = subprocess.run(
        ["bash", "-c", ". .venv/bin/activate && flytecache --version"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
    )
    assert activated.returncode == 0 and activated.stdout.startswith("flytecache "), (
        activated.stderr,
        sys.executable,
    )
