"""``StoreSettings``: Flyte's defaults, validation at construction, ``FLYTECACHE_*`` overrides."""

from __future__ import annotations

import dataclasses
import math
import re
from datetime import timedelta
from typing import Any

import pytest
from _store import US, check_error

from flytecache import CacheStore, StoreSettings
from flytecache.config import format_size, parse_size
from flytecache.errors import InvalidArgumentError


def test_settings_defaults_are_flytes():
    settings = StoreSettings()
    assert settings.max_heartbeat == timedelta(seconds=10)
    assert settings.grace_multiplier == 3
    assert settings.synchronous == "NORMAL"
    assert settings.allow_network_filesystem is False


def test_settings_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        StoreSettings().max_heartbeat = timedelta(seconds=1)  # type: ignore[misc]


@pytest.mark.parametrize(
    "changes",
    [
        {"max_heartbeat": timedelta(0)},
        {"max_heartbeat": timedelta(seconds=-1)},
        {"max_heartbeat": 10},
        {"busy_timeout": timedelta(0)},
        {"busy_timeout": -US},
        {"grace_multiplier": 0},
        {"grace_multiplier": -1},
        {"grace_multiplier": 1001},
        {"grace_multiplier": "3"},
        {"grace_multiplier": True},
        {"grace_multiplier": float("nan")},
        {"synchronous": "OFF"},
        {"synchronous": "normal"},
        {"allow_network_filesystem": "yes"},
        {"pool_size": 0},
        {"max_overflow": -1},
    ],
    ids=repr,
)
def test_settings_validation(changes: dict[str, Any]):
    with pytest.raises(InvalidArgumentError) as info:
        StoreSettings(**changes)
    check_error(info.value, "INVALID_ARGUMENT")
    with pytest.raises(InvalidArgumentError):
        StoreSettings().replace(**changes)


def test_grace_multiplier_accepts_its_maximum_and_nothing_past_it():
    assert StoreSettings(grace_multiplier=1000).grace_multiplier == 1000
    assert StoreSettings.from_env({"FLYTECACHE_GRACE_MULTIPLIER": "1000"}).grace_multiplier == 1000
    with pytest.raises(InvalidArgumentError, match=re.escape("(0, 1000]")):
        StoreSettings(grace_multiplier=math.nextafter(1000, math.inf))


def test_settings_from_env():
    environ = {
        "FLYTECACHE_MAX_HEARTBEAT": "15s",
        "FLYTECACHE_GRACE_MULTIPLIER": "2.5",
        "FLYTECACHE_BUSY_TIMEOUT": "250ms",
        "FLYTECACHE_SYNCHRONOUS": "full",
        "FLYTECACHE_ALLOW_NETWORK_FILESYSTEM": "yes",
        "FLYTECACHE_POOL_SIZE": "3",
        "FLYTECACHE_MAX_OVERFLOW": "0",
        "FLYTECACHE_UNRELATED": "ignored",
        "MAX_HEARTBEAT": "1s",
    }
    assert StoreSettings.from_env(environ) == StoreSettings(
        max_heartbeat=timedelta(seconds=15),
        grace_multiplier=2.5,
        busy_timeout=timedelta(milliseconds=250),
        synchronous="FULL",
        allow_network_filesystem=True,
        pool_size=3,
        max_overflow=0,
    )


def test_settings_from_env_overrides_win_and_empty_env_gives_defaults():
    environ = {"FLYTECACHE_MAX_HEARTBEAT": "15s", "FLYTECACHE_GRACE_MULTIPLIER": "4"}
    settings = StoreSettings.from_env(environ, max_heartbeat=timedelta(seconds=2))
    assert settings.max_heartbeat == timedelta(seconds=2)
    assert settings.grace_multiplier == 4
    assert StoreSettings.from_env({}) == StoreSettings()


def test_settings_from_process_environment(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("FLYTECACHE_MAX_HEARTBEAT", "1m")
    assert StoreSettings.from_env().max_heartbeat == timedelta(minutes=1)


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("FLYTECACHE_MAX_HEARTBEAT", "soon"),
        ("FLYTECACHE_MAX_HEARTBEAT", "0s"),
        ("FLYTECACHE_BUSY_TIMEOUT", "-1s"),
        ("FLYTECACHE_GRACE_MULTIPLIER", "three"),
        ("FLYTECACHE_GRACE_MULTIPLIER", "0"),
        ("FLYTECACHE_SYNCHRONOUS", "off"),
        ("FLYTECACHE_ALLOW_NETWORK_FILESYSTEM", "maybe"),
        ("FLYTECACHE_POOL_SIZE", "many"),
    ],
)
def test_settings_from_env_rejects_bad_values(var: str, value: str):
    with pytest.raises(InvalidArgumentError):
        StoreSettings.from_env({var: value})


def test_open_rejects_settings_of_the_wrong_type(db_path: str):
    with pytest.raises(InvalidArgumentError):
        CacheStore.open(db_path, settings={"max_heartbeat": 5})  # type: ignore[arg-type]


def test_cachestore_open_reads_the_environment_like_the_cli(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flytecache import CacheStore

    monkeypatch.setenv("FLYTECACHE_SYNCHRONOUS", "FULL")
    monkeypatch.setenv("FLYTECACHE_BUSY_TIMEOUT", "2s")
    with CacheStore.open(tmp_path / "c.db") as store:
        assert store.settings.synchronous == "FULL"
        with store.dbapi_connection() as conn:
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
            assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 2000
    explicit = StoreSettings(synchronous="NORMAL")
    with CacheStore.open(tmp_path / "c.db", settings=explicit) as store:
        assert store.settings.synchronous == "NORMAL"  # an explicit setting wins


def test_limits_default_to_none_no_evictor():
    settings = StoreSettings()
    assert settings.max_size_bytes is None and settings.max_entries is None
    assert settings.eviction == "least-recently-stored" and not settings.limited
    assert settings.delete_blobs is False and settings.blob_prefixes == ()


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_size_bytes": 0}, "max_size_bytes"),
        ({"max_size_bytes": -1}, "max_size_bytes"),
        ({"max_size_bytes": "10GiB"}, "max_size_bytes"),
        ({"max_size_bytes": True}, "max_size_bytes"),
        ({"max_entries": 0}, "max_entries"),
        ({"max_entries": 1.5}, "max_entries"),
        ({"eviction": "lru"}, "eviction"),
        ({"eviction": "none", "max_entries": 10}, "eviction"),
        ({"delete_blobs": "yes", "blob_prefixes": ("s3://b/",)}, "delete_blobs"),
        ({"delete_blobs": True}, "blob_prefixes"),
        ({"blob_prefixes": ["s3://b/"]}, "blob_prefixes"),
        ({"blob_prefixes": ("",)}, "blob_prefixes"),
    ],
    ids=repr,
)
def test_limit_settings_validation_names_the_field(changes: dict[str, Any], field: str):
    with pytest.raises(InvalidArgumentError) as info:
        StoreSettings(**changes)
    assert info.value.fields["field"] == field


def test_limit_settings_from_env():
    environ = {
        "FLYTECACHE_MAX_SIZE_BYTES": "10GiB",
        "FLYTECACHE_MAX_ENTRIES": "1000000",
        "FLYTECACHE_EVICTION": " Least-Recently-Used ",
        "FLYTECACHE_DELETE_BLOBS": "true",
        "FLYTECACHE_BLOB_PREFIXES": "s3://bucket/cache/, /data/outputs,,",
    }
    settings = StoreSettings.from_env(environ)
    assert settings.max_size_bytes == 10 * 1024**3 and settings.max_entries == 1_000_000
    assert settings.eviction == "least-recently-used" and settings.limited
    assert settings.delete_blobs is True
    assert settings.blob_prefixes == ("s3://bucket/cache/", "/data/outputs")
    empty = {"FLYTECACHE_MAX_SIZE_BYTES": "", "FLYTECACHE_MAX_ENTRIES": " "}
    assert not StoreSettings.from_env(empty).limited
    with pytest.raises(InvalidArgumentError, match="FLYTECACHE_MAX_SIZE_BYTES"):
        StoreSettings.from_env({"FLYTECACHE_MAX_SIZE_BYTES": "big"})
    with pytest.raises(InvalidArgumentError, match="FLYTECACHE_MAX_ENTRIES"):
        StoreSettings.from_env({"FLYTECACHE_MAX_ENTRIES": "many"})


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1048576),
        ("512k", 512 * 1024),
        ("16MiB", 16 * 1024**2),
        ("10GB", 10 * 1024**3),
        ("1.5GiB", 3 * 1024**3 // 2),
        ("0.5 k", 512),
        ("2T", 2 * 1024**4),
        ("883.3 MiB", int(883.3 * 1024**2)),  # what format_size prints reads back
    ],
)
def test_sizes_parse_as_format_size_prints_them(text: str, size: int):
    assert parse_size(text) == size
    assert format_size(parse_size(format_size(size))) == format_size(size)  # reads back


@pytest.mark.parametrize("text", ["", "lots", "1.5", "2.0b", "1,5GiB", "-1k", "1.5 PiB", ".5k"])
def test_a_size_that_is_not_one_names_the_option(text: str):
    with pytest.raises(InvalidArgumentError, match=r"^--max-size: ") as caught:
        parse_size(text, name="--max-size")
    assert caught.value.field == "--max-size"
