"""The health checks of ``flytecache db check``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from sqlalchemy.engine import Engine

from flytecache.config import StoreSettings, format_size
from flytecache.errors import (
    FlyteCacheError,
)
from flytecache.store import migrate
from flytecache.store.admin.maintenance import blocking_readers_hint, sqlite_files
from flytecache.store.engine import read_connection
from flytecache.store.filesystem import loose_permissions, network_filesystem_type
from flytecache.store.keyhash import key_hash
from flytecache.store.opening import describe_url
from flytecache.store.urls import is_sqlite, sqlite_file

_KEY_SAMPLES = (
    ("entries", "SELECT key, key_hash FROM entries ORDER BY id LIMIT 1000"),
    ("entries", "SELECT key, key_hash FROM entries ORDER BY id DESC LIMIT 1000"),
    ("reservations", "SELECT key, key_hash FROM reservations LIMIT 1000"),
)
"""The rows ``keys`` checks: the oldest and newest entries by id, and some leases."""


@dataclass(frozen=True, slots=True)
class CheckItem:
    """One item of ``db check``: ``status`` is ``ok``, ``warn``, ``fail`` or ``skip``."""

    name: str
    status: Literal["ok", "warn", "fail", "skip"]
    detail: str


def check_database(
    engine: Engine,
    *,
    max_wal_bytes: int = 128 * 1024**2,
    quick: bool = False,
    settings: StoreSettings | None = None,
) -> list[CheckItem]:
    """Run every health check; a failing check never stops the others.

    Items, in this order: ``filesystem`` (not a network filesystem), ``permissions`` (a
    warning when other users may read the files), ``connect``, ``schema`` (at head),
    ``models`` (the models match the migrations), ``keys`` (a sample of entries and leases
    carries its key's hash, ``store/keyhash.py``), ``integrity`` (``PRAGMA integrity_check`` or
    ``quick_check``, plus ``foreign_key_check``) and ``wal`` (WAL file at most
    ``max_wal_bytes``; a warning past ``settings.wal_size_limit``, naming the processes whose
    read transactions hold checkpoints back). The same items on every backend, so scripts can
    rely on them: ``filesystem``, ``permissions``, ``integrity`` and ``wal`` are SQLite-only
    and reported as ``skip`` (not applicable) on PostgreSQL, whose server looks after its own
    storage.
    """
    settings = settings or StoreSettings.from_env()
    items: list[CheckItem] = []
    sqlite = is_sqlite(engine)
    not_applicable = f"not applicable: SQLite-only (this database is {engine.dialect.name})"

    def run(name: str, check: Callable[[], CheckItem]) -> CheckItem:
        try:
            item = check()
        except FlyteCacheError as error:
            item = CheckItem(name, "fail", str(error))
        items.append(item)
        return item

    def connect() -> CheckItem:
        with read_connection(engine) as conn:
            conn.exec_driver_sql("SELECT 1")
        return CheckItem("connect", "ok", describe_url(engine))

    def filesystem() -> CheckItem:
        path = sqlite_file(engine.url)
        fstype = network_filesystem_type(path.parent)
        if fstype is None:
            return CheckItem("filesystem", "ok", "local filesystem")
        if settings.allow_network_filesystem:
            return CheckItem(
                "filesystem", "warn", f"network filesystem ({fstype}), allowed by settings"
            )
        return CheckItem(
            "filesystem",
            "fail",
            f"{path} is on a network filesystem ({fstype}) where SQLite locking is unsafe",
        )

    def sqlite_only(name: str, check: Callable[[], CheckItem]) -> None:
        if sqlite:
            run(name, check)
        else:
            items.append(CheckItem(name, "skip", not_applicable))

    def permissions() -> CheckItem:
        return permissions_item(sqlite_file(engine.url))

    sqlite_only("filesystem", filesystem)
    sqlite_only("permissions", permissions)
    if run("connect", connect).status != "ok":
        for name in ("schema", "models", "keys", "integrity", "wal"):
            reason = not_applicable if name in ("integrity", "wal") and not sqlite else None
            items.append(CheckItem(name, "skip", reason or "cannot connect"))
        return items

    head = migrate.head_revision()

    def schema() -> CheckItem:
        with read_connection(engine) as conn:
            current = migrate.current_revision(conn)
        if current == head:
            return CheckItem("schema", "ok", f"at head {head}")
        return CheckItem(
            "schema",
            "fail",
            f"at {current or '(empty)'}, head is {head}; run `flytecache db upgrade`",
        )

    def models() -> CheckItem:
        diffs = migrate.check_models_match(engine)
        if not diffs:
            return CheckItem("models", "ok", "models match the migrations")
        shown = "; ".join(str(d) for d in diffs[:3])
        return CheckItem("models", "fail", f"{len(diffs)} difference(s): {shown}")

    def keys() -> CheckItem:
        rows: dict[tuple[str, str], int] = {}  # a small table's samples overlap
        with read_connection(engine) as conn:
            for table, sql in _KEY_SAMPLES:
                for key, stored in conn.exec_driver_sql(sql):
                    rows[table, key] = stored
        sampled = len(rows)
        wrong = sum(stored != key_hash(key) for (_, key), stored in rows.items())
        if wrong:
            return CheckItem(
                "keys",
                "fail",
                f"{wrong} of {sampled} sampled rows hold a key_hash that is not their key's, so "
                "lookups miss them (a file migrated by a pre-release build of 0004?); run "
                "`flytecache db downgrade 0003_accessed_at` then `flytecache db upgrade`",
            )
        return CheckItem("keys", "ok", f"{sampled} sampled rows carry their key's hash")

    def integrity() -> CheckItem:
        pragma = "quick_check" if quick else "integrity_check"
        with read_connection(engine) as conn:
            # Rows may hold several newline-separated problems under a "*** in database" title.
            problems = [
                line.strip()
                for row in conn.exec_driver_sql(f"PRAGMA {pragma}")
                for line in str(row[0]).splitlines()
                if line.strip() not in ("", "ok") and not line.startswith("***")
            ]
            orphans = conn.exec_driver_sql("PRAGMA foreign_key_check").all()
        if problems:
            more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
            return CheckItem("integrity", "fail", f"{problems[0]}{more}")
        if orphans:
            return CheckItem(
                "integrity",
                "fail",
                f"{len(orphans)} row(s) violate foreign keys, e.g. {orphans[0]}",
            )
        return CheckItem("integrity", "ok", f"{pragma}: ok")

    def wal() -> CheckItem:
        size = sqlite_files(engine)["wal"]
        if size > max_wal_bytes:
            return CheckItem(
                "wal",
                "fail",
                f"WAL is {format_size(size)} (limit {format_size(max_wal_bytes)}); "
                f"{blocking_readers_hint(engine)}; then run `flytecache checkpoint`",
            )
        if size > settings.wal_size_limit:
            return CheckItem(
                "wal",
                "warn",
                f"WAL is {format_size(size)}, more than the {format_size(settings.wal_size_limit)}"
                f" it is cut back to after a checkpoint; {blocking_readers_hint(engine)}",
            )
        return CheckItem("wal", "ok", format_size(size))

    schema_ok = run("schema", schema).status == "ok"
    if schema_ok:
        run("models", models)
        run("keys", keys)
    else:
        items.append(CheckItem("models", "skip", "schema is not at head"))
        items.append(CheckItem("keys", "skip", "schema is not at head"))
    sqlite_only("integrity", integrity)
    sqlite_only("wal", wal)
    return items


def permissions_item(path: Path) -> CheckItem:
    """The ``permissions`` item for the SQLite database at ``path``: ``warn`` when other users
    may read it or its ``-wal``/``-shm`` files (cached outputs and keys are in them)."""
    loose = loose_permissions(path)
    if not loose:
        return CheckItem("permissions", "ok", "not readable by other users")
    files = ", ".join(f"{file.name} ({mode:04o})" for file, mode in loose)
    targets = " ".join(str(file) for file, _ in loose)
    return CheckItem(
        "permissions",
        "warn",
        f"readable by every local user: {files}; run `chmod 600 {targets}`",
    )
