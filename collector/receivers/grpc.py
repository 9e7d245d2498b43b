"""OTLP/gRPC receiver (``TraceService/Export``) on ``grpc.aio``.

The request is taken as raw bytes and decoded here rather than by grpc's deserializer,
so malformed protobuf becomes INVALID_ARGUMENT (grpc would answer INTERNAL) and the
redaction prefilter can scan the bytes the client sent. Oversized messages are refused by
grpc itself with RESOURCE_EXHAUSTED (``grpc.max_receive_message_length``, which also
bounds the decompressed size of gzip messages).

With ``auth`` set, the ``authorization`` metadata must carry a valid bearer token
(UNAUTHENTICATED otherwise). TLS comes from :class:`collector.tls.ServerTls` (rotated at
handshakes), connection limits from :class:`collector.server_config.GrpcServerSettings`.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceResponse,
)

from collector.auth import UNAUTHENTICATED, Authenticator
from collector.errors import PipelineError, Unauthenticated, codes_for
from collector.ingest import Ingest
from collector.receivers.signals import RESPONSES, SERVICES, Signal
from collector.server_config import GrpcServerSettings
from collector.tls import ServerTls

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

    def __init__(self, settings: GrpcServerSettings, ingest: Ingest, max_request_size: int,
                 served: tuple[Signal, ...] = ()):  # fmt: skip
        self.settings = settings
        self.served = served
        self.endpoint = settings.endpoint
        self.ingest = ingest
        self.max_request_size = max_request_size
        self.tls = ServerTls(settings.tls, "OTLP/gRPC") if settings.tls else None
        self.auth = Authenticator(settings.auth) if settings.auth else None
        self.unauthenticated = 0
        self._server: grpc.aio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        server = grpc.aio.server(options=[
            ("grpc.max_receive_message_length", self.max_request_size),
            ("grpc.max_send_message_length", 4 * 1024 * 1024),
            *self.settings.grpc_options(),
        ])  # fmt: skip
        handler = grpc.unary_unary_rpc_method_handler(self._export)  # raw bytes in and out
        handlers = [grpc.method_handlers_generic_handler(SERVICE, {"Export": handler})]
        for signal in self.served:
            export = grpc.unary_unary_rpc_method_handler(partial(self._signal, signal))
            handlers.append(grpc.method_handlers_generic_handler(SERVICES[signal], {"Export": export}))
        server.add_generic_rpc_handlers(handlers)
        if self.tls is not None:
            self.port = server.add_secure_port(self.endpoint, self.tls.grpc_credentials())
        else:
            self.port = server.add_insecure_port(self.endpoint)
        if self.port == 0:
            raise RuntimeError(f"cannot listen for OTLP/gRPC on {self.endpoint}")
        await server.start()
        self._server = server
        # No reload task for gRPC: its credentials ask ServerTls.grpc_fetch at each handshake.

    async def shutdown(self, grace: float = 2.0) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace)

    async def _signal(self, signal: Signal, body: bytes, context: Any) -> bytes:
        """Metrics or logs: authenticated like traces; logs stored, or counted and dropped."""
        try:
            tenant = self._tenant(context)
            await self.ingest.export_signal(signal, body, False, tenant)
        except PipelineError as exc:
            await context.abort_with_status(status_for(exc))
            raise AssertionError("unreachable") from None
        return RESPONSES[signal]().SerializeToString()  # type: ignore[no-any-return]

    def _tenant(self, context: Any) -> str | None:
        """The caller's tenant ("" for none) when auth is on; None when it is off."""
        if self.auth is None:
            return None
        header = next((str(v) for k, v in context.invocation_metadata() or () if k == "authorization"), None)
        identity = self.auth.check(header)
        if identity is None:
            self.unauthenticated += 1
            raise Unauthenticated(UNAUTHENTICATED)
        return identity.tenant or ""

    async def _export(self, body: bytes, context: Any) -> bytes:
        try:
            accepted = await self.ingest.export_body(body, False, self._tenant(context))
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
