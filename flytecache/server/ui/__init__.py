"""The read-only web view of ``flytecache serve`` under ``/ui/`` (docs/web-view.md).

Server-rendered pages (Jinja2, autoescaped) over the store's admin queries; the stylesheet and
the one small script ship inside the package, nothing is fetched from another origin.
"""

from flytecache.server.ui.app import COOKIE, WebView

__all__ = ["COOKIE", "WebView"]
