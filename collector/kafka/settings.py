"""The Kafka queue's settings (``queue.kafka``), security included.

``security_protocol`` is Kafka's own: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL. With SSL the
broker's certificate is verified against ``tls.ca_file`` (or the system's CAs), and
``tls.cert_file``/``tls.key_file`` give a client certificate for brokers that require one.
With SASL, ``sasl.mechanism`` is PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512, and the password
is best given in the environment: ``TAILSIFT_QUEUE__KAFKA__SASL__PASSWORD``. Every client
(producer, consumer, admin) is built from :meth:`KafkaQueue.client_options`, so they all
connect the same way.
"""

from __future__ import annotations

import ssl
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator

from collector.server_config import host_port
from processors.units import StrictModel, duration_fields, readable_files, size_fields


class KafkaTls(StrictModel):
    ca_file: str | None = None
    """PEM CA bundle the brokers' certificates are verified against; default: the system's."""
    cert_file: str | None = None
    """PEM client certificate, for brokers that require one (``ssl.client.auth=required``)."""
    key_file: str | None = None
    insecure_skip_verify: bool = False
    """Do not verify the brokers' certificates (encryption without authentication; testing only)."""

    _files = readable_files("ca_file", "cert_file", "key_file")

    @model_validator(mode="after")
    def _loads(self) -> KafkaTls:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together")
        self.context()
        return self

    def context(self) -> ssl.SSLContext:
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
            if self.cert_file and self.key_file:
                ctx.load_cert_chain(self.cert_file, self.key_file)
        except ssl.SSLError as exc:
            raise ValueError(f"not a PEM CA bundle, certificate or key ({exc.reason})") from None
        if self.insecure_skip_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


class KafkaSasl(StrictModel):
    mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    username: str
    password: SecretStr


class KafkaQueue(StrictModel):
    bootstrap_servers: str = "127.0.0.1:9092"
    """Comma-separated host:port list."""
    topic: str = Field(default="tailsift-spans", pattern=r"^[A-Za-z0-9._-]{1,249}$")
    dead_letter_topic: str | None = Field(default=None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    """Where records that cannot be decoded go; default ``<topic>-dlq``."""
    group: str = "tailsift-samplers"
    """Consumer group of the sampler processes."""
    partitions: int = Field(default=12, ge=1)
    """Used only when tailsift creates the topics; the most sampler processes that get work."""
    replication_factor: int = Field(default=1, ge=1)
    """Used only when tailsift creates the topics; 3 on a real cluster."""
    max_record_size: int = Field(default=1024 * 1024, ge=64 * 1024)
    """Largest record value; bigger trace fragments are split. Keep <= the broker's message.max.bytes."""
    max_in_flight: int = 64 * 1024 * 1024
    """Bytes a receiver process has sent and not yet seen acknowledged; beyond it, 429."""
    ack_timeout: int = 5_000_000_000
    """How long a receiver waits for the broker's acknowledgement before answering 503."""
    linger: int = 1_000_000
    """How long the producer waits to fill a batch. A request's fragments are already one
    record per partition, so waiting longer mostly adds ack latency (p99 at half the
    maximum rate: 20.8 ms with 1 ms, 24.0 ms with 5 ms)."""
    commit_interval: int = 1_000_000_000
    client_id: str = "tailsift"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    tls: KafkaTls = Field(default_factory=KafkaTls)
    """Used with SSL and SASL_SSL."""
    sasl: KafkaSasl | None = None
    """Needed with SASL_PLAINTEXT and SASL_SSL."""

    _size = size_fields("max_record_size", "max_in_flight")
    _time = duration_fields("ack_timeout", "linger", "commit_interval")

    @field_validator("bootstrap_servers")
    @classmethod
    def _servers(cls, value: str) -> str:
        for server in value.split(","):
            host_port(server.strip())
        return value

    @model_validator(mode="after")
    def _sasl_when_needed(self) -> KafkaQueue:
        if self.security_protocol.startswith("SASL") and self.sasl is None:
            raise ValueError(f"sasl: security_protocol {self.security_protocol} needs sasl.username and sasl.password")
        return self

    def client_options(self) -> dict[str, Any]:
        """Connection options every aiokafka client (producer, consumer, admin) is built with."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers,
                                   "security_protocol": self.security_protocol}  # fmt: skip
        if self.security_protocol in ("SSL", "SASL_SSL"):
            options["ssl_context"] = self.tls.context()
        if self.sasl is not None and self.security_protocol.startswith("SASL"):
            options.update(sasl_mechanism=self.sasl.mechanism, sasl_plain_username=self.sasl.username,
                           sasl_plain_password=self.sasl.password.get_secret_value())  # fmt: skip
        return options

    @property
    def dead_letters(self) -> str:
        return self.dead_letter_topic or f"{self.topic}-dlq"
