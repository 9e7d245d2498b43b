"""The YAML configuration: models, loading, environment overrides, and readable errors.

Every key here is a public contract. Unknown keys are errors (a typo must not silently
fall back to a default), and every error is reported with its key path, for example
``sampling.rules[2].keep: must be between 0% and 100%``.

Environment variables override YAML: ``TAILSIFT_STORAGE__CLICKHOUSE__DSN=http://...``
(prefix ``TAILSIFT_``, ``__`` between levels).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from collector.auth import AuthSettings
from collector.kafka.settings import KafkaQueue
from collector.receivers.signals import Signal, SignalAction
from collector.server_config import GrpcServerSettings, HttpServerSettings
from processors.units import StrictModel, duration_fields, parse_duration_ns, parse_size, readable_files, size_fields
from processors.cardinality import CardinalitySettings
from processors.genai import GenAISettings
from processors.redaction.settings import RedactionSettings
from processors.sampling.settings import SamplingSettings


Role = Literal["all", "receiver", "sampler"]
ROLES: tuple[Role, ...] = ("all", "receiver", "sampler")
"""What a ``tailsift run`` process does (``--role``); see :mod:`collector.pipeline`."""


class ConfigError(Exception):
    """A configuration that cannot run. ``errors`` holds one ``key.path: message`` per problem."""

    def __init__(self, errors: list[str]):
        super().__init__("\n".join(errors))
        self.errors = errors


_Strict = StrictModel


_durations = duration_fields
_sizes = size_fields


class GrpcReceiver(GrpcServerSettings):
    endpoint: str = "127.0.0.1:4317"


class HttpReceiver(HttpServerSettings):
    endpoint: str = "127.0.0.1:4318"


class OtlpReceiver(_Strict):
    grpc: GrpcReceiver | None = Field(default_factory=GrpcReceiver)
    http: HttpReceiver | None = Field(default_factory=HttpReceiver)
    max_request_size: int = 16 * 1024 * 1024
    """Largest request body, checked before and after decompression."""
    metrics: SignalAction = "drop"
    """OTLP metrics on the same ports: drop (accept, count, discard) or off (404 / UNIMPLEMENTED)."""
    logs: Literal["store", "drop", "off"] = "store"
    """OTLP logs on the same ports: store (in ``otel_logs``, linked to their traces; a
    ``--role receiver`` process has no storage and drops them), drop, or off."""

    @property
    def served_signals(self) -> list[Signal]:
        """The signals besides traces that the receivers answer (stored or dropped)."""
        return [signal for signal in ("metrics", "logs") if getattr(self, signal) != "off"]

    _size = _sizes("max_request_size")


class Receivers(_Strict):
    otlp: OtlpReceiver = Field(default_factory=OtlpReceiver)


class WalSettings(_Strict):
    """The in-process queue's write-ahead log (see :mod:`collector.wal`)."""

    enabled: bool = True
    """Acknowledged requests survive a crash; off, they are in memory only until stored."""
    dir: str | None = None
    """Default: ``tailsift-wal`` inside the chdb:// data directory, else ``./tailsift-wal``."""
    fsync: Literal["always", "interval", "never"] = "always"
    """always: answer after fdatasync (group commit; survives power loss). interval: answer
    once written to the OS, sync every 100 ms (survives a process crash). never: no sync."""
    segment_size: int = Field(default=64 * 1024 * 1024, ge=1024 * 1024)

    _size = _sizes("segment_size")


class QueueSettings(_Strict):
    kind: Literal["memory", "kafka"] = "memory"
    max_size: int = 256 * 1024 * 1024
    """Bytes of span data the in-process queue holds before receivers push back (429)."""
    retry_after: float = 1.0
    """Seconds clients are told to wait when the queue is full."""
    kafka: KafkaQueue = Field(default_factory=KafkaQueue)
    wal: WalSettings = Field(default_factory=WalSettings)

    _size = _sizes("max_size")


class ClickHouseSettings(_Strict):
    dsn: SecretStr = SecretStr("chdb://./tailsift-data")
    """``chdb://PATH`` (embedded engine) or ``http(s)://user:pass@host:8123/db``. Secret: it may hold a password."""
    ttl_days: int = Field(default=7, ge=0, le=1825)
    """Days spans are kept (at most 5 years); 0 keeps them forever."""
    batch_rows: int = Field(default=100_000, ge=1)
    flush_interval: int = 5_000_000_000
    """At most one insert per this interval (5s), unless ``batch_rows`` or ``batch_bytes`` are
    pending sooner; the first kept trace after a quiet spell is inserted at once. Each insert
    is a new part in three tables, and ClickHouse's merges rewrite each row once per merge
    level, so fewer, larger inserts cost less: 5s against 1s took the merges from 16.9 to 9.7
    CPU-s in 120 s at 100,000 spans/s (the process 98.2 to 87.4). ClickStack's collector
    batches for 5 s for the same reason. chDB runs an insert without the GIL."""
    max_pending_rows: int = Field(default=200_000, ge=1)
    """Rows waiting for insert before the sampler is made to wait (which fills the queue)."""
    batch_bytes: int = Field(default=32 * 1024 * 1024, ge=1)
    """Span bytes (OTLP) per insert at most, so a batch of huge spans stays a bounded insert."""
    max_pending_bytes: int = Field(default=128 * 1024 * 1024, ge=1)
    """Span bytes (OTLP) waiting for insert before the sampler is made to wait."""
    verify: bool = True
    """https:// only: verify the server's certificate (against ``ca_file`` or the system's CAs)."""
    ca_file: str | None = None
    """https:// only: PEM CA bundle for the server's certificate (a private CA)."""
    cert_file: str | None = None
    """https:// only: PEM client certificate, for servers that require one (with ``key_file``)."""
    key_file: str | None = None

    _files = readable_files("ca_file", "cert_file", "key_file")

    _bytes = _sizes("batch_bytes", "max_pending_bytes")

    _flush = field_validator("flush_interval", mode="before")(
        classmethod(lambda cls, v: parse_duration_ns(v)))

    @property
    def flush_seconds(self) -> float:
        return self.flush_interval / 1e9

    @field_validator("dsn")
    @classmethod
    def _scheme(cls, value: SecretStr) -> SecretStr:
        text = value.get_secret_value()
        if not text.startswith(("chdb://", "http://", "https://")):
            raise ValueError("must start with chdb://, http:// or https://")
        return value


class StorageSettings(_Strict):
    clickhouse: ClickHouseSettings = Field(default_factory=ClickHouseSettings)


class QuerySettings(HttpServerSettings):
    endpoint: str = "127.0.0.1:3200"
    hosts: list[str] = Field(default_factory=list)
    """Host names the query API answers to (the ``Host`` header, without port). Empty: the
    loopback names when bound to loopback, so a web page using DNS rebinding cannot read
    local traces; any name otherwise."""
    metrics_auth: AuthSettings | None = None
    """Tokens for ``/metrics`` alone (a Prometheus scraper's); default: those of ``auth``.
    ``/healthz`` is always open: it says nothing but ``ok``."""


class MemoryLimiterSettings(_Strict):
    """The process-wide memory limit (see :mod:`collector.memory`)."""

    limit: int | None = None
    """Resident memory the process must stay under; default 2GiB, or 80% of the container's
    memory limit if lower."""
    spike: int | None = None
    """Headroom kept below ``limit`` for what arrives between two checks; default 20% of it.
    New data is refused (429) once RSS plus requests in flight pass ``limit - spike``."""
    check_interval: int = 100_000_000

    _time = _durations("check_interval")

    @field_validator("limit", "spike", mode="before")
    @classmethod
    def _optional_size(cls, value: Any) -> Any:
        return None if value is None or value == "auto" else parse_size(value)

    @property
    def limit_bytes(self) -> int:
        from collector.memory import default_limit

        return self.limit if self.limit is not None else default_limit()

    @property
    def spike_bytes(self) -> int:
        return self.spike if self.spike is not None else self.limit_bytes // 5


class MetricsSettings(_Strict):
    enabled: bool = True
    """RED metrics and GenAI usage from every span, before sampling, on ``/metrics``."""


class Settings(BaseSettings):
    """The whole configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(env_prefix="TAILSIFT_", env_nested_delimiter="__", extra="forbid")

    receivers: Receivers = Field(default_factory=Receivers)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    sampling: SamplingSettings = Field(default_factory=SamplingSettings)
    redaction: RedactionSettings = Field(default_factory=RedactionSettings)
    cardinality: CardinalitySettings = Field(default_factory=CardinalitySettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    genai: GenAISettings = Field(default_factory=GenAISettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    query: QuerySettings = Field(default_factory=QuerySettings)
    memory_limiter: MemoryLimiterSettings = Field(default_factory=MemoryLimiterSettings)
    shutdown_timeout: int = 8_000_000_000
    """SIGTERM to exit, whatever the load. With a durable queue (Kafka, or the write-ahead
    log) what is not stored by then is replayed at the next start."""

    _timeout = _durations("shutdown_timeout")

    @model_validator(mode="after")
    def _queue_fits_request(self) -> Settings:
        if self.queue.kind == "memory" and self.queue.max_size < self.receivers.otlp.max_request_size:
            raise ValueError("queue.max_size must be at least receivers.otlp.max_request_size")
        if self.queue.kind == "kafka" and self.queue.kafka.max_in_flight < self.receivers.otlp.max_request_size:
            raise ValueError("queue.kafka.max_in_flight must be at least receivers.otlp.max_request_size")
        if self.cardinality.high_cardinality_action == "hash" and not self.salt:
            raise ValueError("cardinality.high_cardinality_action: hash needs redaction.salt (TAILSIFT_REDACTION__SALT)")
        return self

    @property
    def wal_dir(self) -> Path:
        """Where the in-process queue's write-ahead log lives (``queue.wal.dir``)."""
        if self.queue.wal.dir:
            return Path(self.queue.wal.dir).absolute()
        dsn = self.storage.clickhouse.dsn.get_secret_value()
        path = dsn[len("chdb://"):].partition("?")[0] if dsn.startswith("chdb://") else ""
        if path in ("", "memory", ":memory:"):
            return Path("tailsift-wal").absolute()
        return Path(path).absolute() / "tailsift-wal"

    @property
    def salt(self) -> bytes:
        """The one secret behind every ``hash`` action (redaction and high-cardinality keys)."""
        salt = self.redaction.salt
        return salt.get_secret_value().encode() if salt is not None else b""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The YAML arrives as init kwargs; environment variables win over it.
        return env_settings, init_settings


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part.startswith("function-") or part in ("literal", "str", "float", "int"):
            continue  # pydantic's internal validator names, not user keys
        else:
            path += f".{part}" if path else part
    return path or "(top level)"


def _messages(exc: ValidationError) -> list[str]:
    out = []
    for err in exc.errors():
        msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        out.append(f"{_key_path(tuple(err['loc']))}: {msg}")
    return out


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Read YAML (if given), apply env overrides and validate. Raises :class:`ConfigError`."""
    data: Any = {}
    if path is not None:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise ConfigError([f"{path}: invalid YAML{where}: {problem}"]) from None
        if not isinstance(data, dict):
            raise ConfigError([f"{path}: the top level must be a mapping of keys"])
    data.update(overrides or {})
    try:
        return Settings(**data)
    except ValidationError as exc:
        raise ConfigError(_messages(exc)) from None
