"""``flytecache.blobs``: which URIs a prefix manages, and deleting blobs without raising."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from flytecache.blobs import BlobDeletion, delete_blobs, is_managed


@pytest.mark.parametrize(
    ("uri", "prefixes", "managed"),
    [
        ("s3://b/cache/x/outputs.pb", ["s3://b/cache"], True),
        ("s3://b/cache/x", ["s3://b/cache/"], True),
        ("s3://b/cache-old/x", ["s3://b/cache"], False),  # whole segments only
        ("s3://b/cache", ["s3://b/cache"], False),  # never the prefix itself
        ("s3://b/cache/../other/x", ["s3://b/cache"], False),  # no climbing out
        ("gs://b/cache/x", ["s3://b/cache"], False),
        ("/data/out/run/1", ["/data/out"], True),
        ("file:///data/out/run/1", ["/data/out"], True),
        ("/data/out/run/1", ["file:///data/out/"], True),
        ("/data/out/../etc/passwd", ["/data/out"], False),
        ("/data/outside", ["/data/out"], False),
        ("s3://b/cache/x", [], False),
    ],
)
def test_is_managed(uri: str, prefixes: list[str], managed: bool) -> None:
    assert is_managed(uri, prefixes) is managed


def test_delete_blobs_reports_failures_and_skips_unmanaged(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    fs.pipe("/managed/a/outputs.pb", b"12345")
    fs.pipe("/managed/b/x", b"12")
    fs.pipe("/managed/b/y", b"123")
    fs.pipe("/other/c", b"keep")
    try:
        result = delete_blobs(
            [
                "memory://managed/a/outputs.pb",
                "memory://managed/b",  # a directory: everything in it
                "memory://managed/a/outputs.pb",  # twice: once
                "memory://managed/missing",
                "memory://other/c",  # not under a prefix: left alone, not reported
                "nosuchscheme://managed/z",
            ],
            ["memory://managed", "nosuchscheme://managed"],
        )
        assert (result.deleted, result.bytes) == (2, 10)
        failed = dict(result.failed)
        assert failed["memory://managed/missing"] == "does not exist"
        assert "nosuchscheme://managed/z" in failed
        assert fs.cat("/other/c") == b"keep" and not fs.exists("/managed/b/x")
    finally:
        for root in ("/managed", "/other"):
            if fs.exists(root):
                fs.rm(root, recursive=True)


def test_blob_deletions_add_up() -> None:
    one = BlobDeletion(deleted=1, bytes=5, failed=(("a", "x"),))
    assert one + one == BlobDeletion(deleted=2, bytes=10, failed=(("a", "x"), ("a", "x")))
