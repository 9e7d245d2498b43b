"""The query API (HTTP JSON), a public contract; also serves ``/metrics`` and ``/healthz``.

- ``GET /api/traces/{trace_id}``: every stored span of a trace, and its log records from
  ``otel_logs`` (404 unknown, 400 malformed).
- ``GET /api/traces?service=&name=&span_service=&span_name=&attribute=&error=&min_duration_ms=&max_duration_ms=&since=&until=&limit=``:
  recent kept traces, newest first, with their tokens, cost and the rule that kept them.
  ``service`` and ``name`` match the root span; ``span_service`` and ``span_name`` any span;
  ``attribute=key=value`` (repeatable) a span or resource attribute of any span.
- ``GET /api/stats?group_by=service|span_name|model|<attribute>&since=&until=&service=&scope=&limit=``:
  count, error rate, p50/p95/p99, tokens and cost per group, each span weighted by its
  trace's sample rate (see :data:`collector.sql.STATS`).

- ``GET /``, ``/trace/{trace_id}``, ``/stats``: the web UI (see :mod:`collector.ui`).

- ``GET /api/decisions/{trace_id}``: why a trace was kept or dropped: the rule that decided,
  its conditions, the rate and, for a percentage, where the trace id fell against the
  threshold (see :mod:`processors.sampling.explain`); 404 when nothing remembers it.

``tenant=`` limits a query to one tenant's spans (see :mod:`collector.auth`); a token
bound to a tenant is always limited to its own (403 for another). With ``query.auth``
every path but ``/healthz`` needs a bearer token (401 otherwise); ``/metrics`` takes the
tokens of ``query.metrics_auth`` when set.

``since``/``until`` take RFC 3339 (``2026-11-24T10:00:00Z``), unix nanoseconds, or a
duration back from now (``15m``). Bad parameters get 400 naming the parameter.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.openmetrics import exposition as openmetrics

from collector.auth import UNAUTHENTICATED, Authenticator, Identity
from collector.errors import Forbidden
from collector.http_server import IDENTITY, ConnectionGuard, auth_middleware, serve
from collector.tls import ServerTls
from collector.ui import WebUi, is_ui_path
from processors.units import parse_duration_ns

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from collector.config import QuerySettings
    from collector.reader import TraceReader

_TRACE_ID = re.compile(r"^[0-9a-fA-F]{32}$")
_GROUP = re.compile(r"^[A-Za-z0-9_.:/-]{1,255}$")


GROUP_ALIASES: dict[str, tuple[str, str]] = {
    "name": ("span_name", ""), "operation": ("span_name", ""), "service.name": ("service", ""),
    "route": ("http.route", "url.path"), "prompt_key": ("prompt_key", "traceloop.association.properties.prompt_key"),
}  # fmt: skip
"""``group_by`` names people type → (what is grouped by, an attribute read when it is empty):
OpenLLMetry keeps prompt keys under ``traceloop.association.properties.``."""


class BadParameter(Exception):
    pass


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


MAX_TIME_NS = 2**63 - 1
"""Times are Int64 nanoseconds in the queries (up to 2262); anything past that is refused,
not wrapped around into a filter that silently matches everything."""


def parse_time_ns(value: str) -> int:
    """RFC 3339, unix nanoseconds, or a duration ago ("15m")."""
    if value.isascii() and value.isdigit():
        ns = int(value)
    else:
        try:
            ns = time.time_ns() - parse_duration_ns(value)
        except (ValueError, OverflowError):
            try:
                ns = int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() * 1e9)
            except (ValueError, OverflowError):
                raise BadParameter("must be RFC 3339, unix nanoseconds, or a duration ago such as 15m") from None
    if not 0 <= ns <= MAX_TIME_NS:
        raise BadParameter("must be between 1970 and 2262")
    return ns


def _integer(key: str, value: str, low: int, high: int) -> int:
    if not (value.isascii() and value.isdigit()) or not low <= int(value) <= high:
        raise BadParameter(f"{key}: must be an integer from {low} to {high}")
    return int(value)


def _milliseconds(key: str, value: str) -> int:
    """A non-negative, finite number of milliseconds, as nanoseconds within UInt64."""
    try:
        ms = float(value)
    except ValueError:
        raise BadParameter(f"{key}: must be a number of milliseconds") from None
    if not math.isfinite(ms) or not 0 <= ms * 1_000_000 < 2**63:
        raise BadParameter(f"{key}: must be a number of milliseconds from 0 to 9.2e12")
    return int(ms * 1_000_000)


def _search_params(query: Any) -> dict[str, Any]:
    known = {"service", "name", "span_service", "span_name", "attribute", "error", "min_duration_ms", "max_duration_ms",
             "since", "until", "limit", "tenant"}  # fmt: skip
    unknown = sorted(set(query) - known)
    if unknown:
        raise BadParameter(f"unknown parameter {unknown[0]!r}")
    out: dict[str, Any] = {"service": query.get("service") or None, "name": query.get("name") or None,
                           "span_name": query.get("span_name") or None, "span_service": query.get("span_service") or None,
                           "tenant": query.get("tenant") or None,
                           "attributes": _attributes(query.getall("attribute", []))}  # fmt: skip
    err = query.get("error")
    if err:
        if err.lower() not in ("true", "false", "1", "0"):
            raise BadParameter("error: must be true or false")
        out["error"] = 1 if err.lower() in ("true", "1") else 0
    for key, target in (("min_duration_ms", "min_duration_ns"), ("max_duration_ms", "max_duration_ns")):
        if query.get(key):
            out[target] = _milliseconds(key, query[key])
    _time_params(query, out)
    out["limit"] = _integer("limit", query.get("limit") or "20", 1, 1000)
    return out


MAX_ATTRIBUTE_FILTERS = 10


def _attributes(values: list[str]) -> list[tuple[str, str]]:
    """``attribute=key=value`` filters (repeatable, all must match): the first ``=`` splits."""
    if len(values) > MAX_ATTRIBUTE_FILTERS:
        raise BadParameter(f"attribute: at most {MAX_ATTRIBUTE_FILTERS} filters")
    pairs = []
    for value in values:
        key, sep, wanted = value.partition("=")
        if not sep or not key.strip():
            raise BadParameter(f"attribute: {value[:100]!r} must be key=value, such as gen_ai.request.model=gpt-4o")
        pairs.append((key.strip(), wanted))
    return pairs


def _time_params(query: Any, out: dict[str, Any]) -> None:
    for key in ("since", "until"):
        if query.get(key):
            try:
                out[f"{key}_ns"] = parse_time_ns(query[key])
            except BadParameter as exc:
                raise BadParameter(f"{key}: {exc}") from None


def _stats_params(query: Any) -> dict[str, Any]:
    unknown = sorted(set(query) - {"group_by", "since", "until", "service", "scope", "limit", "tenant"})
    if unknown:
        raise BadParameter(f"unknown parameter {unknown[0]!r}")
    group_by = query.get("group_by") or "service"
    if not _GROUP.match(group_by):
        raise BadParameter("group_by: must be service, span_name, model or an attribute key")
    group_by, fallback = GROUP_ALIASES.get(group_by, (group_by, ""))
    scope = query.get("scope") or "all"
    if scope not in ("all", "root"):
        raise BadParameter("scope: must be all or root")
    limit = _integer("limit", query.get("limit") or "100", 1, 1000)
    out: dict[str, Any] = {"group_by": group_by, "fallback": fallback, "root_only": scope == "root", "limit": limit,
                           "service": query.get("service") or None, "tenant": query.get("tenant") or None}  # fmt: skip
    _time_params(query, out)
    return out


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


def allowed_hosts(endpoint: str, configured: list[str]) -> frozenset[str] | None:
    """The Host names to answer (None: any). See ``query.hosts``."""
    if configured:
        return frozenset(h.lower() for h in configured)
    host = endpoint.rpartition(":")[0].strip("[]")
    loopback = host in ("localhost", "::1") or host.startswith("127.")
    return LOOPBACK_NAMES | {host} if loopback else None


def _host_name(header: str) -> str:
    """``Host`` without its port (``[::1]:3200`` → ``[::1]``, ``example.com:80`` → ``example.com``)."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.partition("]")[0] + "]"
    return header.rpartition(":")[0] if header.count(":") == 1 else header


class QueryApi:
    """Component serving the query API. It reads through a :class:`collector.reader.TraceReader`
    (None in a process without storage: ``--role receiver``) and serves ``registry`` as /metrics.

    It answers only to the Host names it is meant for (``query.hosts``), so a page in a
    developer's browser cannot reach it through DNS rebinding, and it sends no CORS headers,
    so no other origin can read its answers."""

    def __init__(self, settings: QuerySettings, reader: TraceReader | None, registry: CollectorRegistry, role: str):
        self.settings = settings
        self.endpoint = settings.endpoint
        self.reader = reader
        self._registry = registry
        self.role = role
        self.hosts = allowed_hosts(settings.endpoint, settings.hosts)
        self.tls = ServerTls(settings.tls, "query API") if settings.tls else None
        self.auth = Authenticator(settings.auth) if settings.auth else None
        self.metrics_auth = Authenticator(settings.metrics_auth) if settings.metrics_auth else self.auth
        self.unauthenticated = 0
        self.guard: ConnectionGuard | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application(middlewares=[self._check_host, auth_middleware(self._authenticator, self._refuse)])
        app.router.add_get("/api/traces/{trace_id}", self._trace)
        app.router.add_get("/api/traces", self._search)
        app.router.add_get("/api/stats", self._stats)
        app.router.add_get("/api/decisions/{trace_id}", self._decision)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._health)
        WebUi().add_routes(app.router)
        if self.tls is not None:
            await self.tls.start()
        self._runner, self.port, self.guard = await serve(app, self.settings, self.tls.context if self.tls else None)

    def _authenticator(self, request: web.Request) -> Authenticator | None:
        """/healthz is open (it says only "ok"), and so are the UI's pages and scripts (they hold
        no data; the page sends the token with its API calls); /metrics may have its own tokens."""
        if request.path == "/healthz" or is_ui_path(request.path):
            return None
        return self.metrics_auth if request.path == "/metrics" else self.auth

    def _refuse(self, request: web.Request) -> web.Response:
        self.unauthenticated += 1
        response = _json({"error": UNAUTHENTICATED}, 401)
        response.headers["WWW-Authenticate"] = "Bearer"
        return response

    @staticmethod
    def _tenant(request: web.Request, asked: str | None) -> str | None:
        """The tenant a query is limited to: the token's own if it has one, else ``asked``."""
        identity: Identity | None = request.get(IDENTITY)
        own = identity.tenant if identity is not None else None
        if own is not None and asked not in (None, own):
            raise Forbidden(f"this token reads tenant {own!r} only")
        return own or asked

    @web.middleware
    async def _check_host(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if self.hosts is not None and _host_name(request.headers.get("Host", "")) not in self.hosts:
            return _json({"error": "this Host is not served here; allowed: " + ", ".join(sorted(self.hosts))
                          + " (query.hosts)"}, 421)  # fmt: skip
        response: web.StreamResponse = await handler(request)
        return response

    async def shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self.tls is not None:
            await self.tls.shutdown()

    def _no_storage(self) -> web.Response | None:
        if self.reader is None:
            return _json({"error": f"this process has --role {self.role}; query a sampler"}, 404)
        return None

    def _one_trace(self, request: web.Request, asked: str | None) -> tuple[TraceReader, str, str | None] | web.Response:
        """(reader, trace id, tenant) for a request about one trace, or the refusal (404 no
        storage here, 400 malformed id, 403 another tenant)."""
        if (refusal := self._no_storage()) is not None:
            return refusal
        assert self.reader is not None
        trace_id = request.match_info["trace_id"]
        if not _TRACE_ID.match(trace_id) or int(trace_id, 16) == 0:
            return _json({"error": "trace id must be 32 hex characters, not all zero"}, 400)
        try:
            return self.reader, trace_id.lower(), self._tenant(request, asked)
        except Forbidden as exc:
            return _json({"error": exc.message}, 403)

    async def _trace(self, request: web.Request) -> web.Response:
        if isinstance(found := self._one_trace(request, None), web.Response):
            return found
        reader, trace_id, tenant = found
        spans, logs = await reader.trace(trace_id, tenant)
        if not spans:
            return _json({"error": f"trace {trace_id} not found{self._why_missing(trace_id, tenant)}"}, 404)
        return _json({"trace_id": trace_id, "spans": spans, "logs": logs})

    async def _decision(self, request: web.Request) -> web.Response:
        if isinstance(found := self._one_trace(request, request.query.get("tenant")), web.Response):
            return found
        reader, trace_id, tenant = found
        answer = await reader.explain(trace_id, tenant)
        if answer is None:
            return _json({"error": f"no decision known for trace {trace_id}: not buffered, no longer in the "
                                   "decision caches (sampling.decision_cache_size, sampling.dropped_cache_size) and "
                                   "not stored"}, 404)  # fmt: skip
        return _json(answer)

    def _why_missing(self, trace_id: str, tenant: str | None) -> str:
        """What the sampler remembers of a trace that is not stored (not for tenants' tokens:
        that would tell one tenant about another's traces)."""
        known = self.reader.decision_for(bytes.fromhex(trace_id)) if self.reader is not None and tenant is None else None
        if known is None:
            return ""
        state, rule, rate = known
        if state == "buffered":
            return ": it is buffered, waiting for its decision (sampling.quiet_period / decision_wait)"
        if state == "dropped":
            return f": dropped by rule {rule!r} ({100 / rate:.3g}% kept)" if rate else f": dropped by rule {rule!r}"
        return f": kept by rule {rule!r}, not yet stored (storage.clickhouse.flush_interval)"

    async def _search(self, request: web.Request) -> web.Response:
        return await self._answer(request, _search_params, self._search_answer)

    async def _search_answer(self, reader: TraceReader, p: dict[str, Any]) -> dict[str, Any]:
        return {"traces": await reader.search(p)}

    async def _stats(self, request: web.Request) -> web.Response:
        return await self._answer(request, _stats_params, self._stats_answer)

    async def _stats_answer(self, reader: TraceReader, p: dict[str, Any]) -> dict[str, Any]:
        return {"group_by": p["group_by"], "weighted_by": "sample_rate", "groups": await reader.stats(p)}

    async def _answer(self, request: web.Request, parse: Callable[[Any], dict[str, Any]],
                      query: Callable[[TraceReader, dict[str, Any]], Awaitable[dict[str, Any]]]) -> web.Response:  # fmt: skip
        """Parse the query string (400 naming the parameter), then answer it through the reader."""
        if (refusal := self._no_storage()) is not None:
            return refusal
        assert self.reader is not None
        try:
            params = parse(request.query)
            params["tenant"] = self._tenant(request, params["tenant"])
        except BadParameter as exc:
            return _json({"error": str(exc)}, 400)
        except Forbidden as exc:
            return _json({"error": exc.message}, 403)
        return _json(await query(self.reader, params))

    async def _metrics(self, request: web.Request) -> web.Response:
        """Prometheus text; OpenMetrics (which carries exemplars) when the scraper asks for it."""
        if "application/openmetrics-text" in request.headers.get("Accept", ""):
            body = openmetrics.generate_latest(self._registry)  # type: ignore[no-untyped-call]
            return web.Response(body=body, headers={"Content-Type": openmetrics.CONTENT_TYPE_LATEST})
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _health(self, request: web.Request) -> web.Response:
        return _json({"status": "ok"})
