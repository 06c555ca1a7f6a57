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
from dataclasses import dataclass
from datetime import timedelta
from types import ModuleType
from typing import Any

from flyteidl2.core import identifier_pb2, literals_pb2

from flytecache.client import CacheSlot, Claim, ExecutionMetadata
from flytecache.errors import FlyteCacheError, InvalidArgumentError
from flytecache.integrations._cli_option import add_cli_option
from flytecache.integrations._common import Installation, Registry, TaskCall
from flytecache.keys import CatalogKey
from flytecache.leases import new_owner_id

__all__ = ["SUPPORTED_VERSIONS", "cli_run_hook", "install", "installed_db", "uninstall"]

SUPPORTED_VERSIONS = ">=2.12,<2.13"
"""The ``flyte`` releases this integration is tested with (the ``flytecache[flyte]`` extra)."""

log = logging.getLogger(__name__)

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
    _registry.install(
        db,
        supported=SUPPORTED_VERSIONS,
        force=force,
        auth_token=auth_token,
        project=project,
        domain=domain,
        heartbeat=heartbeat,
        poll=poll,
    )


def uninstall() -> None:
    """Give the Flyte 2 SDK its own local cache back (a no-op when not installed)."""
    _registry.uninstall()


def installed_db() -> str | None:
    """The database or server local runs cache through, or ``None`` when not installed."""
    return _registry.db


def cli_run_hook(command: Any) -> Any:
    """The ``flyte run`` hook (entry point group ``flyte.plugins.cli.hooks``, name ``run``).

    Adds ``--flytecache DB`` (default ``$FLYTECACHE_DB``) to ``flyte run``: with ``--local``
    (or ``--tracked``) the run caches through flytecache, as after :func:`install` ``(DB)``.
    Given on the command line for a remote run, it is a usage error (the platform's cache
    applies there); from the environment it is ignored for remote runs.
    """
    add_cli_option(
        command,
        runs="local runs (--local)",
        is_local=lambda params: bool(params.get("local") or params.get("tracked")),
        remote_hint="add --local (remote runs use the platform's cache)",
        install=install,
    )
    return command


@dataclass(eq=False)
class _Call(TaskCall):
    """A ``LocalController.submit`` call, with what the SDK computed for it."""

    key_arguments: dict[str, Any] | None = None
    action: Any = None


_current_call: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "flytecache_flyte_sdk_call", default=None
)


def _patch(installation: Installation) -> None:
    import importlib

    module = importlib.import_module(_CONTROLLER_MODULE)
    installation.patches.replace(module, "LocalTaskCache", _TaskCache)
    installation.patches.replace(module, "convert", _ConvertView(vars(module)["convert"]))
    submit = vars(module.LocalController)["submit"]
    installation.patches.replace(module.LocalController, "submit", _wrap_submit(submit))


_registry = Registry("flyte", _patch)


def _slot(installation: Installation, call: _Call) -> CacheSlot:
    """The flytecache slot of ``call``: the executor's catalog key, derived once."""
    if call.slot is not None:
        return call.slot
    arguments = call.key_arguments
    if arguments is None:
        raise FlyteCacheError(
            "flytecache could not see the cache key inputs of this task call; "
            "is the installed flyte supported?"
        )
    from flyte._cache.cache import cache_from_request

    proto_inputs = arguments["proto_inputs"]
    key = CatalogKey(
        identifier=_task_identifier(installation, arguments),
        # The executor's fourth part is the action's cache key, i.e. the SDK's own key.
        cache_version=_sdk_key(arguments),
        typed_interface=arguments["task_interface"],
        inputs=literals_pb2.LiteralMap(
            literals={named.name: named.value for named in proto_inputs.literals}
        ),
        cache_ignore_input_vars=tuple(arguments["ignored_input_vars"] or ()),
    )
    # flyte.Cache normalizes max_age to a timedelta; None or zero: no age limit.
    max_age = cache_from_request(call.task.cache).max_age
    if isinstance(max_age, int):
        max_age = timedelta(seconds=max_age)
    call.slot = installation.client.slot(key, max_cache_age=max_age or timedelta(0))
    return call.slot


def _task_identifier(installation: Installation, arguments: dict[str, Any]) -> Any:
    return identifier_pb2.Identifier(
        resource_type=identifier_pb2.ResourceType.TASK,
        project=installation.settings.project,
        domain=installation.settings.domain,
        name=arguments.get("task_name", ""),
        version=arguments.get("cache_version", ""),
    )


def _metadata(installation: Installation, call: _Call) -> ExecutionMetadata:
    action = call.action
    if action is None:
        return ExecutionMetadata()
    settings = installation.settings
    return ExecutionMetadata(
        task_execution_identifier=identifier_pb2.TaskExecutionIdentifier(
            task_id=_task_identifier(installation, call.key_arguments or {}),
            node_execution_id=identifier_pb2.NodeExecutionIdentifier(
                node_id=action.name,
                execution_id=identifier_pb2.WorkflowExecutionIdentifier(
                    project=settings.project,
                    domain=settings.domain,
                    name=action.run_name or action.name,
                    org=action.org or "",
                ),
            ),
        )
    )


def _sdk_key(arguments: dict[str, Any]) -> str:
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


async def _claim(
    installation: Installation, call: _Call, slot: CacheSlot, *, serialize: bool
) -> Any:
    """:meth:`Installation.claim` for the event loop: each round runs in a worker thread (a
    reservation may wait for the write lock; a server is a network call) and the waiting
    between rounds is an ``asyncio.sleep``, so any number of waiting calls in one run hold no
    thread (a thread each would exhaust the default executor the owner needs to store its
    outputs) and a cancelled wait stops at once."""
    owner_id = new_owner_id()
    poll = installation.settings.poll.total_seconds()
    while True:
        claim = await _finish_in_thread(
            installation.claim_round, call, slot, serialize=serialize, owner_id=owner_id
        )
        if claim.holder is None:
            return installation.adopt(call, claim)
        await asyncio.sleep(poll)


async def _finish_in_thread(function: Any, *args: Any, **kwargs: Any) -> Claim:
    """``function`` in a worker thread; if the caller is cancelled meanwhile, the lease the
    round may still take is released when it ends instead of being orphaned."""
    round_ = asyncio.ensure_future(asyncio.to_thread(function, *args, **kwargs))
    try:
        return await asyncio.shield(round_)
    except asyncio.CancelledError:
        round_.add_done_callback(_release_abandoned)
        raise


def _release_abandoned(round_: asyncio.Future[Claim]) -> None:
    if not round_.cancelled() and round_.exception() is None:
        round_.result().release()  # releasing in the loop thread: a quick DELETE


class _TaskCache:
    """Stands in for the SDK's ``LocalTaskCache`` inside the local controller."""

    @staticmethod
    async def get(cache_key: str) -> Any:
        installation, call = _registry.current, _current_call.get()
        if installation is None or call is None:
            return None
        from flyte._cache.cache import cache_from_request

        serialize = bool(cache_from_request(call.task.cache).serialize)
        try:
            slot = _slot(installation, call)
            if installation.reads_inline:
                entry, _ = slot.lookup()
                if entry is not None:
                    return _sdk_outputs(entry.outputs)
                if not serialize:
                    return None  # set() stores, replacing a stale entry if there is one
        except FlyteCacheError as error:
            log.warning("flytecache look-up failed, running the task uncached: %s", error)
            return None
        entry = await _claim(installation, call, slot, serialize=serialize)
        return None if entry is None else _sdk_outputs(entry.outputs)

    @staticmethod
    async def set(cache_key: str, value: Any) -> None:
        installation, call = _registry.current, _current_call.get()
        if installation is None or call is None:
            return
        try:
            slot = _slot(installation, call)
        except FlyteCacheError as error:
            log.warning("flytecache could not store the outputs: %s", error)
            return
        outputs = literals_pb2.LiteralMap(
            literals={named.name: named.value for named in value.proto_outputs.literals}
        )
        await asyncio.to_thread(
            installation.store, call, slot, outputs, _metadata(installation, call)
        )

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
