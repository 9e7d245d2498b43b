"""The compiled span rows (``NativeRowBuilder``, ``native/src/rows.rs``) against the Python
reference (``RowBuilder``): for the same kept trace, byte-identical ``RowBinary`` rows, the
same summary row, the same hook calls and the same repair counts. Inputs are generated to
reach every value kind, duplicate keys, events, links, clamped times, OTEP 235 thresholds
and priced LLM calls."""

from __future__ import annotations

import math
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, TracesData

from collector.auth import TENANT_KEY
from collector.rows import MAX_TIMESTAMP_NS, NativeRowBuilder, RowBuilder, encode_span_row
from collector.bench.shapes import SHAPES, build_set
from collector.otlp import decode_protobuf, split_by_trace
from processors.fragment import Fragment
from processors.genai import USAGE_KEYS, Price, PriceTable
from processors.sampling.sampler import Decision, TraceSummary

LABEL_KEYS = ("http.route", "tier")
KEYS = ["service.name", TENANT_KEY, "http.route", "tier", "gen_ai.request.model", "gen_ai.response.model",
        "gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens", "gen_ai.usage.cache_read.input_tokens", "k",
        "ключ", ""]  # fmt: skip
PRICES = PriceTable([Price(model="gpt-*", input=2.5, output=10.0)])


def _value(kind: str, draw: Any) -> AnyValue:
    v = AnyValue()
    if kind == "string":
        v.string_value = draw(st.text(max_size=12))
    elif kind == "bool":
        v.bool_value = draw(st.booleans())
    elif kind == "int":
        v.int_value = draw(st.integers(-(2**63), 2**63 - 1))
    elif kind == "double":
        v.double_value = draw(st.sampled_from([0.5, -0.0, 1e16, 1e-5, 123456789.125, math.inf, math.nan, 7.0]))
    elif kind == "array":
        v.array_value.values.add().string_value = draw(st.text(max_size=4))
        v.array_value.values.add().double_value = 1e22
    elif kind == "kvlist":
        v.kvlist_value.values.add(key="a").value.int_value = draw(st.integers(-5, 5))
    elif kind == "bytes":
        v.bytes_value = draw(st.binary(max_size=6))
    return v  # "empty": no member set


@st.composite
def attributes(draw: Any, max_size: int = 6) -> list[KeyValue]:
    kinds = st.sampled_from(["string", "string", "bool", "int", "double", "array", "kvlist", "bytes", "empty"])
    out = []
    for _ in range(draw(st.integers(0, max_size))):
        key = draw(st.sampled_from(KEYS))
        kind = draw(kinds)
        if key.startswith("gen_ai.usage") and draw(st.booleans()):
            value = AnyValue(int_value=draw(st.integers(-3, 10**13)))
        elif key.startswith("gen_ai") and key.endswith("model"):
            value = AnyValue(string_value=draw(st.sampled_from(["gpt-4o", "claude", ""])))
        else:
            value = _value(kind, draw)
        out.append(KeyValue(key=key, value=value))
    return out


@st.composite
def spans(draw: Any, trace_id: bytes) -> Span:
    start = draw(st.sampled_from([1_700_000_000 * 10**9, MAX_TIMESTAMP_NS + 1, 2**64 - 1, 0]))
    span = Span(trace_id=trace_id, span_id=draw(st.binary(min_size=8, max_size=8)),
                parent_span_id=draw(st.sampled_from([b"", b"\x01" * 8])), name=draw(st.text(max_size=10)),
                kind=draw(st.integers(-1, 7)), start_time_unix_nano=start,
                end_time_unix_nano=max(0, start + draw(st.integers(-10, 10**9))) % 2**64,
                trace_state=draw(st.sampled_from(["", "vendor=x", "ot=th:8;rv:0123456789abcd,other=1", "ot=p:3"])))  # fmt: skip
    span.attributes.extend(draw(attributes()))
    span.status.code = draw(st.integers(0, 4))  # type: ignore[assignment]
    span.status.message = draw(st.text(max_size=8))
    for _ in range(draw(st.integers(0, 2))):
        event = span.events.add(time_unix_nano=draw(st.sampled_from([5, MAX_TIMESTAMP_NS + 9])), name=draw(st.text(max_size=5)))
        event.attributes.extend(draw(attributes(3)))
    for _ in range(draw(st.integers(0, 2))):
        link = span.links.add(trace_id=draw(st.binary(max_size=16)), span_id=draw(st.binary(max_size=8)),
                              trace_state=draw(st.text(max_size=5)))  # fmt: skip
        link.attributes.extend(draw(attributes(3)))
    return span


@st.composite
def decisions(draw: Any) -> Decision:
    trace_id = draw(st.binary(min_size=16, max_size=16))
    fragments = []
    for _ in range(draw(st.integers(1, 3))):
        data = TracesData()
        for _ in range(draw(st.integers(1, 2))):
            rs = ResourceSpans(schema_url="s")
            rs.resource.attributes.extend(draw(attributes(4)))
            scope = ScopeSpans()
            scope.scope.name, scope.scope.version = draw(st.text(max_size=6)), draw(st.text(max_size=3))
            scope.spans.extend(draw(st.lists(spans(trace_id), min_size=1, max_size=3)))
            rs.scope_spans.append(scope)
            data.resource_spans.append(rs)
        count = sum(len(ss.spans) for rs in data.resource_spans for ss in rs.scope_spans)
        fragments.append(Fragment(trace_id, data.SerializeToString(), count, 1, 2, False, None, 3))
    summary = TraceSummary(trace_id)
    for f in fragments:
        summary.absorb(f)
    rate = draw(st.sampled_from([1.0, 20.0, 3.3, 0.5]))
    return Decision(summary, True, draw(st.sampled_from(["errors", "capped"])), rate, fragments)


def _both(d: Decision) -> None:
    ref_calls: list[tuple[Any, ...]] = []
    native_calls: list[tuple[Any, ...]] = []
    ref = RowBuilder(PRICES, lambda *a: ref_calls.append(a))
    native = NativeRowBuilder(PRICES, lambda *a: native_calls.append(a), LABEL_KEYS)
    ref.inconsistent = native.inconsistent = frozenset({"capped"})
    want, got = ref(d, 42), native(d, 42)
    assert got.traces == want.traces
    assert [(r[1], r[2]) for r in got.spans] == [(r[1], r[2]) for r in want.spans]
    for mine, theirs in zip(got.spans, want.spans, strict=True):
        assert mine[0] == encode_span_row(theirs), theirs
    wanted = USAGE_KEYS | set(LABEL_KEYS)
    assert [(*c[:4], c[5], dict(c[4])) for c in native_calls] == \
        [(*c[:4], c[5], {k: v for k, v in c[4].items() if k in wanted}) for c in ref_calls]  # fmt: skip
    assert native.clamped == ref.clamped


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(decisions())
def test_native_rows_are_the_reference_rows(d: Decision) -> None:
    _both(d)


def test_bench_shapes_and_a_span_with_thousands_of_attributes() -> None:
    """Every shape of ``tailsift bench``, and one span with 5,000 attributes (duplicates
    among them), which takes the hashed path of the compiled maps."""
    for shape in SHAPES:
        for fragment in split_by_trace(decode_protobuf(build_set(shape)[0].fresh())).fragments[:40]:
            summary = TraceSummary(fragment.trace_id)
            summary.absorb(fragment)
            _both(Decision(summary, True, "probabilistic", 20.0, [fragment]))
    trace_id = b"\x07" * 16
    span = Span(trace_id=trace_id, span_id=b"\x01" * 8, name="wide")
    for i in range(5000):
        span.attributes.add(key=f"k{i % 3000}").value.int_value = i
    data = TracesData(resource_spans=[ResourceSpans(scope_spans=[ScopeSpans(spans=[span])])])
    fragment = Fragment(trace_id, data.SerializeToString(), 1, 1, 2, False, None, 3)
    summary = TraceSummary(trace_id)
    summary.absorb(fragment)
    _both(Decision(summary, True, "errors", 1.0, [fragment]))
