"""The admin queries behind the web view (paged entries, lease search, overview), on both
backends."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
import test_admin
from _cli import put_uri
from test_admin import NOW, T0, Clock, us

from flytecache import CacheStore
from flytecache.errors import InvalidArgumentError
from flytecache.store import admin
from flytecache.store.admin.overview import DAY_US

# The same databases (both backends) and entries as test_admin.py.
url, clock, store, populated = (
    test_admin.url,
    test_admin.clock,
    test_admin.store,
    test_admin.populated,
)


def test_entry_pages_walk_the_listing_in_order(populated: CacheStore) -> None:
    everything = [e.key for e in admin.iter_entries(populated, now_us=NOW)]
    walked: list[str] = []
    after = None
    while True:
        page = admin.entry_page(populated, after=after, limit=2, now_us=NOW)
        walked += [e.key for e in page.entries]
        if page.next_cursor is None:
            break
        after = page.next_cursor
    assert walked == everything
    exact = admin.entry_page(populated, limit=len(everything), now_us=NOW)
    assert exact.next_cursor is None  # a full last page does not promise another
    alpha = admin.entry_page(populated, admin.EntryFilter(project="alpha"), now_us=NOW)
    assert [e.key for e in alpha.entries] == ["new-a", "mid-a", "old-a"]


def test_entry_pages_with_equal_timestamps(store: CacheStore) -> None:
    for i in range(7):  # the clock does not move: the id breaks every tie
        put_uri(store, f"k{i}")
    first = admin.entry_page(store, limit=4)
    second = admin.entry_page(store, after=first.next_cursor, limit=4)
    assert [e.key for e in first.entries + second.entries] == [f"k{i}" for i in range(6, -1, -1)]
    assert second.next_cursor is None


@pytest.mark.parametrize("url", ["sqlite"], indirect=True)  # SQLite's progress handler counts
def test_a_page_deep_among_equal_timestamps_reads_about_a_page(store: CacheStore) -> None:
    """A cursor inside a run of entries written in one microsecond (as an import can write
    them) seeks to its place: SQLite runs about as many steps for the page halfway down as
    for the first one, where a range scan over the tie would walk half the entries. Counted
    in SQLite's virtual-machine steps (a progress handler), not in time."""
    for i in range(3000):  # the clock does not move: every entry has the same time
        put_uri(store, f"k{i:04d}")
    halfway = admin.entry_page(store, limit=1000)
    halfway = admin.entry_page(store, after=halfway.next_cursor, limit=500)
    steps = [0]

    def count() -> int:
        steps[0] += 1
        return 0

    def counted(conn: Any, *args: Any) -> None:
        conn.connection.driver_connection.set_progress_handler(count, 100)

    def measured(after: str | None) -> int:
        steps[0] = 0
        sa.event.listen(store.engine, "before_cursor_execute", counted)
        try:
            page = admin.entry_page(store, after=after, limit=50)
        finally:
            sa.event.remove(store.engine, "before_cursor_execute", counted)
        assert len(page.entries) == 50
        return steps[0]

    first, deep = measured(None), measured(halfway.next_cursor)
    assert deep <= 3 * first + 20, (first, deep)


@pytest.mark.parametrize(
    "cursor",
    [
        "",
        "x",
        "1",
        "1.",
        ".1",
        "1.x",
        "1.-2",
        "1.2.3",
        "\u00b2.1",  # a digit to str.isdigit(), not to int()
        "9223372036854775808.1",  # past the 64-bit columns
        "-9223372036854775809.1",
        "1.9223372036854775808",
        " 1.2",
    ],
)
def test_a_malformed_cursor_is_invalid(populated: CacheStore, cursor: str) -> None:
    with pytest.raises(InvalidArgumentError):
        admin.entry_page(populated, after=cursor or "…")


@pytest.mark.parametrize("limit", [0, -1, 1001, True])
def test_page_sizes_are_bounded(populated: CacheStore, limit: int) -> None:
    with pytest.raises(InvalidArgumentError):
        admin.entry_page(populated, limit=limit)
    with pytest.raises(InvalidArgumentError):
        admin.search_reservations(populated, limit=limit)


def test_search_reservations_by_key_owner_and_task(store: CacheStore, clock: Clock) -> None:
    put_uri(store, "p-d-hash1", project="p", domain="d", name="wf.train_model")
    store.get_or_extend_reservation("p-d-hash1", "exec-rerun-n0-0", timedelta(seconds=5))
    store.get_or_extend_reservation("p-d-hash2", "exec-first-n1-0", timedelta(seconds=5))
    store.get_or_extend_reservation("p-d-50%_x", "exec-odd-n0-0", timedelta(seconds=5))

    def found(text: str | None, **kwargs: object) -> list[str]:
        page = admin.search_reservations(store, text, **kwargs)  # type: ignore[arg-type]
        return [m.lease.key for m in page.matches]

    assert found(None) == ["p-d-50%_x", "p-d-hash1", "p-d-hash2"]
    assert found("hash2") == ["p-d-hash2"]
    assert found("exec-first") == ["p-d-hash2"]
    assert found("train_model") == ["p-d-hash1"]  # through the entry under the same key
    assert found("%_") == ["p-d-50%_x"]  # LIKE wildcards are literal text
    match = admin.search_reservations(store, "train").matches[0]
    assert (match.task, match.project, match.domain) == ("wf.train_model", "p", "d")
    assert admin.search_reservations(store, "hash2").matches[0].task == ""
    clock.now = T0 + timedelta(minutes=5)
    assert found(None, state="active") == []
    assert found(None, state="expired") == ["p-d-50%_x", "p-d-hash1", "p-d-hash2"]
    first = admin.search_reservations(store, limit=2)
    rest = admin.search_reservations(store, after=first.next_cursor, limit=2)
    assert [m.lease.key for m in rest.matches] == ["p-d-hash2"] and rest.next_cursor is None


def test_overview_counts_groups_and_days(populated: CacheStore) -> None:
    data = admin.overview(populated, top=2, days=3, now_us=NOW)
    assert data.entries == 5
    assert data.payload_bytes == sum(e.size for e in admin.iter_entries(populated))
    assert (data.active_reservations, data.expired_reservations) == (1, 1)
    assert data.schema_revision is not None and data.files["database"] > 0
    # Ties (one entry each) are ordered by name: the inline entry has no project.
    assert [(g.project, g.domain, g.entries) for g in data.by_scope] == [
        ("alpha", "development", 3),
        ("", "", 1),
    ]
    assert len(data.top_by_entries) == 2 and data.top_by_entries[0].entries >= 1
    sizes = [g.bytes for g in data.top_by_bytes]
    assert sizes == sorted(sizes, reverse=True)
    today = us(T0) // DAY_US
    assert [day for day, _ in data.per_day] == [today - 2, today - 1, today]
    # Created at T0-2d, T0-1h and T0 (the other two are older than the window).
    assert [count for _, count in data.per_day] == [1, 1, 1]
    with pytest.raises(InvalidArgumentError):
        admin.overview(populated, top=0)


@pytest.mark.parametrize("few", [1, 10_000])
def test_both_listing_plans_give_the_same_entries(
    populated: CacheStore, monkeypatch: pytest.MonkeyPatch, few: int
) -> None:
    """Broad filters walk last_updated_at, narrow ones the scope index: the same rows."""
    from flytecache.store.admin import entries

    monkeypatch.setattr(entries, "_FEW", few)
    for where, expected in (
        (admin.EntryFilter(project="alpha"), ["new-a", "mid-a", "old-a"]),
        (
            admin.EntryFilter(project="alpha", domain="development", name="train"),
            ["new-a", "old-a"],
        ),
        (admin.EntryFilter(project="alpha", version="v1"), ["mid-a", "old-a"]),
        (admin.EntryFilter(project="nobody"), []),
    ):
        assert [e.key for e in admin.entry_page(populated, where, now_us=NOW).entries] == expected
        assert [e.key for e in admin.iter_entries(populated, where, now_us=NOW)] == expected
