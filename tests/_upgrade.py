"""Interrupting a batched schema upgrade for real: ``flytecache``'s upgrade in a subprocess,
SIGKILLed once at least one batch has committed, then run again with ``flytecache db upgrade``.
Used by the data-migration tests (tests/test_migration_0002.py, tests/test_migration_0004.py).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from flytecache import CacheStore

_KILLABLE = textwrap.dedent(
    """
    import sys
    from flytecache import StoreSettings
    from flytecache.store import migrate
    from flytecache.store.engine import create_store_engine
    from flytecache.store.urls import normalize_url

    engine = create_store_engine(normalize_url(sys.argv[1]), StoreSettings())

    def progress(done, total):
        print(done, total, flush=True)

    migrate.upgrade(engine, progress=progress)
    print("finished", flush=True)
    """
)


def kill_upgrade_after(db_path: str, rows: int, scratch: Path) -> None:
    """Upgrade ``db_path`` to head in a subprocess and SIGKILL it as soon as its progress
    reports ``rows`` rows done (one batch committed, more to come)."""
    script = scratch / "upgrade.py"
    script.write_text(_KILLABLE)
    proc = subprocess.Popen(
        [sys.executable, str(script), db_path], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        done = int(line.split()[0]) if line[0].isdigit() else 0
        if done >= rows:
            os.kill(proc.pid, signal.SIGKILL)
            break
    proc.wait()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, lines


def upgrade_with_the_cli(db_path: str) -> str:
    """``flytecache db upgrade --db db_path`` as a user runs it; its stderr (it must succeed)."""
    result = subprocess.run(
        [sys.executable, "-m", "flytecache", "db", "upgrade", "--db", db_path],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr


def check_reads(url: str, cases: list[Any]) -> None:
    """Every case of ``tests/_schema_0001.py`` reads back as expected through the store."""
    with CacheStore.open(url, migrate=False) as store:
        for case in cases:
            assert store.get(case.key) == case.expected(), case.key
