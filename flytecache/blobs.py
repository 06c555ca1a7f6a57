"""Outputs stored by reference: checking that a URI exists before storing it, and reading the
``LiteralMap`` back through fsspec. A blob that is gone or unreadable makes the entry a miss
(:class:`~flytecache.errors.StaleEntryError`, SPEC §5.3)."""

from __future__ import annotations

from flyteidl2.core import literals_pb2

from flytecache.errors import NotFoundError, StaleEntryError, StorageError

__all__ = ["check_uri_exists", "read_outputs"]


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
