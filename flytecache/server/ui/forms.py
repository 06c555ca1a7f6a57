"""What the web view accepts from a URL or a form, checked before any store call.

Each page's parameters are parsed into a frozen dataclass; anything unexpected (an unknown or
repeated parameter, bad text, a malformed age or cursor) is an :class:`InvalidArgumentError`
that the view answers with a 400 page.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import cast
from urllib.parse import parse_qs, urlencode

from flytecache.config import parse_duration
from flytecache.errors import InvalidArgumentError
from flytecache.store.admin import EntryFilter, ReservationState
from flytecache.validation import check_text

__all__ = ["EntryQuery", "Params", "ReservationQuery", "parse_params"]

_SHORT_TEXT = 255  # project and domain are VARCHAR(255)
_MAX_FIELDS = 20
STATES = ("all", "active", "expired")
_LONGEST = timedelta(days=36525)


class Params:
    """Parameters of one request: at most one value each, from a fixed set of names."""

    def __init__(self, values: dict[str, str]) -> None:
        self._values = values

    def text(self, name: str, *, limit: int | None = None) -> str | None:
        """The parameter as key-like text, or None when absent or empty."""
        value = self._values.get(name, "")
        if not value:
            return None
        check_text(value, name)
        if limit is not None and len(value) > limit:
            raise InvalidArgumentError(
                f"{name} is {len(value)} characters long; the limit is {limit}", field=name
            )
        return value

    def get(self, name: str) -> str:
        """The parameter as key-like text, empty when absent."""
        return self.text(name) or ""

    def duration(self, name: str) -> timedelta | None:
        """The parameter as a positive duration (``90s``, ``12h``, ``30d``), or None."""
        value = self.text(name, limit=40)
        if value is None:
            return None
        try:
            parsed = parse_duration(value, name=name)
        except OverflowError:
            parsed = _LONGEST + _LONGEST
        if not timedelta(0) < parsed <= _LONGEST:
            raise InvalidArgumentError(
                f"{name} must be a duration between 1us and 100 years", field=name
            )
        return parsed

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        """The parameter as an integer in ``low..high``, ``default`` when absent."""
        value = self.text(name, limit=12)
        if value is None:
            return default
        # isdigit() alone takes "²" and "①", which int() refuses: ASCII digits only.
        if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
            raise InvalidArgumentError(
                f"{name} must be a whole number in {low}..{high}, got {value!r}", field=name
            )
        return int(value)


def parse_params(raw: bytes, allowed: tuple[str, ...]) -> Params:
    """``raw`` (a query string or a urlencoded form body) checked against ``allowed`` names."""
    try:
        parsed = parse_qs(
            raw.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            encoding="utf-8",
            errors="strict",
            max_num_fields=_MAX_FIELDS,
        )
    except (UnicodeDecodeError, ValueError) as error:
        raise InvalidArgumentError(f"malformed parameters: {error}"[:200]) from None
    values: dict[str, str] = {}
    for name, items in parsed.items():
        if name not in allowed:
            shown = name[:40]
            raise InvalidArgumentError(
                f"unknown parameter {shown!r}; this page takes {', '.join(allowed) or 'none'}",
                field=shown,
            )
        if len(items) > 1:
            raise InvalidArgumentError(f"give {name} once", field=name)
        values[name] = items[0]
    return Params(values)


@dataclass(frozen=True, slots=True)
class EntryQuery:
    """The entries page: filters, the page's cursor and size."""

    NAMES = ("project", "domain", "name", "version", "newer", "older", "after", "limit")

    project: str | None = None
    domain: str | None = None
    name: str | None = None
    version: str | None = None
    newer: timedelta | None = None
    older: timedelta | None = None
    after: str | None = None
    limit: int = 50

    @classmethod
    def parse(cls, raw: bytes) -> EntryQuery:
        """From a query string; :class:`InvalidArgumentError` on anything malformed."""
        params = parse_params(raw, cls.NAMES)
        return cls(
            project=params.text("project", limit=_SHORT_TEXT),
            domain=params.text("domain", limit=_SHORT_TEXT),
            name=params.text("name"),
            version=params.text("version"),
            newer=params.duration("newer"),
            older=params.duration("older"),
            after=params.text("after", limit=60),
            limit=params.integer("limit", 50, 1, 200),
        )

    def filter(self) -> EntryFilter:
        """The store's filter for these parameters."""
        return EntryFilter(
            project=self.project,
            domain=self.domain,
            name=self.name,
            version=self.version,
            newer_than=self.newer,
            older_than=self.older,
        )

    def url(self, **changes: str | None) -> str:
        """The query string of this page with ``changes`` (None drops a parameter)."""
        values = {
            "project": self.project,
            "domain": self.domain,
            "name": self.name,
            "version": self.version,
            "newer": _duration_text(self.newer),
            "older": _duration_text(self.older),
            "limit": None if self.limit == 50 else str(self.limit),
        }
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v})

    def form_value(self, name: str) -> str:
        """The value a filter field shows (as typed, for ages: ``90s``)."""
        if name in ("newer", "older"):
            return _duration_text(getattr(self, name)) or ""
        return cast(str | None, getattr(self, name)) or ""


@dataclass(frozen=True, slots=True)
class ReservationQuery:
    """The reservations page: a search text, a state, the page's cursor, auto-refresh."""

    NAMES = ("q", "state", "after", "refresh")

    q: str | None = None
    state: ReservationState = "all"
    after: str | None = None
    refresh: int = 0
    """Seconds between automatic reloads (0: none)."""

    @classmethod
    def parse(cls, raw: bytes) -> ReservationQuery:
        """From a query string; :class:`InvalidArgumentError` on anything malformed."""
        params = parse_params(raw, cls.NAMES)
        state = params.text("state", limit=10) or "all"
        if state not in STATES:
            raise InvalidArgumentError(
                f"state must be one of {', '.join(STATES)}, got {state!r}", field="state"
            )
        refresh = params.integer("refresh", 0, 0, 3600)
        if 0 < refresh < 2:
            raise InvalidArgumentError("refresh must be 0 (off) or at least 2 s", field="refresh")
        return cls(
            q=params.text("q"),
            state=cast(ReservationState, state),
            after=params.text("after"),
            refresh=refresh,
        )

    def url(self, **changes: str | None) -> str:
        """The query string of this page with ``changes`` (None drops a parameter)."""
        values: dict[str, str | None] = {
            "q": self.q,
            "state": None if self.state == "all" else self.state,
            "refresh": str(self.refresh) if self.refresh else None,
        }
        values.update(changes)
        return urlencode({k: v for k, v in values.items() if v})


def _duration_text(value: timedelta | None) -> str | None:
    if value is None:
        return None
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"
