"""Listing, showing, deleting and pruning entries."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from google.protobuf.message import DecodeError

from flytecache.blobs import BlobDeletion, delete_blobs, preview_deletion
from flytecache.config import Eviction
from flytecache.errors import (
    InvalidArgumentError,
    NotFoundError,
)
from flytecache.store import codec, eviction
from flytecache.store.admin._base import (
    BATCH,
    ENTRIES,
    PAYLOAD,
    WITH_PAYLOAD,
    keyset_pages,
    now_us_of,
)
from flytecache.store.cache import CacheStore
from flytecache.store.engine import read_connection, write_connection
from flytecache.store.keyhash import key_hash
from flytecache.timeutil import (
    timedelta_to_us,
)
from flytecache.validation import check_text


@dataclass(frozen=True, slots=True)
class EntryFilter:
    """Which entries a listing or prune selects; ``None`` fields do not filter.

    Ages compare ``last_updated_at`` with now, strictly: ``older_than=30d`` selects entries
    last written more than 30 days ago, ``newer_than=1h`` those written less than an hour ago.
    """

    project: str | None = None
    domain: str | None = None
    name: str | None = None
    version: str | None = None
    older_than: timedelta | None = None
    newer_than: timedelta | None = None

    def clauses(self, now_us: int, *, by_scope: bool = True) -> list[sa.ColumnElement[bool]]:
        """SQL conditions for this filter, with ages measured from ``now_us``.

        ``by_scope=False`` writes the project/domain/name conditions so that no index serves
        them (``column || ''``, the same rows): the database then walks another index, such as
        last_updated_at for a listing in that order (SQLite's planner has no statistics to
        choose by).
        """
        where: list[sa.ColumnElement[bool]] = []
        for column in ("project", "domain", "name", "version"):
            value = getattr(self, column)
            if value is not None:
                target: sa.ColumnElement[Any] = ENTRIES.c[column]
                if not by_scope and column != "version":
                    target = target.concat("")
                where.append(target == value)
        if self.older_than is not None:
            where.append(ENTRIES.c.last_updated_at < now_us - timedelta_to_us(self.older_than))
        if self.newer_than is not None:
            where.append(ENTRIES.c.last_updated_at > now_us - timedelta_to_us(self.newer_than))
        return where


@dataclass(frozen=True, slots=True)
class EntrySummary:
    """One entry's columns (timestamps in microseconds since the epoch, UTC)."""

    key: str
    resource_type: int | None
    project: str
    domain: str
    name: str
    version: str
    org: str
    created_at: int
    last_updated_at: int
    output_uri: str | None
    size: int
    """Output bytes: the serialized inline literal map, or the URI's length."""

    @property
    def inline(self) -> bool:
        """Whether the outputs are stored inline (no URI)."""
        return self.output_uri is None


@dataclass(frozen=True, slots=True)
class EntryDetail:
    """An entry with its key map and (when inline) its outputs."""

    entry: EntrySummary
    key_map: dict[str, str]
    outputs: list[tuple[str, bytes]] | None
    """``(name, serialized flyteidl2.core.Literal)`` by name; None when the outputs live at
    ``entry.output_uri``."""


_SUMMARY_COLUMNS = (
    ENTRIES.c.key,
    ENTRIES.c.resource_type,
    ENTRIES.c.project,
    ENTRIES.c.domain,
    ENTRIES.c.name,
    ENTRIES.c.version,
    ENTRIES.c.org,
    ENTRIES.c.created_at,
    ENTRIES.c.last_updated_at,
    ENTRIES.c.output_uri,
    ENTRIES.c.size,
)


def _summary(row: Any) -> EntrySummary:
    return EntrySummary(
        key=row.key,
        resource_type=row.resource_type,
        project=row.project,
        domain=row.domain,
        name=row.name,
        version=row.version,
        org=row.org,
        created_at=row.created_at,
        last_updated_at=row.last_updated_at,
        output_uri=row.output_uri,
        size=row.size,
    )


_FEW = 5000
"""Matches of a project/domain/name filter few enough to find by that index and sort."""


def _by_scope(conn: sa.Connection, where: EntryFilter) -> bool:
    """Whether a newest-first listing should find ``where``'s entries through the (project,
    domain, name) index and sort them, rather than walk last_updated_at until a page is full.

    Either plan has a worst case at 1M entries: sorting every match of a broad filter
    ("project = X": 20 s), or walking the whole index for a rare one (2 s). Counting up to
    :data:`_FEW` matches in the index (about a millisecond) tells which one this is; without
    statistics SQLite's planner would always take the index.
    """
    if where.project is None:
        return False  # the index cannot serve domain or name alone
    scope = EntryFilter(project=where.project, domain=where.domain, name=where.name)
    matches = sa.select(ENTRIES.c.id).where(*scope.clauses(0)).limit(_FEW).subquery()
    return int(conn.execute(sa.select(sa.func.count()).select_from(matches)).scalar_one()) < _FEW


def _newest_first(
    where: EntryFilter, now_us: int, after: tuple[int, int] | None, *, by_scope: bool
) -> sa.Select[Any]:
    """Entries matching ``where`` after the cursor ``(last_updated_at, id)``, newest first,
    found through the (project, domain, name) index when ``by_scope`` (see :func:`_by_scope`)."""
    query = sa.select(ENTRIES.c.id, *_SUMMARY_COLUMNS).where(
        *where.clauses(now_us, by_scope=by_scope)
    )
    if after is None:
        return query.order_by(ENTRIES.c.last_updated_at.desc(), ENTRIES.c.id.desc())
    # "(updated, id) < after" as two ranges the index bounds exactly: the rest of the
    # cursor's own time (the index ends in the rowid) and everything older. SQLite merges
    # the two ordered scans lazily, so a page reads about a page of rows. One range with an
    # OR ("updated <= t AND (updated < t OR id < i)") walks every entry that shares the
    # cursor's time (a page halfway down 1M entries written in one microsecond, as an
    # import can: 40 ms instead of 0.1), and a bare OR scans from the top for every page.
    ties = query.where(ENTRIES.c.last_updated_at == after[0], ENTRIES.c.id < after[1])
    older = query.where(ENTRIES.c.last_updated_at < after[0])
    both = sa.union_all(ties, older).subquery()
    return sa.select(both).order_by(both.c.last_updated_at.desc(), both.c.id.desc())


def iter_entries(
    store: CacheStore,
    where: EntryFilter | None = None,
    *,
    limit: int | None = None,
    now_us: int | None = None,
    page_size: int = BATCH,
) -> Generator[EntrySummary, None, None]:
    """Entries matching ``where``, most recently updated first, streamed page by page.

    Keyset pagination on ``(last_updated_at, id)`` keeps memory constant however many
    entries there are. On SQLite each page is a short read transaction of its own (so a
    listing read slowly never holds checkpoints back: see :func:`keyset_pages` for what a
    live view means); on PostgreSQL all pages share one snapshot and the generator holds a
    pooled connection until it is exhausted or closed: close it (``contextlib.closing``) when
    you stop early, before closing the store.
    """
    if limit is not None and limit <= 0:
        return
    selected = where or EntryFilter()
    now = now_us_of(store, now_us)
    with read_connection(store.engine) as conn:
        by_scope = _by_scope(conn, selected)

    def page(after: tuple[int, int] | None) -> sa.Select[Any]:
        return _newest_first(selected, now, after, by_scope=by_scope)

    rows = keyset_pages(
        store.engine,
        page,
        lambda row: (row.last_updated_at, row.id),
        limit=limit,
        page_size=page_size,
    )
    for row in rows:
        yield _summary(row)


@dataclass(frozen=True, slots=True)
class EntryPage:
    """One page of a listing and the cursor of the next (None on the last page)."""

    entries: list[EntrySummary]
    next_cursor: str | None
    """Opaque: pass it back as ``after`` for the following page."""


_CURSOR = re.compile(r"(-?[0-9]{1,19})\.([0-9]{1,19})", re.ASCII)


def _parse_cursor(cursor: str) -> tuple[int, int]:
    match = _CURSOR.fullmatch(cursor)
    if match is not None:
        updated, row_id = int(match.group(1)), int(match.group(2))
        if -(2**63) <= updated < 2**63 and row_id < 2**63:  # the columns are 64-bit
            return updated, row_id
    raise InvalidArgumentError(f"not a listing cursor: {cursor[:80]!r}", field="after")


def entry_page(
    store: CacheStore,
    where: EntryFilter | None = None,
    *,
    after: str | None = None,
    limit: int = 50,
    now_us: int | None = None,
) -> EntryPage:
    """Up to ``limit`` (1..1000) entries matching ``where`` after the cursor ``after``, most
    recently updated first (the order of :func:`iter_entries`).

    One indexed range scan per page whatever the page's depth, so a page of a 1M-entry cache
    costs what the first one does. A malformed cursor is :class:`InvalidArgumentError`.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        raise InvalidArgumentError(f"limit must be in 1..1000, got {limit!r}", field="limit")
    position = None if after is None else _parse_cursor(after)
    selected = where or EntryFilter()
    now = now_us_of(store, now_us)
    with read_connection(store.engine) as conn:
        query = _newest_first(selected, now, position, by_scope=_by_scope(conn, selected))
        # One row more than asked says whether a next page exists without a COUNT.
        rows = conn.execute(query.limit(limit + 1)).all()
    more = len(rows) > limit
    rows = rows[:limit]
    last = rows[-1] if more else None
    return EntryPage(
        entries=[_summary(row) for row in rows],
        next_cursor=None if last is None else f"{last.last_updated_at}.{last.id}",
    )


def count_entries(
    store: CacheStore, where: EntryFilter | None = None, *, now_us: int | None = None
) -> tuple[int, int]:
    """(number of entries, payload bytes) matching ``where``."""
    clauses = (where or EntryFilter()).clauses(now_us_of(store, now_us))
    with read_connection(store.engine) as conn:
        row = conn.execute(
            sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(ENTRIES.c.size), 0)).where(
                *clauses
            )
        ).one()
    return int(row[0]), int(row[1])


def get_entry(store: CacheStore, key: str) -> EntryDetail:
    """One entry with its key map and outputs; NotFoundError if there is none."""
    check_text(key, "key")
    with read_connection(store.engine) as conn:
        row = conn.execute(
            sa.select(PAYLOAD, *_SUMMARY_COLUMNS)
            .select_from(WITH_PAYLOAD)
            .where(ENTRIES.c.key_hash == key_hash(key), ENTRIES.c.key == key)
        ).one_or_none()
    if row is None:
        raise NotFoundError(f'cache entry "{key}" not found', key=key)
    payload = bytes(row.payload)
    outputs = None if row.output_uri is not None else sorted(codec.literal_map_entries(payload))
    try:
        key_map = codec.key_map(payload)
    except DecodeError:
        key_map = {"(unreadable)": "the stored payload does not parse"}
    return EntryDetail(entry=_summary(row), key_map=key_map, outputs=outputs)


@dataclass(frozen=True, slots=True)
class DeleteResult:
    """What :func:`delete_entries` removed."""

    removed: list[str]
    missing: list[str]
    bytes: int


def delete_entries(store: CacheStore, keys: Iterable[str]) -> DeleteResult:
    """Delete the entries under ``keys`` (and their outputs) in one write transaction."""
    wanted = list(dict.fromkeys(check_text(k, "key") for k in keys))
    removed: set[str] = set()
    total = 0
    with write_connection(store.engine) as conn:
        for start in range(0, len(wanted), BATCH):
            chunk = wanted[start : start + BATCH]
            # By hash (the index), then the key itself (store/keyhash.py).
            hashes = [key_hash(key) for key in chunk]
            for key, size in conn.execute(
                sa.delete(ENTRIES)
                .where(ENTRIES.c.key_hash.in_(hashes), ENTRIES.c.key.in_(chunk))
                .returning(ENTRIES.c.key, ENTRIES.c.size)
            ):
                removed.add(key)
                total += size
    return DeleteResult(
        removed=[k for k in wanted if k in removed],
        missing=[k for k in wanted if k not in removed],
        bytes=total,
    )


PruneResult = eviction.EvictionResult
"""What :func:`prune` or :func:`prune_to` removed (or would remove, with ``dry_run``)."""


def prune(
    store: CacheStore,
    where: EntryFilter,
    *,
    now_us: int | None = None,
    dry_run: bool = False,
    batch_size: int = BATCH,
    on_batch: Callable[[int, int], None] | None = None,
    blob_prefixes: Sequence[str] | None = None,
) -> PruneResult:
    """Delete the entries matching ``where`` (which must set ``older_than``) in batches.

    Each batch of ``batch_size`` entries is its own short write transaction, and after each
    the pruner sleeps about as long as it held the lock, so concurrent writers (whose busy
    handlers poll for the lock) get in between batches instead of waiting for the whole prune.
    The age cut-off is fixed when the prune starts: entries written meanwhile are never touched.
    ``on_batch(entries, bytes)`` is called after each batch (for progress bars). With
    ``blob_prefixes``, the blobs of removed entries under them are deleted after each batch
    commits (:func:`flytecache.blobs.delete_blobs`: failures are reported, never raised);
    with ``dry_run`` too, the result's ``blobs`` says which would be
    (:func:`flytecache.blobs.preview_deletion`).
    """
    if where.older_than is None:
        raise InvalidArgumentError("prune needs an age (older_than)", field="older_than")
    if batch_size < 1:
        raise InvalidArgumentError("batch_size must be at least 1", field="batch_size")
    now = now_us_of(store, now_us)
    clauses = where.clauses(now)
    if dry_run:
        count, size = count_entries(store, where, now_us=now)
        blobs = BlobDeletion()
        if blob_prefixes:
            uris = sa.select(ENTRIES.c.output_uri).where(
                *clauses, ENTRIES.c.output_uri.is_not(None)
            )
            with read_connection(store.engine) as conn:
                blobs = preview_deletion(conn.execute(uris).scalars(), blob_prefixes)
        return PruneResult(entries=count, bytes=size, batches=0, dry_run=True, blobs=blobs)
    engine = store.engine
    victims = sa.select(ENTRIES.c.id).where(*clauses).limit(batch_size)
    statement = (
        sa.delete(ENTRIES)
        .where(ENTRIES.c.id.in_(victims))
        .returning(ENTRIES.c.size, ENTRIES.c.output_uri)
    )
    entries = total = batches = 0
    longest = 0.0
    blobs = BlobDeletion()
    while True:
        with write_connection(engine) as conn:
            started = time.monotonic()
            rows = conn.execute(statement).all()
        held = time.monotonic() - started
        if not rows:
            break
        batches += 1
        longest = max(longest, held)
        entries += len(rows)
        removed = int(sum(size for size, _ in rows))
        total += removed
        if blob_prefixes:
            blobs = blobs + delete_blobs([uri for _, uri in rows if uri], blob_prefixes)
        if on_batch is not None:
            on_batch(len(rows), removed)
        # Writers poll for the lock with backoff; leaving it free about half the time lets them
        # in between batches, so their wait is bounded by one batch, not the whole prune.
        time.sleep(min(max(held, 0.002), 0.05))
    return PruneResult(
        entries=entries,
        bytes=total,
        batches=batches,
        dry_run=False,
        longest_batch_seconds=longest,
        blobs=blobs,
    )


def prune_to(
    store: CacheStore,
    *,
    size: int | None = None,
    count: int | None = None,
    policy: Eviction = "least-recently-stored",
    dry_run: bool = False,
    batch_size: int = BATCH,
    on_batch: Callable[[int, int], None] | None = None,
    blob_prefixes: Sequence[str] | None = None,
) -> PruneResult:
    """Delete entries, oldest first by ``policy``, until at most ``count`` remain holding at
    most ``size`` payload bytes (``entries.size`` summed, as ``flytecache stats`` counts it).

    The store's own eviction (see ``flytecache/store/eviction.py``): batches re-check their
    victims, entries whose key has a live reservation stay, and the eviction lease keeps it
    from racing a store's background evictor. ``dry_run`` only counts what would go (and,
    with ``blob_prefixes``, which blobs: :func:`flytecache.blobs.preview_deletion`).
    """
    if policy not in ("least-recently-stored", "least-recently-used"):
        raise InvalidArgumentError(
            f"policy must be least-recently-stored or least-recently-used, got {policy!r}",
            field="eviction",
        )
    if dry_run:
        return eviction.plan(
            store, max_bytes=size, max_entries=count, policy=policy, blob_prefixes=blob_prefixes
        )

    def progress(victims: list[eviction.Victim], _held: float, _blobs: BlobDeletion) -> None:
        if on_batch is not None:
            on_batch(len(victims), sum(v.size for v in victims))

    return eviction.evict(
        store,
        max_bytes=size,
        max_entries=count,
        policy=policy,
        batch_size=batch_size,
        blob_prefixes=blob_prefixes,
        on_batch=progress,
    )
