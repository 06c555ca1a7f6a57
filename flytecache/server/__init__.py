"""``flytecache serve``: Flyte 2's ``flyteidl2.cacheservice.v2.CacheService`` over the store.

The Connect protocol (binary protobuf and JSON, HTTP/1.1) from flyteidl2's generated ASGI app,
served by uvicorn, plus ``GET /healthz`` and ``GET /metrics``.
"""

from flytecache.server.app import CacheServiceApp, build_app
from flytecache.server.run import serve
from flytecache.server.settings import ServerSettings, load_token

__all__ = [
    "CacheServiceApp",
    "ServerSettings",
    "build_app",
    "load_token",
    "serve",
]
