"""How the listings (``entries ls``, ``reservations ls``) print their rows, streamed.

Five forms, all written row by row so memory stays flat however many rows there are (one rich
``Table`` of 100,000 entries took 3 minutes and 2 GB before it printed its first line, and then
wrapped each 135-character key over 17 lines at 80 columns):

* ``table`` (on a terminal): one line per row, fitted to the terminal's width. Long values are
  cut with "…"; keys in the middle, and never so far that two rows near each other read alike.
  Columns that cannot fit are left out, the least useful first.
* ``wide`` (``--wide``): the same table with every column in full; lines may run past the edge.
* ``plain`` (when stdout is not a terminal): tab-separated fields in full, no header, no padding,
  so ``grep``, ``cut -f1`` and ``wc -l`` work on it.
* ``keys`` (``--keys``): the keys alone, one per line, for ``xargs`` and ``while read``.
* ``json`` / ``jsonl``: a JSON array, or one JSON object per line.

In the line-based forms a value holding a control character (a tab or a newline would split
the line; an escape sequence would drive the terminal), or starting with a double quote, is
printed as a JSON string literal instead: ``"a\\tb"``. Every other value is printed as it is.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice, pairwise
from typing import Annotated, Any, Generic, Literal, TypeVar

import typer

from flytecache.cli._common import err, print_json_list, stdout_console, usage_error

__all__ = [
    "ELLIPSIS",
    "Column",
    "Format",
    "JsonlOption",
    "KeyShortener",
    "KeysOption",
    "Listing",
    "TableOption",
    "WideOption",
    "choose_format",
    "fit_widths",
    "print_rows",
    "printable",
    "shorten_keys",
]

Format = Literal["table", "wide", "plain", "keys", "json", "jsonl"]

KeysOption = Annotated[
    bool,
    typer.Option(
        "--keys",
        metavar="",
        help="Print only the keys, in full, one per line (for xargs, scripts).",
    ),
]
JsonlOption = Annotated[
    bool,
    typer.Option(
        "--jsonl", metavar="", help="Print JSON Lines: one JSON object per line (for scripts)."
    ),
]
WideOption = Annotated[
    bool,
    typer.Option(
        "--wide",
        "--full-keys",
        "-w",
        metavar="",
        help="A table of every column in full, keys included (lines may exceed the terminal).",
    ),
]
TableOption = Annotated[
    bool | None,
    typer.Option(
        "--table/--plain",
        metavar="",
        show_default=False,
        help="A table fitted to the terminal, or plain tab-separated lines "
        "(default: a table on a terminal, plain lines otherwise).",
    ),
]

T = TypeVar("T")

GAP = "  "
ELLIPSIS = "…"
CHUNK = 200
"""Rows laid out together. Shortened keys are distinct within a chunk and its predecessor, so
within any 200 consecutive rows (more than a screen)."""


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a listing's table (the first column of a listing is its key)."""

    header: str
    min_width: int = 0
    """The narrowest it is cut to before being left out; 0: never cut (ages, sizes)."""
    drop: int = 0
    """On a narrow terminal the column with the highest ``drop`` is left out first; 0: never."""
    cut: Literal["start", "middle", "end"] = "end"
    """Where a value too long for the column loses characters: a task name's end and a URI's
    two ends say the most."""
    right: bool = False
    """Right-aligned (numbers)."""
    reserve: int = 0
    """Width kept even when the first rows are narrower: ages and sizes grow down a listing."""


@dataclass(frozen=True)
class Listing(Generic[T]):
    """How one kind of row is printed in each form."""

    noun: str
    """Plural, for the "no entries" message."""
    columns: tuple[Column, ...]
    cells: Callable[[T], tuple[str, ...]]
    """The row's table cells, one per column, the key first."""
    key: Callable[[T], str]
    as_json: Callable[[T], dict[str, Any]]


def choose_format(*, table: bool | None, wide: bool, keys: bool, json: bool, jsonl: bool) -> Format:
    """The form the options ask for: a usage error (exit 2) if they ask for two; by default a
    table on a terminal (as rich sees it: ``TTY_COMPATIBLE=1`` forces one), else plain lines."""
    asked = [
        name
        for name, given in (
            ("--keys", keys),
            ("--json", json),
            ("--jsonl", jsonl),
            ("--plain", table is False),
            ("--table", table is True and not wide),
            ("--wide", wide),
        )
        if given
    ]
    if len(asked) > 1:
        raise usage_error(f"{asked[0]} and {asked[1]} cannot be used together")
    if keys:
        return "keys"
    if json:
        return "json"
    if jsonl:
        return "jsonl"
    if wide:
        return "wide"
    if table is None:
        table = stdout_console().is_terminal
    return "table" if table else "plain"


def print_rows(rows: Iterable[T], listing: Listing[T], form: Format) -> int:
    """Print ``rows`` to stdout in ``form`` as they come; return how many there were.

    For people (``table``, ``wide``, ``plain``) an empty listing says so on stderr.
    """
    if form == "json":
        return print_json_list(listing.as_json(row) for row in rows)
    if form == "jsonl":
        return _write_lines(json.dumps(listing.as_json(row)) for row in rows)
    if form == "keys":
        return _write_lines(printable(listing.key(row)) for row in rows)
    if form == "plain":
        count = _write_lines("\t".join(map(printable, listing.cells(row))) for row in rows)
    else:
        count = _print_table(rows, listing, wide=form == "wide")
    if not count:
        err(f"no {listing.noun}")
    return count


def _write_lines(lines: Iterable[str]) -> int:
    out = sys.stdout
    count = 0
    for line in lines:
        out.write(line + "\n")
        count += 1
    out.flush()
    return count


# -- values on one line ----------------------------------------------------------------------

# C0 and C1 controls and the Unicode line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_TO_ESCAPE = re.compile('[\\\\"\x00-\x1f\x7f-\x9f\u2028\u2029]')


def printable(text: str) -> str:
    """``text`` as it is if it is safe on one line, else quoted as a JSON string literal.

    Safe: no control character and no leading double quote, so a value that starts with ``"``
    is always a quoted one (``json.loads`` gives back the exact value).
    """
    if not text.startswith('"') and _UNSAFE.search(text) is None:
        return text
    return '"' + _TO_ESCAPE.sub(_escape, text) + '"'


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    return _ESCAPES.get(char) or f"\\u{ord(char):04x}"


# -- widths in terminal cells ----------------------------------------------------------------


def _width(text: str) -> int:
    # Most values are ASCII, or ASCII but for the ellipses this module puts in.
    if text.isascii() or text.replace(ELLIPSIS, "").isascii():
        return len(text)
    from rich.cells import cell_len

    return cell_len(text)


def _head(text: str, cells: int) -> str:
    """The longest start of ``text`` that fits in ``cells``."""
    if text.isascii():
        return text[:cells]
    from rich.cells import get_character_cell_size

    used = 0
    for index, char in enumerate(text):
        used += get_character_cell_size(char)
        if used > cells:
            return text[:index]
    return text


def _tail(text: str, cells: int) -> str:
    """The longest end of ``text`` that fits in ``cells``."""
    if text.isascii():
        return text[len(text) - cells :] if cells > 0 else ""
    return _head(text[::-1], cells)[::-1]


def _cut(text: str, width: int, where: Literal["start", "middle", "end"]) -> str:
    """``text`` cut to ``width`` cells, an ellipsis standing for what was cut out."""
    if _width(text) <= width:
        return text
    if width <= 1:
        return ELLIPSIS[:width]
    if where == "start":
        return ELLIPSIS + _tail(text, width - 1)
    if where == "end":
        return _head(text, width - 1) + ELLIPSIS
    head = _head(text, (width - 1) // 2)
    return head + ELLIPSIS + _tail(text, width - 1 - _width(head))


# -- keys shortened, yet distinct ------------------------------------------------------------


def _common_prefixes(texts: Sequence[str]) -> list[int]:
    """For each text, the longest prefix it shares with any other one of ``texts``."""
    order = sorted(range(len(texts)), key=texts.__getitem__)
    shared = [0] * len(texts)
    for left, right in pairwise(order):
        n = _shared_prefix(texts[left], texts[right])
        # Sorted neighbours share the longest prefixes: no other text shares more with either.
        shared[left] = max(shared[left], n)
        shared[right] = max(shared[right], n)
    return shared


def _shared_prefix(a: str, b: str) -> int:
    # A binary search on slices: the comparisons run in C, which matters at 1M rows.
    low, high = 0, min(len(a), len(b))
    while low < high:
        middle = (low + high + 1) // 2
        if a[:middle] == b[:middle]:
            low = middle
        else:
            high = middle - 1
    return low


@dataclass
class KeyShortener:
    """Shortens the keys of successive chunks of a listing to one width (see shorten_keys)."""

    width: int
    head: int | None = None
    """The split last used: the next chunk keeps it when it can, so the "…" lines up."""
    previous: list[str] = field(default_factory=list)
    shown: set[str] = field(default_factory=set)

    def __call__(self, keys: Sequence[str]) -> list[str]:
        long = [i for i, key in enumerate(keys) if _width(key) > self.width]
        if not long:  # all shown in full: nothing can read alike
            self.previous, self.shown = list(keys), set(keys)
            return list(keys)
        pool = [*self.previous, *keys]
        heads = _common_prefixes(pool)[len(self.previous) :]
        tails = _common_prefixes([key[::-1] for key in pool])[len(self.previous) :]
        budget = self.width - 1
        # Shown as key[:h] + "…" + key[-t:] (h + t = budget cells), a key reads like no other
        # one if its start shows the first character it shares with no other key at that
        # place (h >= need_head[i] cells), or its end does (t >= need_tail[i]). So it goes wrong
        # for budget - need_tail[i] < h < need_head[i]. Count, for each h, the keys that go
        # wrong, and take the best h nearest the one used last (so the "…" line up).
        need_head = {i: _width(keys[i][: heads[i] + 1]) for i in long}
        need_tail = {i: _width(keys[i][max(0, len(keys[i]) - tails[i] - 1) :]) for i in long}
        wrong = [0] * (budget + 2)
        for i in long:
            low, high = max(0, budget - need_tail[i] + 1), min(budget, need_head[i] - 1)
            if low <= high:
                wrong[low] += 1
                wrong[high + 1] -= 1
        for h in range(1, budget + 1):
            wrong[h] += wrong[h - 1]
        wanted = budget // 2 if self.head is None else self.head
        self.head = head = min(range(budget + 1), key=lambda h: (wrong[h], abs(h - wanted)))
        shortened = list(keys)
        for i in long:
            key, h = keys[i], head
            if budget - need_tail[i] < h < need_head[i]:
                # This key needs its own split: the nearest one that tells it apart.
                splits = [s for s in (need_head[i], budget - need_tail[i]) if 0 <= s <= budget]
                if not splits:  # it differs from another key only deep in its middle
                    shortened[i] = _around(key, self.width, heads[i])
                    continue
                h = min(splits, key=lambda s: abs(s - head))
            start = _head(key, h)
            shortened[i] = start + ELLIPSIS + _tail(key, budget - _width(start))
        # The argument above assumes that no key holds "…" itself, and _around() guesses: when
        # two still read alike, the later one is shown in full.
        seen = set(self.shown)
        for i, text in enumerate(shortened):
            if text in seen and text != keys[i]:
                shortened[i] = keys[i]
            seen.add(shortened[i])
        self.previous, self.shown = list(keys), set(shortened)
        return shortened


def _around(key: str, width: int, at: int) -> str:
    """``key`` cut to ``width`` cells as start…middle…end, the middle showing ``key[at]``."""
    room = width - 2
    start, end = _head(key, room // 4), _tail(key, room // 4)
    span = room - _width(start) - _width(end)
    # Begin a little before `at`: what follows the first difference tells more.
    first = max(len(start), min(at - span // 3, len(key) - len(end) - span))
    return start + ELLIPSIS + _head(key[first : len(key) - len(end)], span) + ELLIPSIS + end


def shorten_keys(keys: Sequence[str], width: int) -> list[str]:
    """``keys`` cut to ``width`` cells with "…" in the middle, no two of them alike.

    Every key keeps as much of its start and its end as fits, split at the same place for all
    keys where possible. A key that differs from another one only deeper in its middle than the
    width reaches shows that part of its middle too (``start…middle…end``); in the unlikely
    case that still reads like another, it is shown in full rather than ambiguously.
    """
    return KeyShortener(width)(keys)


# -- the table -------------------------------------------------------------------------------


def fit_widths(columns: Sequence[Column], natural: Sequence[int], width: int) -> list[int]:
    """The width of each column in a table ``width`` cells wide; 0 for a column left out.

    Columns get their natural width if all fit. Otherwise the least useful ones (highest
    ``drop``) are left out until the others fit at their ``min_width``, and the room left is
    shared out, the key (the first column) taking two cells for each one the others get.
    """
    floor = [
        min(natural[i], column.min_width) if column.min_width else natural[i]
        for i, column in enumerate(columns)
    ]
    shown = list(range(len(columns)))

    def room(indexes: list[int], sizes: Sequence[int]) -> int:
        return width - sum(sizes[i] for i in indexes) - len(GAP) * (len(indexes) - 1)

    if room(shown, natural) >= 0:
        return list(natural)
    while room(shown, floor) < 0:
        droppable = [i for i in shown if columns[i].drop]
        if not droppable:
            break
        shown.remove(max(droppable, key=lambda i: columns[i].drop))
    widths = [floor[i] if i in shown else 0 for i in range(len(columns))]
    spare = room(shown, widths)
    if spare < 0:  # a terminal too narrow even for the key and the columns never left out
        widths[0] = max(widths[0] + spare, min(natural[0], 8))
    while spare > 0:
        wanting = [i for i in shown if widths[i] < natural[i]]
        if not wanting:
            break
        for i in [0, *wanting] if 0 in wanting else wanting:
            if spare and widths[i] < natural[i]:
                widths[i] += 1
                spare -= 1
    return widths


def _print_table(rows: Iterable[T], listing: Listing[T], *, wide: bool) -> int:
    columns = listing.columns
    chunks = _chunks((tuple(map(printable, listing.cells(row))) for row in rows), CHUNK)
    first = next(chunks, None)
    if first is None:
        return 0
    console = stdout_console()
    natural = [
        max(_width(column.header), column.reserve, *(_width(cells[i]) for cells in first))
        for i, column in enumerate(columns)
    ]
    widths = natural if wide else fit_widths(columns, natural, console.width)
    shorten = KeyShortener(widths[0])
    line = _layout(columns, widths, wide)
    from rich.text import Text

    # Rendered, not printed, by rich: rich exits 1 on a closed pipe, the rows' writes exit 0.
    with console.capture() as header:
        console.print(
            Text(line([column.header for column in columns]), style="bold"), soft_wrap=True
        )
    out = sys.stdout
    out.write(header.get())
    count = 0
    for chunk in _chunks_after(first, chunks):
        if not wide:
            keys = shorten([cells[0] for cells in chunk])
            chunk = [(key, *cells[1:]) for key, cells in zip(keys, chunk, strict=True)]
        # One write per chunk: a terminal's line buffering would make a system call per row.
        out.write("".join(line(cells) + "\n" for cells in chunk))
        out.flush()
        count += len(chunk)
    return count


def _layout(
    columns: Sequence[Column], widths: Sequence[int], wide: bool
) -> Callable[[Sequence[str]], str]:
    """A function laying out one row's cells in ``widths`` (cut to fit, unless ``wide``)."""
    shown = [(i, width, columns[i]) for i, width in enumerate(widths) if width]
    last = shown[-1][0]

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, width, column in shown:
            text = cells[i]
            if not wide and i:  # the keys are shortened chunk by chunk, by KeyShortener
                text = _cut(text, width, column.cut)
            pad = width - _width(text)
            if pad > 0 and column.right:
                text = " " * pad + text
            elif pad > 0 and i != last:
                text += " " * pad
            parts.append(text)
        return GAP.join(parts)

    return line


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _chunks_after(first: list[T], rest: Iterator[list[T]]) -> Iterator[list[T]]:
    yield first
    yield from rest
