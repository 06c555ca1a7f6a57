"""Writers SIGKILLed mid-transaction lose nothing acknowledged and leave no partial entry."""

from __future__ import annotations

from pathlib import Path

import _crash
import pytest

from flytecache import CacheStore


def _rounds(tmp_path: Path, rounds: int) -> dict[str, int]:
    path = str(tmp_path / "crash.db")
    CacheStore.open(path).close()
    for round_no in range(rounds):
        _crash.run_round(path, tmp_path, round_no)
        _crash.audit(path, tmp_path, f"ack-{round_no}-*.log")  # this round's acknowledgements
    return _crash.audit(path, tmp_path)  # and, at the end, every round's


def test_sigkilled_writers_lose_nothing_acknowledged(tmp_path: Path) -> None:
    totals = _rounds(tmp_path, 20)
    assert totals["acknowledged"] > 0
    assert totals["entries"] >= totals["acknowledged"]


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_sigkilled_writers_200_rounds(tmp_path: Path) -> None:
    totals = _rounds(tmp_path, 200)
    print(f"200 rounds: {totals}")
    assert totals["acknowledged"] > 0
