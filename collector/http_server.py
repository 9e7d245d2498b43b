"""One way to serve an aiohttp app on ``host:port`` (used by the OTLP/HTTP receiver and the query API)."""

from __future__ import annotations

from typing import Any

from aiohttp import web


SHUTDOWN_GRACE = 1.0
"""Seconds requests in progress get at shutdown (aiohttp's default is 60, longer than any
shutdown budget); a request cut off was not acknowledged, and its client sends it again."""


async def serve(app: web.Application, endpoint: str, **runner_options: Any) -> tuple[web.AppRunner, int]:
    """Start ``app`` and return its runner and the bound port (port 0 picks a free one)."""
    runner_options.setdefault("shutdown_timeout", SHUTDOWN_GRACE)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, **runner_options)
    await runner.setup()
    host, _, port = endpoint.rpartition(":")
    site = web.TCPSite(runner, host, int(port), reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise RuntimeError(f"cannot listen on {endpoint}: {exc.strerror}") from None
    server: Any = site._server  # aiohttp keeps the listening sockets here
    sockets = server.sockets if server is not None else []
    return runner, sockets[0].getsockname()[1] if sockets else int(port)
