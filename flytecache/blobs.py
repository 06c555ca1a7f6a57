"""Outputs stored by reference: checking that a URI exists before storing it, reading the
``LiteralMap`` back through fsspec, and deleting the blobs of removed entries. A blob that is
gone or unreadable makes the entry a miss (:class:`~flytecache.errors.StaleEntryError`,
SPEC §5.3)."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from flyteidl2.core import literals_pb2

from flytecache.errors import InvalidArgumentError, NotFoundError, StaleEntryError, StorageError

__all__ = [
    "BlobDeletion",
    "check_backends",
    "check_uri_exists",
    "delete_blobs",
    "is_managed",
    "preview_deletion",
    "read_outputs",
]


def _is_local(uri: str) -> bool:
    return uri.startswith("file://") or "://" not in uri


def check_uri_exists(uri: str) -> None:
    """:class:`NotFoundError` if ``uri`` is a local path or ``file://`` URI that does not
    exist (remote URIs are not checked: that would cost a round trip per put)."""
    if _is_local(uri):
        import fsspec

        fs, path = fsspec.core.url_to_fs(uri)
        if not fs.exists(path):
            raise NotFoundError(f"outputs URI {uri} does not exist", uri=uri)


def read_outputs(uri: str, key: str) -> literals_pb2.LiteralMap:
    """The ``LiteralMap`` stored at ``uri`` for the entry ``key``; :class:`StaleEntryError` when
    it is gone or not a ``LiteralMap``, :class:`StorageError` when it cannot be read."""
    import fsspec

    try:
        with fsspec.open(uri, "rb") as fh:
            data = fh.read()
    except FileNotFoundError:
        raise StaleEntryError(
            f"cache entry points at {uri}, which no longer exists (treated as a miss)",
            key=key,
            uri=uri,
        ) from None
    except (ImportError, ValueError) as error:
        raise StorageError(
            f"cannot read outputs at {uri}: {error} (install the fsspec backend for this scheme)"
        ) from error
    literal_map = literals_pb2.LiteralMap()
    try:
        literal_map.ParseFromString(data)
    except Exception:
        raise StaleEntryError(
            f"outputs at {uri} are not a serialized LiteralMap (treated as a miss)",
            key=key,
            uri=uri,
        ) from None
    return literal_map


def _normalized(uri: str) -> str | None:
    """``uri`` in the form prefixes are compared in: a local path or ``file://`` URI as an
    absolute, normalized path; another URI as it is. None for a URI with a ``..`` segment
    (it could climb out of any prefix)."""
    if _is_local(uri):
        path = uri.removeprefix("file://")
        return posixpath.normpath(posixpath.abspath(path)) if path else None
    scheme, _, rest = uri.partition("://")
    if ".." in rest.split("/"):
        return None
    return f"{scheme}://{rest}"


def is_managed(uri: str, prefixes: Sequence[str]) -> bool:
    """Whether ``uri`` lies strictly below one of ``prefixes`` (the blobs flytecache may
    delete). A prefix matches whole path segments (``s3://b/cache`` covers ``s3://b/cache/x``,
    not ``s3://b/cache-old/x``), never itself, and local paths match ``file://`` URIs."""
    target = _normalized(uri)
    if target is None:
        return False
    for prefix in prefixes:
        root = _normalized(prefix)
        if root is not None and target.startswith(root.rstrip("/") + "/"):
            return True
    return False


@dataclass(frozen=True, slots=True)
class BlobDeletion:
    """What :func:`delete_blobs` did: blobs deleted and their bytes, those it could not
    delete with the reason (a missing blob counts there too: nothing was freed), and how many
    URIs it left alone as outside the prefixes (``skipped``)."""

    deleted: int = 0
    bytes: int = 0
    failed: tuple[tuple[str, str], ...] = field(default=())
    skipped: int = 0

    def __add__(self, other: BlobDeletion) -> BlobDeletion:
        return BlobDeletion(
            deleted=self.deleted + other.deleted,
            bytes=self.bytes + other.bytes,
            failed=self.failed + other.failed,
            skipped=self.skipped + other.skipped,
        )


def delete_blobs(uris: Iterable[str], prefixes: Sequence[str]) -> BlobDeletion:
    """Delete each of ``uris`` under ``prefixes`` through fsspec (a directory with what it
    holds); URIs outside them are left alone, counted in :attr:`BlobDeletion.skipped`.

    Never raises for a blob: one that cannot be measured or deleted (missing, no permission,
    no fsspec backend for its scheme) is reported in :attr:`BlobDeletion.failed`. The caller
    has already committed the removal of the entries, so a failure leaves a blob behind,
    never an entry pointing at nothing.
    """
    deleted = freed = skipped = 0
    failed: list[tuple[str, str]] = []
    for uri in dict.fromkeys(uris):
        refusal = _refusal(uri, prefixes)
        if refusal is _OUTSIDE:
            skipped += 1
            continue
        if refusal is not None:
            failed.append((uri, refusal))
            continue
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(uri)
            size = int(fs.du(path, total=True))
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            failed.append((uri, "does not exist"))
            continue
        except Exception as error:  # any backend's error: report it, go on with the rest
            failed.append((uri, f"{type(error).__name__}: {error}"))
            continue
        deleted += 1
        freed += size
    return BlobDeletion(deleted=deleted, bytes=freed, failed=tuple(failed), skipped=skipped)


def preview_deletion(uris: Iterable[str], prefixes: Sequence[str]) -> BlobDeletion:
    """What :func:`delete_blobs` would do with ``uris``, touching nothing (a dry run):
    ``deleted`` counts the distinct URIs it would delete, ``skipped`` those outside
    ``prefixes``, ``failed`` the local ones a symbolic link leads out of. ``bytes`` stays 0:
    measuring would read every blob's storage, and a blob may be gone by the real run."""
    deleted = skipped = 0
    failed: list[tuple[str, str]] = []
    for uri in dict.fromkeys(uris):
        refusal = _refusal(uri, prefixes)
        if refusal is None:
            deleted += 1
        elif refusal is _OUTSIDE:
            skipped += 1
        else:
            failed.append((uri, refusal))
    return BlobDeletion(deleted=deleted, failed=tuple(failed), skipped=skipped)


_OUTSIDE = "outside the blob prefixes"


def _refusal(uri: str, prefixes: Sequence[str]) -> str | None:
    """Why ``uri`` is not to be deleted (:data:`_OUTSIDE` or a reason to report), or None."""
    if not is_managed(uri, prefixes):
        return _OUTSIDE
    if _is_local(uri) and not _resolves_under(uri, prefixes):
        return "a symbolic link leads outside the blob prefixes; left alone"
    return None


def _resolves_under(uri: str, prefixes: Sequence[str]) -> bool:
    """Whether the local ``uri``, every symbolic link on its path followed (the blob's own
    too), still lies below a local prefix, itself resolved: deleting through a link must not
    reach outside what flytecache may manage."""
    real = os.path.realpath(uri.removeprefix("file://"))
    for prefix in prefixes:
        if not _is_local(prefix):
            continue
        root = os.path.realpath(prefix.removeprefix("file://")).rstrip("/") + "/"
        if real.startswith(root):
            return True
    return False


def check_backends(prefixes: Sequence[str]) -> None:
    """:class:`InvalidArgumentError` naming a prefix whose URI scheme has no fsspec backend
    installed (``s3://`` without ``s3fs``): checked before any entry is removed, so that a
    prune never removes rows whose blobs it then cannot delete."""
    import fsspec

    for prefix in prefixes:
        protocol = "file" if _is_local(prefix) else prefix.partition("://")[0]
        try:
            fsspec.get_filesystem_class(protocol)
        except (ImportError, ValueError) as error:
            raise InvalidArgumentError(
                f"cannot delete blobs under {prefix}: {error}", field="blob_prefixes"
            ) from None
