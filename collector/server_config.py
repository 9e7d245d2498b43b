"""Settings every server shares: where it listens, TLS, authentication and connection limits.

The names follow the OTel Collector's ``confighttp`` and ``configgrpc``. The defaults keep
a server answering when clients misbehave: a connection that sends nothing or dribbles
its headers is closed after ``read_header_timeout`` (gRPC: ``handshake_timeout``), an
idle keep-alive connection after ``idle_timeout`` (gRPC: ``max_connection_idle``), and past
``max_connections`` the HTTP servers close their longest-idle connection to make room
(gRPC refuses the new one). ``max_connections`` defaults to a quarter of the process's
open-files limit (at most 4,096), which the collector raises to its hard limit at start,
as Go programs do, so three servers full of idle clients still leave descriptors for
storage, the queue and the write-ahead log.
"""

from __future__ import annotations

import resource

from pydantic import Field, field_validator

from collector.auth import AuthSettings
from collector.tls import TlsSettings
from processors.units import StrictModel, duration_fields


def host_port(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{value!r} is not host:port")
    return value


def raise_open_files_limit() -> int:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (Go does this at start); return it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def default_max_connections() -> int:
    return max(16, min(4096, raise_open_files_limit() // 4))


class Endpoint(StrictModel):
    endpoint: str

    _check = field_validator("endpoint")(classmethod(lambda cls, v: host_port(v)))


class Secured(Endpoint):
    tls: TlsSettings | None = None
    """Serve TLS (and mTLS with ``client_ca_file``); see :mod:`collector.tls`."""
    auth: AuthSettings | None = None
    """Require a bearer token; see :mod:`collector.auth`."""
    max_connections: int | None = Field(default=None, ge=1)
    """Open connections at most; default a quarter of the open-files limit, at most 4,096."""

    @property
    def connection_limit(self) -> int:
        return self.max_connections or default_max_connections()


class HttpServerSettings(Secured):
    read_header_timeout: int = 10_000_000_000
    """A new connection must send a request's headers within this long."""
    read_timeout: int = 30_000_000_000
    """A request's body must arrive within this long (408 otherwise)."""
    idle_timeout: int = 60_000_000_000
    """A keep-alive connection with no request for this long is closed."""

    _time = duration_fields("read_header_timeout", "read_timeout", "idle_timeout")


class KeepaliveServerParameters(StrictModel):
    max_connection_idle: int = 300_000_000_000
    """A connection with no call for this long is told to go away (GOAWAY)."""
    max_connection_age: int = 0
    """Connections are recycled after this long (0: never), so load balancers rebalance."""
    max_connection_age_grace: int = 10_000_000_000
    time: int = 7_200_000_000_000
    """How often an idle connection is pinged to see that the client is still there."""
    timeout: int = 20_000_000_000
    """How long a ping may go unanswered before the connection is closed."""

    _time = duration_fields("max_connection_idle", "max_connection_age", "max_connection_age_grace", "time", "timeout")


class Keepalive(StrictModel):
    server_parameters: KeepaliveServerParameters = Field(default_factory=KeepaliveServerParameters)


class GrpcServerSettings(Secured):
    keepalive: Keepalive = Field(default_factory=Keepalive)
    max_concurrent_streams: int = Field(default=256, ge=1)
    """Calls in flight on one connection."""
    handshake_timeout: int = 10_000_000_000
    """A new connection must finish its HTTP/2 (and TLS) handshake within this long."""

    _time = duration_fields("handshake_timeout")

    def grpc_options(self) -> list[tuple[str, int]]:
        """The gRPC core channel arguments for these settings."""
        ka = self.keepalive.server_parameters
        options = [
            ("grpc.max_connection_idle_ms", ka.max_connection_idle // 1_000_000),
            ("grpc.keepalive_time_ms", ka.time // 1_000_000),
            ("grpc.keepalive_timeout_ms", ka.timeout // 1_000_000),
            ("grpc.max_concurrent_streams", self.max_concurrent_streams),
            ("grpc.server_handshake_timeout_ms", self.handshake_timeout // 1_000_000),
            ("grpc.max_allowed_incoming_connections", self.connection_limit),
        ]
        if ka.max_connection_age > 0:
            options += [("grpc.max_connection_age_ms", ka.max_connection_age // 1_000_000),
                        ("grpc.max_connection_age_grace_ms", ka.max_connection_age_grace // 1_000_000)]  # fmt: skip
        return options
