"""Running SDK workflow files (tests/_flyte_wf.py, tests/_flytekit_wf.py) as real processes, and
the reservation scenarios both SDK integrations must pass, for tests/test_flyte_sdk.py and
tests/test_flytekit.py.

Both workflow files speak one protocol: ``python FILE DB STEP...`` prints ``RESULT <name>
<value>`` per step and logs each computation to ``$FC_LOG``; their ``serialized`` task honours
``FC_SLEEP``, ``FC_FAIL``, ``FC_STARTED`` and ``FC_HEARTBEAT``.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from flytecache import CacheStore


@dataclass
class Target:
    """Where the runs cache (``db``, as install takes it) and how to look at that database."""

    db: str
    database: str

    def entries(self) -> Counter[str]:
        """Stored entries by task name."""
        with CacheStore.open(self.database) as store, store.engine.connect() as conn:
            return Counter(row[0] for row in conn.exec_driver_sql("SELECT name FROM entries"))

    def leases(self) -> int:
        with CacheStore.open(self.database) as store, store.engine.connect() as conn:
            return int(conn.exec_driver_sql("SELECT COUNT(*) FROM reservations").scalar_one())


class Runs:
    """Starts processes of one workflow file in one directory with one computation log."""

    def __init__(self, workflow: Path, directory: Path, home: Path) -> None:
        self.workflow = workflow
        self.dir = directory
        self.log = directory / "computed.log"
        self.env = {
            **os.environ,
            "HOME": str(home),
            "FC_LOG": str(self.log),
            "PYTHONUNBUFFERED": "1",
        }
        self.env.pop("FLYTECACHE_DB", None)

    def start(self, db: str, *steps: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            [sys.executable, str(self.workflow), db, *steps],
            cwd=self.dir,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def run(self, db: str, *steps: str, **env: str) -> list[tuple[str, str]]:
        """Run to completion (it must succeed); the ``(name, value)`` of each step."""
        return self.finish(self.start(db, *steps, **env))

    @staticmethod
    def finish(process: subprocess.Popen[str]) -> list[tuple[str, str]]:
        """Wait for a started run (it must succeed); the ``(name, value)`` of each step."""
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, output
        return results(output)

    def computed_pids(self, task: str) -> list[str]:
        """The process ids that computed ``task``, in order."""
        lines = self.log.read_text().splitlines() if self.log.exists() else []
        return [line.split()[1] for line in lines if line.split()[0] == task]

    def computed(self) -> Counter[str]:
        if not self.log.exists():
            return Counter()
        return Counter(line.split()[0] for line in self.log.read_text().splitlines())


def install_from_argv(integration: Any, db: str) -> None:
    """What a workflow file's DB argument asks of ``integration`` (``flyte_sdk`` or
    ``flytekit``): ``-`` the SDK's own cache, ``install+uninstall`` installed then removed,
    anything else installed with ``FC_HEARTBEAT`` and a 50 ms poll."""
    if db == "install+uninstall":
        integration.install("unused.db")
        integration.uninstall()
    elif db != "-":
        integration.install(
            db,
            heartbeat=timedelta(seconds=float(os.environ.get("FC_HEARTBEAT", "5"))),
            poll=timedelta(milliseconds=50),
        )


def results(output: str) -> list[tuple[str, str]]:
    return [
        (parts[1], parts[2])
        for parts in (line.split(maxsplit=2) for line in output.splitlines())
        if len(parts) == 3 and parts[0] == "RESULT"
    ]


def wait_for(path: Path, process: subprocess.Popen[str], timeout: float = 60) -> None:
    """Until ``path`` exists (``process`` must not end first)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            raise AssertionError(process.communicate()[0])
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def concurrent_runs_compute_once(runs: Runs, target: Target, step: str) -> None:
    """Four processes run the same serialized task: one computes, all get its outputs."""
    processes = [runs.start(target.db, step, FC_SLEEP="2") for _ in range(4)]
    values = {value for process in processes for _, value in runs.finish(process)}
    assert len(values) == 1  # everyone returns the one owner's outputs
    assert runs.computed() == Counter(serialized=1)
    assert target.leases() == 0


def failed_owner_releases(runs: Runs, target: Target, step: str) -> None:
    """The owner raises: it releases at once, and the waiting process computes."""
    started = runs.dir / "started"
    owner = runs.start(target.db, step, FC_SLEEP="1", FC_FAIL="1", FC_STARTED=str(started))
    wait_for(started, owner)
    waiter = runs.start(target.db, step)
    output, _ = owner.communicate(timeout=120)
    assert owner.returncode != 0 and "the owner fails on purpose" in output
    assert [value for _, value in runs.finish(waiter)] == [f"computed by {waiter.pid}"]
    assert runs.computed() == Counter(serialized=2)
    assert target.leases() == 0


def killed_owner_is_taken_over(runs: Runs, target: Target, step: str) -> None:
    """The owner is SIGKILLed mid-task: its lease expires and the waiter takes over."""
    started = runs.dir / "started"
    owner = runs.start(target.db, step, FC_SLEEP="600", FC_HEARTBEAT="0.3", FC_STARTED=str(started))
    wait_for(started, owner)
    waiter = runs.start(target.db, step, FC_HEARTBEAT="0.3")
    time.sleep(0.5)  # the waiter finds the live lease and polls
    owner.send_signal(signal.SIGKILL)
    owner.communicate(timeout=30)
    assert [value for _, value in runs.finish(waiter)] == [f"computed by {waiter.pid}"]
    assert runs.computed() == Counter(serialized=2)
    assert target.leases() == 0


DOCS = Path(__file__).resolve().parent.parent / "docs"


class DocPage:
    """A docs page's examples, run as a reader would: in a fresh directory, with the venv's
    commands on PATH and HOME set to ``home``."""

    def __init__(self, name: str, directory: Path, home: Path) -> None:
        self.text = (DOCS / name).read_text()
        self.dir = directory
        self.env = {
            **os.environ,
            "HOME": str(home),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        self.env.pop("FLYTECACHE_DB", None)

    def blocks(self, language: str) -> list[str]:
        return re.findall(rf"^```{language}\n(.*?)^```", self.text, re.S | re.M)

    def run_workflow_twice(self) -> list[str]:
        """Write the page's one Python block to ``wf.py`` and run it twice; the stdouts."""
        (workflow,) = self.blocks("python")
        (self.dir / "wf.py").write_text(workflow)
        outputs = []
        for _ in range(2):
            done = subprocess.run(
                [sys.executable, "wf.py"],
                cwd=self.dir,
                env=self.env,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout)
        return outputs

    def shell_blocks(self, skip: tuple[str, ...]) -> list[str]:
        """The ``sh`` blocks, leaving out those that mention any of ``skip``."""
        return [b for b in self.blocks("sh") if not any(word in b for word in skip)]

    def run_lines(self, block: str) -> list[str]:
        """Run each line of ``block`` with bash, as written (comments dropped); the stdouts."""
        outputs = []
        for line in block.splitlines():
            command = line.split("  #")[0].strip()
            done = subprocess.run(
                ["bash", "-c", command], cwd=self.dir, env=self.env, capture_output=True, text=True
            )
            assert done.returncode == 0, f"{command}: {done.stdout}{done.stderr}"
            outputs.append(done.stdout)
        return outputs
