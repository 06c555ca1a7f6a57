"""``flytecache entries``: ls, show, rm and prune."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from _cli import (
    BACKENDS,
    ENTRIES,
    OUTPUTS_TABLE,
    Clock,
    as_json,
    bulk_insert,
    connect,
    fails,
    inline_size,
    int_literal,
    new_db_on,
    ok,
    open_store,
    put_inline,
    put_uri,
    run,
)
from flyteidl2.core import literals_pb2
from test_cli_listing import flyte_key, reads_as

from flytecache.cli._listing import ELLIPSIS
from flytecache.store import codec

DAY = timedelta(days=1)


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return new_db_on(request.param, request, tmp_path)


@pytest.fixture
def populated(db: str) -> str:
    """Entries of two projects and several ages (relative to the real clock)."""
    clock = Clock()
    with open_store(db, clock) as store:
        clock.at(100 * DAY)
        put_uri(store, "old-a", project="alpha", name="train", version="v1")
        clock.at(40 * DAY)
        put_uri(store, "old-b", project="beta", domain="production", name="train", version="v2")
        clock.at(2 * DAY)
        put_uri(store, "mid-a", project="alpha", name="eval", version="v1")
        clock.at(timedelta(minutes=10))
        put_inline(store, "new-inline", {"x": int_literal(5)})
        clock.at(timedelta(seconds=30))
        put_uri(store, "new-a", project="alpha", name="train", version="v2")
    return db


def keys(result) -> list[str]:
    return [entry["key"] for entry in as_json(result)]


def test_ls_json_shape_and_order(populated: str) -> None:
    entries = as_json(run(populated, "entries", "ls", "--json"))
    assert [e["key"] for e in entries] == ["new-a", "new-inline", "mid-a", "old-b", "old-a"]
    first = entries[0]
    assert {
        "key",
        "project",
        "domain",
        "name",
        "version",
        "created_at",
        "last_updated_at",
        "output_uri",
        "size",
    } <= set(first)
    assert first["project"] == "alpha" and first["name"] == "train" and first["version"] == "v2"
    assert first["output_uri"] == "s3://bucket/new-a" and first["size"] == len("s3://bucket/new-a")
    assert first["resource_type"] == "TASK" and first["inline"] is False
    updated = datetime.fromisoformat(first["last_updated_at"])
    assert first["last_updated_at"].endswith("Z") and updated.tzinfo is not None
    assert abs(datetime.now(UTC) - updated - timedelta(seconds=30)) < timedelta(seconds=10)
    inline = entries[1]
    assert inline["output_uri"] is None and inline["inline"] is True and inline["size"] > 0
    assert inline["project"] == "" and inline["resource_type"] is None


def test_ls_filters(populated: str) -> None:
    def ls(*args: str) -> list[str]:
        return keys(run(populated, "entries", "ls", "--json", *args))

    assert ls("--project", "alpha") == ["new-a", "mid-a", "old-a"]
    assert ls("--domain", "production") == ["old-b"]
    assert ls("--name", "train") == ["new-a", "old-b", "old-a"]
    assert ls("--name", "train", "--version", "v2") == ["new-a", "old-b"]
    assert ls("--older-than", "30d") == ["old-b", "old-a"]
    assert ls("--older-than", "6w") == ["old-a"]
    assert ls("--older-than", "90s") == ["new-inline", "mid-a", "old-b", "old-a"]
    assert ls("--newer-than", "15m") == ["new-a", "new-inline"]
    assert ls("--newer-than", "12h") == ["new-a", "new-inline"]
    assert ls("--newer-than", "3d", "--older-than", "1h") == ["mid-a"]
    assert ls("--project", "nope") == []


def test_ls_limit(populated: str) -> None:
    result = run(populated, "entries", "ls", "--json", "--limit", "2")
    assert keys(result) == ["new-a", "new-inline"]
    assert "showing the newest 2 of 5 entries" in result.stderr
    result = run(populated, "entries", "ls", "--json", "--limit", "0")
    assert len(keys(result)) == 5 and result.stderr == ""
    assert run(populated, "entries", "ls", "--json", "--limit", "5").stderr == ""


def test_ls_pages_through_many_entries(db: str) -> None:
    with open_store(db) as store:
        for i in range(1203):
            put_uri(store, f"k{i:05d}")
    listed = keys(run(db, "entries", "ls", "--json", "--limit", "0"))
    assert len(listed) == len(set(listed)) == 1203
    assert listed[0] == "k01202" and listed[-1] == "k00000"
    assert len(keys(run(db, "entries", "ls", "--json", "--limit", "1001"))) == 1001


def test_ls_table_for_people(populated: str) -> None:
    # The table is what a terminal gets; --table asks for it here, where stdout is a pipe.
    out = ok(run(populated, "entries", "ls", "--table", COLUMNS="200")).stdout
    for text in ("new-a", "alpha", "s3://bucket/new-a", "inline", "ago", "key", "size"):
        assert text in out
    empty = ok(run(populated, "entries", "ls", "--project", "none"))
    assert empty.stdout == "" and "no entries" in empty.stderr
    assert as_json(run(populated, "entries", "ls", "--json", "--project", "none")) == []


def test_ls_piped_prints_one_plain_line_per_entry(populated: str) -> None:
    result = ok(run(populated, "entries", "ls"))
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == [
        "new-a",
        "new-inline",
        "mid-a",
        "old-b",
        "old-a",
    ]  # no header
    new_a, inline = lines[0].split("\t"), lines[1].split("\t")
    assert new_a[:5] == ["new-a", "alpha", "development", "train", "v2"]
    assert new_a[5].endswith(" ago") and new_a[6:] == ["s3://bucket/new-a", "17 B"]
    assert inline[1:5] == ["", "", "", ""] and inline[6] == "inline"
    assert result.stderr == ""


def _long_keys(db: str, count: int) -> list[str]:
    """``count`` entries with keys shaped like Flyte's, newest first (as ls lists them)."""
    with open_store(db) as store:
        for i in range(count):
            put_uri(store, flyte_key(i), project="flytesnacks", name="workflows.pipeline.train")
    return [flyte_key(i) for i in reversed(range(count))]


def test_ls_fits_an_80_column_terminal(db: str) -> None:
    # More entries than a chunk (200), so the layout outlives its first rows.
    expected = _long_keys(db, 230)
    result = ok(run(db, "entries", "ls", "--limit", "0", "--table", COLUMNS="80"))
    header, *lines = result.stdout.splitlines()
    assert header.startswith("key ") and len(lines) == 230
    assert all(len(line) <= 80 for line in [header, *lines])
    shown = [line.split()[0] for line in lines]
    assert len(set(shown)) == 230
    assert all(
        ELLIPSIS in short and reads_as(short, key)
        for short, key in zip(shown, expected, strict=True)
    )


def test_ls_wide_and_keys_give_the_full_keys(db: str) -> None:
    expected = _long_keys(db, 12)
    wide = ok(run(db, "entries", "ls", "--wide", COLUMNS="80")).stdout.splitlines()
    assert len(wide) == 13 and ELLIPSIS not in "".join(wide)
    assert [line.split()[0] for line in wide[1:]] == expected
    full = ok(run(db, "entries", "ls", "--full-keys", "--table")).stdout.splitlines()
    assert [line.split()[0] for line in full[1:]] == expected
    keys = ok(run(db, "entries", "ls", "--keys")).stdout
    assert keys == "".join(f"{key}\n" for key in expected)
    # Each line is a key `entries show` takes as it is, and shows in full on one line.
    for key in keys.splitlines()[:3]:
        assert as_json(run(db, "entries", "show", key, "--json"))["key"] == key
        shown = ok(run(db, "entries", "show", key, COLUMNS="80")).stdout.splitlines()
        assert shown[0].split() == ["key", key]
        assert f"output URI     s3://bucket/{key}" in shown
    plain = ok(run(db, "entries", "ls", "--plain")).stdout.splitlines()
    assert [line.split("\t")[0] for line in plain] == expected


def test_ls_jsonl_is_the_json_listing_one_per_line(populated: str) -> None:
    listed = as_json(run(populated, "entries", "ls", "--json"))
    lines = ok(run(populated, "entries", "ls", "--jsonl")).stdout.splitlines()
    assert [json.loads(line) for line in lines] == listed
    assert ok(run(populated, "entries", "ls", "--jsonl", "--project", "none")).stdout == ""
    limited = run(populated, "entries", "ls", "--jsonl", "--limit", "2")
    assert len(ok(limited).stdout.splitlines()) == 2
    assert "showing the newest 2 of 5 entries" in limited.stderr


def test_ls_keys_with_control_characters_stay_on_one_line(db: str) -> None:
    odd = ["tab\there", "two\nlines", '"quoted"', "\x1b[2Jclear"]
    with open_store(db) as store:
        for key in odd:
            put_uri(store, key)
    for form in ("--keys", "--plain", "--table"):
        lines = ok(run(db, "entries", "ls", form)).stdout.splitlines()
        keys = [line.split("\t")[0] for line in lines]
        if form == "--table":
            keys = [line.split("  ")[0].rstrip() for line in lines[1:]]
        assert len(keys) == 4 and "\x1b" not in "".join(lines), form
        assert sorted(json.loads(key) for key in keys) == sorted(odd), form


def test_ls_output_forms_are_exclusive(populated: str) -> None:
    for pair in (
        ("--keys", "--json"),
        ("--json", "--jsonl"),
        ("--plain", "--wide"),
        ("--keys", "--table"),
    ):
        line = fails(run(populated, "entries", "ls", *pair), code=2)
        assert line == f"error: {pair[0]} and {pair[1]} cannot be used together"
    assert "new-a" in ok(run(populated, "entries", "ls", "--table", "--wide")).stdout


def test_ls_rejects_bad_durations(populated: str) -> None:
    for bad in ("soon", "-1d", "3 weeks", "1y"):
        result = run(populated, "entries", "ls", "--older-than", bad)
        assert result.exit_code == 2, bad
        assert "not a duration" in result.stderr


def test_show_uri_entry(populated: str) -> None:
    detail = as_json(run(populated, "entries", "show", "old-b", "--json"))
    assert detail["key"] == "old-b"
    assert detail["project"] == "beta" and detail["domain"] == "production"
    assert detail["output_uri"] == "s3://bucket/old-b" and detail["outputs"] is None
    assert detail["key_map"] == {"exec-attempt": "0", "execution-name": "run-1"}
    created = datetime.fromisoformat(detail["created_at"])
    assert abs(datetime.now(UTC) - created - 40 * DAY) < timedelta(minutes=1)
    text = ok(run(populated, "entries", "show", "old-b")).stdout
    for fragment in ("old-b", "beta", "production", "s3://bucket/old-b", "execution-name", "run-1"):
        assert fragment in text


def _literal(**scalar: object) -> literals_pb2.Literal:
    literal = literals_pb2.Literal()
    for path, value in scalar.items():
        target = literal
        *parents, leaf = path.split("__")
        for part in parents:
            target = getattr(target, part)
        setattr(target, leaf, value)
    return literal


def test_show_inline_outputs_with_types_and_small_values(db: str) -> None:
    union = literals_pb2.Literal()
    union.scalar.union.value.scalar.primitive.string_value = "inside"
    collection = literals_pb2.Literal()
    for i in range(3):
        collection.collection.literals.add().scalar.primitive.integer = i
    mapping = literals_pb2.Literal()
    mapping.map.literals["a"].scalar.primitive.boolean = True
    when = literals_pb2.Literal()
    when.scalar.primitive.datetime.FromDatetime(datetime(2026, 1, 2, 3, 4, 5))
    took = literals_pb2.Literal()
    took.scalar.primitive.duration.FromTimedelta(timedelta(seconds=90))
    struct = literals_pb2.Literal()
    struct.scalar.generic.update({"lr": 0.1})
    none = literals_pb2.Literal()
    none.scalar.none_type.SetInParent()
    hashed = int_literal(3)
    hashed.hash = "abc123"
    outputs = {
        "i": int_literal(-42),
        "f": _literal(scalar__primitive__float_value=2.5),
        "nan": _literal(scalar__primitive__float_value=math.nan),
        "s": _literal(scalar__primitive__string_value="hello"),
        "long": _literal(scalar__primitive__string_value="x" * 1000),
        "b": _literal(scalar__primitive__boolean=False),
        "when": when,
        "took": took,
        "blob": _literal(scalar__blob__uri="s3://bucket/file.csv"),
        "bin": _literal(scalar__binary__value=b"\x00\x01", scalar__binary__tag="msgpack"),
        "err": _literal(scalar__error__message="boom"),
        "struct": struct,
        "none": none,
        "union": union,
        "list": collection,
        "map": mapping,
        "off": _literal(offloaded_metadata__uri="s3://bucket/big"),
        "hashed": hashed,
        "empty": literals_pb2.Literal(),
    }
    with open_store(db) as store:
        put_inline(store, "k", outputs)
    detail = as_json(run(db, "entries", "show", "k", "--json"))
    assert detail["output_uri"] is None and detail["key_map"] == {}
    described = {o["name"]: (o["type"], o["value"]) for o in detail["outputs"]}
    assert described == {
        "i": ("integer", -42),
        "f": ("float", 2.5),
        "nan": ("float", "nan"),
        "s": ("string", "hello"),
        "long": ("string", None),
        "b": ("boolean", False),
        "when": ("datetime", "2026-01-02T03:04:05Z"),
        "took": ("duration", "90s"),
        "blob": ("blob", "s3://bucket/file.csv"),
        "bin": ("binary(msgpack)", None),
        "err": ("error", "boom"),
        "struct": ("struct", {"lr": 0.1}),
        "none": ("none", None),
        "union": ("union[string]", "inside"),
        "list": ("collection[3]", None),
        "map": ("map[1]", None),
        "off": ("offloaded", "s3://bucket/big"),
        "hashed": ("integer", 3),
        "empty": ("empty", None),
    }
    sizes = {o["name"]: o["size"] for o in detail["outputs"]}
    assert sizes == {name: len(lit.SerializeToString()) for name, lit in outputs.items()}
    # An entry's size is its serialized literal map: the literals with their names and framing.
    stored = literals_pb2.LiteralMap(literals=outputs).ByteSize()
    assert detail["size"] == stored > sum(sizes.values())
    assert [o.get("hash") for o in detail["outputs"] if o["name"] == "hashed"] == ["abc123"]
    text = ok(run(db, "entries", "show", "k")).stdout
    for fragment in ("integer", "-42", "hello", "collection[3]", "union[string]", "inline"):
        assert fragment in text


def test_show_entry_with_no_outputs_and_undecodable_literal(db: str) -> None:
    with open_store(db) as store:
        put_inline(store, "none", {})
        put_inline(store, "bad", {"o": int_literal(1)})
    with connect(db) as conn:
        conn.execute(
            sa.update(ENTRIES)
            .where(ENTRIES.c.key == "bad")
            .values(
                payload=codec.payload_from_parts(
                    output_uri=None,
                    literals=[("o", b"\xff\xff\xff\xff")],
                    metadata=codec.metadata_from_columns(None, "", "", "", "", "", None),
                    created_at=0,
                    last_updated_at=0,
                )
            )
        )
    assert as_json(run(db, "entries", "show", "none", "--json"))["outputs"] == []
    assert "no outputs" in ok(run(db, "entries", "show", "none")).stdout
    bad = as_json(run(db, "entries", "show", "bad", "--json"))["outputs"]
    assert bad == [{"name": "o", "type": "(undecodable)", "size": 4, "value": None}]


def test_show_missing(populated: str) -> None:
    line = fails(run(populated, "entries", "show", "nope"))
    assert line.startswith('error: cache entry "nope" not found (')
    assert '"<project>-<domain>-<key>"' in line and "--project and --domain" in line


def test_show_and_rm_take_an_unscoped_key_with_its_scope(populated: str) -> None:
    with open_store(populated) as store:
        put_uri(store, "flytesnacks-development-abc")
    scope = ["--project", "flytesnacks", "--domain", "development"]
    shown = as_json(ok(run(populated, "entries", "show", "abc", *scope, "--json")))
    assert shown["key"] == "flytesnacks-development-abc"
    line = fails(run(populated, "entries", "show", "abd", *scope))
    assert 'cache entry "flytesnacks-development-abd" not found' in line
    assert 'project "flytesnacks", domain "development"' in line
    ok(run(populated, "entries", "rm", "abc", *scope, "-y"))
    assert "flytesnacks-development-abc" not in keys(run(populated, "entries", "ls", "--json"))


def test_rm(populated: str) -> None:
    result = ok(run(populated, "entries", "rm", "old-a", "new-inline", "--yes", "--json"))
    removed = as_json(result)
    assert removed["removed"] == ["old-a", "new-inline"] and removed["missing"] == []
    assert removed["bytes"] == len("s3://bucket/old-a") + inline_size({"x": int_literal(5)})
    assert f"removed 2 entries ({removed['bytes']} B)" in result.stderr
    assert keys(run(populated, "entries", "ls", "--json")) == ["new-a", "mid-a", "old-b"]
    with connect(populated) as conn:
        orphans = conn.execute(sa.select(sa.func.count()).select_from(OUTPUTS_TABLE)).scalar_one()
    assert orphans == 0  # the inline outputs went with their entry


def test_rm_reports_missing_keys_and_removes_the_rest(populated: str) -> None:
    result = run(populated, "entries", "rm", "old-a", "ghost", "old-a", "-y")
    assert result.exit_code == 1
    first, second = result.stderr.splitlines()
    assert first == "removed 1 entry (17 B)"
    assert second.startswith('error: no entry for "ghost" (')
    assert "old-a" not in keys(run(populated, "entries", "ls", "--json"))


def test_prune_dry_run_then_for_real(populated: str) -> None:
    dry = as_json(run(populated, "entries", "prune", "--older-than", "30d", "--dry-run", "--json"))
    size = len("s3://bucket/old-a") + len("s3://bucket/old-b")
    assert dry == {
        "entries": 2,
        "bytes": size,
        "batches": 0,
        "dry_run": True,
        "longest_batch_seconds": 0.0,
        "blobs": {"deleted": 0, "bytes": 0, "failed": [], "outside_prefixes": 0},
    }
    assert len(keys(run(populated, "entries", "ls", "--json"))) == 5
    result = ok(run(populated, "entries", "prune", "--older-than", "30d", "--yes", "--json"))
    report = as_json(result)
    assert report["entries"] == 2 and report["bytes"] == size and report["batches"] == 1
    assert result.stderr.strip().endswith(f"removed 2 entries ({size} B)")
    assert keys(run(populated, "entries", "ls", "--json")) == ["new-a", "new-inline", "mid-a"]


def test_prune_with_filters_and_small_batches(populated: str) -> None:
    result = run(
        populated,
        "entries",
        "prune",
        "--older-than",
        "1h",
        "--project",
        "alpha",
        "--batch-size",
        "1",
        "--yes",
        "--json",
    )
    assert as_json(result)["entries"] == 2 and as_json(result)["batches"] == 2
    assert keys(run(populated, "entries", "ls", "--json")) == ["new-a", "new-inline", "old-b"]
    for option, value in (("--domain", "production"), ("--name", "train"), ("--version", "v2")):
        report = as_json(
            run(populated, "entries", "prune", "--older-than", "1d", option, value, "-y", "--json")
        )
        assert report["entries"] == (1 if option == "--domain" else 0)


def test_prune_nothing_needs_no_confirmation(populated: str) -> None:
    result = ok(run(populated, "entries", "prune", "--older-than", "2w", "--project", "gamma"))
    assert "removed 0 entries (0 B)" in result.stderr


def test_prune_requires_an_age(populated: str) -> None:
    assert run(populated, "entries", "prune", "--project", "alpha", "--yes").exit_code == 2


def test_prune_draws_a_progress_bar_on_a_terminal(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from rich.console import Console

    bulk_insert(db, 3000, updated_us=1_000_000_000_000_000)
    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=100)
    monkeypatch.setattr("flytecache.cli._common.stderr_console", lambda: terminal)
    result = ok(run(db, "entries", "prune", "--older-than", "1d", "--yes"))
    assert "removed 3000 entries" in result.stderr
    assert "pruning" in screen.getvalue()
