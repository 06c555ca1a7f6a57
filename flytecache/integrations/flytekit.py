"""flytekit 1.x local executions memoize and serialize through flytecache (SPEC §8).

Calling a workflow or task in Python, and ``pyflyte run`` without ``--remote``, execute locally
through ``Task.local_execute``, which memoizes in a hard-wired ``diskcache.Cache`` at
``~/.flyte/local-cache``: no reservations (``cache_serialize=True`` does nothing locally), no
age limit, one admin verb (``pyflyte local-cache clear``). :func:`install` points it at a
flytecache database or server instead::

    from flytecache.integrations import flytekit as fc_flytekit
    fc_flytekit.install("./flytecache.db")   # or FLYTECACHE_DB, or http://localhost:8094

flytekit's semantics are kept: ``cache=True`` with ``cache_version``,
``cache_ignore_input_vars``, ``Literal.hash`` (hash-method annotated inputs), overwriting
(``--overwrite-cache``, ``FLYTE_LOCAL_CACHE_OVERWRITE``) and turning the local cache off
(``FLYTE_LOCAL_CACHE_ENABLED=false``); ``cache_serialize=True`` takes a flytecache reservation
on a miss, so concurrent executions compute once.

Keys are flytekit's own local keys (``<task name>-<cache version>-<inputs hash>``, computed by
flytekit itself), so switching keeps the same hits and misses; they are stored scoped
``<project>-<domain>-<key>`` as ``flytecache serve`` scopes keys, with the task as
``source_identifier``. Outputs are stored inline: flyteidl's ``LiteralMap`` bytes, which
flyteidl2 reads unchanged (the two share the wire format).

How it hooks in (``flytekit`` 1.16): ``flytekit.core.base_task``'s ``LocalTaskCache`` name is
replaced by an adapter, and ``Task.local_execute`` is wrapped so every execution knows its task
and releases its lease however it ends. :func:`uninstall` puts both back.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

from flyteidl2.core import identifier_pb2, interface_pb2, literals_pb2

from flytecache.client import CacheSlot, CatalogClient, ExecutionMetadata
from flytecache.errors import FlyteCacheError, InvalidArgumentError, NotFoundError
from flytecache.integrations._common import (
    Installation,
    IntegrationSettings,
    Registry,
    TaskCall,
    open_client,
    resolve_db,
)
from flytecache.keys import CatalogKey

__all__ = [
    "SUPPORTED_VERSIONS",
    "LocalCacheImport",
    "import_local_cache",
    "install",
    "installed_db",
    "uninstall",
]

log = logging.getLogger(__name__)

SUPPORTED_VERSIONS = ">=1.16,<1.17"
"""The ``flytekit`` releases this integration is tested with (the ``flytecache[flytekit]``
extra)."""


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
    """Make this process's flytekit local executions cache through flytecache.

    ``db`` is a SQLite path, a ``sqlite:///`` or ``postgresql+psycopg://`` URL, or the
    ``http(s)://`` URL of ``flytecache serve``; ``None`` reads ``FLYTECACHE_DB``, else
    ``./flytecache.db``. Entries are scoped by ``project``/``domain``; a
    ``cache_serialize=True`` task's lease is heartbeated every ``heartbeat`` (a killed owner's
    lease expires after three missed beats) and waiters poll every ``poll``. ``auth_token`` is
    a server's bearer token (default: read from the file ``FLYTECACHE_AUTH_TOKEN_FILE`` names).
    Installing again replaces the previous installation. Raises
    :class:`~flytecache.errors.UnsupportedVersionError` when the installed ``flytekit`` is
    outside :data:`SUPPORTED_VERSIONS` (``force=True`` skips that check),
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
    """Give flytekit its own local cache back (a no-op when not installed)."""
    _registry.uninstall()


def installed_db() -> str | None:
    """The database or server local executions cache through, ``None`` when not installed."""
    return _registry.db


_current_call: contextvars.ContextVar[TaskCall | None] = contextvars.ContextVar(
    "flytecache_flytekit_call", default=None
)


def _patch(installation: Installation) -> None:
    from flytekit.core import base_task

    installation.patches.replace(base_task, "LocalTaskCache", _TaskCache)
    local_execute = vars(base_task.Task)["local_execute"]
    installation.patches.replace(base_task.Task, "local_execute", _wrap(local_execute))


_registry = Registry("flytekit", _patch)


def _wrap(local_execute: Callable[..., Any]) -> Callable[..., Any]:
    def flytecache_local_execute(self: Any, ctx: Any, **kwargs: Any) -> Any:
        call = TaskCall(task=self)
        token = _current_call.set(call)
        try:
            return local_execute(self, ctx, **kwargs)
        finally:
            _current_call.reset(token)
            call.release()  # the task failed, or nothing is held (set releases after storing)

    flytecache_local_execute.__wrapped__ = local_execute  # type: ignore[attr-defined]
    return flytecache_local_execute


def _identifier(settings: IntegrationSettings, task_name: str, cache_version: str) -> Any:
    return identifier_pb2.Identifier(
        resource_type=identifier_pb2.ResourceType.TASK,
        project=settings.project,
        domain=settings.domain,
        name=task_name,
        version=cache_version,
    )


def _slot(client: CatalogClient, identifier: Any, flytekit_key: str) -> CacheSlot:
    """A slot stored under flytekit's own key, scoped and described by ``identifier``."""
    key = CatalogKey(
        identifier=identifier,
        cache_version=identifier.version,
        typed_interface=interface_pb2.TypedInterface(),
        inputs=literals_pb2.LiteralMap(),
    )
    return client.slot(key, cache_key_override=flytekit_key)


def _call_slot(
    installation: Installation,
    call: TaskCall,
    task_name: str,
    cache_version: str,
    input_literal_map: Any,
    ignored: Any,
) -> CacheSlot:
    if call.slot is None:
        from flytekit.core.local_cache import _calculate_cache_key

        flytekit_key = _calculate_cache_key(
            task_name, cache_version, input_literal_map, tuple(ignored or ())
        )
        identifier = _identifier(installation.settings, task_name, cache_version)
        call.slot = _slot(installation.client, identifier, flytekit_key)
    return call.slot


def _this_call(
    task_name: str, cache_version: str, input_literal_map: Any, ignored: Any
) -> tuple[Installation, TaskCall, CacheSlot] | None:
    """The installation, the current task call (``local_execute`` records it; a call made some
    other way is cached unserialized) and its slot; ``None`` when not installed or the key
    cannot be derived (logged: the task then runs uncached)."""
    installation = _registry.current
    if installation is None:
        return None
    call = _current_call.get() or TaskCall(task=None)
    try:
        slot = _call_slot(installation, call, task_name, cache_version, input_literal_map, ignored)
    except FlyteCacheError as error:
        log.warning("flytecache cannot key this task call, running it uncached: %s", error)
        return None
    return installation, call, slot


def _metadata(identifier: Any, execution_name: str | None = None) -> ExecutionMetadata:
    """Where the outputs come from: the task, and the execution (by default flytekit's local
    execution id, ``local``)."""
    if execution_name is None:
        from flytekit import FlyteContextManager

        params = FlyteContextManager.current_context().user_space_params
        execution = getattr(params, "execution_id", None) if params is not None else None
        execution_name = getattr(execution, "name", "") or "local"
    return ExecutionMetadata(
        task_execution_identifier=identifier_pb2.TaskExecutionIdentifier(
            task_id=identifier,
            node_execution_id=identifier_pb2.NodeExecutionIdentifier(
                node_id=identifier.name,
                execution_id=identifier_pb2.WorkflowExecutionIdentifier(
                    project=identifier.project, domain=identifier.domain, name=execution_name
                ),
            ),
        )
    )


class _TaskCache:
    """Stands in for flytekit's ``LocalTaskCache`` inside ``flytekit.core.base_task``."""

    @staticmethod
    def get(
        task_name: str, cache_version: str, input_literal_map: Any, cache_ignore_input_vars: Any
    ) -> Any:
        found = _this_call(task_name, cache_version, input_literal_map, cache_ignore_input_vars)
        if found is None:
            return None
        installation, call, slot = found
        serialize = bool(getattr(getattr(call.task, "metadata", None), "cache_serialize", False))
        entry = installation.claim(call, slot, serialize=serialize)
        return None if entry is None else _model_literal_map(entry.outputs)

    @staticmethod
    def set(
        task_name: str,
        cache_version: str,
        input_literal_map: Any,
        cache_ignore_input_vars: Any,
        value: Any,
    ) -> None:
        found = _this_call(task_name, cache_version, input_literal_map, cache_ignore_input_vars)
        if found is None:
            return
        installation, call, slot = found
        outputs = literals_pb2.LiteralMap.FromString(value.to_flyte_idl().SerializeToString())
        installation.store(call, slot, outputs, _metadata(slot.catalog_key.identifier))

    @staticmethod
    def initialize() -> None:
        """Nothing to prepare: :func:`install` opened the database."""

    @staticmethod
    def clear() -> None:
        raise InvalidArgumentError(
            "flytekit's local cache is flytecache now: prune it with "
            "`flytecache entries prune --project <project>`"
        )


def _model_literal_map(outputs: literals_pb2.LiteralMap) -> Any:
    """flyteidl2 ``LiteralMap`` → flytekit's model ``LiteralMap`` (one wire format)."""
    from flyteidl.core import literals_pb2 as v1
    from flytekit.models.literals import LiteralMap

    return LiteralMap.from_flyte_idl(v1.LiteralMap.FromString(outputs.SerializeToString()))


# -- importing a cache flytekit wrote ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LocalCacheImport:
    """What :func:`import_local_cache` did: entries read, stored, replaced, skipped, unreadable."""

    read: int
    """Entries found in the flytekit cache directory."""
    imported: int
    """Entries stored (or, on a dry run, that would be), replacements included."""
    replaced: int
    """Of those, entries that replaced one already in flytecache (only with ``overwrite``)."""
    skipped: int
    """Entries whose key already exists in flytecache (kept, unless ``overwrite``)."""
    unreadable: list[str]
    """Keys whose value is not a flyteidl ``LiteralMap`` (reported, not imported)."""


def import_local_cache(
    directory: str | os.PathLike[str],
    db: str | os.PathLike[str] | None = None,
    *,
    project: str = "local",
    domain: str = "development",
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> LocalCacheImport:
    """Copy a cache flytekit's local executions wrote (``~/.flyte/local-cache``) into ``db``.

    Each entry is stored as :func:`install` would have stored it: under flytekit's key, scoped
    ``<project>-<domain>-<key>``, with the task name and cache version (parsed from the key,
    ``<task name>-<cache version>-<inputs hash>``) as its ``source_identifier``. So after the
    import, local executions through flytecache hit what they hit before. Existing keys are
    skipped unless ``overwrite``. ``dry_run`` reads and counts and writes nothing, not even a
    new database (``db`` must then exist). The flytekit cache is only read: it is copied aside
    before ``diskcache`` opens it. Raises :class:`~flytecache.errors.NotFoundError` when
    ``directory`` holds no flytekit cache (naming the Flyte 2 SDK's cache when it finds that
    instead) and :class:`~flytecache.errors.InvalidArgumentError` for bad arguments. Needs
    ``diskcache`` (a flytekit dependency); values pickled by old flytekit releases need
    ``flytekit``.
    """
    from flytecache.errors import AlreadyExistsError

    settings = IntegrationSettings(project=project, domain=domain)
    read = imported = replaced = skipped = 0
    unreadable: list[str] = []
    _check_diskcache(Path(directory).expanduser())  # before a database is opened or created
    with _open_for_import(resolve_db(db), dry_run) as client:
        for key, outputs in _local_cache_items(directory, unreadable):
            read += 1
            task_name, cache_version = _split_flytekit_key(key)
            identifier = _identifier(settings, task_name, cache_version)
            slot = _slot(client, identifier, key)
            present = slot.lookup() != (None, False)
            if present and not overwrite:
                skipped += 1
            else:
                if not dry_run:
                    try:
                        metadata = _metadata(identifier, "flytekit-import")
                        slot.put(outputs, metadata, overwrite=overwrite)
                    except AlreadyExistsError:  # stored meanwhile by someone else: theirs stays
                        skipped += 1
                        continue
                imported += 1
                replaced += present
            if progress is not None:
                progress(read)
    return LocalCacheImport(read + len(unreadable), imported, replaced, skipped, unreadable)


def _open_for_import(target: str, dry_run: bool) -> CatalogClient:
    if dry_run and not target.startswith(("http://", "https://")):
        from flytecache.store.opening import open_store

        return CatalogClient(open_store(target, must_exist=True, migrate=False))
    return open_client(target)


def _local_cache_items(
    directory: str | os.PathLike[str], unreadable: list[str]
) -> Iterator[tuple[str, literals_pb2.LiteralMap]]:
    path = Path(directory).expanduser()
    try:
        import diskcache
    except ImportError:
        raise InvalidArgumentError(
            "reading a flytekit cache needs diskcache: pip install diskcache", field="directory"
        ) from None
    with tempfile.TemporaryDirectory(prefix="flytecache-flytekit-import-") as aside:
        _copy_aside(path, Path(aside))
        with diskcache.Cache(aside) as cache:
            for key in cache.iterkeys():
                try:
                    value = cache.get(key)
                    outputs = _as_literal_map(value)
                except Exception:  # a pickle of a class that is gone, bytes that are not a map
                    unreadable.append(str(key))
                    continue
                yield str(key), outputs


def _check_diskcache(path: Path) -> None:
    """:class:`NotFoundError` unless ``path`` holds a diskcache (flytekit's local cache)."""
    database = path / "cache.db"
    if not database.is_file():
        raise NotFoundError(
            f"{path} holds no flytekit local cache (no cache.db): flytekit writes it to "
            f"~/.flyte/local-cache",
            path=str(path),
        )
    with contextlib.closing(sqlite3.connect(f"{database.as_uri()}?mode=ro", uri=True)) as conn:
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    if "Cache" in tables:
        return
    if "task_cache" in tables:
        raise NotFoundError(
            f"{database} is the Flyte 2 SDK's local cache (table task_cache), not flytekit's; "
            "its entries are keyed by the SDK and cannot be imported as flytekit entries",
            path=str(path),
        )
    raise NotFoundError(f"{database} is not a flytekit (diskcache) cache", path=str(path))


def _copy_aside(source: Path, aside: Path) -> None:
    """A read-only view of the diskcache at ``source`` in ``aside``: a consistent copy of its
    database (diskcache writes its settings on open) and links to its value files."""
    with (
        contextlib.closing(
            sqlite3.connect(f"{(source / 'cache.db').as_uri()}?mode=ro", uri=True)
        ) as original,
        contextlib.closing(sqlite3.connect(aside / "cache.db")) as copy,
    ):
        original.backup(copy)
    for child in source.iterdir():
        if child.is_dir():  # diskcache keeps large values in files under two-level folders
            (aside / child.name).symlink_to(child, target_is_directory=True)


def _as_literal_map(value: Any) -> literals_pb2.LiteralMap:
    if isinstance(value, bytes):
        return literals_pb2.LiteralMap.FromString(value)
    if hasattr(value, "to_flyte_idl"):  # older flytekit stored its model object
        serialized = value.to_flyte_idl().SerializeToString()
        return literals_pb2.LiteralMap.FromString(serialized)
    raise TypeError(f"not a LiteralMap: {type(value).__name__}")


def _split_flytekit_key(key: str) -> tuple[str, str]:
    """``<task name>-<cache version>-<inputs hash>`` → (task name, cache version).

    The hash (joblib's, hexadecimal) has no ``-``. Task names are Python dotted paths, which
    have none either, except flytekit's map tasks (``<name>-arraynode``); so the task name ends
    at the first ``-`` (after ``-arraynode``) and the version at the last. A key is still stored
    whole; only the name and version shown in listings depend on this.
    """
    rest, _, _ = key.rpartition("-")
    marker = "-arraynode-"
    if marker in rest:
        name, _, version = rest.partition(marker)
        return name + marker[:-1], version
    name, _, version = rest.partition("-")
    return name, version
