"""Label cardinality: span-name normalisation, the per-key value budget, high-cardinality keys,
and the span metrics built on them."""

from __future__ import annotations

import re
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.config import ConfigError, load_config
from processors.cardinality import OVERFLOW, CardinalityProcessor, CardinalitySettings, LabelLimiter, normalize_name
from processors.genai import PriceTable
from processors.otlp_values import add_attributes
from processors.spanmetrics import SpanMetrics


@pytest.mark.parametrize(("name", "expected"), [
    ("GET /users/8812", "GET /users/{id}"),
    ("GET /users/8812/orders/77", "GET /users/{id}/orders/{id}"),
    ("GET /carts/3f2c1a9e-4b7d-4c1e-9a2b-5d6e7f8a9b0c", "GET /carts/{uuid}"),
    ("fetch 9f86d081884c7d659a2feaa0c55ad015", "fetch {hex}"),
    ("notify ann@example.com", "notify {email}"),
    ("SELECT * FROM t WHERE id = 42", "SELECT * FROM t WHERE id = {id}"),
    ("GET /search?page=3&q=x", "GET /search?page={id}&q=x"),
    ("chat gpt-4o", "chat gpt-4o"),  # a model name is not an id
    ("chat claude-3-5-sonnet-20241022", "chat claude-3-5-sonnet-20241022"),
    ("GET /v2/users", "GET /v2/users"),
    ("HTTP/1.1 upgrade", "HTTP/1.1 upgrade"),
    ("retrieve", "retrieve"),
    ("deadbeefcafe", "deadbeefcafe"),  # hex-looking words without digits stay
])  # fmt: skip
def test_span_names_are_normalised(name: str, expected: str) -> None:
    assert normalize_name(name) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def test_limiter_budget_overflow_and_window() -> None:
    clock = Clock()
    limiter = LabelLimiter(max_values=3, window_ns=100, clock=clock)
    assert [limiter.admit("k", v) for v in "abcde"] == ["a", "b", "c", OVERFLOW, OVERFLOW]
    assert limiter.overflows["k"] == 2 and limiter.admit("other", "x") == "x"  # budgets are per key
    clock.now = 150  # next window: everything seen in the previous one keeps its place
    assert limiter.admit("k", "a") == "a" and limiter.admit("k", "d") == OVERFLOW
    clock.now = 250  # b and c were not seen in the window that just ended: evicted
    assert limiter.admit("k", "d") == "d" and limiter.admit("k", "e") == "e"
    assert limiter.distinct("k") == 3 and limiter.generation == 2


def _request(names: list[str], attrs: dict[str, Any] | None = None, service: str = "api") -> ExportTraceServiceRequest:
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = service
    ss = rs.scope_spans.add()
    for i, name in enumerate(names):
        span = ss.spans.add(name=name, trace_id=bytes([1] * 16), span_id=(i + 1).to_bytes(8, "big"),
                            start_time_unix_nano=10**18, end_time_unix_nano=10**18 + 30_000_000)  # fmt: skip
        add_attributes(span.attributes, attrs or {})
    return req


@pytest.mark.parametrize("action", ["keep", "drop", "hash"])
def test_high_cardinality_keys_and_original_names(action: str) -> None:
    settings = CardinalitySettings(high_cardinality_action=action, original_name_attribute="tailsift.original_name")
    req = _request(["GET /users/8812"], {"user.id": "u-8812", "http.route": "/users/:id"})
    counts = CardinalityProcessor(settings, salt=b"pepper")(req, req.SerializeToString())
    span = req.resource_spans[0].scope_spans[0].spans[0]
    attrs = {kv.key: kv.value.string_value for kv in span.attributes}
    assert span.name == "GET /users/{id}" and attrs["tailsift.original_name"] == "GET /users/8812"
    assert counts["span_names_normalized"] == 1
    if action == "keep":
        assert attrs["user.id"] == "u-8812"
    elif action == "drop":
        assert "user.id" not in attrs and counts["high_cardinality_dropped"] == 1
    else:
        assert re.fullmatch(r"\[HASH:user\.id:[0-9a-f]{16}\]", attrs["user.id"]) and counts["high_cardinality_hashed"] == 1


@pytest.mark.parametrize(("config", "message"), [
    ({"cardinality": {"label_keys": ["user.id"]}}, "'user.id' is in high_cardinality_keys"),
    ({"cardinality": {"high_cardinality_action": "hash"}}, "hash needs redaction.salt"),
    ({"cardinality": {"window": "soon"}}, "cardinality.window"),
    ({"genai": {"prices": [{"model": "gpt-4o", "input": -1, "output": 1}]}}, "genai.prices[0].input"),
])  # fmt: skip
def test_bad_cardinality_config_names_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(overrides=config)
    assert message in str(err.value)


def test_span_metrics_stay_under_budget_and_count_the_overflow() -> None:
    settings = CardinalitySettings(label_keys=["tenant"], max_values_per_label=10, max_series=1000)
    metrics = SpanMetrics(settings, PriceTable([]))
    for i in range(500):
        req = _request(["GET /items"], {"tenant": f"t{i}", "user.id": f"u{i}"})
        metrics(req, req.SerializeToString())
    tenants = {key[4] for key in metrics.series}
    assert len(tenants) == 11 and OVERFLOW in tenants  # 10 real values + overflow
    assert metrics.series[("api", "GET /items", "Unset", "", OVERFLOW)].calls == 490
    assert sum(s.calls for s in metrics.series.values()) == 500
    assert metrics.limiter.overflows["tenant"] == 490
    assert "user_id" not in metrics.labels


def test_span_metrics_total_series_bound() -> None:
    settings = CardinalitySettings(label_keys=["tenant"], max_values_per_label=1000, max_series=50)
    metrics = SpanMetrics(settings, PriceTable([]))
    for i in range(200):
        metrics(_request(["op"], {"tenant": f"t{i}"}))
    assert len(metrics.series) == 50 and metrics.series_overflows == 151
