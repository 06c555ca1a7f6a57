"""The built wheel ships the migrations and the web view's templates and assets, and can
migrate a database from any directory."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_installs_and_migrates_elsewhere(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (wheel,) = dist.glob("flytecache-*.whl")
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
    )
    assert (target / "flytecache" / "_migrations" / "env.py").is_file()
    assert list((target / "flytecache" / "_migrations" / "versions").glob("0001_*.py"))
    ui = target / "flytecache" / "server" / "ui"
    for shipped in (
        "templates/base.html",
        "templates/entries.html",
        "static/ui.css",
        "static/ui.js",
    ):
        assert (ui / shipped).is_file(), shipped
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    script = (
        "import flytecache, sys; from flytecache import CacheStore\n"
        "assert flytecache.__file__.startswith(sys.argv[1]), flytecache.__file__\n"
        "from flytecache.store.migrate import migrations_dir\n"
        "assert str(migrations_dir()).startswith(sys.argv[1]), migrations_dir()\n"
        "CacheStore.open('cache.db').close()\n"
        "import jinja2\n"
        "env = jinja2.Environment(loader=jinja2.PackageLoader('flytecache.server.ui'))\n"
        "assert 'entries.html' in env.list_templates()\n"
        "print('migrated')\n"
    )
    # The installed wheel comes first on the path; dependencies come from the test venv.
    env = {**os.environ, "PYTHONPATH": str(target)}
    result = subprocess.run(
        [sys.executable, "-c", script, str(target)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert "migrated" in result.stdout
    assert (workdir / "cache.db").is_file()
