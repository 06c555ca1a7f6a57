"""Export to and import from JSON Lines, streamed, validated before anything is written."""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import sqlalchemy as sa

from flytecache.errors import (
    InvalidArgumentError,
    KeyHashCollisionError,
)
from flytecache.store import codec, migrate
from flytecache.store.admin._base import (
    BATCH,
    ENTRIES,
    ENTRY_COLUMNS,
    MAX_US,
    MIN_US,
    OUTPUTS,
    SHORT_TEXT,
    snapshot,
)
from flytecache.store.cache import CacheStore
from flytecache.store.driver_errors import translate_errors
from flytecache.store.keyhash import key_hash
from flytecache.store.urls import is_sqlite
from flytecache.timeutil import (
    iso_utc,
    system_now_us,
)
from flytecache.validation import check_storable, check_text

EXPORT_FORMAT = "flytecache-export"
EXPORT_VERSION = 1
"""Version of the JSON Lines export format this code writes (and the only one it reads)."""


@dataclass(frozen=True, slots=True)
class ExportStream:
    """An export in progress: the header, the entry count and the lines (without newlines).

    Iterate :attr:`lines` once; the first line is the header.
    """

    header: dict[str, Any]
    total: int
    lines: Iterator[str]


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


@contextlib.contextmanager
def export_entries(store: CacheStore, *, page_size: int = BATCH) -> Iterator[ExportStream]:
    """Export every entry as JSON Lines (inline outputs base64-encoded), streamed.

    A context manager: everything is read in one read transaction (a consistent snapshot that
    does not block writers) with keyset pagination on ``id``, so memory stays constant.

    One transaction on purpose, also on SQLite where listings page with short ones: the
    header's entry count must match the lines (an import checks it to detect a truncated
    file) and an export is a copy of one moment. The cost is that no checkpoint passes it
    while it runs, so the WAL grows by whatever is written meanwhile and is cut back after;
    write to a file rather than to a slow pipe.
    """
    with snapshot(store.engine) as conn:
        total = int(conn.execute(sa.select(sa.func.count()).select_from(ENTRIES)).scalar_one())
        header = {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "flytecache": metadata.version("flytecache"),
            "schema": migrate.current_revision(conn),
            "exported_at": iso_utc(system_now_us()),
            "entries": total,
            "timestamps": "microseconds since the Unix epoch, UTC",
            "outputs": "base64 of each serialized flyteidl2.core.Literal",
        }
        yield ExportStream(header=header, total=total, lines=_export_lines(conn, header, page_size))


def _export_lines(conn: sa.Connection, header: dict[str, Any], page_size: int) -> Iterator[str]:
    yield _dumps(header)
    after = 0
    while True:
        rows = conn.execute(
            sa.select(ENTRIES).where(ENTRIES.c.id > after).order_by(ENTRIES.c.id).limit(page_size)
        ).all()
        if not rows:
            return
        first, after = rows[0].id, rows[-1].id
        spilled = dict(
            conn.execute(
                sa.select(OUTPUTS.c.entry_id, OUTPUTS.c.payload).where(
                    OUTPUTS.c.entry_id.between(first, after)
                )
            ).all()
        )
        for row in rows:
            payload = bytes(row.payload if row.payload is not None else spilled[row.id])
            record = {column: row._mapping[column] for column in _ROW_FIELDS}
            record["key_map"] = codec.key_map(payload)  # sorted, as exports always were
            record["outputs"] = (
                {
                    name: base64.b64encode(literal).decode()
                    for name, literal in sorted(codec.literal_map_entries(payload))
                }
                if row.output_uri is None
                else None
            )
            yield _dumps(record)


@dataclass(frozen=True, slots=True)
class ImportResult:
    """What an import did (or, with ``dry_run``, would do)."""

    entries: int
    """Entries in the file."""
    inserted: int
    """New keys."""
    replaced: int
    """Existing keys overwritten (``overwrite=True``)."""
    skipped: int
    """Existing keys left alone (``overwrite=False``)."""
    dry_run: bool


_ROW_FIELDS = tuple(c for c in ENTRY_COLUMNS if c not in ("payload", "key_hash"))
"""An export line's fields taken from the row as they are; ``key_map`` and ``outputs`` come
from the payload (the format predates schema 0002 and is unchanged; the key's hash is derived
again on import)."""

_STAGE_META = sa.MetaData()
_STAGE = sa.Table(
    "flytecache_import_entries",
    _STAGE_META,
    sa.Column("line", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("key", sa.Text, nullable=False),
    sa.Column("key_hash", sa.BigInteger, nullable=False),
    sa.Column("resource_type", sa.Integer),
    sa.Column("project", sa.Text, nullable=False),
    sa.Column("domain", sa.Text, nullable=False),
    sa.Column("name", sa.Text, nullable=False),
    sa.Column("version", sa.Text, nullable=False),
    sa.Column("org", sa.Text, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("last_updated_at", sa.BigInteger, nullable=False),
    sa.Column("output_uri", sa.Text),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("payload", sa.LargeBinary),
    # The payload when over SPILL_BYTES (``payload`` is then NULL): it goes to outputs.
    sa.Column("large_payload", sa.LargeBinary),
    sa.Column("existing", sa.Boolean, nullable=False, default=False),
    prefixes=["TEMPORARY"],
)
# Created with the table: the merge joins and the duplicate check look keys up.
sa.Index("ix_flytecache_import_entries_key", _STAGE.c.key)

_OPTIONAL_TEXT = ("project", "domain", "name", "version", "org")
_SHORT_NAMES = frozenset(("project", "domain", "org"))
_KNOWN_FIELDS = frozenset((*_ROW_FIELDS, "key_map", "outputs"))


class _BadLine(Exception):
    pass


def _storable(value: str, name: str, *, nul_ok: bool) -> str:
    """``value`` if the database can store it (:func:`check_storable`), else a
    :class:`_BadLine` naming ``name``."""
    try:
        return check_storable(value, name, nul_ok=nul_ok)
    except InvalidArgumentError as error:
        raise _BadLine(error.message) from None


def _text(record: dict[str, Any], name: str, *, nul_ok: bool, limit: int | None = None) -> str:
    value = record.get(name, "")
    if not isinstance(value, str):
        raise _BadLine(f"{name} must be a string")
    if limit is not None and len(value) > limit:
        raise _BadLine(f"{name} is longer than {limit} characters")
    return _storable(value, name, nul_ok=nul_ok)


def _timestamp(record: dict[str, Any], name: str) -> int:
    if name not in record:
        raise _BadLine(f"missing {name}")
    value = record[name]
    if type(value) is not int:
        raise _BadLine(f"{name} must be an integer (microseconds since the epoch)")
    if not MIN_US <= value <= MAX_US:
        raise _BadLine(f"{name} {value} is out of range")
    return value


def _parse_entry(record: Any, *, nul_ok: bool = True) -> dict[str, Any]:
    """Validate one decoded entry line; return its staging row (payload built).

    ``nul_ok=False`` (PostgreSQL) rejects NUL characters in the text columns.
    """
    from flyteidl2.core import literals_pb2
    from google.protobuf.message import DecodeError

    if not isinstance(record, dict):
        raise _BadLine("expected a JSON object")
    unknown = sorted(set(record) - _KNOWN_FIELDS)
    if unknown:
        raise _BadLine(f"unknown field {unknown[0]!r}")
    if "key" not in record:
        raise _BadLine("missing key")
    try:
        key = check_text(record["key"], "key")
    except InvalidArgumentError as error:
        raise _BadLine(str(error)) from None
    row: dict[str, Any] = {"key": key, "key_hash": key_hash(key)}
    resource_type = record.get("resource_type")
    if resource_type is not None and (
        type(resource_type) is not int or not 0 <= resource_type < 2**31
    ):
        raise _BadLine("resource_type must be a non-negative integer or null")
    row["resource_type"] = resource_type
    for name in _OPTIONAL_TEXT:
        limit = SHORT_TEXT if name in _SHORT_NAMES else None
        row[name] = _text(record, name, nul_ok=nul_ok, limit=limit)
    key_map = record.get("key_map", {})
    if not isinstance(key_map, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in key_map.items()
    ):
        raise _BadLine("key_map must be an object of strings")
    for item in key_map.items():
        for text in item:
            # Stored as JSON with \u escapes, so NUL is fine on every backend.
            _storable(text, "key_map", nul_ok=True)
    row["created_at"] = _timestamp(record, "created_at")
    row["last_updated_at"] = _timestamp(record, "last_updated_at")
    size = record.get("size", 0)
    if type(size) is not int or size < 0:
        raise _BadLine("size must be a non-negative integer")
    uri = record.get("output_uri")
    outputs = record.get("outputs")
    literals: list[tuple[str, bytes]] = []
    if uri is not None:
        if outputs is not None:
            raise _BadLine("an entry has either output_uri or outputs, not both")
        if not isinstance(uri, str) or not uri:
            raise _BadLine("output_uri must be a non-empty string")
        row["output_uri"] = _storable(uri, "output_uri", nul_ok=nul_ok)
        row["size"] = len(uri.encode("utf-8"))
    else:
        if not isinstance(outputs, dict):
            raise _BadLine("an entry needs output_uri or an outputs object")
        for name, encoded in outputs.items():
            _storable(name, f"output name {name!r}", nul_ok=nul_ok)
            if not isinstance(encoded, str):
                raise _BadLine(f"outputs[{name!r}] must be a base64 string")
            try:
                raw = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError):
                raise _BadLine(f"outputs[{name!r}] is not valid base64") from None
            try:
                literals_pb2.Literal().ParseFromString(raw)
            except DecodeError:
                raise _BadLine(f"outputs[{name!r}] is not a serialized Literal") from None
            literals.append((name, raw))
        row["output_uri"] = None
        row["size"] = len(codec.literal_map_bytes(literals))
    # An empty key map is no key map, as in every export since the first.
    payload = codec.payload_from_parts(
        output_uri=row["output_uri"],
        literals=literals,
        metadata=codec.metadata_from_columns(
            row["resource_type"],
            row["project"],
            row["domain"],
            row["name"],
            row["version"],
            row["org"],
            key_map,
        ),
        created_at=row["created_at"],
        last_updated_at=row["last_updated_at"],
        nul_ok=nul_ok,
    )
    large = len(payload) > codec.SPILL_BYTES
    row["payload"], row["large_payload"] = (None, payload) if large else (payload, None)
    return row


def _parse_header(line_no: int, record: Any) -> dict[str, Any]:
    if not isinstance(record, dict) or record.get("format") != EXPORT_FORMAT:
        raise InvalidArgumentError(
            f"line {line_no}: not a flytecache export (the first line must be a header with "
            f'"format": "{EXPORT_FORMAT}")',
            line=line_no,
        )
    version = record.get("version")
    if version != EXPORT_VERSION or type(version) is not int:
        raise InvalidArgumentError(
            f"line {line_no}: unsupported export version {version!r} "
            f"(this flytecache reads version {EXPORT_VERSION})",
            line=line_no,
        )
    entries = record.get("entries")
    if entries is not None and (type(entries) is not int or entries < 0):
        raise InvalidArgumentError(
            f"line {line_no}: header field entries must be a non-negative integer",
            line=line_no,
        )
    return record


def _check_hashes(conn: sa.Connection) -> None:
    """:class:`KeyHashCollisionError` naming both keys when a staged key's 64-bit hash
    (``store/keyhash.py``) is another staged key's or a stored other key's: nothing is imported
    (the unique index would refuse the insert with a bare database error)."""
    twice = (
        sa.select(_STAGE.c.key_hash)
        .group_by(_STAGE.c.key_hash)
        .having(sa.func.count() > 1)
        .limit(1)
        .scalar_subquery()
    )
    staged = conn.execute(
        sa.select(_STAGE.c.key, _STAGE.c.line).where(_STAGE.c.key_hash == twice).limit(2)
    ).all()
    if len(staged) == 2:
        (first, first_line), (second, line) = sorted(staged, key=lambda row: row[1])
        raise KeyHashCollisionError(
            f'line {line}: key "{second}" has the same 64-bit hash as "{first}" (line '
            f"{first_line}); import them separately, one of them cannot be stored with the other",
            key=second,
            stored=first,
            line=line,
        )
    clash = conn.execute(
        sa.select(_STAGE.c.key, _STAGE.c.line, ENTRIES.c.key.label("stored"))
        .select_from(
            _STAGE.join(
                ENTRIES,
                sa.and_(ENTRIES.c.key_hash == _STAGE.c.key_hash, ENTRIES.c.key != _STAGE.c.key),
            )
        )
        .order_by(_STAGE.c.line)
        .limit(1)
    ).one_or_none()
    if clash is not None:
        raise KeyHashCollisionError(
            f'line {clash.line}: key "{clash.key}" has the same 64-bit hash as the stored key '
            f'"{clash.stored}"; it cannot be stored while that entry exists',
            key=clash.key,
            stored=clash.stored,
            line=clash.line,
        )


def _stage(
    conn: sa.Connection,
    lines: Iterable[bytes | str],
    progress: Callable[[int, int | None], None] | None,
) -> int:
    """Validate every line and copy the entries into the staging tables; return the count."""
    expected: int | None = None
    header_seen = False
    entries = 0
    nul_ok = conn.dialect.name == "sqlite"
    rows: list[dict[str, Any]] = []

    def flush() -> None:
        if rows:
            conn.execute(sa.insert(_STAGE), rows)
            rows.clear()

    line_no = 0
    for line_no, raw_line in enumerate(lines, start=1):
        try:
            text = raw_line.decode("utf-8") if isinstance(raw_line, bytes) else raw_line
            record = json.loads(text)
        except UnicodeDecodeError:
            raise InvalidArgumentError(f"line {line_no}: not UTF-8 text", line=line_no) from None
        except ValueError as error:
            if not text.strip():
                raise InvalidArgumentError(f"line {line_no}: empty line", line=line_no) from None
            raise InvalidArgumentError(
                f"line {line_no}: not valid JSON ({error})", line=line_no
            ) from None
        if not header_seen:
            expected = _parse_header(line_no, record).get("entries")
            header_seen = True
            if progress is not None:
                progress(0, expected)
            continue
        try:
            row = _parse_entry(record, nul_ok=nul_ok)
        except _BadLine as error:
            raise InvalidArgumentError(f"line {line_no}: {error}", line=line_no) from None
        row["line"] = line_no
        row["existing"] = False
        rows.append(row)
        entries += 1
        if len(rows) >= BATCH:
            flush()
            if progress is not None:
                progress(entries, expected)
    flush()
    if not header_seen:
        raise InvalidArgumentError("the input is empty; expected a flytecache export", line=0)
    if expected is not None and entries != expected:
        raise InvalidArgumentError(
            f"line {line_no}: the header announces {expected} entries but the file has "
            f"{entries} (truncated or edited?)",
            line=line_no,
        )
    if progress is not None:
        progress(entries, expected)
    return entries


def import_entries(
    store: CacheStore,
    lines: Iterable[bytes | str],
    *,
    overwrite: bool = False,
    dry_run: bool = False,
    progress: Callable[[int, int | None], None] | None = None,
) -> ImportResult:
    """Import a JSON Lines export: all of it, or (on any bad line) nothing.

    Every line is validated and copied into temporary staging tables first, outside any write
    lock; a bad line raises :class:`InvalidArgumentError` naming its line number and nothing is
    written. The entries are then merged in one short write transaction with set-based SQL.
    Existing keys are skipped (and counted) unless ``overwrite``, so re-importing the same file
    changes nothing. ``progress(done, total)`` is called while staging.
    """
    engine = store.engine
    with translate_errors(), engine.connect() as conn:
        # Staging writes only to temporary tables: a deferred BEGIN takes no lock on the
        # database, so concurrent writers are not held up while the file is read.
        conn.execution_options(flytecache_begin="DEFERRED")
        try:
            with conn.begin():
                _STAGE_META.drop_all(conn, checkfirst=True)
                _STAGE_META.create_all(conn)
            with conn.begin():
                entries = _stage(conn, lines, progress)
            with conn.begin():
                duplicate = conn.execute(
                    sa.select(_STAGE.c.key, sa.func.min(_STAGE.c.line), sa.func.max(_STAGE.c.line))
                    .group_by(_STAGE.c.key)
                    .having(sa.func.count() > 1)
                    .order_by(sa.func.max(_STAGE.c.line))
                    .limit(1)
                ).one_or_none()
            if duplicate is not None:
                raise InvalidArgumentError(
                    f"line {duplicate[2]}: duplicate key {duplicate[0]!r} "
                    f"(first on line {duplicate[1]})",
                    line=duplicate[2],
                )
            with conn.begin():
                _check_hashes(conn)
            same_key = sa.and_(
                ENTRIES.c.key_hash == _STAGE.c.key_hash, ENTRIES.c.key == _STAGE.c.key
            )
            existing = sa.exists().where(same_key)
            if dry_run:
                with conn.begin():
                    present = int(
                        conn.execute(
                            sa.select(sa.func.count()).select_from(_STAGE).where(existing)
                        ).scalar_one()
                    )
                return _import_result(entries, present, overwrite, dry_run=True)
            conn.execution_options(flytecache_begin="IMMEDIATE")
            with conn.begin():
                if not is_sqlite(engine):
                    # BEGIN IMMEDIATE's equivalent: no put may add a key between the "existing"
                    # marking below and the insert (writers wait, up to lock_timeout, for the
                    # short set-based merge).
                    conn.exec_driver_sql("LOCK TABLE entries IN SHARE ROW EXCLUSIVE MODE")
                _check_hashes(conn)  # again, under the lock: a put may have come meanwhile
                present = conn.execute(
                    sa.update(_STAGE).where(existing).values(existing=True)
                ).rowcount
                if overwrite:
                    conn.execute(
                        # A hash marked existing belongs to the very key staged (same_key).
                        sa.delete(ENTRIES).where(
                            ENTRIES.c.key_hash.in_(
                                sa.select(_STAGE.c.key_hash).where(_STAGE.c.existing)
                            )
                        )
                    )
                wanted = sa.true() if overwrite else _STAGE.c.existing == sa.false()
                conn.execute(
                    sa.insert(ENTRIES).from_select(
                        ENTRY_COLUMNS,
                        sa.select(*(_STAGE.c[c] for c in ENTRY_COLUMNS)).where(wanted),
                    )
                )
                conn.execute(
                    sa.insert(OUTPUTS).from_select(
                        ("entry_id", "payload"),
                        sa.select(ENTRIES.c.id, _STAGE.c.large_payload)
                        .select_from(_STAGE.join(ENTRIES, same_key))
                        .where(wanted, _STAGE.c.large_payload.is_not(None)),
                    )
                )
            return _import_result(entries, present, overwrite, dry_run=False)
        finally:
            try:
                conn.execution_options(flytecache_begin="DEFERRED")
                if conn.in_transaction():
                    conn.rollback()
                with conn.begin():
                    _STAGE_META.drop_all(conn, checkfirst=True)
            except Exception:
                # Never hand a connection with leftover staging tables back to the pool.
                conn.invalidate()


def _import_result(entries: int, present: int, overwrite: bool, *, dry_run: bool) -> ImportResult:
    return ImportResult(
        entries=entries,
        inserted=entries - present,
        replaced=present if overwrite else 0,
        skipped=0 if overwrite else present,
        dry_run=dry_run,
    )
