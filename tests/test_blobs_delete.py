"""``flytecache.blobs``: which URIs a prefix manages, and deleting blobs without raising."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest

from flytecache import StoreSettings
from flytecache.blobs import (
    BlobDeletion,
    check_backends,
    delete_blobs,
    is_managed,
    preview_deletion,
)
from flytecache.errors import InvalidArgumentError


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
                "memory://other/c",  # not under a prefix: left alone, counted as skipped
                "nosuchscheme://managed/z",
            ],
            ["memory://managed", "nosuchscheme://managed"],
        )
        assert (result.deleted, result.bytes, result.skipped) == (2, 10, 1)
        failed = dict(result.failed)
        assert failed["memory://managed/missing"] == "does not exist"
        assert "nosuchscheme://managed/z" in failed
        assert fs.cat("/other/c") == b"keep" and not fs.exists("/managed/b/x")
    finally:
        for root in ("/managed", "/other"):
            if fs.exists(root):
                fs.rm(root, recursive=True)


def test_blob_deletions_add_up() -> None:
    one = BlobDeletion(deleted=1, bytes=5, failed=(("a", "x"),), skipped=3)
    two = BlobDeletion(deleted=2, bytes=10, failed=(("a", "x"), ("a", "x")), skipped=6)
    assert one + one == two


def test_a_symbolic_link_never_leads_a_deletion_outside_the_prefix(tmp_path: Path) -> None:
    prefix, outside = tmp_path / "blobs", tmp_path / "outside"
    (outside / "d").mkdir(parents=True)
    (outside / "secret").write_text("s")
    (outside / "d" / "inner").write_text("s")
    prefix.mkdir()
    (prefix / "link").symlink_to(outside)  # a link inside the prefix to a directory outside
    (prefix / "own").write_text("mine")
    uris = [f"{prefix}/link/secret", f"file://{prefix}/link/d", f"{prefix}/link", f"{prefix}/own"]
    result = delete_blobs(uris, [f"{prefix}/"])
    assert (outside / "secret").exists() and (outside / "d" / "inner").exists()
    assert (prefix / "link").is_symlink()  # the link itself resolves outside too
    assert not (prefix / "own").exists()
    assert result.deleted == 1 and result.bytes == 4
    assert [uri for uri, _ in result.failed] == uris[:3]
    assert all("symbolic link" in reason for _, reason in result.failed)


@pytest.mark.parametrize(
    "prefix",
    ["/", "file:///", "s3://", "//", "", "  ", "/data/../..", "s3://b/../x", "."],
)
def test_prefixes_that_would_manage_everything_are_refused(prefix: str) -> None:
    with pytest.raises(InvalidArgumentError, match="blob_prefixes"):
        StoreSettings(delete_blobs=True, blob_prefixes=(prefix,))


def test_a_prefix_without_an_fsspec_backend_is_refused_before_anything_goes() -> None:
    with pytest.raises(InvalidArgumentError, match="nosuchscheme://bucket/cache"):
        check_backends(["/data/out", "nosuchscheme://bucket/cache"])
    check_backends(["/data/out", "file:///data/x", "memory://cache"])


def test_a_preview_counts_what_deleting_would_do_and_touches_nothing(tmp_path: Path) -> None:
    prefix, outside = tmp_path / "blobs", tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    prefix.mkdir()
    (prefix / "link").symlink_to(outside)
    (prefix / "own").write_text("mine")
    uris = [
        f"{prefix}/own",
        f"file://{prefix}/own",  # the same blob by another name: counted again (tried again)
        f"{prefix}/link/secret",  # a link leads out: reported, as delete_blobs would
        str(outside / "secret"),  # outside the prefix: left alone
        f"{prefix}/missing",  # not checked: a blob may appear before the real run
    ]
    preview = preview_deletion(uris, [str(prefix)])
    assert (preview.deleted, preview.bytes, preview.skipped) == (3, 0, 1)
    assert [uri for uri, _ in preview.failed] == [f"{prefix}/link/secret"]
    assert (prefix / "own").read_text() == "mine" and (outside / "secret").exists()
