"""flytecache as the cache of flytekit 1.x local executions: real flytekit, real processes.

Every execution is a subprocess running tests/_flytekit_wf.py with HOME pointed at a temporary
directory, so flytekit's own ``~/.flyte/local-cache`` would be seen if it were created. The
suite runs on a SQLite file and through a real ``flytecache serve``.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

pytest.importorskip("flytekit")

import _cli as cli
import _sdk_runs
from _sdk_runs import Runs, Target
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flytecache import CacheStore
from flytecache.errors import InvalidArgumentError, NotFoundError, UnsupportedVersionError
from flytecache.integrations import flytekit as fc_flytekit

WORKFLOW = Path(__file__).with_name("_flytekit_wf.py")
BIN = Path(sys.executable).parent


def flytekit_cache_created(home: Path) -> bool:
    return (home / ".flyte" / "local-cache").exists()


@pytest.fixture
def runs(tmp_path: Path, home: Path) -> Runs:
    return Runs(WORKFLOW, tmp_path, home)


def test_cache_semantics_follow_flytekit(sdk_target: Target, runs: Runs, home: Path) -> None:
    first = runs.run(
        sdk_target.db,
        *("cached:2", "cached:2"),  # miss, then hit
        *("ignoring:2:0", "ignoring:2:1", "ignoring:3:0"),  # "verbose" is ignored
        *("hashed:3", "hashed:13", "hashed:4"),  # Literal.hash: the last digit is the key
    )
    assert first == [
        *(("cached", "4"), ("cached", "4")),
        *(("ignoring", "102"), ("ignoring", "102"), ("ignoring", "103")),
        *(("hashed", "1"), ("hashed", "1"), ("hashed", "2")),
    ]
    assert runs.computed() == Counter(cached=1, ignoring=2, consume=2)
    name = "_flytekit_wf"  # flytekit names tasks after the module the file runs as
    assert sdk_target.entries() == Counter(
        {f"{name}.cached": 1, f"{name}.ignoring": 2, f"{name}.consume": 2}
    )
    # Another process hits; overwrite recomputes; a disabled local cache neither reads nor
    # writes; a new cache_version misses.
    assert runs.run(sdk_target.db, "cached:2") == [("cached", "4")]
    runs.run(sdk_target.db, "cached:2", FLYTE_LOCAL_CACHE_OVERWRITE="true")
    runs.run(sdk_target.db, "cached:9", FLYTE_LOCAL_CACHE_ENABLED="false")
    runs.run(sdk_target.db, "cached:2", FC_VERSION="2")
    assert runs.computed() == Counter(cached=4, ignoring=2, consume=2)
    assert sdk_target.entries()[f"{name}.cached"] == 2  # versions 1 and 2; not 9
    assert sdk_target.leases() == 0
    assert not flytekit_cache_created(home)


def test_concurrent_serialized_executions_compute_once(sdk_target: Target, runs: Runs) -> None:
    _sdk_runs.concurrent_runs_compute_once(runs, sdk_target, "serialized:7")


def test_failed_owner_releases_and_a_waiter_computes(sdk_target: Target, runs: Runs) -> None:
    _sdk_runs.failed_owner_releases(runs, sdk_target, "serialized:8")


def test_killed_owner_lease_expires_and_a_waiter_takes_over(sdk_target: Target, runs: Runs) -> None:
    _sdk_runs.killed_owner_is_taken_over(runs, sdk_target, "serialized:9")


def test_entries_use_flytekits_key_and_describe_the_task(tmp_path: Path, runs: Runs) -> None:
    from flytekit.core.local_cache import _calculate_cache_key
    from flytekit.models.literals import Literal, LiteralMap, Primitive, Scalar

    db = str(tmp_path / "flytecache.db")
    runs.run(db, "cached:5")
    with CacheStore.open(db) as store, store.engine.connect() as conn:
        (key,) = conn.exec_driver_sql("SELECT key FROM entries").one()
        stored = store.get(key)
    inputs = LiteralMap({"x": Literal(scalar=Scalar(primitive=Primitive(integer=5)))})
    flytekit_key = _calculate_cache_key("_flytekit_wf.cached", "1", inputs, ())
    assert key == f"local-development-{flytekit_key}"
    source = stored.metadata.source_identifier
    assert (source.project, source.name, source.version) == ("local", "_flytekit_wf.cached", "1")
    assert stored.output_literals.literals["o0"].scalar.primitive.integer == 25


def test_pyflyte_run_with_the_cli_option(runs: Runs, home: Path, tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    command = [str(BIN / "pyflyte"), "run", "--flytecache", str(db), str(WORKFLOW)]
    command += ["cached_wf", "--x", "6"]
    for _ in range(2):
        done = subprocess.run(command, cwd=tmp_path, env=runs.env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "36" in done.stdout
    assert runs.computed() == Counter(cached=1)
    assert Target(str(db), str(db)).entries() == Counter({"_flytekit_wf.cached": 1})
    assert not flytekit_cache_created(home)
    remote = [*command[:2], "--remote", *command[2:]]
    done = subprocess.run(remote, cwd=tmp_path, env=runs.env, capture_output=True, text=True)
    assert done.returncode == 2 and "drop --remote" in done.stdout + done.stderr


def test_import_a_cache_flytekit_wrote(runs: Runs, home: Path, tmp_path: Path) -> None:
    # Real flytekit, its own cache: two computations stored in ~/.flyte/local-cache.
    runs.run("-", "cached:2", "cached:3", "cached:3")
    assert runs.computed() == Counter(cached=2)
    local_cache = home / ".flyte" / "local-cache"
    before = _digests(local_cache)

    db = str(tmp_path / "imported.db")
    # The CLI in-process (CliRunner, as the CLI tests run it): five interpreters that each
    # import flytekit cost seconds; the commands and the files they touch are the same.
    command = ["import", "--from-flytekit-cache", str(local_cache), "--db", db]
    dry = cli.run(None, *command, "--dry-run")
    assert dry.exit_code == 1 and "does not exist" in dry.stderr  # a dry run creates nothing
    assert not Path(db).exists()
    done = cli.run(None, *command, "--json")
    assert done.exit_code == 0, done.stderr
    assert '"imported": 2' in done.stdout
    dry = cli.run(None, *command, "--dry-run")
    assert dry.exit_code == 0 and "would import 0 entries" in dry.stderr, dry.stderr
    again = cli.run(None, *command)
    assert "imported 0 entries" in again.stderr and "2 skipped" in again.stderr
    replaced = cli.run(None, *command, "--overwrite")
    assert "imported 2 entries" in replaced.stderr and "2 replaced" in replaced.stderr
    assert _digests(local_cache) == before  # flytekit's cache is only read

    # Executions through flytecache now hit what flytekit had cached.
    assert runs.run(db, "cached:2", "cached:3") == [("cached", "4"), ("cached", "9")]
    assert runs.computed() == Counter(cached=2)


def _digests(directory: Path) -> dict[str, str]:
    """The cache's data files by content (SQLite's -wal/-shm companions, which any reader of a
    WAL database may create empty, are not data)."""
    import hashlib

    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not path.name.endswith(("-wal", "-shm"))
    }


def test_import_refuses_the_flyte_2_sdks_cache(tmp_path: Path) -> None:
    import sqlite3

    sdk_cache = tmp_path / "local-cache"
    sdk_cache.mkdir()
    with sqlite3.connect(sdk_cache / "cache.db") as conn:  # the Flyte 2 SDK's table, as it makes it
        conn.execute("CREATE TABLE task_cache (key TEXT PRIMARY KEY, value BLOB)")
    before = _digests(sdk_cache)
    with pytest.raises(NotFoundError, match="the Flyte 2 SDK's local cache"):
        fc_flytekit.import_local_cache(sdk_cache, str(tmp_path / "c.db"), dry_run=True)
    assert _digests(sdk_cache) == before


@pytest.mark.parametrize(
    ("key", "name", "version"),
    [
        ("wf.square-1-4b8b4613b3fc9258a7581ab7c6b3b2d0", "wf.square", "1"),
        ("wf.square-v1-beta-4b8b4613b3fc9258a7581ab7c6b3b2d0", "wf.square", "v1-beta"),
        (
            "wf.map_sq_6f1e-arraynode-1-4b8b4613b3fc9258a7581ab7c6b3b2d0",
            "wf.map_sq_6f1e-arraynode",
            "1",
        ),
    ],
)
def test_task_name_and_version_are_read_from_flytekit_keys(
    key: str, name: str, version: str
) -> None:
    assert fc_flytekit._split_flytekit_key(key) == (name, version)


def test_import_refuses_a_directory_without_a_flytekit_cache(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="no flytekit local cache"):
        fc_flytekit.import_local_cache(tmp_path, str(tmp_path / "c.db"))


def test_uninstall_restores_flytekits_cache(runs: Runs, home: Path) -> None:
    assert runs.run("install+uninstall", "cached:2", "cached:2") == [("cached", "4")] * 2
    assert runs.computed() == Counter(cached=1)  # flytekit's own cache hit
    assert flytekit_cache_created(home)


def test_install_replaces_and_uninstall_restores_in_process(tmp_path: Path) -> None:
    from flytekit.core import base_task

    originals = (base_task.LocalTaskCache, vars(base_task.Task)["local_execute"])
    try:
        fc_flytekit.install(tmp_path / "one.db")
        fc_flytekit.install(str(tmp_path / "two.db"))  # replaces, does not stack
        assert fc_flytekit.installed_db() == str(tmp_path / "two.db")
        assert vars(base_task.Task)["local_execute"].__wrapped__ is originals[1]
    finally:
        fc_flytekit.uninstall()
    assert (base_task.LocalTaskCache, vars(base_task.Task)["local_execute"]) == originals
    assert fc_flytekit.installed_db() is None


def test_untested_flytekit_versions_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(fc_flytekit, "SUPPORTED_VERSIONS", ">=99")
    with pytest.raises(
        UnsupportedVersionError,
        match=r"flytekit 1\.\d+\.\d+ is installed but flytecache supports flytekit>=99",
    ):
        fc_flytekit.install(tmp_path / "c.db")
    try:
        fc_flytekit.install(tmp_path / "c.db", force=True)
    finally:
        fc_flytekit.uninstall()


def test_install_validates_its_arguments() -> None:
    with pytest.raises(InvalidArgumentError, match="heartbeat"):
        fc_flytekit.install(":memory:", heartbeat=5)  # type: ignore[arg-type]
    assert fc_flytekit.installed_db() is None


# -- outputs round-trip byte for byte ---------------------------------------------------------

_VALUES = st.one_of(
    st.tuples(st.just(int), st.integers(min_value=-(2**63), max_value=2**63 - 1)),
    st.tuples(st.just(float), st.floats(allow_nan=False)),
    st.tuples(st.just(str), st.text()),
    st.tuples(st.just(bool), st.booleans()),
    st.tuples(st.just(list[int]), st.lists(st.integers(min_value=0, max_value=2**40))),
    st.tuples(st.just(dict[str, float]), st.dictionaries(st.text(), st.floats(allow_nan=False))),
    st.tuples(st.just(list[list[str]]), st.lists(st.lists(st.text(), max_size=3), max_size=3)),
    st.tuples(st.just(dict[str, list[bool]]), st.dictionaries(st.text(), st.lists(st.booleans()))),
    st.tuples(
        st.just(datetime),
        st.datetimes(
            min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
        ),
    ),
    st.tuples(
        st.just(timedelta),
        st.timedeltas(min_value=timedelta(days=-(10**6)), max_value=timedelta(days=10**6)),
    ),
    st.tuples(st.just(bytes), st.binary()),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(outputs=st.dictionaries(st.from_regex(r"o[0-9]{1,2}", fullmatch=True), _VALUES, max_size=4))
def test_flytekit_literal_maps_round_trip_through_the_store(
    outputs: dict[str, tuple[type, object]], sqlite_store: CacheStore
) -> None:
    """flytekit's literals (flyteidl v1) → flyteidl2 → stored → read → flyteidl v1: the same
    bytes, and the same Python values."""
    from flyteidl.core import literals_pb2 as v1
    from flyteidl2.cacheservice import cacheservice_pb2 as cs
    from flyteidl2.core import literals_pb2 as v2
    from flytekit import FlyteContextManager
    from flytekit.core.type_engine import TypeEngine
    from flytekit.models.literals import LiteralMap

    ctx = FlyteContextManager.current_context()
    literals = {
        name: TypeEngine.to_literal(ctx, value, kind, TypeEngine.to_literal_type(kind))
        for name, (kind, value) in outputs.items()
    }
    serialized = LiteralMap(literals).to_flyte_idl().SerializeToString()
    sqlite_store.put(
        "k", cs.CachedOutput(output_literals=v2.LiteralMap.FromString(serialized)), overwrite=True
    )
    read = sqlite_store.get("k").output_literals.SerializeToString()
    back = LiteralMap.from_flyte_idl(v1.LiteralMap.FromString(read))
    assert back == LiteralMap(literals)
    for name, (kind, value) in outputs.items():
        assert TypeEngine.to_python_value(ctx, back.literals[name], kind) == value


def test_docs_examples_run_as_written(tmp_path: Path, home: Path) -> None:
    """docs/flytekit.md in a fresh directory: the workflow (a miss, then a hit), the command
    line, and the import of a cache that flytekit itself wrote, each exactly as written."""
    page = _sdk_runs.DocPage("flytekit.md", tmp_path, home)
    outputs = page.run_workflow_twice()
    assert "computing square(3)" in outputs[0] and "9" in outputs[0]
    assert "computing square(3)" not in outputs[1]
    command_line, import_block = page.shell_blocks(skip=("pip",))
    for output in page.run_lines(command_line):
        assert "computing" not in output
    assert not flytekit_cache_created(home)
    # flytekit's own cache, written by flytekit (wf.py's workflow without install()).
    own = subprocess.run(
        [sys.executable, "-c", "import wf; wf.main(x=4)"],
        cwd=tmp_path,
        env=page.env,
        capture_output=True,
        text=True,
    )
    assert own.returncode == 0 and "computing square(4)" in own.stdout, own.stderr
    assert flytekit_cache_created(home)
    listing = page.run_lines(import_block)[-1]
    assert '"name": "wf.square"' in listing
    hit = subprocess.run(
        [sys.executable, "-c", "import wf; wf.fc_flytekit.install(); print(wf.main(x=4))"],
        cwd=tmp_path,
        env=page.env,
        capture_output=True,
        text=True,
    )
    assert hit.returncode == 0 and hit.stdout.strip() == "16", hit.stderr
