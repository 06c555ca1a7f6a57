"""What every SDK integration needs: where the cache is, which SDK versions are supported, and
the settings of the reservation protocol. The protocol itself (look up, reserve, wait, heartbeat,
release) is :meth:`flytecache.client.CacheSlot.claim`, shared with ``get_or_compute``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from importlib import metadata

from flytecache.client import CatalogClient
from flytecache.errors import InvalidArgumentError, UnsupportedVersionError

__all__ = ["DEFAULT_DB", "IntegrationSettings", "check_version", "open_client", "resolve_db"]

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
    if auth_token is None and target.startswith(("http://", "https://")):
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
    (seconds-scale ``timedelta``) is the lease's heartbeat interval — a killed owner's lease
    expires after ``heartbeat × grace_multiplier`` (3 by default); ``poll`` is how often a
    waiter looks for the owner's outputs.
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
        for name in ("heartbeat", "poll"):
            value = getattr(self, name)
            if not isinstance(value, timedelta) or value <= timedelta(0):
                raise InvalidArgumentError(
                    f"{name} must be a positive timedelta, got {value!r}", field=name
                )
