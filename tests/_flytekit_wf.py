"""A small flytekit workflow file that tests/test_flytekit.py runs with real flytekit.

    python _flytekit_wf.py DB STEP [STEP ...]

DB is what ``flytekit.install`` takes (``-``: flytekit's own cache; ``install+uninstall``:
installed and uninstalled first). A STEP is ``WORKFLOW:X[:EXTRA]`` (one local execution) and
prints ``RESULT <workflow> <value>``; each computation appends ``<task> <pid>`` to ``$FC_LOG``.
``FC_VERSION`` sets ``cached``'s cache version at import, ``FC_SLEEP`` how long ``serialized``
computes, ``FC_FAIL`` makes it raise, ``FC_STARTED`` is a file it creates when it starts and
``FC_HEARTBEAT`` the lease's heartbeat in seconds.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Annotated

from flytekit import HashMethod, task, workflow

LOG = Path(os.environ["FC_LOG"])


def note(task_name: str) -> int:
    with LOG.open("a") as fh:
        fh.write(f"{task_name} {os.getpid()}\n")
    return sum(1 for line in LOG.read_text().splitlines() if line.split()[0] == task_name)


@task(cache=True, cache_version=os.environ.get("FC_VERSION", "1"))
def cached(x: int) -> int:
    note("cached")
    return x * x


@task(cache=True, cache_version="1", cache_ignore_input_vars=("verbose",))
def ignoring(x: int, verbose: int) -> int:
    note("ignoring")
    return x + 100


def last_digit(value: int) -> str:
    return str(value % 10)


@task
def produce(x: int) -> Annotated[int, HashMethod(last_digit)]:
    return x


@task(cache=True, cache_version="1")
def consume(value: int) -> int:
    return note("consume")


@task(cache=True, cache_version="1", cache_serialize=True)
def serialized(x: int) -> str:
    note("serialized")
    started = os.environ.get("FC_STARTED")
    if started:
        Path(started).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("FC_SLEEP", "0")))
    if os.environ.get("FC_FAIL"):
        raise ValueError("the owner fails on purpose")
    return f"computed by {os.getpid()}"


@workflow
def cached_wf(x: int) -> int:
    return cached(x=x)


@workflow
def ignoring_wf(x: int, verbose: int) -> int:
    return ignoring(x=x, verbose=verbose)


@workflow
def hashed_wf(x: int) -> int:
    return consume(value=produce(x=x))


@workflow
def serialized_wf(x: int) -> str:
    return serialized(x=x)


WORKFLOWS = {"cached": cached_wf, "ignoring": ignoring_wf, "hashed": hashed_wf}
WORKFLOWS["serialized"] = serialized_wf


def main(db: str, steps: list[str]) -> None:
    from _sdk_runs import install_from_argv

    from flytecache.integrations import flytekit as fc_flytekit

    install_from_argv(fc_flytekit, db)
    for step in steps:
        name, *args = step.split(":")
        inputs = {"x": int(args[0])}
        if name == "ignoring":
            inputs["verbose"] = int(args[1])
        print("RESULT", name, WORKFLOWS[name](**inputs), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
