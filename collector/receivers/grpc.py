"""OTLP/gRPC receiver (``TraceService/Export``) on ``grpc.aio``.

The request is taken as raw bytes and decoded here rather than by grpc's deserializer,
so malformed protobuf becomes INVALID_ARGUMENT (grpc would answer INTERNAL) and the
redaction prefilter can scan the bytes the client sent. Oversized messages are refused by
grpc itself with RESOURCE_EXHAUSTED (``grpc.max_receive_message_length``, which also
bounds the decompressed size of gzip messages).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)

from collector.errors import PipelineError, codes_for
from collector.ingest import Ingest

log = logging.getLogger("tailsift.receiver.grpc")
SERVICE = "opentelemetry.proto.collector.trace.v1.TraceService"


def status_for(error: PipelineError) -> grpc.Status:
    """A ``google.rpc.Status`` with RetryInfo when the error is retryable (OTLP's retry hint)."""
    code = codes_for(error).grpc
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=error.message)
    if error.retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(error.retry_after * 1e9))
        detail = any_pb2.Any()
        detail.Pack(error_details_pb2.RetryInfo(retry_delay=delay))
        status.details.append(detail)
    return rpc_status.to_status(status)


class GrpcReceiver:
    """Component: ``start`` binds, ``shutdown`` stops taking calls (safe twice, without start)."""

    def __init__(self, endpoint: str, ingest: Ingest, max_request_size: int):
        self.endpoint = endpoint
        self.ingest = ingest
        self.max_request_size = max_request_size
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_request_size),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
        ])  # fmt: skip
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # raw bytes in and out
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, {"Export": handler})])
        self.port = server.add_insecure_port(self.endpoint)
        if self.port == 0:
            raise RuntimeError(f"cannot listen for OTLP/gRPC on {self.endpoint}")
        await server.start()
        self._server = server

    async def shutdown(self, grace: float = 2.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)

    async def _export(self, body: bytes, context: Any) -> bytes:
        try:
            accepted = await self.ingest.export_body(body, as_json=False)
        except PipelineError as exc:
            await context.abort_with_status(status_for(exc))
            raise AssertionError("unreachable") from None
        except Exception:
            log.exception("unexpected error handling an OTLP/gRPC export")
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")
            raise AssertionError("unreachable") from None
        response = ExportTraceServiceResponse()
        if accepted.rejected_spans:
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(rejected_spans=accepted.rejected_spans, error_message=accepted.error_message)
            )
        return response.SerializeToString()
