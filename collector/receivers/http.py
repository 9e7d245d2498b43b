"""OTLP/HTTP receiver: ``POST /v1/traces`` with protobuf or JSON bodies, optionally gzip.

Answers follow the OTLP/HTTP spec: the response (or the ``google.rpc.Status`` error body)
uses the request's content type; 429/503 carry ``Retry-After``. Size is checked three
times: the declared Content-Length, the bytes actually read, and the decompressed size
(a small gzip body can inflate without limit, so inflation stops at the limit).
"""

from __future__ import annotations

import logging
import zlib

from aiohttp import web
from google.protobuf import json_format
from google.rpc import code_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

from collector.errors import InvalidRequest, PipelineError, RequestTooLarge, UnsupportedMediaType, codes_for
from collector.http_server import serve
from collector.ingest import Ingest
from collector.otlp import decode_json, decode_protobuf

log = logging.getLogger("tailsift.receiver.http")
PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = {PROTOBUF, "application/protobuf"}


def _gunzip(body: bytes, limit: int) -> bytes:
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidRequest(f"malformed gzip body: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise RequestTooLarge(f"request body exceeds {limit} bytes after decompression")
    return out


def _encode(message: object, as_json: bool) -> bytes:
    if as_json:
        return json_format.MessageToJson(message, indent=None).encode()  # type: ignore[arg-type]
    return message.SerializeToString()  # type: ignore[attr-defined, no-any-return]


class HttpReceiver:
    """Component: ``start`` binds, ``shutdown`` stops taking requests (safe twice, without start)."""

    def __init__(self, endpoint: str, ingest: Ingest, max_request_size: int):
        self.endpoint = endpoint
        self.ingest = ingest
        self.limit = max_request_size
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        app = web.Application(client_max_size=self.limit)
        app.router.add_post("/v1/traces", self._traces)
        self._runner, self.port = await serve(app, self.endpoint, auto_decompress=False)

    async def shutdown(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    async def _traces(self, request: web.Request) -> web.Response:
        as_json = request.content_type == JSON
        try:
            body = await self._read_body(request)
            if as_json:
                message = decode_json(body)
            else:
                message = decode_protobuf(body)
            accepted = await self.ingest.export(message, None if as_json else body)
        except PipelineError as exc:
            return self._error(exc, as_json)
        except Exception:
            log.exception("unexpected error handling an OTLP/HTTP export")
            return self._error(PipelineError("internal error"), as_json)
        response = ExportTraceServiceResponse()
        if accepted.rejected_spans:
            response.partial_success.rejected_spans = accepted.rejected_spans
            response.partial_success.error_message = accepted.error_message
        return web.Response(body=_encode(response, as_json), content_type=JSON if as_json else PROTOBUF)

    async def _read_body(self, request: web.Request) -> bytes:
        if request.content_type not in _PROTOBUF_TYPES and request.content_type != JSON:
            raise UnsupportedMediaType(
                f"unsupported content type {request.content_type!r}; use {PROTOBUF} or {JSON}"
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("identity", "gzip", ""):
            raise UnsupportedMediaType(f"unsupported content encoding {encoding!r}; use gzip or none")
        if request.content_length is not None and request.content_length > self.limit:
            raise RequestTooLarge(f"request body of {request.content_length} bytes exceeds {self.limit}")
        # Read the stream ourselves rather than ``request.read()``, which caches the body on
        # the request object: aiohttp's request objects sit in reference cycles, so a cached
        # body lived until the next full garbage collection (see collector.runtime).
        chunks, size = [], 0
        async for chunk in request.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self.limit:
                raise RequestTooLarge(f"request body exceeds {self.limit} bytes")
            chunks.append(chunk)
        body = b"".join(chunks)
        return _gunzip(body, self.limit) if encoding == "gzip" else body

    def _error(self, error: PipelineError, as_json: bool) -> web.Response:
        codes = codes_for(error)
        status = status_pb2.Status(code=getattr(code_pb2, codes.grpc.name, code_pb2.INTERNAL), message=error.message)
        headers = {}
        if error.retry_after is not None:
            headers["Retry-After"] = str(max(1, round(error.retry_after)))
        return web.Response(
            status=codes.http, body=_encode(status, as_json), headers=headers,
            content_type=JSON if as_json else PROTOBUF,
        )  # fmt: skip
