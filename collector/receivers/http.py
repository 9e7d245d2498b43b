"""OTLP/HTTP receiver: ``POST /v1/traces`` with protobuf or JSON bodies, optionally gzip.

Answers follow the OTLP/HTTP spec: the response (or the ``google.rpc.Status`` error body)
uses the request's content type; 429/503 carry ``Retry-After``. Size is checked three
times: the declared Content-Length, the bytes actually read, and the decompressed size
(a small gzip body can inflate without limit, so inflation stops at the limit). Body bytes
count against the memory limit while they are read, and a body that does not arrive
within ``read_timeout`` is refused (408), so stalled uploads cannot hold memory.

With ``auth`` set, the token is checked before a byte of the body is read (401 with
``WWW-Authenticate: Bearer``); TLS, timeouts and connection limits are
:mod:`collector.http_server`'s.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from functools import partial

from aiohttp import web
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from collector.auth import UNAUTHENTICATED, Authenticator
from collector.errors import (InvalidRequest, PipelineError, RequestTimeout, RequestTooLarge, Unauthenticated,
                              UnsupportedMediaType, codes_for)
from collector.http_server import ConnectionGuard, serve
from collector.ingest import LARGE_BODY, Ingest
from collector.receivers.signals import RESPONSES, Signal
from collector.server_config import HttpServerSettings
from collector.tls import ServerTls

log = logging.getLogger("tailsift.receiver.http")
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = {PROTOBUF, "application/protobuf"}


def gunzip(body: bytes, limit: int) -> bytes:
    """Inflate a gzip body, every member of it (RFC 1952 allows several, and concatenated
    gzip files are one valid body), stopping at ``limit`` bytes. A truncated member or
    trailing bytes that are not gzip are a malformed body, not silently ignored."""
    out: list[bytes] = []
    size, rest = 0, body
    while rest:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(rest, limit + 1 - size)
        except zlib.error as exc:
            raise InvalidRequest(f"malformed gzip body: {exc}") from None
        size += len(chunk)
        if size > limit or inflater.unconsumed_tail:
            raise RequestTooLarge(f"request body exceeds {limit} bytes after decompression")
        if not inflater.eof:
            raise InvalidRequest("malformed gzip body: truncated")
        out.append(chunk)
        rest = inflater.unused_data
    return b"".join(out)


def _encode(message: object, as_json: bool) -> bytes:
    if as_json:
        return json_format.MessageToJson(message, indent=None).encode()  # type: ignore[arg-type]
    return message.SerializeToString()  # type: ignore[attr-defined, no-any-return]


class HttpReceiver:
    """Component: ``start`` binds, ``shutdown`` stops taking requests (safe twice, without start)."""

    def __init__(self, settings: HttpServerSettings, ingest: Ingest, max_request_size: int,
                 served: tuple[Signal, ...] = ()):  # fmt: skip
        self.settings = settings
        self.served = served
        self.endpoint = settings.endpoint
        self.ingest = ingest
        self.limit = max_request_size
        self.body_timeout = settings.read_timeout / 1e9
        self.tls = ServerTls(settings.tls, "OTLP/HTTP") if settings.tls else None
        self.auth = Authenticator(settings.auth) if settings.auth else None
        self.unauthenticated = 0
        self.guard: ConnectionGuard | None = None
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application(client_max_size=self.limit)
        app.router.add_post("/v1/traces", self._traces)
        for signal in self.served:
            app.router.add_post(f"/v1/{signal}", partial(self._signal, signal))
        if self.tls is not None:
            await self.tls.start()
        self._runner, self.port, self.guard = await serve(
            app, self.settings, self.tls.context if self.tls else None, auto_decompress=False,
            http2_hint="send OTLP/gRPC to the gRPC port (4317), or set OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf "
                       "(the Python SDK's opentelemetry-instrument defaults to grpc)")  # fmt: skip

    async def shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
        if self.tls is not None:
            await self.tls.shutdown()

    async def _traces(self, request: web.Request) -> web.Response:
        as_json = request.content_type == JSON
        reserved = [0]
        try:
            tenant = self._tenant(request)
            body = await self._read_body(request, reserved)
            accepted = await self.ingest.export_body(body, as_json, tenant)
        except PipelineError as exc:
            return self._error(exc, as_json)
        except Exception:
            log.exception("unexpected error handling an OTLP/HTTP export")
            return self._error(PipelineError("internal error"), as_json)
        finally:
            if self.ingest.memory is not None:
                self.ingest.memory.release(reserved[0])
        response = ExportTraceServiceResponse()
        if accepted.rejected_spans:
            response.partial_success.rejected_spans = accepted.rejected_spans
            response.partial_success.error_message = accepted.error_message
        return web.Response(body=_encode(response, as_json), content_type=JSON if as_json else PROTOBUF)

    async def _signal(self, signal: Signal, request: web.Request) -> web.Response:
        """Metrics or logs: read like traces (auth, limits); logs stored, or counted and dropped."""
        as_json = request.content_type == JSON
        reserved = [0]
        try:
            tenant = self._tenant(request)
            body = await self._read_body(request, reserved)
            await self.ingest.export_signal(signal, body, as_json, tenant)
        except PipelineError as exc:
            return self._error(exc, as_json)
        finally:
            if self.ingest.memory is not None:
                self.ingest.memory.release(reserved[0])
        return web.Response(body=_encode(RESPONSES[signal](), as_json), content_type=JSON if as_json else PROTOBUF)

    def _tenant(self, request: web.Request) -> str | None:
        """The caller's tenant ("" for none) when auth is on; None when it is off."""
        if self.auth is None:
            return None
        identity = self.auth.check(request.headers.get("Authorization"))
        if identity is None:
            self.unauthenticated += 1
            raise Unauthenticated(UNAUTHENTICATED)
        return identity.tenant or ""

    async def _read_body(self, request: web.Request, reserved: list[int]) -> bytes:
        """The body, decompressed. Its bytes are reserved with the memory limiter as they
        come (all at once when Content-Length announces them), added to ``reserved[0]`` for
        the caller to release; a body not received within ``body_timeout`` is refused."""
        if request.content_type not in _PROTOBUF_TYPES and request.content_type != JSON:
            raise UnsupportedMediaType(
                f"unsupported content type {request.content_type!r}; use {PROTOBUF} or {JSON}"
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", ""):
            raise UnsupportedMediaType(f"unsupported content encoding {encoding!r}; use gzip or none")
        if request.content_length is not None and request.content_length > self.limit:
            raise RequestTooLarge(f"request body of {request.content_length} bytes exceeds {self.limit}")
        memory = self.ingest.memory
        if memory is not None and request.content_length:
            memory.reserve(request.content_length)
            reserved[0] += request.content_length
        # Read the stream ourselves rather than ``request.read()``, which caches the body on
        # the request object: aiohttp's request objects sit in reference cycles, so a cached
        # body lived until the next full garbage collection (see collector.runtime).
        chunks, size = [], 0
        try:
            async with asyncio.timeout(self.body_timeout):
                async for chunk in request.content.iter_chunked(1 << 16):
                    size += len(chunk)
                    if size > self.limit:
                        raise RequestTooLarge(f"request body exceeds {self.limit} bytes")
                    if memory is not None and size > reserved[0]:
                        memory.reserve(size - reserved[0])
                        reserved[0] = size
                    chunks.append(chunk)
        except TimeoutError:
            raise RequestTimeout(f"request body not received within {self.body_timeout:g}s") from None
        body = b"".join(chunks)
        if encoding != "gzip":
            return body
        return await asyncio.to_thread(gunzip, body, self.limit) if len(body) >= LARGE_BODY else gunzip(body, self.limit)

    def _error(self, error: PipelineError, as_json: bool) -> web.Response:
        codes = codes_for(error)
        status = status_pb2.Status(code=getattr(code_pb2, codes.grpc.name, code_pb2.INTERNAL), message=error.message)
        headers = {"WWW-Authenticate": "Bearer"} if codes.http == 401 else {}
        if error.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(error.retry_after)))
        return web.Response(
            status=codes.http, body=_encode(status, as_json), headers=headers,
            content_type=JSON if as_json else PROTOBUF,
        )  # fmt: skip
