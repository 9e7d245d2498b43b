"""The web UI: three pages (search ``/``, a trace ``/trace/<id>``, stats ``/stats``) served by
the query API's own server, on its port, with no build step.

The pages are one static shell and plain ES modules (``collector/ui/static``), read once at
start and kept in memory (immutable after :meth:`WebUi.add_routes`, so the event loop reads them
without a lock). The shell holds no data: every trace, span and figure on screen comes from
``/api/*`` with the same bearer token and tenant rules as any API client, so the shell and its
scripts are served without a token and the page asks for one when the API answers 401.

Every UI response carries a Content-Security-Policy that lets the page load and fetch from
its own origin only: no CDN, no third-party request, and no inline script for injected text
to run as.
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

STATIC = Path(__file__).parent / "static"
PAGES = ("/", "/trace/{trace_id}", "/stats")
_PAGE_PATH = re.compile(r"^/(trace/[^/]*|stats)?$")
_TYPES = {".js": "text/javascript", ".css": "text/css", ".html": "text/html", ".svg": "image/svg+xml"}

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                               "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}  # fmt: skip


def is_ui_path(path: str) -> bool:
    """A page or an asset of the UI (served without a token; it holds no data)."""
    return path.startswith("/ui/") or _PAGE_PATH.match(path) is not None


class WebUi:
    """The UI's files, read once; ``add_routes`` mounts the pages and ``/ui/<file>``."""

    def __init__(self, root: Path = STATIC):
        self.files = {
            path.name: (path.read_bytes(), _TYPES[path.suffix]) for path in sorted(root.iterdir()) if path.suffix in _TYPES
        }

    def add_routes(self, router: web.UrlDispatcher) -> None:
        for page in PAGES:
            router.add_get(page, self._page)
        router.add_get("/ui/{name}", self._asset)

    def _file(self, name: str) -> web.Response:
        body, content_type = self.files[name]
        return web.Response(body=body, content_type=content_type, headers=SECURITY_HEADERS)

    async def _page(self, request: web.Request) -> web.Response:
        return self._file("index.html")

    async def _asset(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in self.files or name == "index.html":
            return web.Response(status=404, text="not found", headers=SECURITY_HEADERS)
        return self._file(name)
