"""``sampling:`` in the YAML: when a trace is decided, the memory bounds of the buffer, and the
rules. Validated at load time, so a bad rule is a config error that names its key."""

from __future__ import annotations

from pydantic import Field, field_validator

from processors.sampling.rules import Rule, validate_rule_list
from processors.units import StrictModel, duration_fields, size_fields


def _default_rules() -> list[Rule]:
    return [
        Rule.model_validate({"name": "errors", "when": [{"status": "error"}], "keep": "100%"}),
        Rule.model_validate({"name": "slow", "when": [{"duration": ">= 2s"}], "keep": "100%"}),
        Rule.model_validate({"name": "default", "keep": "5%"}),
    ]


class SamplingSettings(StrictModel):
    decision_wait: int = 10_000_000_000
    """Nanoseconds to wait after a trace's first span before deciding it."""
    quiet_period: int = 2_000_000_000
    """Once the root span has arrived, decide after this long without new spans."""
    max_traces: int = Field(default=100_000, ge=1)
    max_spans_per_trace: int = Field(default=10_000, ge=1)
    max_buffered_spans: int = Field(default=1_000_000, ge=1)
    max_buffered_bytes: int = Field(default=256 * 1024 * 1024, ge=1)
    """Span bytes (OTLP) awaiting a decision; past it the oldest trace is decided early."""
    decision_cache_size: int = Field(default=200_000, ge=0)
    """Kept decisions remembered (with their summary), so late spans join their stored trace."""
    dropped_cache_size: int = Field(default=500_000, ge=0)
    """Dropped decisions remembered (about 60 bytes each), so late spans stay dropped and
    ``tailsift explain`` can say why. Apart from the kept ones: dropped traces are most of the
    traffic and must not push kept ones out."""
    rules: list[Rule] = Field(default_factory=_default_rules)
    dry_run: bool = False
    """Decide and record each decision (rule, and ``WouldKeep`` in ``tailsift_traces``) but
    store every trace, at sample rate 1: try rules on real traffic before they drop anything."""

    _waits = duration_fields("decision_wait", "quiet_period")
    _bytes = size_fields("max_buffered_bytes")
    _rules = field_validator("rules")(classmethod(lambda cls, v: validate_rule_list(v)))
