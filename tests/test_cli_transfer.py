"""``flytecache export`` / ``import``: lossless, idempotent, atomic, streamed."""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import math
import shutil
import sqlite3
import tempfile
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from _cli import (
    BACKENDS,
    ENTRIES,
    PAYLOAD,
    WITH_PAYLOAD,
    as_json,
    bulk_insert,
    connect,
    fails,
    int_literal,
    is_postgres,
    new_db,
    new_db_on,
    ok,
    open_store,
    put_inline,
    put_uri,
    run,
)
from _store import query
from flyteidl2.cacheservice import cacheservice_pb2 as cs
from flyteidl2.core import identifier_pb2, literals_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flytecache.store import admin, codec

# -- helpers -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated empty database to copy (migrating per hypothesis example would be slow)."""
    return new_db(tmp_path_factory.mktemp("template"))


def fresh(template: str, directory: str | Path, name: str) -> str:
    path = str(Path(directory) / name)
    shutil.copy(template, path)
    return path


def dump(db: str) -> list[tuple[Any, ...]]:
    """Every entry (its data columns) with its key map and outputs, by key (either backend).

    The payload is shown decoded: inline literals as stored (bytes) and the key map; the
    surrogate id is left out. Sorted in Python: PostgreSQL may collate keys differently from
    SQLite's byte order.
    """
    with connect(db) as conn:
        rows = conn.execute(
            sa.select(
                *(c for c in ENTRIES.c if c.name not in ("id", "payload")), PAYLOAD
            ).select_from(WITH_PAYLOAD)
        ).all()
    out = []
    for row in rows:
        payload = bytes(row[-1])
        key_map = tuple(codec.key_map(payload).items())
        out.append((*row[:-1], key_map, tuple(sorted(codec.literal_map_entries(payload)))))
    return sorted(out)


def staging_leftovers(db: str) -> list[str]:
    """Import staging tables still in the database (on PostgreSQL: in any session)."""
    with connect(db) as conn:
        if is_postgres(db):
            query = sa.text("select relname from pg_class where relname like :name")
        else:
            query = sa.text("select name from sqlite_master where name like :name")
        return [r[0] for r in conn.execute(query, {"name": "%import%"})]


class SetClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


# -- hypothesis: lossless round trip ---------------------------------------------------------------

# Stored text (metadata, URIs, names) cannot hold NUL on any backend; literal values can.
_text = st.text(st.characters(codec="utf-8", blacklist_characters="\x00"), max_size=12)


def _scalar() -> st.SearchStrategy[literals_pb2.Literal]:
    def make(kind: str, value: Any) -> literals_pb2.Literal:
        literal = literals_pb2.Literal()
        scalar = literal.scalar
        if kind == "integer":
            scalar.primitive.integer = value
        elif kind == "float":
            scalar.primitive.float_value = value
        elif kind == "string":
            scalar.primitive.string_value = value
        elif kind == "boolean":
            scalar.primitive.boolean = value
        elif kind == "binary":
            scalar.binary.value = value
        elif kind == "blob":
            scalar.blob.uri = value
        else:
            scalar.none_type.SetInParent()
        return literal

    return st.one_of(
        st.integers(-(2**63), 2**63 - 1).map(lambda v: make("integer", v)),
        st.floats().map(lambda v: make("float", v)),
        st.text(max_size=40).map(lambda v: make("string", v)),
        st.booleans().map(lambda v: make("boolean", v)),
        st.binary(max_size=40).map(lambda v: make("binary", v)),
        _text.map(lambda v: make("blob", v)),
        st.just(make("none", None)),
    )


def _nested(children: st.SearchStrategy[literals_pb2.Literal]) -> st.SearchStrategy[Any]:
    def collection(items: list[literals_pb2.Literal]) -> literals_pb2.Literal:
        literal = literals_pb2.Literal()
        literal.collection.SetInParent()
        literal.collection.literals.extend(items)
        return literal

    def mapping(items: dict[str, literals_pb2.Literal]) -> literals_pb2.Literal:
        literal = literals_pb2.Literal()
        literal.map.SetInParent()
        for name, item in items.items():
            literal.map.literals[name].CopyFrom(item)
        return literal

    return st.one_of(
        st.lists(children, max_size=3).map(collection),
        st.dictionaries(_text, children, max_size=3).map(mapping),
    )


def _hashed(pair: tuple[literals_pb2.Literal, str]) -> literals_pb2.Literal:
    literal, digest = pair
    literal.hash = digest
    return literal


literal_strategy = st.tuples(st.recursive(_scalar(), _nested, max_leaves=5), _text).map(_hashed)


@st.composite
def cached_outputs(draw: st.DrawFn) -> cs.CachedOutput:
    output = cs.CachedOutput()
    if draw(st.booleans()):
        output.output_uri = draw(
            st.text(
                st.characters(codec="utf-8", blacklist_characters="\x00"), min_size=1, max_size=30
            )
        )
    else:
        output.output_literals.SetInParent()
        for name, literal in draw(st.dictionaries(_text, literal_strategy, max_size=3)).items():
            output.output_literals.literals[name].CopyFrom(literal)
    if draw(st.booleans()):
        output.metadata.source_identifier.CopyFrom(
            identifier_pb2.Identifier(
                resource_type=draw(st.integers(0, 4)),
                project=draw(_text),
                domain=draw(_text),
                name=draw(_text),
                version=draw(_text),
                org=draw(_text),
            )
        )
    output.metadata.key_map.values.update(draw(st.dictionaries(_text, _text, max_size=3)))
    if draw(st.booleans()):
        output.metadata.created_at.FromDatetime(
            draw(st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
        )
    return output


entries_strategy = st.dictionaries(
    st.text(min_size=1, max_size=30).filter(lambda k: "\x00" not in k),
    st.tuples(cached_outputs(), st.integers(0, 10**9)),
    max_size=6,
)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(entries=entries_strategy)
def test_export_import_round_trip_is_lossless_and_idempotent(
    template: str, entries: dict[str, tuple[cs.CachedOutput, int]]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        source, target = fresh(template, tmp, "source.db"), fresh(template, tmp, "target.db")
        clock = SetClock()
        with open_store(source, clock) as store:
            for key, (output, seconds) in entries.items():
                clock.now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
                store.put(key, output, overwrite=True)
        export = f"{tmp}/dump.jsonl"
        ok(run(source, "export", export))
        first = as_json(run(target, "import", export, "--json"))
        assert first == {
            "entries": len(entries),
            "inserted": len(entries),
            "replaced": 0,
            "skipped": 0,
            "dry_run": False,
        }
        assert dump(target) == dump(source)
        with open_store(source) as a, open_store(target) as b:
            for key in entries:
                assert a.get(key).SerializeToString(deterministic=True) == b.get(
                    key
                ).SerializeToString(deterministic=True)
        again = as_json(run(target, "import", export, "--json"))
        assert again["inserted"] == 0 and again["skipped"] == len(entries)
        assert dump(target) == dump(source)
        replaced = as_json(run(target, "import", export, "--overwrite", "--json"))
        assert replaced["replaced"] == len(entries) and replaced["inserted"] == 0
        assert dump(target) == dump(source)
        assert staging_leftovers(target) == []


# -- across dialects: a sandbox SQLite cache moved to a shared PostgreSQL (and back) --------------

MOVES = [("sqlite", "postgresql"), ("postgresql", "sqlite")]


def _outputs(**literals: literals_pb2.Literal) -> cs.CachedOutput:
    output = cs.CachedOutput()
    output.output_literals.SetInParent()
    for name, literal in literals.items():
        output.output_literals.literals[name].CopyFrom(literal)
    return output


def _awkward_entries() -> dict[str, cs.CachedOutput]:
    """Entries that stress what differs between the dialects: text, bytes, numbers, times."""
    float_nan, float_neg_zero = literals_pb2.Literal(), literals_pb2.Literal()
    float_nan.scalar.primitive.float_value = math.nan
    float_neg_zero.scalar.primitive.float_value = -0.0
    binary = literals_pb2.Literal()
    binary.scalar.binary.value = bytes(range(256))  # NUL and every other byte
    binary.scalar.binary.tag = "msgpack"
    text = literals_pb2.Literal()
    text.scalar.primitive.string_value = "naïve ☃ \x00 ' \" \\ %_"
    nested = literals_pb2.Literal()
    nested.map.literals["k"].collection.literals.add().scalar.primitive.integer = -(2**63)
    nested.hash = "sha256:abc"
    entries = {
        "uri": cs.CachedOutput(output_uri="s3://bucket/uri"),
        "inline": _outputs(
            big=int_literal(2**63 - 1),
            nan=float_nan,
            neg_zero=float_neg_zero,
            binary=binary,
            text=text,
            nested=nested,
            **{"": int_literal(0), "ünï ☃": int_literal(1)},
        ),
        "no-outputs": _outputs(),
        "ключ/キー/🔑": cs.CachedOutput(output_uri="gs://bücket/🔑"),
        "quotes ' \" \\ %_ \t\n": cs.CachedOutput(output_uri="file:///tmp/a b"),
        "k" * 2048: cs.CachedOutput(output_uri="s3://bucket/" + "u" * 5000),
    }
    identified = cs.CachedOutput(output_uri="s3://bucket/identified")
    identified.metadata.source_identifier.CopyFrom(
        identifier_pb2.Identifier(
            resource_type=identifier_pb2.WORKFLOW,
            project="p" * 255,  # VARCHAR(255) on PostgreSQL
            domain="dömain",
            name="n" * 3000,
            version="v☃",
            org="org",
        )
    )
    identified.metadata.key_map.values.update({"a": "1", "naïve": "\t☃", "": ""})
    identified.metadata.created_at.FromDatetime(datetime(1, 1, 1, 0, 0, 0, 1))
    entries["identified"] = identified
    late = cs.CachedOutput(output_uri="s3://bucket/late")
    late.metadata.created_at.FromDatetime(datetime(9999, 12, 31, 23, 59, 59, 999999))
    entries["late"] = late
    return entries


def _same_entries(a: str, b: str, keys: list[str]) -> None:
    """Every entry reads back identically through CacheStore.get on both databases."""
    with open_store(a) as left, open_store(b) as right:
        for key in keys:
            assert left.get(key).SerializeToString(deterministic=True) == right.get(
                key
            ).SerializeToString(deterministic=True), key


def _export(db: str) -> bytes:
    return ok(run(db, "export", "-")).stdout_bytes


def _entry_lines(export: bytes) -> list[bytes]:
    """The entry lines of an export, in key order (row ids, and so line order, may differ)."""
    return sorted(export.splitlines()[1:])


@pytest.mark.parametrize(("source_backend", "target_backend"), MOVES, ids=["to-pg", "from-pg"])
def test_export_pipe_import_across_dialects_is_lossless(
    request: pytest.FixtureRequest, tmp_path: Path, source_backend: str, target_backend: str
) -> None:
    (tmp_path / "source").mkdir()
    (tmp_path / "target").mkdir()
    source = new_db_on(source_backend, request, tmp_path / "source")
    target = new_db_on(target_backend, request, tmp_path / "target")
    entries = _awkward_entries()
    clock = SetClock()
    with open_store(source, clock) as store:
        for index, (key, output) in enumerate(entries.items()):
            clock.now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(microseconds=7 * index + 1)
            store.put(key, output)
        store.put("uri", cs.CachedOutput(output_uri="s3://bucket/uri-2"), overwrite=True)
        for index in range(1200):  # more than one export page and one staging batch
            clock.now = datetime(2025, 6, 1, 12, tzinfo=UTC) + timedelta(microseconds=index)
            put_inline(store, f"bulk-{index:04d}", {"o": int_literal(index)})
    exported = _export(source)
    report = as_json(run(target, "import", "-", "--json", input=exported))
    total = len(entries) + 1200
    assert report == {
        "entries": total,
        "inserted": total,
        "replaced": 0,
        "skipped": 0,
        "dry_run": False,
    }
    keys = [*entries, *(f"bulk-{i:04d}" for i in range(0, 1200, 97))]
    _same_entries(source, target, keys)
    assert dump(target) == dump(source)
    # Exporting the copy gives the same entry lines, byte for byte.
    assert _entry_lines(_export(target)) == _entry_lines(exported)
    again = as_json(run(target, "import", "-", "--json", input=exported))
    assert again["inserted"] == 0 and again["skipped"] == total
    assert staging_leftovers(target) == []


def _without_nul(entries: dict[str, tuple[cs.CachedOutput, int]]) -> dict[str, Any]:
    """PostgreSQL text cannot hold NUL: drop it from the text columns (literals are bytes)."""
    for output, _seconds in entries.values():
        if output.WhichOneof("output") == "output_uri":
            output.output_uri = output.output_uri.replace("\x00", "") or "s3://x"
        else:
            literals = dict(output.output_literals.literals)
            output.output_literals.Clear()
            output.output_literals.SetInParent()
            for name, literal in literals.items():
                output.output_literals.literals[name.replace("\x00", "")].CopyFrom(literal)
        if output.metadata.HasField("source_identifier"):
            ident = output.metadata.source_identifier
            for field in ("project", "domain", "name", "version", "org"):
                setattr(ident, field, getattr(ident, field).replace("\x00", ""))
    return entries


@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)
@given(entries=entries_strategy.map(_without_nul))
def test_round_trip_through_postgresql_is_lossless(
    template: str, migrated_pg_url: str, entries: dict[str, tuple[cs.CachedOutput, int]]
) -> None:
    """SQLite → PostgreSQL → SQLite gives back the very same rows."""
    with connect(migrated_pg_url) as conn:  # the fixture empties it once, not per example
        conn.execute(sa.delete(ENTRIES))
    with tempfile.TemporaryDirectory() as tmp:
        source, back = fresh(template, tmp, "source.db"), fresh(template, tmp, "back.db")
        clock = SetClock()
        with open_store(source, clock) as store:
            for key, (output, seconds) in entries.items():
                clock.now = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=seconds)
                store.put(key, output, overwrite=True)
        ok(run(migrated_pg_url, "import", "-", input=_export(source)))
        ok(run(back, "import", "-", input=_export(migrated_pg_url)))
        assert dump(back) == dump(migrated_pg_url) == dump(source)
        _same_entries(source, migrated_pg_url, list(entries))


def test_nul_text_from_sqlite_is_refused_by_postgresql_with_its_line(
    tmp_path: Path, migrated_pg_url: str
) -> None:
    source = new_db(tmp_path)
    with open_store(source) as store:
        put_uri(store, "fine")
        put_uri(store, "nul", project="ab")
    # The store refuses NUL now; an older SQLite file may still hold one.
    with contextlib.closing(sqlite3.connect(source)) as conn, conn:
        conn.execute("UPDATE entries SET project = 'a' || char(0) || 'b' WHERE key = 'nul'")
    exported = _export(source)
    line = fails(run(migrated_pg_url, "import", "-", input=exported))
    assert line == "error: line 3: project contains a NUL character, which PostgreSQL cannot store"
    assert dump(migrated_pg_url) == []
    assert staging_leftovers(migrated_pg_url) == []
    (tmp_path / "copy").mkdir()
    copy = new_db(tmp_path / "copy")
    ok(run(copy, "import", "-", input=exported))  # SQLite itself keeps it
    assert dump(copy) == dump(source)


# -- format and streams --------------------------------------------------------------------------


@pytest.fixture(params=BACKENDS)
def db(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    path = new_db_on(request.param, request, tmp_path)
    with open_store(path) as store:
        put_uri(store, "uri-key", project="alpha")
        put_inline(store, "inline-key", {"a": int_literal(1), "b": int_literal(2)})
    return path


def _lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_export_format(db: str, tmp_path: Path) -> None:
    target = tmp_path / "dump.jsonl"
    result = ok(run(db, "export", str(target)))
    assert result.stdout == "" and "exported 2 entries to" in result.stderr
    header, *entries = _lines(target)
    assert header["format"] == "flytecache-export" and header["version"] == 1
    assert header["entries"] == 2 and header["schema"] == "0004_key_hash"
    assert header["exported_at"].endswith("Z")
    by_key = {e["key"]: e for e in entries}
    uri = by_key["uri-key"]
    assert set(uri) == {
        "key",
        "resource_type",
        "project",
        "domain",
        "name",
        "version",
        "org",
        "key_map",
        "created_at",
        "last_updated_at",
        "output_uri",
        "size",
        "outputs",
    }
    assert uri["output_uri"] == "s3://bucket/uri-key" and uri["outputs"] is None
    assert uri["project"] == "alpha" and uri["resource_type"] == 1
    assert uri["key_map"] == {"exec-attempt": "0", "execution-name": "run-1"}
    assert isinstance(uri["created_at"], int) and isinstance(uri["last_updated_at"], int)
    inline = by_key["inline-key"]
    assert inline["output_uri"] is None
    decoded = {
        name: literals_pb2.Literal.FromString(base64.b64decode(value))
        for name, value in inline["outputs"].items()
    }
    assert decoded == {"a": int_literal(1), "b": int_literal(2)}
    assert not list(tmp_path.glob(".dump*"))  # no partial file left behind


def test_export_to_stdout_and_import_from_stdin(db: str, tmp_path: Path) -> None:
    result = ok(run(db, "export", "-"))
    assert "exported 2 entries to stdout" in result.stderr
    assert json.loads(result.stdout.splitlines()[0])["format"] == "flytecache-export"
    (tmp_path / "t").mkdir()
    target = new_db(tmp_path / "t")
    imported = ok(run(target, "import", "-", input=result.stdout_bytes))
    assert "imported 2 entries: 2 new, 0 skipped (present)" in imported.stderr
    assert dump(target) == dump(db)


def test_gzip_round_trip(db: str, tmp_path: Path) -> None:
    target = tmp_path / "dump.jsonl.gz"
    ok(run(db, "export", str(target)))
    assert json.loads(gzip.decompress(target.read_bytes()).splitlines()[0])["version"] == 1
    (tmp_path / "t").mkdir()
    other = new_db(tmp_path / "t")
    ok(run(other, "import", str(target)))
    assert dump(other) == dump(db)


def test_import_skips_existing_keys_unless_overwrite(db: str, tmp_path: Path) -> None:
    export = tmp_path / "dump.jsonl"
    ok(run(db, "export", str(export)))
    (tmp_path / "t").mkdir()
    target = new_db(tmp_path / "t")
    with open_store(target) as store:
        put_uri(store, "uri-key", uri="s3://elsewhere/mine")
        put_uri(store, "unrelated")
    result = ok(run(target, "import", str(export)))
    assert "imported 2 entries: 1 new, 1 skipped (present)" in result.stderr
    with open_store(target) as store:
        assert store.get("uri-key").output_uri == "s3://elsewhere/mine"
        assert store.get("inline-key").output_literals.literals["b"] == int_literal(2)
    report = as_json(run(target, "import", str(export), "--overwrite", "--json"))
    assert report == {"entries": 2, "inserted": 0, "replaced": 2, "skipped": 0, "dry_run": False}
    with open_store(target) as store:
        assert store.get("uri-key").output_uri == "s3://bucket/uri-key"
        assert store.get("unrelated")  # keys not in the file are left alone


def test_import_dry_run_writes_nothing(db: str, tmp_path: Path) -> None:
    export = tmp_path / "dump.jsonl"
    ok(run(db, "export", str(export)))
    (tmp_path / "t").mkdir()
    target = new_db(tmp_path / "t")
    with open_store(target) as store:
        put_uri(store, "uri-key", uri="s3://elsewhere/mine")
    before = dump(target)
    result = ok(run(target, "import", str(export), "--dry-run", "--json"))
    assert as_json(result) == {
        "entries": 2,
        "inserted": 1,
        "replaced": 0,
        "skipped": 1,
        "dry_run": True,
    }
    assert "would import 2 entries" in result.stderr
    overwrite = as_json(run(target, "import", str(export), "--dry-run", "--overwrite", "--json"))
    assert overwrite["replaced"] == 1 and overwrite["inserted"] == 1
    assert dump(target) == before
    assert staging_leftovers(target) == []


# -- atomicity: a bad line imports nothing ------------------------------------------------------

HEADER = json.dumps({"format": "flytecache-export", "version": 1})
GOOD = {
    "key": "good",
    "created_at": 1,
    "last_updated_at": 2,
    "output_uri": "s3://b/good",
}


def _entry(**changes: Any) -> str:
    record = {**GOOD, **changes}
    return json.dumps({k: v for k, v in record.items() if v is not ...})


BAD_FILES = {
    "not json": ([HEADER, _entry(key="a"), "{nope"], 3, "not valid JSON"),
    "missing key": ([HEADER, _entry(key=...)], 2, "missing key"),
    "empty key": ([HEADER, _entry(key="")], 2, "key must not be empty"),
    "key type": ([HEADER, _entry(key=5)], 2, "key must be a string"),
    "missing timestamp": ([HEADER, _entry(created_at=...)], 2, "missing created_at"),
    "timestamp type": ([HEADER, _entry(last_updated_at="now")], 2, "must be an integer"),
    "timestamp range": ([HEADER, _entry(created_at=10**20)], 2, "out of range"),
    "no output": ([HEADER, _entry(output_uri=...)], 2, "needs output_uri or an outputs"),
    "both outputs": ([HEADER, _entry(outputs={})], 2, "not both"),
    "bad base64": ([HEADER, _entry(output_uri=None, outputs={"o": "!!"})], 2, "base64"),
    "not a literal": (
        [HEADER, _entry(output_uri=None, outputs={"o": base64.b64encode(b"\xff\xff").decode()})],
        2,
        "not a serialized Literal",
    ),
    "unknown field": ([HEADER, _entry(colour="red")], 2, "unknown field 'colour'"),
    "key_map": ([HEADER, _entry(key_map={"a": 1})], 2, "key_map"),
    "long project": ([HEADER, _entry(project="p" * 256)], 2, "longer than 255"),
    "resource type": ([HEADER, _entry(resource_type=-1)], 2, "resource_type"),
    "not an object": ([HEADER, "[1, 2]"], 2, "expected a JSON object"),
    "duplicate": ([HEADER, _entry(key="a"), _entry(key="b"), _entry(key="a")], 4, "duplicate"),
    "empty line": ([HEADER, _entry(key="a"), "", _entry(key="b")], 3, "empty line"),
    "no header": ([_entry(key="a")], 1, "not a flytecache export"),
    "version": ([json.dumps({"format": "flytecache-export", "version": 2})], 1, "version 2"),
    "truncated": (
        [json.dumps({"format": "flytecache-export", "version": 1, "entries": 3}), _entry()],
        2,
        "announces 3 entries but the file has 1",
    ),
}


@pytest.mark.parametrize("case", BAD_FILES, ids=list(BAD_FILES))
def test_a_bad_line_imports_nothing(db: str, tmp_path: Path, case: str) -> None:
    lines, line_no, message = BAD_FILES[case]
    # Many good entries first, so that a partial import would be visible.
    good = [_entry(key=f"ok-{i}") for i in range(1200)]
    body = [lines[0], *good, *lines[1:]] if lines[0] == HEADER else lines
    if lines[0] == HEADER:
        line_no += len(good)
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(body) + "\n", encoding="utf-8")
    before = dump(db)
    line = fails(run(db, "import", str(path)))
    assert f"line {line_no}:" in line and message in line, line
    assert dump(db) == before
    assert staging_leftovers(db) == []
    fails(run(db, "import", str(path), "--dry-run"))


def test_non_utf8_and_empty_input(db: str, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(HEADER.encode() + b"\n\xff\xfe\n")
    assert "line 2: not UTF-8" in fails(run(db, "import", str(path)))
    path.write_bytes(b"")
    assert "the input is empty" in fails(run(db, "import", str(path)))


# -- a failed import creates nothing ------------------------------------------------------------

_VALID = [HEADER, _entry(key="a")]
FAILING_INPUTS: dict[str, tuple[str, bytes | None, str]] = {
    # name: (file name, contents (None: no such file), what the one line says)
    "missing file": ("gone.jsonl", None, "No such file or directory"),
    "not gzip": ("dump.jsonl.gz", "\n".join(_VALID).encode(), "not gzip data, although"),
    "random bytes as gz": ("dump.gz", bytes(range(256)), "not gzip data, although"),
    "empty gz": ("empty.jsonl.gz", b"", "not gzip data, although"),
    "truncated gzip": (
        "cut.jsonl.gz",
        gzip.compress(b"\n".join([HEADER.encode()] * 99))[:40],
        "ends early",
    ),
    "bad json": ("bad.jsonl", f"{HEADER}\n{{nope\n".encode(), "line 2: not valid JSON"),
    "wrong version": (
        "v2.jsonl",
        json.dumps({**json.loads(HEADER), "version": 2}).encode(),
        "version 2",
    ),
    "duplicate key": ("dup.jsonl", "\n".join([*_VALID, _entry(key="a")]).encode(), "duplicate"),
    "empty file": ("empty.jsonl", b"", "the input is empty"),
}


def _failing_input(tmp_path: Path, case: str) -> tuple[Path, str]:
    name, contents, message = FAILING_INPUTS[case]
    path = tmp_path / "input" / name
    path.parent.mkdir(exist_ok=True)
    if contents is not None:
        path.write_bytes(contents)
    return path, message


@pytest.mark.parametrize("case", FAILING_INPUTS, ids=list(FAILING_INPUTS))
def test_a_failed_import_creates_no_database(tmp_path: Path, case: str) -> None:
    """Exit 1 with one line naming the file, and no database (nor its directories) left
    where there was none."""
    path, message = _failing_input(tmp_path, case)
    target = tmp_path / "new" / "place" / "cache.db"
    line = fails(run(str(target), "import", str(path)))
    assert str(path) in line and message in line, line
    assert not (tmp_path / "new").exists()
    # Next to an existing file: only the database's own files would have been created.
    (tmp_path / "there").mkdir()
    (tmp_path / "there" / "keep.txt").write_text("mine")
    target = tmp_path / "there" / "cache.db"
    fails(run(str(target), "import", str(path)))
    assert sorted(p.name for p in (tmp_path / "there").iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("case", FAILING_INPUTS, ids=list(FAILING_INPUTS))
def test_a_failed_import_leaves_an_existing_database_alone(
    tmp_path: Path, template: str, case: str
) -> None:
    path, message = _failing_input(tmp_path, case)
    target = fresh(template, tmp_path, "cache.db")
    with open_store(target) as store:
        put_uri(store, "mine")
    before = dump(target)
    line = fails(run(target, "import", str(path)))
    assert str(path) in line and message in line, line
    assert dump(target) == before
    empty = fresh(template, tmp_path, "empty.db")  # existing and empty: kept all the same
    fails(run(empty, "import", str(path)))
    assert dump(empty) == []


def test_a_gz_that_is_not_gzip_says_so_in_one_line(db: str, tmp_path: Path) -> None:
    plain = tmp_path / "dump.jsonl"
    ok(run(db, "export", str(plain)))
    renamed = tmp_path / "dump.jsonl.gz"
    plain.rename(renamed)
    line = fails(run(db, "import", str(renamed)))
    assert line == (
        f"error: {renamed}: not gzip data, although the name ends in .gz (an uncompressed "
        "export? rename it); nothing was imported"
    )
    renamed.rename(plain)
    ok(run(db, "import", str(plain)))  # the same bytes under their right name


def test_staging_does_not_block_writers(db: str) -> None:
    """While the file is read and validated, other processes can still write."""
    with open_store(db) as importer, open_store(db, busy_timeout=timedelta(milliseconds=100)) as o:

        def lines() -> Iterator[str]:
            yield HEADER
            for i in range(1500):
                if i == 1000:  # mid-way: staging has run executemany into temp tables
                    put_uri(o, "written-during-import")
                yield _entry(key=f"k{i}")

        result = admin.import_entries(importer, lines())
    assert result.inserted == 1500
    with open_store(db) as store:
        assert store.get("written-during-import")


@pytest.mark.parametrize("backend", BACKENDS)
def test_export_is_one_consistent_snapshot(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    # On PostgreSQL this needs REPEATABLE READ: READ COMMITTED sees each page as of its own
    # statement, so the deleted keys would go missing (and the header's count would be wrong).
    path = new_db_on(backend, request, tmp_path)
    with open_store(path) as store:
        for i in range(50):
            put_uri(store, f"k{i:03d}")
    with (
        open_store(path) as reader,
        open_store(path) as writer,
        admin.export_entries(reader, page_size=7) as stream,
    ):
        lines = [next(stream.lines), next(stream.lines)]
        for i in range(50):  # the writer is not blocked by the exporting reader
            writer.delete(f"k{i:03d}")
        put_uri(writer, "new")
        lines.extend(stream.lines)
    keys = [json.loads(line)["key"] for line in lines[1:]]
    assert keys == [f"k{i:03d}" for i in range(50)]


# -- constant memory -----------------------------------------------------------------------------


def _peak(function: Any) -> int:
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_export_and_import_memory_does_not_grow_with_the_cache(tmp_path: Path) -> None:
    peaks = {}
    for count in (1_000, 10_000):
        directory = tmp_path / str(count)
        directory.mkdir()
        source = new_db(directory)
        bulk_insert(source, count, updated_us=1_700_000_000_000_000)
        (directory / "target").mkdir()
        target = new_db(directory / "target")
        export = directory / "dump.jsonl"

        def do_export(source: str = source, export: Path = export) -> None:
            with (
                open_store(source) as store,
                admin.export_entries(store) as stream,
                open(export, "w", encoding="utf-8") as out,
            ):
                for line in stream.lines:
                    out.write(line + "\n")

        def do_import(target: str = target, export: Path = export, count: int = count) -> None:
            with open_store(target) as store, open(export, "rb") as source_file:
                assert admin.import_entries(store, source_file).inserted == count

        peaks[count] = (_peak(do_export), _peak(do_import))
    small, large = peaks[1_000], peaks[10_000]
    # Ten times the entries must not mean (anywhere near) ten times the memory.
    assert large[0] < 1.5 * small[0], peaks
    assert large[1] < 1.5 * small[1], peaks


def test_export_keeps_an_existing_file_unless_overwrite(db: str, tmp_path: Path) -> None:
    target = tmp_path / "dump.jsonl"
    target.write_text("precious")
    assert "pass --overwrite" in fails(run(db, "export", str(target)))
    assert target.read_text() == "precious"
    ok(run(db, "export", str(target), "--overwrite"))
    assert _lines(target)[0]["format"] == "flytecache-export"
    missing = tmp_path / "nodir" / "x.jsonl.gz"
    line = fails(run(db, "export", str(missing)))
    assert str(missing) in line and "does not exist" in line and ".partial" not in line


def test_the_readme_move_sequence_creates_what_it_needs(db: str, tmp_path: Path) -> None:
    """export, `db upgrade` into a directory that does not exist yet, import; and import alone
    into a database that does not exist yet (it is created and migrated)."""
    dump_file = tmp_path / "cache.jsonl.gz"
    ok(run(db, "export", str(dump_file)))
    other = tmp_path / "other" / "flytecache.db"
    ok(run(str(other), "db", "upgrade"))
    imported = ok(run(str(other), "import", str(dump_file)))
    assert "imported 2 entries: 2 new" in imported.stderr
    fresh = tmp_path / "new" / "place" / "new.db"
    assert "does not exist" in fails(run(str(fresh), "import", str(dump_file), "--dry-run"))
    assert not fresh.exists()
    ok(run(str(fresh), "import", str(dump_file)))
    assert dump(str(fresh)) == dump(db)


def test_import_refuses_keys_whose_hash_another_key_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No two real keys share a 64-bit hash, so the import's hash is weakened for two keys
    (fault injection); the stored entries keep their real hashes."""
    from flytecache import CacheStore
    from flytecache.store.admin import transfer
    from flytecache.store.keyhash import key_hash

    source = tmp_path / "source"
    source.mkdir()
    src = new_db(source)
    with CacheStore.open(src) as store:
        put_uri(store, "new-a", project="p")
        put_uri(store, "new-b", project="p")
    dump = tmp_path / "dump.jsonl"
    ok(run(src, "export", str(dump)))
    target = tmp_path / "target"
    target.mkdir()
    db = new_db(target)
    with CacheStore.open(db) as store:
        put_uri(store, "stored", project="p")

    def weak(key: str) -> int:
        return key_hash("stored") if key in ("new-a", "new-b") else key_hash(key)

    monkeypatch.setattr(transfer, "key_hash", weak)
    message = fails(run(db, "import", str(dump)))
    assert 'key "new-b" has the same 64-bit hash as "new-a"' in message
    assert "line 3" in message and "line 2" in message

    def weak_one(key: str) -> int:
        return key_hash("stored") if key == "new-b" else key_hash(key)

    monkeypatch.setattr(transfer, "key_hash", weak_one)
    for overwrite in ((), ("--overwrite",)):
        message = fails(run(db, "import", str(dump), *overwrite))
        assert 'key "new-b" has the same 64-bit hash as the stored key "stored"' in message
    with CacheStore.open(db) as store:  # nothing was imported
        assert [row[0] for row in query(store, "SELECT key FROM entries")] == ["stored"]
