"""What every SDK integration shares: where the cache is, which SDK versions are supported, the
settings of the reservation protocol, undoable patches, and one cached task call's life (claim,
store, release). The wait loop and the heartbeat themselves are
:meth:`flytecache.slots.CacheSlot.claim` and :class:`flytecache.leases.Lease`, which
``get_or_compute`` uses too.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata
from typing import Any

from flyteidl2.core.literals_pb2 import LiteralMap

from flytecache.client import (
    CacheHit,
    CacheSlot,
    CatalogClient,
    Claim,
    ExecutionMetadata,
)
from flytecache.errors import FlyteCacheError, InvalidArgumentError, UnsupportedVersionError
from flytecache.leases import check_heartbeat, new_owner_id
from flytecache.scoping import ScopedStore

__all__ = [
    "DEFAULT_DB",
    "Installation",
    "IntegrationSettings",
    "Patches",
    "Registry",
    "TaskCall",
    "check_version",
    "open_client",
    "resolve_db",
]

log = logging.getLogger("flytecache.integrations")

DEFAULT_DB = "./flytecache.db"
"""The database used when neither ``db`` nor ``FLYTECACHE_DB`` names one."""


def resolve_db(db: str | os.PathLike[str] | None) -> str:
    """``db``, else ``$FLYTECACHE_DB``, else ``./flytecache.db``.

    ``db`` is a SQLite path, a SQLAlchemy URL (``sqlite:///…``, ``postgresql+psycopg://…``) or
    the ``http(s)://`` URL of a ``flytecache serve``. Raises :class:`InvalidArgumentError` for
    anything else (an empty string, a number).
    """
    if db is None:
        db = os.environ.get("FLYTECACHE_DB") or DEFAULT_DB
    if isinstance(db, os.PathLike):
        db = os.fspath(db)
    if not isinstance(db, str) or not db.strip():
        raise InvalidArgumentError(
            f"db must be a database path, a database URL or an http(s):// URL, got {db!r}",
            field="db",
        )
    return db


def open_client(db: str | os.PathLike[str] | None, auth_token: str | None = None) -> CatalogClient:
    """A :class:`CatalogClient` on :func:`resolve_db` ``(db)`` (a new SQLite file is created
    and migrated; a server URL is only checked when first used).

    For an ``http(s)://`` server that requires a bearer token, ``auth_token`` is the token;
    ``None`` reads it from the file named by ``FLYTECACHE_AUTH_TOKEN_FILE`` (the variable
    ``flytecache serve --auth-token-file`` reads), if set. Raises
    :class:`InvalidArgumentError` when that file cannot be read.
    """
    target = resolve_db(db)
    remote = target.startswith(("http://", "https://"))
    if auth_token is not None and not remote:
        raise InvalidArgumentError(
            f"auth_token is for a `flytecache serve` URL (http:// or https://), not {target!r}",
            field="auth_token",
        )
    if auth_token is None and remote:
        token_file = os.environ.get("FLYTECACHE_AUTH_TOKEN_FILE")
        if token_file:
            try:
                with open(token_file, encoding="utf-8") as fh:
                    auth_token = fh.read().strip()
            except OSError as error:
                raise InvalidArgumentError(
                    f"FLYTECACHE_AUTH_TOKEN_FILE={token_file}: {error.strerror}",
                    field="auth_token",
                ) from None
    return CatalogClient(target, auth_token=auth_token)


def check_version(distribution: str, supported: str, *, force: bool = False) -> str:
    """The installed version of ``distribution``; :class:`UnsupportedVersionError` if it is
    outside ``supported`` (a PEP 440 specifier such as ``">=2.12,<2.13"``) and not ``force``.

    The integrations patch private SDK names, so a version they were not tested with may
    misbehave silently; ``force=True`` accepts it anyway.
    """
    from packaging.specifiers import SpecifierSet
    from packaging.version import Version

    try:
        installed = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        raise UnsupportedVersionError(
            f"{distribution} is not installed (supported: {distribution}{supported}; "
            f"install flytecache's extra for it)",
            distribution=distribution,
            installed=None,
            supported=supported,
        ) from None
    if not force and Version(installed) not in SpecifierSet(supported):
        raise UnsupportedVersionError(
            f"{distribution} {installed} is installed but flytecache supports "
            f"{distribution}{supported}; install a supported version, or pass force=True to "
            f"try it anyway",
            distribution=distribution,
            installed=installed,
            supported=supported,
        )
    return installed


@dataclass(frozen=True, slots=True)
class IntegrationSettings:
    """How an integration stores and serializes: the scope of its entries and the timing of
    its reservations (SPEC §4, §8).

    ``project``/``domain`` scope the stored keys as ``flytecache serve`` does; ``heartbeat``
    (a ``timedelta`` of at least :data:`~flytecache.leases.MIN_HEARTBEAT`, 0.1 s) is the
    lease's heartbeat interval — a killed owner's lease expires after
    ``heartbeat × grace_multiplier`` (3 by default); ``poll`` is how often a waiter looks for
    the owner's outputs.
    """

    project: str = "local"
    domain: str = "development"
    heartbeat: timedelta = timedelta(seconds=5)
    poll: timedelta = timedelta(milliseconds=200)

    def __post_init__(self) -> None:
        for name in ("project", "domain"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise InvalidArgumentError(
                    f"{name} must be a non-empty string, got {value!r}", field=name
                )
        check_heartbeat(self.heartbeat, "heartbeat")
        if not isinstance(self.poll, timedelta) or self.poll <= timedelta(0):
            raise InvalidArgumentError(
                f"poll must be a positive timedelta, got {self.poll!r}", field="poll"
            )


class Patches:
    """Attribute replacements on modules and classes that can be undone exactly.

    The original is read from the owner's own ``__dict__`` (a class's function, not a bound
    method), so :meth:`restore` puts back the very object that was there.
    """

    def __init__(self) -> None:
        self._saved: list[tuple[Any, str, Any]] = []

    def replace(self, owner: Any, name: str, value: Any) -> Any:
        """Set ``owner.name`` to ``value``; returns the original."""
        original = vars(owner)[name]
        self._saved.append((owner, name, original))
        setattr(owner, name, value)
        return original

    def restore(self) -> None:
        """Put every original back, last replaced first."""
        while self._saved:
            owner, name, original = self._saved.pop()
            setattr(owner, name, original)


@dataclass(eq=False)
class TaskCall:
    """One cached task call inside an SDK: its slot (key derived once) and, while it computes,
    its claim (the lease, if serialized). ``task`` is the SDK's task object."""

    task: Any
    slot: CacheSlot | None = None
    claim: Claim | None = None

    def release(self) -> None:
        """Release the call's lease, if it holds one (idempotent, never raises)."""
        claim, self.claim = self.claim, None
        if claim is not None:
            claim.release()


class Installation:
    """One SDK integration's client and settings, the patches that route the SDK to them, and
    the cache protocol every SDK follows: look up or claim, then store and release."""

    def __init__(self, client: CatalogClient, db: str, settings: IntegrationSettings) -> None:
        self.client = client
        self.db = db
        self.settings = settings
        self.patches = Patches()
        # A look-up in a local database does not wait on writers (WAL readers, PostgreSQL
        # MVCC), so an async SDK may run it on its event loop: a thread hop costs ~0.3 ms,
        # eight times the look-up. Reservations, waiting and the network run in a thread.
        self.reads_inline = isinstance(client.backend, ScopedStore)

    def claim(self, call: TaskCall, slot: CacheSlot, *, serialize: bool) -> CacheHit | None:
        """The hit for ``call``, or ``None``: then the call computes, holding the lease when
        ``serialize`` (waiting first while another owner computes), until :meth:`store` or
        ``call.release()``. A cache that fails is logged and counts as a miss (as Flyte's
        executor does: the task runs uncached). Blocks while waiting: for synchronous SDKs."""
        call.slot = slot
        try:
            claim = slot.claim(
                new_owner_id(),
                serialize=serialize,
                heartbeat_interval=self.settings.heartbeat,
                poll_interval=self.settings.poll,
            )
        except FlyteCacheError as error:
            log.warning("flytecache look-up failed, running the task uncached: %s", error)
            return None
        return self.adopt(call, claim)

    def claim_round(
        self, call: TaskCall, slot: CacheSlot, *, serialize: bool, owner_id: str
    ) -> Claim:
        """One round of :meth:`claim` that never waits (an asynchronous SDK sleeps between
        rounds on its event loop while ``claim.holder`` is set). A failing cache gives the
        go-ahead to run uncached, logged."""
        call.slot = slot
        try:
            return slot.claim_round(
                owner_id, serialize=serialize, heartbeat_interval=self.settings.heartbeat
            )
        except FlyteCacheError as error:
            log.warning("flytecache look-up failed, running the task uncached: %s", error)
            return Claim()

    @staticmethod
    def adopt(call: TaskCall, claim: Claim) -> CacheHit | None:
        """The hit of a finished claim, or ``None`` with the claim kept by ``call`` (its lease
        held until :meth:`store` or ``call.release()``)."""
        if claim.entry is not None:
            return claim.entry
        call.claim = claim
        return None

    def store(
        self, call: TaskCall, slot: CacheSlot, outputs: LiteralMap, metadata: ExecutionMetadata
    ) -> None:
        """Store ``outputs`` for ``call``, replacing any entry (the SDKs' own caches replace on
        write), then release its lease. A failure is logged: a cache must not fail the run."""
        try:
            slot.put(outputs, metadata, overwrite=True)
        except FlyteCacheError as error:
            log.warning("flytecache could not store the outputs: %s", error)
        finally:
            call.release()


class Registry:
    """The current :class:`Installation` of one SDK integration (at most one at a time).

    ``distribution`` is the SDK's package name (for the version check) and ``patch`` routes
    that SDK to an installation, recording every replacement in ``installation.patches``.
    """

    def __init__(self, distribution: str, patch: Callable[[Installation], None]) -> None:
        self.distribution = distribution
        self._patch = patch
        self._lock = threading.Lock()
        self.current: Installation | None = None

    def install(
        self,
        db: str | os.PathLike[str] | None,
        *,
        supported: str,
        force: bool,
        auth_token: str | None,
        project: str,
        domain: str,
        heartbeat: timedelta,
        poll: timedelta,
    ) -> None:
        """Validate, check the SDK's version against ``supported``, open the cache, undo the
        previous installation and patch the SDK for the new one (the SDK integrations'
        ``install``)."""
        settings = IntegrationSettings(
            project=project, domain=domain, heartbeat=heartbeat, poll=poll
        )
        target = resolve_db(db)
        check_version(self.distribution, supported, force=force)
        installation = Installation(open_client(target, auth_token), target, settings)
        with self._lock:
            previous, self.current = self.current, None
            if previous is not None:
                previous.patches.restore()
            try:
                self._patch(installation)
            except BaseException:
                installation.patches.restore()
                installation.client.close()
                raise
            self.current = installation
        if previous is not None:
            previous.client.close()

    def uninstall(self) -> None:
        """Undo the current installation and close its client (a no-op when none)."""
        with self._lock:
            installation, self.current = self.current, None
            if installation is not None:
                installation.patches.restore()
        if installation is not None:
            installation.client.close()

    @property
    def db(self) -> str | None:
        """The database or server of the current installation, ``None`` when not installed."""
        installation = self.current
        return None if installation is None else installation.db
