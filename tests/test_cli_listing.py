"""``flytecache.cli._listing``: values on one line, keys shortened yet distinct, columns fitted
to a terminal, and the listings on a real terminal (a pty) at 80 columns."""

from __future__ import annotations

import hashlib
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
from base64 import b64encode, urlsafe_b64encode
from pathlib import Path

import pytest
from _cli import as_json, new_db, open_store, put_uri, run
from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len

from flytecache.cli._listing import (
    ELLIPSIS,
    Column,
    KeyShortener,
    fit_widths,
    printable,
    shorten_keys,
)

TASK = b64encode(hashlib.sha256(b"task").digest()).decode()


def flyte_key(i: int, project: str = "flytesnacks", version: str = "1.0") -> str:
    """A stored key shaped like the server's (~135 characters, hashes at both ends)."""
    inputs = urlsafe_b64encode(hashlib.sha256(b"%d" % i).digest()).rstrip(b"=").decode()
    return f"{project}-development-{TASK}-GKw-c0Pw-Rl4dUo2X-{inputs}-{version}"


def reads_as(short: str, key: str) -> bool:
    """Whether ``short`` is ``key`` with parts cut out, each cut shown as one "…"."""
    parts = short.split(ELLIPSIS)
    if len(parts) == 1:
        return short == key
    if not (key.startswith(parts[0]) and key.endswith(parts[-1])):
        return False
    at = len(parts[0])
    for middle in parts[1:-1]:
        found = key.find(middle, at)
        if found < 0:
            return False
        at = found + len(middle)
    return at <= len(key) - len(parts[-1])


# -- printable -----------------------------------------------------------------------------------


def test_printable_leaves_ordinary_values_alone() -> None:
    for text in ("k", flyte_key(1), "a b", "日本語", 'with "quotes" inside', "back\\slash"):
        assert printable(text) == text


@pytest.mark.parametrize(
    "text", ["a\tb", "line\nbreak", "\x1b[31mred", '"quoted"', "\x9b", "a\u2028b", "\r"]
)
def test_printable_quotes_values_that_would_break_a_line(text: str) -> None:
    shown = printable(text)
    assert shown.startswith('"') and json.loads(shown) == text
    assert not any(c in shown for c in "\t\n\r\x1b\x9b\u2028")


@given(st.text())
def test_printable_is_one_line_and_reversible(text: str) -> None:
    shown = printable(text)
    assert len(shown.splitlines()) <= 1 and "\t" not in shown
    assert (json.loads(shown) if shown.startswith('"') else shown) == text


# -- shortened keys ------------------------------------------------------------------------------


def test_flyte_keys_at_80_columns_keep_both_ends() -> None:
    keys = [flyte_key(i) for i in range(200)]
    short = shorten_keys(keys, 30)
    assert len(set(short)) == 200
    for key, text in zip(keys, short, strict=True):
        assert len(text) == 30 and reads_as(text, key)
        assert text.startswith("flytesnacks-") and text.endswith("-1.0")
    # One split for the whole chunk, so the ellipses line up.
    assert len({text.index(ELLIPSIS) for text in short}) == 1


def test_short_keys_are_left_alone() -> None:
    assert shorten_keys(["a", "bb", "k" * 30], 30) == ["a", "bb", "k" * 30]


def test_keys_alike_at_both_ends_show_where_they_differ() -> None:
    start, end = "s" * 60, "e" * 60
    keys = [f"{start}-{i:04d}-{end}" for i in range(50)]
    short = shorten_keys(keys, 30)
    assert len(set(short)) == 50
    for i, (key, text) in enumerate(zip(keys, short, strict=True)):
        assert len(text) == 30 and reads_as(text, key) and f"{i:04d}" in text


def test_a_split_for_the_odd_key_out() -> None:
    # Most keys differ early (a balanced split tells them apart); one pair only at the very end.
    keys = [f"{i:03d}" + "x" * 80 for i in range(20)]
    keys += ["y" * 70 + "-pair-a", "y" * 70 + "-pair-b"]
    short = shorten_keys(keys, 24)
    assert len(set(short)) == len(keys)
    assert all(len(t) == 24 and reads_as(t, k) for k, t in zip(keys, short, strict=True))


def test_neighbouring_chunks_do_not_read_alike() -> None:
    """Chunks are shortened one after another; a key never reads like one of the chunk before."""
    shorten = KeyShortener(20)
    # The second chunk's keys share their first 40 and last 40 characters with the first's.
    first = [f"{'p' * 40}{i:03d}{'q' * 40}" for i in range(10)]
    second = [f"{'p' * 40}{i:03d}{'q' * 40}" for i in range(10, 20)]
    shown = shorten(first) + shorten(second)
    assert len(set(shown)) == 20


def test_a_key_holding_an_ellipsis_cannot_fool_it() -> None:
    keys = ["abcdefgh…stuvwxyz", "abcdefghijklmnopqrstuvwxyz"]
    short = shorten_keys(keys, 17)
    assert len(set(short)) == 2 and short[0] == keys[0]


def test_wide_characters_are_measured_in_cells() -> None:
    keys = [f"日本語のキー-{i:03d}-" + "終" * 20 for i in range(5)]
    short = shorten_keys(keys, 24)
    assert len(set(short)) == 5
    assert all(cell_len(t) <= 24 and reads_as(t, k) for k, t in zip(keys, short, strict=True))


# Keys built from a few shared pieces, so that many share long starts and ends.
_pieces = st.sampled_from(["flytesnacks-development-", TASK, "-GKw-", "x", "y", "-1.0", "é", "日"])
_keys = st.lists(st.lists(_pieces, min_size=1, max_size=12).map("".join), unique=True, max_size=40)


@given(st.lists(_keys, min_size=1, max_size=3), st.integers(min_value=12, max_value=60))
def test_shortened_keys_are_faithful_and_distinct(chunks: list[list[str]], width: int) -> None:
    shorten = KeyShortener(width)
    before: list[str] = []
    for keys in chunks:
        keys = [k for k in keys if k not in before]  # a listing's keys are unique
        short = shorten(keys)
        for key, text in zip(keys, short, strict=True):
            assert reads_as(text, key)
            assert text == key or cell_len(text) <= width
        # Distinct within the chunk and from the chunk before it.
        assert len(set(short) | set(before)) == len(short) + len(before)
        before = short


# -- fitting the columns -------------------------------------------------------------------------

COLUMNS = (
    Column("key", min_width=24),
    Column("project", min_width=7, drop=2),
    Column("name", min_width=12, drop=1, cut="start"),
    Column("size", reserve=9, right=True),
)


def test_columns_that_fit_get_their_natural_width() -> None:
    assert fit_widths(COLUMNS, [10, 7, 12, 9], 80) == [10, 7, 12, 9]


def test_a_narrow_terminal_cuts_then_leaves_columns_out() -> None:
    # Everything at its minimum fits in 58: the key takes two cells of the room for each other.
    widths = fit_widths(COLUMNS, [134, 11, 27, 9], 80)
    assert sum(widths) + 2 * 3 == 80 and widths[3] == 9
    assert widths[0] > widths[2] >= 12 and widths[1] == 11
    # At 50 the project goes first (the highest drop), then the name.
    assert fit_widths(COLUMNS, [134, 11, 27, 9], 52) == [26, 0, 13, 9]
    assert fit_widths(COLUMNS, [134, 11, 27, 9], 40) == [29, 0, 0, 9]
    # Never narrower than the terminal allows, never less than a few cells of key.
    assert fit_widths(COLUMNS, [134, 11, 27, 9], 20) == [9, 0, 0, 9]


# -- on a real terminal --------------------------------------------------------------------------


def _on_a_terminal(args: list[str], columns: int) -> str:
    """Run the CLI in a subprocess whose stdout is a pty ``columns`` wide; its output."""
    import fcntl
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "TTY_COMPATIBLE")}
    process = subprocess.Popen(
        [sys.executable, "-c", "from flytecache.cli import main; main()", *args],
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(follower)
    output = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        assert ready, "no output from the CLI within a minute"
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        output += data
    os.close(leader)
    assert process.wait(60) == 0, process.stderr.read() if process.stderr else ""
    if process.stderr:
        process.stderr.close()
    # The header is bold: leave the styles out.
    return re.sub(r"\x1b\[[0-9;]*m", "", output.decode().replace("\r\n", "\n"))


def test_entries_ls_on_an_80_column_terminal(tmp_path: Path) -> None:
    db = new_db(tmp_path)
    keys = [flyte_key(i) for i in range(30)]
    with open_store(db) as store:
        for key in keys:
            put_uri(store, key, name="workflows.pipeline.train_model", version="v" + "1" * 40)
    screen = _on_a_terminal(["entries", "ls", "--db", db], 80)
    header, *lines = screen.splitlines()
    # Fitted to 80 columns, the key keeps the most room; the output URIs are left out first.
    assert header.split()[0] == "key" and header.split()[-2:] == ["updated", "size"]
    assert "output" not in header and len(lines) == 30
    assert all(cell_len(line) <= 80 for line in screen.splitlines())
    shown = [line.split()[0] for line in lines]
    assert len(set(shown)) == 30
    listed = as_json(run(db, "entries", "ls", "--json"))
    assert all(reads_as(s, e["key"]) for s, e in zip(shown, listed, strict=True))
    # Asked for, the full keys come out one per line, as they are stored.
    assert _on_a_terminal(["entries", "ls", "--keys", "--db", db], 80).split() == [
        e["key"] for e in listed
    ]
