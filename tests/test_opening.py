"""One way in (flytecache.store.opening): CacheStore.open and the admin commands report alike."""

from __future__ import annotations

import subprocess
import sys

from flytecache.store import opening

# Hiding psycopg makes its import fail exactly as in an environment without it (installing a
# second environment just for this would cost a minute).
_WITHOUT_PSYCOPG = """
import sys
sys.modules["psycopg"] = None
from flytecache import CacheStore, errors
try:
    CacheStore.open("postgresql+psycopg://user@127.0.0.1:1/db")
except errors.UnavailableError as error:
    print("UnavailableError:", error)
"""


def test_a_missing_postgresql_driver_is_a_clear_error_from_cachestore_open() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_PSYCOPG], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "UnavailableError: the driver for postgresql+psycopg is not installed" in done.stdout
    assert "pip install 'psycopg[binary]'" in done.stdout


def test_schema_state_of_a_new_and_a_migrated_database(tmp_path) -> None:
    engine = opening.open_engine(tmp_path / "c.db", must_exist=False)
    try:
        empty = opening.schema_state(engine)
        assert empty.current is None and not empty.at_head
    finally:
        engine.dispose()
    opening.open_store(tmp_path / "c.db").close()
    engine = opening.open_engine(tmp_path / "c.db")
    try:
        migrated = opening.schema_state(engine)
        assert migrated.at_head and migrated.current == migrated.head
    finally:
        engine.dispose()
