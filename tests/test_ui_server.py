"""The web UI's server side, without a browser: what it serves, with which headers, and that
every module a page imports is shipped (a missing file would only show as a blank page)."""

from __future__ import annotations

import asyncio
import re

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from collector.ui import STATIC, WebUi, is_ui_path


def _fetch(paths: list[str]) -> list[tuple[int, dict[str, str], bytes]]:
    async def run() -> list[tuple[int, dict[str, str], bytes]]:
        app = web.Application()
        WebUi().add_routes(app.router)
        async with TestClient(TestServer(app)) as client:
            out = []
            for path in paths:
                response = await client.get(path)
                out.append((response.status, dict(response.headers), await response.read()))
            return out

    return asyncio.run(run())


def test_every_page_is_the_same_shell_with_a_same_origin_only_policy() -> None:
    answers = _fetch(["/", "/stats", "/trace/" + "ab" * 16, "/trace/not-an-id", "/ui/app.js", "/ui/app.css"])
    shell = answers[0][2]
    for status, headers, body in answers:
        assert status == 200
        policy = headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "script-src 'self'" in policy and "connect-src 'self'" in policy
        assert headers["X-Content-Type-Options"] == "nosniff"
    assert all(body == shell for _, _, body in answers[:4])  # no data in a page: the id is read by the script
    assert answers[4][1]["Content-Type"].startswith("text/javascript")


def test_only_the_shipped_files_are_served() -> None:
    answers = _fetch(["/ui/../query_api.py", "/ui/%2e%2e%2fquery_api.py", "/ui/nope.js", "/ui/index.html", "/trace/a/b"])
    assert [status for status, _, _ in answers] == [404, 404, 404, 404, 404]


def test_every_module_and_stylesheet_a_page_asks_for_is_shipped() -> None:
    shipped = {path.name for path in STATIC.iterdir()}
    wanted = set(re.findall(r'(?:src|href)="/ui/([^"]+)"', (STATIC / "index.html").read_text()))
    for script in STATIC.glob("*.js"):
        wanted |= set(re.findall(r"from '\./([^']+)'", script.read_text()))
    assert wanted and wanted <= shipped, wanted - shipped
    assert wanted >= {path.name for path in STATIC.glob("*.js")}, "a module no page imports"


def test_ui_paths_are_exactly_the_pages_and_assets() -> None:
    assert all(map(is_ui_path, ["/", "/stats", "/trace/abc", "/ui/app.js"]))
    assert not any(map(is_ui_path, ["/api/traces", "/metrics", "/stats/x", "/trace/a/b", "/tracex", "/healthz"]))
