"""Make the Flyte SDKs' local runs cache and serialize through flytecache (SPEC §8).

* :mod:`flytecache.integrations.flyte_sdk` — the Flyte 2 SDK (``flyte``).

Each module imports its SDK only when installed into it, never at import time.
"""
