"""A tiny run of each benchmark harness so they cannot rot (no timing is asserted)."""

from __future__ import annotations

from benchmarks import store_harness


def test_store_harness_smoke() -> None:
    results = store_harness.run(repeats=1, n=50)
    assert set(results) == {"put", "get", "reserve_4p_10keys"}
    for numbers in results.values():
        assert numbers["store"] > 0 and numbers["raw"] > 0
