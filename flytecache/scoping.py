"""How the cache service scopes keys: shared by the server and the CatalogClient.

An entry written through ``flytecache serve`` and one written by a local CatalogClient for the
same task and inputs land on the same stored key, so each is a hit for the other.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["RESERVATION_PREFIX", "Scope", "reservation_key", "scoped_key"]


class Scope(NamedTuple):
    """The v2 ``Identifier`` a cache request is scoped by (Flyte's org/project/domain)."""

    org: str = ""
    project: str = ""
    domain: str = ""


RESERVATION_PREFIX = "reservation:"


def scoped_key(project: str, domain: str, key: str) -> str:
    """The stored key: ``"<project>-<domain>-<key>"`` (Flyte's form; org is not used)."""
    return f"{project}-{domain}-{key}"


def reservation_key(scoped: str) -> str:
    """The ``Reservation.key`` the service returns for a scoped key (Flyte's form)."""
    return RESERVATION_PREFIX + scoped
