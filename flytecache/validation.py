"""The one rule for text flytecache stores: what a key or owner id may be, and what any stored
string may contain. The store, the admin import, the server and the client all check with these.
"""

from __future__ import annotations

from flytecache.errors import InvalidArgumentError

__all__ = ["MAX_KEY_BYTES", "check_storable", "check_text"]

MAX_KEY_BYTES = 2048
"""The longest key or owner id, in UTF-8 bytes: PostgreSQL's btree indexes entries up to about a
third of a page, and a Flyte cache key is ~135 bytes."""


def check_text(value: object, field: str) -> str:
    """``value`` if it is a key-like string: a non-empty ``str`` of at most
    :data:`MAX_KEY_BYTES` UTF-8 bytes, with no NUL and no lone surrogate; otherwise
    :class:`InvalidArgumentError` naming ``field``."""
    if type(value) is not str:
        raise InvalidArgumentError(
            f"{field} must be a string, got {type(value).__name__}", field=field
        )
    if not value:
        raise InvalidArgumentError(f"{field} must not be empty", field=field)
    if not value.isascii():
        try:
            size = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"{field} is not valid UTF-8 text", field=field) from None
    else:
        size = len(value)
    if size > MAX_KEY_BYTES:
        raise InvalidArgumentError(
            f"{field} is {size} bytes long; the limit is {MAX_KEY_BYTES}", field=field
        )
    if "\x00" in value:
        raise InvalidArgumentError(f"{field} must not contain NUL characters", field=field)
    return value


def check_storable(value: str, field: str, *, nul_ok: bool = False) -> str:
    """``value`` if a database can store it as text: valid UTF-8 (no lone surrogate, which JSON
    can spell) and, unless ``nul_ok``, no NUL — PostgreSQL's text types cannot hold one, so it is
    refused on every backend to keep them alike. Otherwise :class:`InvalidArgumentError`."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidArgumentError(f"{field} is not valid UTF-8 text", field=field) from None
    if not nul_ok and "\x00" in value:
        raise InvalidArgumentError(
            f"{field} contains a NUL character, which PostgreSQL cannot store", field=field
        )
    return value
