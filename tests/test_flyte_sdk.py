"""flytecache as the cache of Flyte 2 SDK local runs: the real SDK, real tasks, real processes.

Every run is a subprocess executing tests/_flyte_wf.py with HOME pointed at a temporary
directory, so the SDK's own ``~/.flyte/local-cache/cache.db`` would be seen if it were created.
The suite runs on a SQLite file and through a real ``flytecache serve``; one test on PostgreSQL.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest

pytest.importorskip("flyte")

import _sdk_runs
from _sdk_runs import Runs, Target

from flytecache import CacheStore, CatalogKey
from flytecache.errors import InvalidArgumentError, UnsupportedVersionError
from flytecache.integrations import flyte_sdk
from flytecache.keys import cache_key

WORKFLOW = Path(__file__).with_name("_flyte_wf.py")
FLYTE = Path(sys.executable).with_name("flyte")


def sdk_cache_created(home: Path) -> bool:
    return (home / ".flyte" / "local-cache" / "cache.db").exists()


@pytest.fixture
def runs(tmp_path: Path, home: Path) -> Runs:
    return Runs(WORKFLOW, tmp_path, home)


def test_cache_semantics_follow_flyte_cache(sdk_target: Target, runs: Runs, home: Path) -> None:
    target = sdk_target
    first = runs.run(
        target.db,
        *("auto:2", "auto:2"),  # miss, then hit
        *("override:2", "override:2"),  # recomputed and overwritten every time
        *("disabled:2", "disabled:2"),  # never cached
        *("aging:2", "aging:2", "sleep:1.2", "aging:2", "aging:2"),  # max_age=1s
        *("ignoring:2:0", "ignoring:2:1", "ignoring:3:0"),  # "verbose" is ignored
        *("versioned:2", "salted:2"),
    )
    assert first[:2] == [("auto", "4"), ("auto", "4")]
    assert [value for task, value in first if task == "override"] == ["1", "2"]
    assert [value for task, value in first if task == "aging"] == ["1", "1", "2", "2"]
    assert [value for task, value in first if task == "ignoring"] == ["102", "102", "103"]
    assert runs.computed() == Counter(
        auto=1, override=2, disabled=2, aging=2, ignoring=2, versioned=1, salted=1
    )
    assert target.entries() == Counter(
        {
            "fc.auto": 1,
            "fc.override": 1,
            "fc.aging": 1,
            "fc.ignoring": 2,
            "fc.versioned": 1,
            "fc.salted": 1,
        }
    )
    # Another process reads what the first stored; a new version_override or salt misses.
    runs.run(target.db, "auto:2", "versioned:2", "salted:2", FC_VERSION="v2")
    runs.run(target.db, "versioned:2", "salted:2", FC_VERSION="v2", FC_SALT="pepper")
    assert runs.computed() == Counter(
        auto=1, override=2, disabled=2, aging=2, ignoring=2, versioned=2, salted=2
    )
    assert target.leases() == 0
    assert not sdk_cache_created(home)


def test_concurrent_serialized_runs_compute_once(sdk_target: Target, runs: Runs) -> None:
    _sdk_runs.concurrent_runs_compute_once(runs, sdk_target, "serialized:7")


def test_failed_owner_releases_and_a_waiter_computes(sdk_target: Target, runs: Runs) -> None:
    _sdk_runs.failed_owner_releases(runs, sdk_target, "serialized:8")


def test_killed_owner_lease_expires_and_a_waiter_takes_over(sdk_target: Target, runs: Runs) -> None:
    _sdk_runs.killed_owner_is_taken_over(runs, sdk_target, "serialized:9")


def test_many_waiting_calls_in_one_run_do_not_exhaust_threads(
    sdk_target: Target, runs: Runs
) -> None:
    """More concurrent waiters than the default executor has threads (min(32, cores + 4)):
    waiting happens on the event loop, so the owner can still store its outputs."""
    assert runs.run(sdk_target.db, "gather:5:40", FC_SLEEP="1") == [
        ("gather", "computed by " + runs.computed_pids("serialized")[0])
    ]
    assert runs.computed() == Counter(serialized=1)
    assert sdk_target.leases() == 0


def test_interrupted_owner_releases_its_lease_at_exit(tmp_path: Path, runs: Runs) -> None:
    db = str(tmp_path / "flytecache.db")
    started = tmp_path / "started"
    owner = runs.start(db, "serialized:6", FC_SLEEP="600", FC_STARTED=str(started))
    _sdk_runs.wait_for(started, owner)
    assert Target(db, db).leases() == 1
    owner.send_signal(signal.SIGINT)  # Ctrl-C
    owner.communicate(timeout=60)
    assert Target(db, db).leases() == 0  # released at exit, not 15 s later by expiry


def test_a_cancelled_wait_leaves_no_lease_behind(tmp_path: Path) -> None:
    """A waiting call that is cancelled (asyncio.wait_for, Ctrl-C) stops at once; a round
    already running in its thread releases whatever lease it then takes."""
    import asyncio

    from flytecache import CatalogClient
    from flytecache.integrations._common import Installation, IntegrationSettings, TaskCall

    db = str(tmp_path / "flytecache.db")
    with CatalogClient(db) as client:
        settings = IntegrationSettings(
            heartbeat=timedelta(seconds=1), poll=timedelta(milliseconds=20)
        )
        installation = Installation(client, db, settings)
        slot = client.slot(_catalog_key())
        assert slot.get_or_extend_reservation("someone-else").owner_id == "someone-else"

        async def wait_then_give_up() -> None:
            call = TaskCall(task=None)
            waiting = asyncio.ensure_future(
                flyte_sdk._claim(installation, call, slot, serialize=True)
            )
            await asyncio.sleep(0.2)
            slot.release_reservation("someone-else")  # the lease is free from now on
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await asyncio.sleep(0.3)
            assert call.claim is None

        asyncio.run(wait_then_give_up())
        with CacheStore.open(db) as store, store.engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT COUNT(*) FROM reservations").scalar_one() == 0


def _catalog_key() -> CatalogKey:
    from flyteidl2.core import identifier_pb2, interface_pb2, literals_pb2

    return CatalogKey(
        identifier=identifier_pb2.Identifier(project="local", domain="development", name="t"),
        cache_version="1",
        typed_interface=interface_pb2.TypedInterface(),
        inputs=literals_pb2.LiteralMap(),
    )


def test_entries_use_the_executor_key_and_describe_the_task(tmp_path: Path, runs: Runs) -> None:
    """The stored key is what a Flyte 2 executor computes for the same task and inputs: the
    catalog key over the task's interface and inputs, with the SDK's cache key as its version."""
    from flyte._internal.runtime import convert
    from flyte._internal.runtime.types_serde import transform_native_to_typed_interface
    from flyteidl2.core import identifier_pb2, literals_pb2
    from flyteidl2.task import common_pb2

    db = str(tmp_path / "flytecache.db")
    runs.run(db, "auto:5")
    with CacheStore.open(db) as store, store.engine.connect() as conn:
        key, version = conn.exec_driver_sql("SELECT key, version FROM entries").one()
        stored = store.get(key)
    key_map = stored.metadata.key_map.values

    five = literals_pb2.Literal(
        scalar=literals_pb2.Scalar(primitive=literals_pb2.Primitive(integer=5))
    )
    inputs = common_pb2.Inputs(literals=[common_pb2.NamedLiteral(name="x", value=five)])
    interface = transform_native_to_typed_interface(_workflow_module().auto.interface)
    sdk_key = convert.generate_cache_key_hash(
        "fc.auto", convert.generate_inputs_hash_from_proto(inputs), interface, version, [], inputs
    )
    executor_key = cache_key(
        CatalogKey(
            identifier=identifier_pb2.Identifier(
                resource_type=identifier_pb2.ResourceType.TASK,
                project="local",
                domain="development",
                name="fc.auto",
            ),
            cache_version=sdk_key,
            typed_interface=interface,
            inputs=literals_pb2.LiteralMap(literals={"x": five}),
        )
    )
    assert key == f"local-development-{executor_key}"
    assert stored.output_literals.literals["o0"].scalar.primitive.integer == 25
    source = stored.metadata.source_identifier
    assert (source.project, source.domain, source.name) == ("local", "development", "fc.auto")
    assert "execution-name" in key_map and "exec-node" in key_map

    listing = subprocess.run(
        [
            str(Path(sys.executable).with_name("flytecache")),
            *("entries", "ls", "--db", db, "--project", "local", "--json"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert '"fc.auto"' in listing.stdout


def _workflow_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("_fc_workflow", WORKFLOW)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    os.environ.setdefault("FC_LOG", os.devnull)
    spec.loader.exec_module(module)
    return module


def test_postgresql_database(migrated_pg_url: str, runs: Runs, home: Path) -> None:
    assert runs.run(migrated_pg_url, "auto:3", "auto:3") == [("auto", "9"), ("auto", "9")]
    assert runs.computed() == Counter(auto=1)
    assert not sdk_cache_created(home)


def test_flyte_run_local_with_the_cli_option(runs: Runs, home: Path, tmp_path: Path) -> None:
    db = tmp_path / "cli.db"
    shutil.copy(WORKFLOW, tmp_path / "wf.py")  # flyte run wants the file below its directory
    command = [
        *(str(FLYTE), "run", "--local", "--flytecache", str(db)),
        *("wf.py", "call", "--name", "auto", "--x", "6", "--verbose", "0"),
    ]
    for _ in range(2):
        done = subprocess.run(command, cwd=tmp_path, env=runs.env, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    assert runs.computed() == Counter(auto=1)
    assert Target(str(db), str(db)).entries() == Counter({"fc.auto": 1})
    assert not sdk_cache_created(home)
    # From the environment too.
    env = {**runs.env, "FLYTECACHE_DB": str(db)}
    done = subprocess.run(
        command[:3] + command[5:], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert runs.computed() == Counter(auto=1)
    # A remote run is not ours to cache: a usage error, before anything runs.
    remote = [c for c in command if c != "--local"]
    done = subprocess.run(remote, cwd=tmp_path, env=runs.env, capture_output=True, text=True)
    assert done.returncode == 2 and "add --local" in done.stdout + done.stderr


def test_uninstall_restores_the_sdk_cache(runs: Runs, home: Path) -> None:
    assert runs.run("install+uninstall", "auto:2", "auto:2") == [("auto", "4"), ("auto", "4")]
    assert runs.computed() == Counter(auto=1)  # the SDK's own cache hit
    assert sdk_cache_created(home)


def test_install_replaces_and_uninstall_restores_in_process(tmp_path: Path) -> None:
    from flyte._internal.controllers import _local_controller as controller

    originals = (
        controller.LocalTaskCache,
        controller.convert,
        controller.LocalController.__dict__["submit"],
    )
    try:
        flyte_sdk.install(tmp_path / "one.db")
        assert flyte_sdk.installed_db() == str(tmp_path / "one.db")
        assert controller.LocalTaskCache is not originals[0]
        flyte_sdk.install(str(tmp_path / "two.db"))  # replaces, does not stack
        assert flyte_sdk.installed_db() == str(tmp_path / "two.db")
        assert controller.LocalController.__dict__["submit"].__wrapped__ is originals[2]
    finally:
        flyte_sdk.uninstall()
    assert flyte_sdk.installed_db() is None
    assert (
        controller.LocalTaskCache,
        controller.convert,
        controller.LocalController.__dict__["submit"],
    ) == originals
    flyte_sdk.uninstall()  # a second time is a no-op


def test_install_defaults_to_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("FLYTECACHE_DB", str(tmp_path / "env.db"))
    try:
        flyte_sdk.install()
        assert flyte_sdk.installed_db() == str(tmp_path / "env.db")
    finally:
        flyte_sdk.uninstall()
    monkeypatch.delenv("FLYTECACHE_DB")
    monkeypatch.chdir(tmp_path)
    try:
        flyte_sdk.install()
        assert flyte_sdk.installed_db() == "./flytecache.db"
        assert (tmp_path / "flytecache.db").exists()
    finally:
        flyte_sdk.uninstall()


def test_untested_sdk_versions_are_refused(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(flyte_sdk, "SUPPORTED_VERSIONS", ">=99")
    with pytest.raises(UnsupportedVersionError, match=r"flyte 2\.\d+\.\d+.* supports flyte>=99"):
        flyte_sdk.install(tmp_path / "c.db")
    assert flyte_sdk.installed_db() is None
    try:
        flyte_sdk.install(tmp_path / "c.db", force=True)
        assert flyte_sdk.installed_db() == str(tmp_path / "c.db")
    finally:
        flyte_sdk.uninstall()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"db": ""}, "db"),
        ({"db": 3}, "db"),
        ({"project": ""}, "project"),
        ({"domain": None}, "domain"),
        ({"heartbeat": timedelta(0)}, "heartbeat"),
        ({"heartbeat": timedelta(microseconds=1)}, "heartbeat"),  # too short to serialize
        ({"db": "c.db", "auth_token": "secret"}, "auth_token"),  # a token is for a server
        ({"poll": 0.2}, "poll"),
    ],
)
def test_install_validates_its_arguments(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as raised:
        flyte_sdk.install(**kwargs)  # type: ignore[arg-type]
    assert raised.value.field == field
    assert flyte_sdk.installed_db() is None


def test_docs_examples_run_as_written(tmp_path: Path, home: Path) -> None:
    """docs/flyte-sdk.md in a fresh directory: the workflow (twice: a miss, then a hit), the
    command-line lines and the inspect-and-prune lines, each exactly as written."""
    page = _sdk_runs.DocPage("flyte-sdk.md", tmp_path, home)
    outputs = page.run_workflow_twice()
    assert "computing square(3)" in outputs[0] and "o0=9" in outputs[0]
    assert "computing square(3)" not in outputs[1] and "o0=9" in outputs[1]
    runnable = page.shell_blocks(skip=("cache-host", "serve", "pip"))
    assert len(runnable) == 2  # the command-line and the inspect-and-prune blocks
    for block in runnable:
        for output in page.run_lines(block):
            assert "computing" not in output  # every run above is a hit
    assert not sdk_cache_created(home)
