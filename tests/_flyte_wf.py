"""A small Flyte 2 workflow file that tests/test_flyte_sdk.py runs with the real SDK.

    python _flyte_wf.py DB STEP [STEP ...]

DB is what ``flyte_sdk.install`` takes (``-`` runs with the SDK's own cache,
``install+uninstall`` installs and uninstalls first). A STEP is ``TASK:X[:N]`` (one
``flyte.run``; N is ``ignoring``'s ``verbose``, or how many concurrent calls ``gather`` makes) or
``sleep:SECONDS``. Each run prints ``RESULT <task> <value>``; each computation appends
``<task> <pid>`` to ``$FC_LOG``. ``FC_VERSION`` and ``FC_SALT`` set cache versions and salts at
import, ``FC_SLEEP`` how long ``serialized`` computes, ``FC_FAIL`` makes ``serialized`` raise,
``FC_STARTED`` is a file ``serialized`` creates when it starts, ``FC_HEARTBEAT`` the lease's
heartbeat in seconds.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta
from pathlib import Path

import flyte

env = flyte.TaskEnvironment(name="fc")
LOG = Path(os.environ["FC_LOG"])


def note(task: str) -> int:
    """Record a computation; the number of computations of ``task`` so far."""
    with LOG.open("a") as fh:
        fh.write(f"{task} {os.getpid()}\n")
    return sum(1 for line in LOG.read_text().splitlines() if line.split()[0] == task)


@env.task(cache="auto")
async def auto(x: int) -> int:
    note("auto")
    return x * x


@env.task(cache=flyte.Cache(behavior="override", version_override="1"))
async def override(x: int) -> int:
    return note("override")


@env.task(cache="disable")
async def disabled(x: int) -> int:
    return note("disabled")


@env.task(cache=flyte.Cache(behavior="auto", max_age=timedelta(seconds=1)))
async def aging(x: int) -> int:
    return note("aging")


@env.task(cache=flyte.Cache(behavior="auto", ignored_inputs=("verbose",)))
async def ignoring(x: int, verbose: int) -> int:
    note("ignoring")
    return x + 100


@env.task(cache=flyte.Cache(behavior="auto", version_override=os.environ.get("FC_VERSION", "v1")))
async def versioned(x: int) -> int:
    return note("versioned")


@env.task(cache=flyte.Cache(behavior="auto", salt=os.environ.get("FC_SALT", "")))
async def salted(x: int) -> int:
    return note("salted")


@env.task(cache=flyte.Cache(behavior="auto", serialize=True))
async def serialized(x: int) -> str:
    note("serialized")
    started = os.environ.get("FC_STARTED")
    if started:
        Path(started).write_text(str(os.getpid()))
    time.sleep(float(os.environ.get("FC_SLEEP", "0")))
    if os.environ.get("FC_FAIL"):
        raise ValueError("the owner fails on purpose")
    return f"computed by {os.getpid()}"


@env.task
async def gather(x: int, n: int) -> str:
    """``n`` identical calls of ``serialized`` at once, in one run: all get one owner's value."""
    import asyncio

    values = await asyncio.gather(*(serialized(x=x) for _ in range(n)))
    return ",".join(sorted(set(values)))


TASKS = {
    t.name.split(".")[-1]: t
    for t in (auto, override, disabled, aging, ignoring, versioned, salted, serialized)
}


@env.task
async def call(name: str, x: int, verbose: int) -> str:
    if name == "ignoring":
        return str(await ignoring(x=x, verbose=verbose))
    if name == "gather":
        return await gather(x=x, n=verbose)
    return str(await TASKS[name](x=x))


def main(db: str, steps: list[str]) -> None:
    from _sdk_runs import install_from_argv

    from flytecache.integrations import flyte_sdk

    install_from_argv(flyte_sdk, db)
    flyte.init()
    for step in steps:
        name, *args = step.split(":")
        if name == "sleep":
            time.sleep(float(args[0]))
            continue
        x, verbose = int(args[0]), int(args[1]) if len(args) > 1 else 0
        run = flyte.run(call, name=name, x=x, verbose=verbose)
        print("RESULT", name, run.outputs()[0], flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
