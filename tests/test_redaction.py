"""Baseline redaction: each kind is found where it hides, look-alikes are left alone."""

from __future__ import annotations

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from processors.redaction import Redactor, luhn_valid

R = Redactor()


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("key=sk-proj-Zx81mQ2vLr0aYbT7cNd4pEf6", "api_key"),
        ("sk-ant-api03-abcdefghijklmnopqrstuvwxyz012345", "api_key"),
        ("Authorization: Bearer f9a8b7c6d5e4f3a2b1c0", "bearer_token"),
        ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTQyIn0.c2lnbmF0dXJl", "jwt"),
        ("aws AKIAZ7Q2M4N6P8R0T2V4 here", "cloud_key"),
        ("AIzaSyA1234567890abcdefghijklmnopqrstuv", "cloud_key"),
        ("contact jane.doe+tag@mail.example.org now", "email"),
        ("card 4242 4242 4242 4242", "card_number"),
        ("card 5555-5555-5555-4444", "card_number"),
        ("amex 378282246310005", "card_number"),
    ],
)
def test_secrets_are_replaced_by_their_kind(text: str, kind: str) -> None:
    out = R.redact_text(text)
    assert f"[REDACTED:{kind}]" in out


@pytest.mark.parametrize(
    "text",
    [
        "task-1234567890123",  # a long number inside a word
        "order 4242424242424243",  # fails Luhn
        "ts 1795517313865095803",  # nanosecond timestamp
        "sk-short",  # too short to be a key
        "the bearer of bad news",  # no token after it
        "user@localhost",  # no domain
        "AKIA-not-a-key",
        "eyJ alone",
    ],
)
def test_look_alikes_are_left_alone(text: str) -> None:
    assert R.redact_text(text) == text


def test_luhn() -> None:
    assert luhn_valid("4242424242424242") and not luhn_valid("4242424242424243")


def test_request_walk_covers_every_text_field() -> None:
    secret = "jane.doe@example.org"
    req = ExportTraceServiceRequest()
    rs = req.resource_spans.add()
    rs.resource.attributes.add(key="owner").value.string_value = secret
    ss = rs.scope_spans.add()
    ss.scope.attributes.add(key="s").value.string_value = secret
    span = ss.spans.add(name=f"charge {secret}", trace_id=b"\x01" * 16, span_id=b"\x02" * 8)
    span.status.message = secret
    arr = span.attributes.add(key="list").value.array_value.values.add()
    arr.string_value = secret
    kv = span.attributes.add(key="map").value.kvlist_value.values.add(key="inner")
    kv.value.string_value = secret
    event = span.events.add(name=secret)
    event.attributes.add(key="e").value.string_value = secret
    span.links.add(trace_id=b"\x03" * 16, span_id=b"\x04" * 8).attributes.add(key="l").value.string_value = secret
    result = R(req)
    assert result.scanned and result.counts["email"] == 9
    assert secret.encode() not in req.SerializeToString()


def test_clean_requests_skip_the_walk() -> None:
    req = ExportTraceServiceRequest()
    req.resource_spans.add().scope_spans.add().spans.add(name="GET /health")
    assert not R(req).scanned
