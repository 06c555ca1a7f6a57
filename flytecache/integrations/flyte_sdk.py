"""Flyte 2 SDK local runs memoize and serialize through flytecache (SPEC §8).

``flyte.run(...)`` without an endpoint, and ``flyte run --local``, run tasks in this process
through the SDK's ``LocalController``, which keeps its cache in a hard-wired SQLite table
(``~/.flyte/local-cache/cache.db``) with no reservations and no age limit. :func:`install`
points that controller at a flytecache database or server instead::

    from flytecache.integrations import flyte_sdk
    flyte_sdk.install("./flytecache.db")   # or FLYTECACHE_DB, or http://localhost:8094

Per task, ``flyte.Cache`` keeps its meaning: ``behavior="auto"`` reads then writes,
``"override"`` recomputes and overwrites, ``"disable"`` never touches the cache; ``max_age``
makes older entries misses that are recomputed and replaced (zero or ``None``: no limit);
``ignored_inputs``, ``version_override`` and ``salt`` change the key as the SDK applies them;
``serialize=True`` takes a reservation on a miss so that concurrent runs compute once.

Entries are stored under the key a Flyte 2 executor would use for the same task and inputs
(identifier, signature and inputs hashes, and the SDK's cache key as the fourth part — see
``docs/keys.md``), scoped ``<project>-<domain>-<key>`` as ``flytecache serve`` scopes them.

How it hooks in (``flyte`` 2.12): the controller module's ``LocalTaskCache`` name is replaced by
an adapter, its ``convert`` name by a view of the same module that also records the arguments
of ``generate_cache_key_hash`` and the new action's id, and ``LocalController.submit`` is wrapped
so every call has its own record and releases its lease however it ends. :func:`uninstall`
puts all three back. Nothing here imports ``flyte`` before :func:`install` runs.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import logging
import os
import threading
from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import Any

from flyteidl2.core import identifier_pb2, literals_pb2

from flytecache.client import (
    CacheSlot,
    CatalogClient,
    Claim,
    ExecutionMetadata,
    LocalCache,
    new_owner_id,
)
from flytecache.errors import FlyteCacheError, InvalidArgumentError
from flytecache.integrations._common import (
    IntegrationSettings,
    check_version,
    open_client,
    resolve_db,
)
from flytecache.keys import CatalogKey

__all__ = ["SUPPORTED_VERSIONS", "cli_run_hook", "install", "installed_db", "uninstall"]

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ">=2.12,<2.13"
"""The ``flyte`` releases this integration is tested with (the ``flytecache[flyte]`` extra)."""

_CONTROLLER_MODULE = "flyte._internal.controllers._local_controller"


def install(
    db: str | os.PathLike[str] | None = None,
    *,
    project: str = "local",
    domain: str = "development",
    heartbeat: timedelta = timedelta(seconds=5),
    poll: timedelta = timedelta(milliseconds=200),
    auth_token: str | None = None,
    force: bool = False,
) -> None:
    """Make this process's Flyte 2 local runs cache through flytecache.

    ``db`` is a SQLite path, a ``sqlite:///`` or ``postgresql+psycopg://`` URL, or the
    ``http(s)://`` URL of ``flytecache serve``; ``None`` reads ``FLYTECACHE_DB``, else
    ``./flytecache.db``. Entries are scoped by ``project``/``domain``; a ``serialize=True``
    task's lease is heartbeated every ``heartbeat`` (a killed owner's lease expires after three
    missed beats) and waiters poll every ``poll``. Installing again replaces the previous
    installation. ``auth_token`` is the bearer token of a server started with
    ``--auth-token-file`` (default: read from the file ``FLYTECACHE_AUTH_TOKEN_FILE`` names).
    Raises :class:`~flytecache.errors.UnsupportedVersionError` when the installed
    ``flyte`` is outside :data:`SUPPORTED_VERSIONS` (``force=True`` skips that check),
    :class:`~flytecache.errors.InvalidArgumentError` for bad arguments, and the store's errors
    when the database cannot be opened.
    """
    settings = IntegrationSettings(project=project, domain=domain, heartbeat=heartbeat, poll=poll)
    target = resolve_db(db)
    check_version("flyte", SUPPORTED_VERSIONS, force=force)
    client = open_client(target, auth_token)
    with _lock:
        global _installation
        previous = _installation
        if previous is not None:
            previous.restore()
        installation = _Installation(client, target, settings)
        installation.patch()
        _installation = installation
    if previous is not None:
        previous.client.close()


def uninstall() -> None:
    """Give the Flyte 2 SDK its own local cache back (a no-op when not installed)."""
    global _installation
    with _lock:
        installation, _installation = _installation, None
        if installation is not None:
            installation.restore()
    if installation is not None:
        installation.client.close()


def installed_db() -> str | None:
    """The database or server local runs cache through, or ``None`` when not installed."""
    installation = _installation
    return None if installation is None else installation.db


def cli_run_hook(command: Any) -> Any:
    """The ``flyte run`` hook (entry point group ``flyte.plugins.cli.hooks``, name ``run``).

    Adds ``--flytecache DB`` (default ``$FLYTECACHE_DB``) to ``flyte run``: with ``--local``
    (or ``--tracked``) the run caches through flytecache, as after :func:`install` ``(DB)``.
    Given on the command line for a remote run, it is a usage error (the platform's cache
    applies there); from the environment it is ignored for remote runs.
    """
    import click

    command.params.append(
        click.Option(
            ["--flytecache"],
            metavar="DB",
            envvar="FLYTECACHE_DB",
            default=None,
            help=(
                "Cache local runs (--local) through flytecache: a SQLite path, a database URL "
                "or the http(s):// URL of `flytecache serve` [env: FLYTECACHE_DB]"
            ),
        )
    )
    invoke = command.invoke

    def invoke_with_flytecache(ctx: Any) -> Any:
        db = ctx.params.get("flytecache")
        if db:
            if ctx.params.get("local") or ctx.params.get("tracked"):
                try:
                    install(db)
                except FlyteCacheError as error:
                    raise click.UsageError(f"--flytecache {db}: {error}") from error
            elif ctx.get_parameter_source("flytecache") is click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError(
                    "--flytecache caches local runs: add --local (remote runs use the "
                    "platform's cache)"
                )
        return invoke(ctx)

    command.invoke = invoke_with_flytecache
    return command


_lock = threading.Lock()
_installation: _Installation | None = None


@dataclass(eq=False)
class _Call:
    """One ``LocalController.submit`` call: what the SDK computed for it, and our lease."""

    task: Any
    key_arguments: dict[str, Any] | None = None
    action: Any = None
    slot: CacheSlot | None = None
    claim: Claim | None = None

    def release(self) -> None:
        claim, self.claim = self.claim, None
        if claim is not None:
            claim.release()


_current_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "flytecache_flyte_sdk_call", default=None
)


class _Installation:
    """The patched names of one :func:`install`, and what they replaced."""

    def __init__(self, client: CatalogClient, db: str, settings: IntegrationSettings) -> None:
        self.client = client
        self.db = db
        self.settings = settings
        # A look-up in a local database does not wait on writers (WAL readers, PostgreSQL
        # MVCC), so it runs on the event loop: a thread hop costs ~0.3 ms, eight times the
        # look-up. Reservations (which may wait for the write lock), waiting and the network
        # run in a worker thread.
        self.reads_inline = isinstance(client.backend, LocalCache)
        self._saved: dict[str, Any] = {}

    def patch(self) -> None:
        import importlib

        controller_module = importlib.import_module(_CONTROLLER_MODULE)
        controller = controller_module.LocalController
        self._saved = {
            "module": controller_module,
            "LocalTaskCache": controller_module.LocalTaskCache,
            "convert": controller_module.convert,
            "submit": controller.__dict__["submit"],
        }
        setattr(controller_module, "LocalTaskCache", _TaskCache)  # noqa: B010
        setattr(controller_module, "convert", _ConvertView(self._saved["convert"]))  # noqa: B010
        controller.submit = _wrap_submit(self._saved["submit"])

    def restore(self) -> None:
        module = self._saved["module"]
        module.LocalTaskCache = self._saved["LocalTaskCache"]
        module.convert = self._saved["convert"]
        module.LocalController.submit = self._saved["submit"]

    def slot(self, call: _Call) -> CacheSlot:
        """The flytecache slot of ``call``: the executor's catalog key, derived once."""
        if call.slot is None:
            arguments = call.key_arguments
            if arguments is None:
                raise FlyteCacheError(
                    "flytecache could not see the cache key inputs of this task call; "
                    "is the installed flyte supported?"
                )
            from flyte._cache.cache import cache_from_request

            cache = cache_from_request(call.task.cache)
            proto_inputs = arguments["proto_inputs"]
            key = CatalogKey(
                identifier=identifier_pb2.Identifier(
                    resource_type=identifier_pb2.ResourceType.TASK,
                    project=self.settings.project,
                    domain=self.settings.domain,
                    name=arguments["task_name"],
                    version=arguments["cache_version"],
                ),
                # The executor's fourth part is the action's cache key, i.e. the SDK's own key.
                cache_version=_sdk_key(call),
                typed_interface=arguments["task_interface"],
                inputs=literals_pb2.LiteralMap(
                    literals={named.name: named.value for named in proto_inputs.literals}
                ),
                cache_ignore_input_vars=tuple(arguments["ignored_input_vars"] or ()),
            )
            # flyte.Cache normalizes max_age to a timedelta; None or zero: no age limit.
            max_age = cache.max_age
            if isinstance(max_age, int):
                max_age = timedelta(seconds=max_age)
            call.slot = self.client.slot(key, max_cache_age=max_age or timedelta(0))
        return call.slot

    def metadata(self, call: _Call) -> ExecutionMetadata:
        action = call.action
        if action is None:
            return ExecutionMetadata()
        arguments = call.key_arguments or {}
        return ExecutionMetadata(
            task_execution_identifier=identifier_pb2.TaskExecutionIdentifier(
                task_id=identifier_pb2.Identifier(
                    resource_type=identifier_pb2.ResourceType.TASK,
                    project=self.settings.project,
                    domain=self.settings.domain,
                    name=arguments.get("task_name", ""),
                    version=arguments.get("cache_version", ""),
                ),
                node_execution_id=identifier_pb2.NodeExecutionIdentifier(
                    node_id=action.name,
                    execution_id=identifier_pb2.WorkflowExecutionIdentifier(
                        project=self.settings.project,
                        domain=self.settings.domain,
                        name=action.run_name or action.name,
                        org=action.org or "",
                    ),
                ),
            )
        )


def _sdk_key(call: _Call) -> str:
    arguments = call.key_arguments or {}
    key = arguments.get("_result")
    if not isinstance(key, str) or not key:
        raise FlyteCacheError("the SDK computed no cache key for this task call")
    return key


def _wrap_submit(submit: Any) -> Any:
    async def flytecache_submit(self: Any, _task: Any, *args: Any, **kwargs: Any) -> Any:
        call = _Call(task=_task)
        token = _current_call.set(call)
        try:
            return await submit(self, _task, *args, **kwargs)
        finally:
            _current_call.reset(token)
            if call.claim is not None:  # the task failed (set releases after storing)
                await asyncio.to_thread(call.release)

    flytecache_submit.__wrapped__ = submit  # type: ignore[attr-defined]
    return flytecache_submit


class _ConvertView(ModuleType):
    """The SDK's ``convert`` module as the controller sees it, noting for the current call the
    inputs of its cache key and its new action's id (everything else is the module itself)."""

    def __init__(self, convert: ModuleType) -> None:
        super().__init__(convert.__name__, convert.__doc__)
        self._convert = convert
        self._key_signature = inspect.signature(convert.generate_cache_key_hash)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._convert, name)

    def generate_cache_key_hash(self, *args: Any, **kwargs: Any) -> Any:
        key = self._convert.generate_cache_key_hash(*args, **kwargs)
        call = _current_call.get()
        if call is not None:
            arguments = dict(self._key_signature.bind(*args, **kwargs).arguments)
            arguments["_result"] = key
            call.key_arguments = arguments
        return key

    def generate_sub_action_id_and_output_path(self, *args: Any, **kwargs: Any) -> Any:
        result = self._convert.generate_sub_action_id_and_output_path(*args, **kwargs)
        call = _current_call.get()
        if call is not None:
            call.action = result[0]
        return result


class _TaskCache:
    """Stands in for the SDK's ``LocalTaskCache`` inside the local controller."""

    @staticmethod
    async def get(cache_key: str) -> Any:
        installation, call = _installation, _current_call.get()
        if installation is None or call is None:
            return None
        from flyte._cache.cache import cache_from_request

        serialize = bool(cache_from_request(call.task.cache).serialize)
        try:
            slot = installation.slot(call)
            if installation.reads_inline:
                entry, stale = slot.lookup()
                if entry is not None:
                    return _sdk_outputs(entry.outputs)
                if not serialize:
                    call.claim = Claim(replace=stale)
                    return None
            claim = await asyncio.to_thread(
                slot.claim,
                new_owner_id(),
                serialize=serialize,
                heartbeat_interval=installation.settings.heartbeat,
                poll_interval=installation.settings.poll,
            )
        except FlyteCacheError as error:
            # As Flyte's executor does: a failed lookup runs the task instead of failing it.
            log.warning(
                "flytecache lookup for %s failed, running the task uncached: %s",
                call.task.name,
                error,
            )
            return None
        if claim.entry is None:
            call.claim = claim  # we compute; released once stored, or when submit ends
            return None
        return _sdk_outputs(claim.entry.outputs)

    @staticmethod
    async def set(cache_key: str, value: Any) -> None:
        installation, call = _installation, _current_call.get()
        if installation is None or call is None:
            return
        try:
            slot = installation.slot(call)
            outputs = literals_pb2.LiteralMap(
                literals={named.name: named.value for named in value.proto_outputs.literals}
            )
            # The SDK's own cache replaces on write (INSERT OR REPLACE): so does "override".
            await asyncio.to_thread(slot.put, outputs, installation.metadata(call), overwrite=True)
        except FlyteCacheError as error:  # a cache that cannot store must not fail the run
            log.warning("flytecache could not store the outputs of %s: %s", call.task.name, error)
        finally:
            await asyncio.to_thread(call.release)

    @staticmethod
    async def initialize() -> None:
        """Nothing to prepare: :func:`install` opened the database."""

    @staticmethod
    async def clear() -> None:
        raise InvalidArgumentError(
            "the Flyte SDK's local cache is flytecache now: prune it with "
            "`flytecache entries prune --project <project>`"
        )

    @staticmethod
    async def close() -> None:
        """Kept open across runs; :func:`uninstall` closes it."""

    @staticmethod
    def close_sync() -> None:
        """Kept open across runs; :func:`uninstall` closes it."""


def _sdk_outputs(outputs: literals_pb2.LiteralMap) -> Any:
    from flyte._internal.runtime import convert
    from flyteidl2.task import common_pb2

    return convert.Outputs(
        proto_outputs=common_pb2.Outputs(
            literals=[
                common_pb2.NamedLiteral(name=name, value=literal)
                for name, literal in sorted(outputs.literals.items())
            ]
        )
    )
