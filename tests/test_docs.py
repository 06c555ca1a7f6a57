"""Every Python example in the README and docs/*.md runs on its own, as a reader would run it.

Each block runs as a script (``python -c``) in a fresh, empty directory, twice in a row in two
processes: the second run finds what the first left behind (a database), as a reader who tries
an example again would. A block reaches a service by its documented address; the test starts a
real one and puts its address in place of the documented one:

* ``http://localhost:8094``, where ``flytecache serve`` listens by default: a real
  ``flytecache serve`` on a free port, its database beside the block's directory;
* a ``postgresql+psycopg://`` URL: a fresh database on the suite's throwaway PostgreSQL
  (skipped where there is none, like every PostgreSQL test).

A block marked ``<!-- not run: reason -->`` (see ``_docs_helpers``) is only compiled.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path

import pytest
from _docs_helpers import ROOT, Block, python_blocks
from _server_helpers import ServerProcess

# Pages whose examples other tests run, with what they need.
RUN_ELSEWHERE = {
    "docs/flyte-sdk.md": "tests/test_flyte_sdk.py runs it with the Flyte 2 SDK",
    "docs/flytekit.md": "tests/test_flytekit.py runs it with flytekit",
    # Its blocks do no I/O, so a fresh directory and a second run would add nothing.
    "docs/keys.md": "tests/test_keys.py::test_docs_examples_run runs each block on its own",
}
PAGES = [
    page
    for page in ["README.md", *(f"docs/{path.name}" for path in sorted(ROOT.glob("docs/*.md")))]
    if page not in RUN_ELSEWHERE
]
BLOCKS = [block for page in PAGES for block in python_blocks(page)]

SERVE_URL = "http://localhost:8094"
POSTGRES_URL = re.compile(r"postgresql(?:\+psycopg)?://[^\s\"'`]+")
RUN_TIMEOUT = 60  # seconds; a block takes about one


def _environment() -> dict[str, str]:
    """This environment without FLYTECACHE_* settings, which a reader would not have set."""
    return {name: value for name, value in os.environ.items() if not name.startswith("FLYTECACHE_")}


def test_the_pages_have_examples() -> None:
    """Guards the discovery: the pages we know hold examples are found, and none is skipped
    by accident."""
    assert {"README.md", "docs/python-api.md"} <= {block.page for block in BLOCKS}
    for page in RUN_ELSEWHERE:
        assert python_blocks(page), f"{page} has no python examples: drop it from RUN_ELSEWHERE"


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{b.page}:{b.number}" for b in BLOCKS])
def test_example_runs_on_its_own_twice(
    block: Block, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    compile(block.source, block.name, "exec")  # a block that is not run still parses
    if block.not_run:
        pytest.skip(f"not run: {block.not_run}")
    # Blank lines first, so that a traceback's line numbers are the page's.
    source = "\n" * block.line + block.source
    with ExitStack() as stack:
        server = None
        if SERVE_URL in source:
            server = stack.enter_context(
                ServerProcess(tmp_path / "served.db", log_path=tmp_path / "serve.log")
            )
            source = source.replace(SERVE_URL, server.url)
        if POSTGRES_URL.search(source):
            url: str = request.getfixturevalue("pg_url")
            source = POSTGRES_URL.sub(lambda _: url, source)
        workdir = tmp_path / "reader"
        workdir.mkdir()
        for run in (1, 2):
            try:
                result = subprocess.run(
                    [sys.executable, "-c", source],
                    cwd=workdir,
                    env=_environment(),
                    capture_output=True,
                    text=True,
                    timeout=RUN_TIMEOUT,
                )
            except subprocess.TimeoutExpired as timeout:
                pytest.fail(f"{block.name}, run {run} of 2: no exit within {timeout.timeout} s")
            if result.returncode != 0:
                server_log = f"\n--- flytecache serve's log:\n{server.log()}" if server else ""
                pytest.fail(
                    f"{block.name}, run {run} of 2, exited with {result.returncode} "
                    f"(in {workdir}; traceback lines are the page's):\n"
                    f"{result.stderr}{server_log}",
                    pytrace=False,
                )
