"""One way to serve an aiohttp app (the OTLP/HTTP receiver and the query API): TLS,
connection limits and the bearer-token check, configured by
:class:`collector.server_config.HttpServerSettings`.

Connection hygiene, so that misbehaving clients cannot take the port (or the process's
file descriptors) away from everyone else:

- a connection that has not sent a complete request head within ``read_header_timeout``
  is closed (slowloris; also a connection that sends nothing at all);
- a keep-alive connection idle for ``idle_timeout`` is closed (aiohttp's keep-alive timer);
- at ``max_connections`` an idle connection is closed to admit the new one (the oldest that
  never completed a request first, then the oldest idle keep-alive one), so idle clients
  can never lock out an active one; only when every connection is busy is it refused;
- a TLS handshake must finish within ``read_header_timeout`` too;
- an HTTP/2 client (a gRPC exporter sent to the HTTP port, say) is closed at its first bytes
  with one log line a minute saying what to change, and counted.

aiohttp has no hook for the first two of these, so :class:`ConnectionGuard` wraps its
protocol factory and reads two fields of its connection handler (``_request_count``,
``_request_in_progress``) and the server's table of live connections; aiohttp is pinned
to a minor range in pyproject for that reason, and tests/test_slow_clients.py covers it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from collector.auth import Authenticator
from collector.server_config import HttpServerSettings

SHUTDOWN_GRACE = 1.0
"""Seconds requests in progress get at shutdown (aiohttp's default is 60, longer than any
shutdown budget); a request cut off was not acknowledged, and its client sends it again."""

log = logging.getLogger("tailsift.http")
WARN_EVERY = 60.0
IDENTITY = "tailsift.identity"
"""Where the auth middleware leaves the caller's :class:`~collector.auth.Identity` on the request."""


class _Refuse(asyncio.Protocol):
    """Closes a connection as soon as it is accepted (every slot holds an active request)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


HTTP2_PREFACE = b"PRI * HTTP/2.0"
"""How an HTTP/2 (gRPC) client opens a connection; an HTTP/1.1 server can only refuse it."""


class _Sniff(asyncio.Protocol):
    """Passes a connection to aiohttp's handler, but looks at its first bytes: an HTTP/2
    preface (a gRPC exporter pointed at the HTTP port, the most common first-run mistake)
    is closed with one clear log line instead of aiohttp's 400 and traceback."""

    def __init__(self, handler: Any, guard: ConnectionGuard):
        self.handler, self.guard, self.first = handler, guard, True
        self.transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.handler.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self.first:
            self.first = False
            if data.startswith(HTTP2_PREFACE) and self.guard.wrong_protocol(self.transport):
                return
        self.handler.data_received(data)

    def eof_received(self) -> bool | None:
        return self.handler.eof_received()  # type: ignore[no-any-return]

    def connection_lost(self, exc: Exception | None) -> None:
        self.handler.connection_lost(exc)

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()


class ConnectionGuard:
    """The protocol factory given to ``create_server``: enforces the header timeout and
    the connection cap around aiohttp's own handlers, and spots HTTP/2 clients. Used on
    the event loop only."""

    def __init__(self, server: web.Server, limit: int, header_timeout: float, name: str = "this HTTP port",
                 http2_hint: str = ""):  # fmt: skip
        self.server = server
        self.name = name
        self.limit = limit
        self.header_timeout = header_timeout
        self.http2_hint = http2_hint
        self.stats = {"evicted": 0, "refused": 0, "header_timeouts": 0, "http2_client": 0}
        self._warned = -WARN_EVERY

    def wrong_protocol(self, transport: asyncio.BaseTransport | None) -> bool:
        """An HTTP/2 preface arrived: count it, say why (at most once a minute), close."""
        self.stats["http2_client"] += 1
        now = time.monotonic()
        if now - self._warned >= WARN_EVERY:
            self._warned = now
            log.warning("an HTTP/2 (gRPC) client connected to %s, which speaks HTTP/1.1: %s (%d such connections "
                        "so far; tailsift_connections_closed_total{reason=\"http2_client\"})",
                        self.name, self.http2_hint, self.stats["http2_client"])  # fmt: skip
        if transport is not None:
            transport.close()
        return True

    def __call__(self) -> asyncio.BaseProtocol:
        live: dict[Any, Any] = self.server._connections  # handler -> transport, oldest first
        if len(live) >= self.limit:
            victim = self._victim(live)
            if victim is None:
                self.stats["refused"] += 1
                return _Refuse()
            victim.force_close()
            self.stats["evicted"] += 1
        handler = self.server()
        asyncio.get_running_loop().call_later(self.header_timeout, self._check_head, handler)
        return _Sniff(handler, self)

    @staticmethod
    def _victim(live: dict[Any, Any]) -> Any:
        """The connection to close for a new one: the oldest that never completed a request
        (idle since accepted, or dribbling its headers), else the oldest idle keep-alive one;
        None when every connection has a request in progress."""
        idle = None
        for handler in live:
            if handler.transport is None or handler._request_in_progress:
                continue
            if handler._request_count == 0:
                return handler
            idle = idle or handler
        return idle

    def _check_head(self, handler: Any) -> None:
        if handler._request_count == 0 and handler.transport is not None:
            handler.force_close()
            self.stats["header_timeouts"] += 1


class _GuardedSite(web.TCPSite):
    """``TCPSite`` whose listening socket is served through a :class:`ConnectionGuard`."""

    def __init__(self, runner: web.AppRunner, host: str, port: int, settings: HttpServerSettings,
                 ssl_context: ssl.SSLContext | None, http2_hint: str):  # fmt: skip
        super().__init__(runner, host, port, ssl_context=ssl_context, backlog=1024, reuse_address=True)
        self.settings = settings
        self.http2_hint = http2_hint
        self.guard: ConnectionGuard | None = None

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        header_timeout = self.settings.read_header_timeout / 1e9
        self.guard = ConnectionGuard(server, self.settings.connection_limit, header_timeout, self.settings.endpoint,
                                     self.http2_hint)  # fmt: skip
        self._server = await asyncio.get_running_loop().create_server(
            self.guard, self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=True, ssl_handshake_timeout=header_timeout if self._ssl_context else None)  # fmt: skip


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def auth_middleware(check: Callable[[web.Request], Authenticator | None],
                    refuse: Callable[[web.Request], web.StreamResponse]) -> Any:  # fmt: skip
    """A middleware that lets a request through only with a valid token for its path:
    ``check(request)`` names the authenticator (None: open), ``refuse`` builds the 401."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        authenticator = check(request)
        if authenticator is not None:
            identity = authenticator.check(request.headers.get("Authorization"))
            if identity is None:
                return refuse(request)
            request[IDENTITY] = identity
        return await handler(request)

    return middleware


async def serve(app: web.Application, settings: HttpServerSettings, ssl_context: ssl.SSLContext | None = None,
                http2_hint: str = "it has no HTTP/2 service", **runner_options: Any,
                ) -> tuple[web.AppRunner, int, ConnectionGuard]:  # fmt: skip
    """Start ``app`` and return its runner, the bound port (port 0 picks a free one) and the
    guard. ``http2_hint`` is what the log tells an HTTP/2 client's owner to do instead."""
    runner_options.setdefault("shutdown_timeout", SHUTDOWN_GRACE)
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           keepalive_timeout=settings.idle_timeout / 1e9, **runner_options)  # fmt: skip
    await runner.setup()
    host, _, port = settings.endpoint.rpartition(":")
    site = _GuardedSite(runner, host, int(port), settings, ssl_context, http2_hint)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise RuntimeError(f"cannot listen on {settings.endpoint}: {exc.strerror}") from None
    server: Any = site._server
    sockets = server.sockets if server is not None else []
    assert site.guard is not None
    return runner, sockets[0].getsockname()[1] if sockets else int(port), site.guard
