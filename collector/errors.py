"""Pipeline errors and the one table that maps them to gRPC and HTTP status codes.

Following the OTel Collector's consumererror: an error is either *retryable* (the client
should send the same data again, after ``retry_after`` seconds) or *permanent* (sending it
again cannot help). Receivers never invent codes; they look them up here, so gRPC and
HTTP clients always get the same answer for the same failure.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc


class PipelineError(Exception):
    """Base class; ``retry_after`` is set only on retryable errors."""

    retry_after: float | None = None

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.message = message
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidRequest(PipelineError):
    """The payload cannot be decoded (malformed protobuf or JSON). Permanent."""


class UnsupportedMediaType(PipelineError):
    """Content type or encoding we do not speak. Permanent."""


class RequestTooLarge(PipelineError):
    """Body over the configured limit, before or after decompression. Permanent."""


class RequestTimeout(PipelineError):
    """The body did not arrive in time (a stalled or very slow upload). Retryable."""

    retry_after = 1.0


class Backpressure(PipelineError):
    """The queue is full. Retryable: the client should back off and send again."""

    retry_after = 1.0


class Unavailable(PipelineError):
    """The pipeline cannot take data now (shutting down, broker unreachable). Retryable."""

    retry_after = 1.0


class Unauthenticated(PipelineError):
    """No valid bearer token (see :mod:`collector.auth`). Permanent: sending again cannot help."""


class Forbidden(PipelineError):
    """A valid token that may not do this (another tenant's data). Permanent."""


@dataclass(frozen=True)
class Codes:
    grpc: grpc.StatusCode
    http: int


# THE table. Order matters only for subclasses (first match wins).
ERROR_CODES: list[tuple[type[PipelineError], Codes]] = [
    (InvalidRequest, Codes(grpc.StatusCode.INVALID_ARGUMENT, 400)),
    (UnsupportedMediaType, Codes(grpc.StatusCode.INVALID_ARGUMENT, 415)),
    (RequestTooLarge, Codes(grpc.StatusCode.RESOURCE_EXHAUSTED, 413)),
    (RequestTimeout, Codes(grpc.StatusCode.DEADLINE_EXCEEDED, 408)),
    (Backpressure, Codes(grpc.StatusCode.RESOURCE_EXHAUSTED, 429)),
    (Unavailable, Codes(grpc.StatusCode.UNAVAILABLE, 503)),
    (Unauthenticated, Codes(grpc.StatusCode.UNAUTHENTICATED, 401)),
    (Forbidden, Codes(grpc.StatusCode.PERMISSION_DENIED, 403)),
]
_INTERNAL = Codes(grpc.StatusCode.INTERNAL, 500)


def codes_for(error: BaseException) -> Codes:
    """Status codes for any exception; unknown ones are internal errors (500 / INTERNAL)."""
    for kind, codes in ERROR_CODES:
        if isinstance(error, kind):
            return codes
    return _INTERNAL
