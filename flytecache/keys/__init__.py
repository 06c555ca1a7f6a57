"""Flyte-compatible cache keys (SPEC §5.2): the catalog key an executor looks entries up by
(:mod:`flytecache.keys.catalog`) and the Flyte 2 SDK's own cache key, its fourth part
(:mod:`flytecache.keys.sdk`). Pure functions, no I/O.
"""

from flytecache.keys.catalog import (
    CatalogKey,
    JSONValue,
    cache_key,
    hash_identifier_except_version,
    hash_literal_map,
    hashify,
    normalize_float,
    objecthash,
    pbhash,
    signature_hash,
)
from flytecache.keys.sdk import (
    SdkInputs,
    flyte_sdk_cache_key,
    flyte_sdk_inputs_hash,
    flyte_sdk_interface_hash,
)

__all__ = [
    "CatalogKey",
    "JSONValue",
    "SdkInputs",
    "cache_key",
    "flyte_sdk_cache_key",
    "flyte_sdk_inputs_hash",
    "flyte_sdk_interface_hash",
    "hash_identifier_except_version",
    "hash_literal_map",
    "hashify",
    "normalize_float",
    "objecthash",
    "pbhash",
    "signature_hash",
]
