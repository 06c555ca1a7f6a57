"""The fenced Python examples of a Markdown page, as a reader sees them.

A block opens with a line starting `` ```python `` and closes at the next line of three
backticks. A block that is not meant to run (a fragment, code that needs something the tests
cannot provide) is marked by an HTML comment on the line just before its fence, which renders as
nothing::

    <!-- not run: needs a Flyte cluster -->
    ```python
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

_OPENING = re.compile(r"^```python\b")
_CLOSING = "```"
_NOT_RUN = re.compile(r"^<!--\s*not run:\s*(?P<reason>.+?)\s*-->\s*$")


@dataclass(frozen=True, slots=True)
class Block:
    """One fenced Python block: where it is, what it says, and why it is not run (if so)."""

    page: str
    """The page's path relative to the repository root, e.g. ``docs/python-api.md``."""
    number: int
    """1-based, counting every Python block on the page, run or not."""
    line: int
    """1-based line of the opening fence."""
    source: str
    not_run: str | None = None
    """The reason given in a ``<!-- not run: ... -->`` marker, or None: the block runs."""

    @property
    def name(self) -> str:
        return f"{self.page}, python block {self.number} (line {self.line})"


def python_blocks(page: str) -> list[Block]:
    """The Python blocks of ``page`` (a path relative to the repository root), in order."""
    lines = (ROOT / page).read_text().splitlines()
    blocks: list[Block] = []
    index = 0
    while index < len(lines):
        if not _OPENING.match(lines[index]):
            index += 1
            continue
        opening = index
        try:
            closing = lines.index(_CLOSING, opening + 1)
        except ValueError:
            raise AssertionError(f"{page}:{opening + 1}: python block never closed") from None
        marker = _NOT_RUN.match(lines[opening - 1]) if opening else None
        blocks.append(
            Block(
                page=page,
                number=len(blocks) + 1,
                line=opening + 1,
                source="\n".join(lines[opening + 1 : closing]) + "\n",
                not_run=marker.group("reason") if marker else None,
            )
        )
        index = closing + 1
    return blocks
