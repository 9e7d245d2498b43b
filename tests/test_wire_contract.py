"""The compiled hot path (``processors._wire``) against its Python reference.

Both run on the same inputs and must agree: generated requests, the bench's shapes, and
bytes no SDK writes but upb accepts (fields out of order or repeated, messages split in
parts, unknown fields and groups, known fields with the wrong wire type). Payloads are
compared as parsed messages (the extension copies span bytes as they came; the reference
writes them canonically); everything else must be equal as is. Span metrics are compared
end to end: a ``SpanMetrics`` fed through the extension and one fed through the reference
(the extension made to refuse, which is also the production fallback) hold equal series.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from collector.bench.shapes import SHAPES, build
from collector.kafka import envelope
from collector.kafka.envelope_pb2 import Batch
from processors import _wire, reference, wire
from processors.cardinality import CardinalitySettings
from processors.genai import Price, PriceTable
from processors.fragment import Fragment, RootInfo
from processors.sampling import otep235
from processors.sampling.sampler import TailSampler
from processors.sampling.settings import SamplingSettings
from processors.spanmetrics import BUCKETS, SpanMetrics

KEYS = [b"gen_ai.request.model", b"gen_ai.response.model", b"gen_ai.usage.input_tokens", b"prompt_key"]
SUMMABLE = [False, False, True, False]
BOUNDS = list(BUCKETS)


def _normal_split(result: tuple[list[Any], int, int, str | None]) -> tuple[Any, ...]:
    fragments, rejected, expired, reason = result
    return ([(t, TracesData.FromString(p), *rest) for t, p, *rest in fragments], rejected, expired, reason)


def _normal_groups(groups: list[Any]) -> list[Any]:
    return [(*g[:3], [AnyValue.FromString(v) if isinstance(v, bytes) else v for v in g[3]], *g[4:]) for g in groups]


def assert_agree(body: bytes, oldest_ns: int = 0, services: list[int] | None = None) -> ExportTraceServiceRequest:
    """Every compiled function agrees with the reference on ``body`` (which upb accepts)."""
    request = ExportTraceServiceRequest.FromString(body)
    slots = services if services is not None else list(range(len(request.resource_spans)))
    assert _normal_split(_wire.split(body, oldest_ns)) == _normal_split(reference.split(request, oldest_ns))
    _fragments_agree(body, request, oldest_ns)
    assert _wire.span_names(body) == reference.span_names(request)
    groups = _wire.metric_groups(body, slots, KEYS, SUMMABLE, BOUNDS)
    assert _normal_groups(groups) == _normal_groups(reference.metric_groups(request, slots, KEYS, SUMMABLE, BOUNDS))
    # Split and the span metrics in one walk: the same fragments, and the same sums.
    *counted, counted_groups = _wire.split_counting(body, oldest_ns, 7, str, slots, KEYS, SUMMABLE, BOUNDS)
    assert counted == list(_wire.split_fragments(body, oldest_ns, 7, str)) and counted_groups == groups
    return request


def _fragments_agree(body: bytes, request: ExportTraceServiceRequest, oldest_ns: int) -> None:
    """``split_fragments`` makes the ``Fragment`` objects of ``split``'s tuples, and the
    receiver's path (:func:`wire.split_by_trace`) makes the same ones from the extension as
    from the reference (its fallback)."""
    asked: list[int] = []

    def service(at: int) -> str:
        asked.append(at)
        return f"service-{at}"

    made, *made_rest = _wire.split_fragments(body, oldest_ns, 7, service)
    raw, *raw_rest = _wire.split(body, oldest_ns)
    assert made_rest == raw_rest and len(asked) == len(set(asked))
    roots = [None if f.root is None else (f.root.service, f.root.name, f.root.start_ns, f.root.end_ns) for f in made]
    assert [(f.trace_id, f.payload, f.span_count, f.start_ns, f.end_ns, f.has_error, root, f.received_ns, f.source)
            for f, root in zip(made, roots, strict=True)] == [
        (t, p, n, s, e, err, None if r is None else (f"service-{r[0]}", *r[1:]), 7, None) for t, p, n, s, e, err, r in raw]

    def normal(fragments: list[Any]) -> list[Any]:
        return [(f.trace_id, TracesData.FromString(f.payload), f.span_count, f.start_ns, f.end_ns, f.has_error, f.root,
                 f.received_ns) for f in fragments]  # fmt: skip

    assert normal(wire.split_by_trace(request, 7, oldest_ns, body).fragments) == normal(
        wire._from_reference(request, oldest_ns, 7)[0])
    assert_buffer_gives_back(made)


def assert_buffer_gives_back(fragments: list[Fragment]) -> None:
    """The sampler's buffer keeps payloads packed (framing shared, trace ids left out of the
    spans); every kept fragment comes back equal to the one it was given, byte for byte."""
    sampler = TailSampler(SamplingSettings.model_validate({"rules": [{"name": "all", "keep": "100%"}]}))
    decisions = sampler.add(fragments)  # a bound may decide some at once
    by_trace: dict[bytes, list[Fragment]] = {}
    for f in fragments:
        by_trace.setdefault(f.trace_id, []).append(f)
    returned = {d.summary.trace_id: d.fragments for d in decisions + sampler.flush()}
    assert returned == by_trace


# --- generated requests

_ids = st.one_of(st.binary(min_size=16, max_size=16), st.sampled_from([bytes(16), b"", b"\x01" * 15]))
_values = st.one_of(
    st.builds(lambda s: AnyValue(string_value=s), st.sampled_from(["gpt-4o", "", "claude", "p1"])),
    st.builds(lambda n: AnyValue(int_value=n), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda d: AnyValue(double_value=d), st.floats(allow_nan=True)),
    st.builds(lambda b: AnyValue(bool_value=b), st.booleans()),
    st.just(AnyValue()),
)
_attributes = st.lists(st.tuples(st.sampled_from([k.decode() for k in KEYS] + ["other"]), _values), max_size=4)


@st.composite
def requests(draw: Any) -> bytes:
    request = ExportTraceServiceRequest()
    traces = draw(st.lists(_ids, min_size=1, max_size=4))
    for _ in range(draw(st.integers(1, 3))):
        rs = request.resource_spans.add(schema_url=draw(st.sampled_from(["", "https://s/1"])))
        for key, value in draw(_attributes):
            rs.resource.attributes.add(key=key).value.CopyFrom(value)
        if draw(st.booleans()):
            rs.resource.attributes.add(key="service.name").value.string_value = draw(st.sampled_from(["a", "b"]))
        for _ in range(draw(st.integers(0, 3))):
            ss = rs.scope_spans.add(scope={"name": draw(st.sampled_from(["", "lib"]))})
            for _ in range(draw(st.integers(0, 5))):
                start = draw(st.integers(0, 2**64 - 1))
                span = ss.spans.add(
                    trace_id=draw(st.sampled_from(traces)), span_id=draw(st.sampled_from([b"\x01" * 8, bytes(8), b"\x02" * 7])),
                    parent_span_id=draw(st.sampled_from([b"", b"\x03" * 8, b"\x04"])), name=draw(st.sampled_from(["a", "GET /x/1", "é"])),
                    start_time_unix_nano=start, end_time_unix_nano=draw(st.sampled_from([start, 0, 2**64 - 1, min(start + 10**9, 2**64 - 1)])),
                )  # fmt: skip
                span.status.code = draw(st.sampled_from([0, 1, 2, 7]))
                for key, value in draw(_attributes):
                    span.attributes.add(key=key).value.CopyFrom(value)
    return request.SerializeToString()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=requests(), oldest=st.sampled_from([0, 2**40, 2**63]))
def test_generated_requests_agree(body: bytes, oldest: int) -> None:
    assert_agree(body, oldest)


@pytest.mark.parametrize("shape", SHAPES)
def test_bench_shapes_agree(shape: str) -> None:
    assert_agree(build(shape).fresh())


# --- bytes no SDK writes, that upb accepts


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _ld(field: int, payload: bytes) -> bytes:
    return _varint(field << 3 | 2) + _varint(len(payload)) + payload


def _fixed64(field: int, n: int) -> bytes:
    return _varint(field << 3 | 1) + struct.pack("<Q", n)


def _request(*spans: bytes, resource: bytes = b"", scope: bytes = b"") -> bytes:
    return _ld(1, _ld(1, resource) + _ld(2, _ld(1, scope) + b"".join(_ld(2, s) for s in spans)))


TRACE = b"\x0a" * 16
KV = _ld(1, b"gen_ai.usage.input_tokens") + _ld(2, _varint(3 << 3) + _varint(40))
ODD: dict[str, Callable[[], bytes]] = {
    "fields in reverse order": lambda: _request(
        _fixed64(8, 900) + _fixed64(7, 100) + _ld(5, b"op") + _ld(2, b"\x01" * 8) + _ld(1, TRACE)),
    "trace id given twice, the last one wins": lambda: _request(
        _ld(1, b"\x0b" * 16) + _ld(1, TRACE) + _ld(2, b"\x01" * 8) + _fixed64(7, 5)),
    "status in two parts (merged), code last": lambda: _request(
        _ld(1, TRACE) + _ld(2, b"\x01" * 8) + _ld(15, _varint(3 << 3) + _varint(2)) + _ld(15, _ld(2, b"boom"))),
    "resource in two parts": lambda: _ld(1, _ld(1, _ld(1, _ld(1, b"service.name") + _ld(2, _ld(1, b"a"))))
                                         + _ld(2, _ld(2, _ld(1, TRACE) + _ld(2, b"\x01" * 8)))
                                         + _ld(1, _ld(1, KV))),
    "unknown fields and a group": lambda: _request(
        _ld(1, TRACE) + _ld(2, b"\x01" * 8) + _varint(99 << 3) + _varint(7) + _varint(98 << 3 | 3)
        + _varint(1 << 3) + _varint(1) + _varint(98 << 3 | 4) + _varint(97 << 3 | 5) + b"\0\0\0\0"),
    "start time sent as a varint (an unknown field then)": lambda: _request(
        _ld(1, TRACE) + _ld(2, b"\x01" * 8) + _varint(7 << 3) + _varint(5)),
    "attribute value in two parts, integer last": lambda: _request(
        _ld(1, TRACE) + _ld(2, b"\x01" * 8)
        + _ld(9, _ld(1, b"gen_ai.usage.input_tokens") + _ld(2, _ld(1, b"12")) + _ld(2, _varint(3 << 3) + _varint(7)))),
    "duplicate attribute keys, span over resource": lambda: _request(
        _ld(1, TRACE) + _ld(2, b"\x01" * 8) + _ld(9, KV) + _ld(9, _ld(1, b"prompt_key") + _ld(2, _ld(1, b"x")))
        + _ld(9, _ld(1, b"prompt_key") + _ld(2, _ld(1, b"y"))), resource=_ld(1, _ld(1, b"prompt_key") + _ld(2, _ld(1, b"r")))),
    "negative token count and status code": lambda: _request(
        _ld(1, TRACE) + _ld(2, b"\x01" * 8) + _ld(15, _varint(3 << 3) + _varint(2**64 - 1))
        + _ld(9, _ld(1, b"gen_ai.usage.input_tokens") + _ld(2, _varint(3 << 3) + _varint(2**64 - 5)))),
    "no spans, empty messages": lambda: _ld(1, b"") + _ld(1, _ld(2, b"")),
}


_SPAN = _ld(1, TRACE) + _ld(2, b"\x01" * 8) + _fixed64(7, 5)
NOT_SPLITS_FORM: dict[str, bytes] = {
    "empty": b"",
    "not protobuf": b"\xff\xfe\x00garbage",
    "a length as a longer varint than needed": b"\x0a\x80\x00",
    "an empty schema_url written out": _ld(1, _ld(1, b"") + _ld(2, _ld(1, b"") + _ld(2, _SPAN)) + _ld(3, b"")),
    "two scopes": _ld(1, _ld(1, b"") + _ld(2, _ld(1, b"") + _ld(2, _SPAN)) + _ld(2, _ld(1, b"x") + _ld(2, _SPAN))),
    "two resources": _request(_SPAN) + _request(_SPAN, resource=KV),
    "scope before resource": _ld(1, _ld(2, _ld(1, b"") + _ld(2, _SPAN)) + _ld(1, b"")),
    "an unknown field after the spans": _ld(1, _ld(1, b"") + _ld(2, _ld(1, b"") + _ld(2, _SPAN) + _ld(9, b"?"))),
    "a span of another trace, and one with its trace id last": _request(
        _ld(1, b"\x0b" * 16) + _ld(2, b"\x01" * 8), _ld(2, b"\x01" * 8) + _ld(1, TRACE)),
    "a span whose trace id is too short": _request(_ld(1, TRACE[:15]) + _ld(2, b"\x01" * 8)),
    "spans longer than 127 and 16383 bytes": _request(_SPAN + _ld(5, b"n" * 200), _SPAN + _ld(5, b"n" * 20000)),
}


def test_the_buffer_gives_back_payloads_it_cannot_pack_and_every_field() -> None:
    root = RootInfo("svc", "GET /", 1, 2)
    made = [Fragment(TRACE, payload, 1, 1, 2, False, root if i % 2 else None, received_ns=i, source=(3, i) if i % 3 else None)
            for i, payload in enumerate(NOT_SPLITS_FORM.values())]  # fmt: skip
    made += [Fragment(b"\x0c" * 16, NOT_SPLITS_FORM["two scopes"], 2**32 - 1, 0, 2**64 - 1, True, None)]
    assert_buffer_gives_back(made)
    too_many = Fragment(b"\x0d" * 16, b"", 2**32, 0, 1, False, None)
    sampler = TailSampler(SamplingSettings.model_validate({}))
    with pytest.raises(ValueError, match="at most"):
        sampler.add([made[0], too_many])  # refused whole, not cut short
    assert sampler.buffered_spans == 0


@pytest.mark.parametrize("case", ODD)
def test_odd_but_valid_encodings_agree(case: str) -> None:
    request = assert_agree(ODD[case]())
    assert isinstance(request, ExportTraceServiceRequest)


@settings(max_examples=200, deadline=None)
@given(seed=requests(), cut=st.integers(0, 10_000), junk=st.binary(max_size=6))
def test_damaged_bytes_never_crash_and_agree_when_upb_accepts(seed: bytes, cut: int, junk: bytes) -> None:
    """A body cut short or with junk spliced in: the extension raises ValueError or returns,
    never crashes; and when upb accepts the body it gives the reference's answer."""
    at = cut % (len(seed) + 1)
    body = seed[:at] + junk + seed[at + len(junk):]
    try:
        ExportTraceServiceRequest.FromString(body)
    except (DecodeError, RuntimeError, ValueError):
        for call in (lambda: _wire.split(body, 0), lambda: _wire.span_names(body),
                     lambda: _wire.metric_groups(body, [0, 1, 2], KEYS, SUMMABLE, BOUNDS),
                     lambda: _wire.split_counting(body, 0, 7, str, [0, 1, 2], KEYS, SUMMABLE, BOUNDS)):  # fmt: skip
            try:
                call()
            except ValueError:
                pass
        return
    assert_agree(body, services=[0] * 64)


# --- span metrics end to end, and the fallback


def _metrics_state(metrics: SpanMetrics) -> tuple[Any, Any]:
    series = {k: (s.calls, s.errors, s.duration.buckets, round(s.duration.sum, 9)) for k, s in metrics.series.items()}
    usage = {k: (u.input, u.output, u.cache_read, u.cache_write, u.spans, u.unpriced, round(u.cost, 9))
             for k, u in metrics.usage.items()}  # fmt: skip
    return series, usage


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(requests(), min_size=1, max_size=4))
def test_span_metrics_agree_with_the_reference_fallback(bodies: list[bytes]) -> None:
    def make() -> SpanMetrics:
        return SpanMetrics(CardinalitySettings(label_keys=["prompt_key"]), PriceTable([Price(model="gpt*", input=1, output=2)]))

    compiled, fallback = make(), make()
    for body in bodies:
        request = ExportTraceServiceRequest.FromString(body)
        compiled(request, body)
    before = sum(wire.FALLBACKS.values())
    with pytest.MonkeyPatch.context() as patch:
        def refuse(*args: Any) -> Any:
            raise ValueError("refused for the test")

        patch.setattr(_wire, "metric_groups", refuse)
        for body in bodies:
            fallback(ExportTraceServiceRequest.FromString(body), body)
    assert sum(wire.FALLBACKS.values()) == before + len(bodies)
    assert _metrics_state(compiled) == _metrics_state(fallback)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(requests(), min_size=1, max_size=4))
def test_the_receiver_counts_span_metrics_as_the_processor_does(bodies: list[bytes]) -> None:
    """The receiver takes the span metrics' sums from split's walk: its series are those of
    the processor walking each request itself, and so when the extension refuses the body
    (split falls back to the reference, and the metrics walk on their own)."""
    import asyncio

    from collector.ingest import Ingest
    from collector.queue import MemoryQueue

    def make() -> SpanMetrics:
        return SpanMetrics(CardinalitySettings(label_keys=["prompt_key"]), PriceTable([Price(model="gpt*", input=1, output=2)]))

    async def receive(metrics: SpanMetrics) -> None:
        ingest = Ingest(MemoryQueue(1 << 30), None, None, metrics)
        for body in bodies:
            await ingest.export(ExportTraceServiceRequest.FromString(body), body)

    alone, fused, refused = make(), make(), make()
    for body in bodies:
        alone(ExportTraceServiceRequest.FromString(body), body)
    asyncio.run(receive(fused))
    with pytest.MonkeyPatch.context() as patch:
        def refuse(*args: Any) -> Any:
            raise ValueError("refused for the test")

        patch.setattr(_wire, "split_counting", refuse)
        asyncio.run(receive(refused))
    assert _metrics_state(fused) == _metrics_state(alone) == _metrics_state(refused)


# --- the write-ahead log's and Kafka's batch


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=requests(), received=st.sampled_from([0, 1, 2**64 - 1]), error=st.booleans())
def test_packed_batches_agree(body: bytes, received: int, error: bool) -> None:
    fragments = wire.split_by_trace(ExportTraceServiceRequest.FromString(body), received or 1).fragments
    for f in fragments[:1]:
        f.has_error, f.received_ns = error, received
        if f.root is not None:
            f.root.service = ""  # present, though empty
    packed = envelope.pack(fragments)
    assert Batch.FromString(packed) == Batch.FromString(envelope.pack_reference(fragments))
    assert [(f.trace_id, f.payload, f.root) for f in envelope.unpack(packed, (0, 1))] == [
        (f.trace_id, f.payload, f.root) for f in fragments]


@given(p=st.one_of(st.floats(min_value=-1, max_value=2), st.sampled_from([0.0, 1e-18, 0.05, 0.1, 0.5, 1 - 1e-17, 1.0])))
def test_the_sampling_threshold_is_the_same_in_both(p: float) -> None:
    """Every replica and version must toss the same coin: OTEP 235's threshold for p."""
    assert _wire.ot_threshold(p) == otep235.threshold(p)


_OT_VALUE = st.one_of(
    st.builds(lambda t: f"th:{t}", st.text("0123456789abcdefABCDEFxz+_ ١", max_size=16)),
    st.builds(lambda t: f"rv:{t}", st.text("0123456789abcdefz", min_size=12, max_size=15)),
    st.text("abc:;=", max_size=6),
)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(trace_id=st.binary(min_size=16, max_size=16),
       states=st.lists(st.tuples(st.booleans(), st.lists(_OT_VALUE, max_size=3), st.sampled_from(["", "vendor=x"])),
                       max_size=3))  # fmt: skip
def test_upstream_sampling_is_read_the_same_in_both(trace_id: bytes, states: list[tuple[bool, list[str], str]]) -> None:
    """(p_up, R) from the spans' TraceState: the root span's ``ot`` first, else the first
    span's that has one; R is ``rv`` when valid, else the trace id's last 56 bits."""
    data = TracesData()
    spans = data.resource_spans.add().scope_spans.add().spans
    found: list[tuple[bool, tuple[int | None, int | None]]] = []
    for i, (root, values, other) in enumerate(states):
        state = ",".join(x for x in (other, f"ot={';'.join(values)}" if values else "") if x)
        spans.add(trace_id=trace_id, span_id=(i + 1).to_bytes(8, "big"), trace_state=state,
                  parent_span_id=b"" if root else b"\x01" * 8)  # fmt: skip
        parsed = otep235.parse(state)
        if state and parsed != (None, None) and (not found or (root and not found[0][0])):
            found[:] = [(root, parsed)]
    th, rv = found[0][1] if found else (None, None)
    expected = (otep235.probability(th) if th is not None else 1.0, rv if rv is not None else otep235.randomness(trace_id))
    assert _wire.ot_upstream(trace_id, [data.SerializeToString()]) == expected


# --- the sampler's rules: evaluated in the compiled buffer, or in Python


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bodies=st.lists(requests(), min_size=1, max_size=5), wait=st.sampled_from([0, 10**9]),
       rules=st.sampled_from([None, [{"name": "slow", "when": [{"duration": "> 1ms"}, {"status": "error"}], "keep": "50%"},
                                     {"name": "short", "when": [{"duration": "<= 3ms"}], "keep": 0.3},
                                     {"name": "rest", "keep": "10%"}]]))  # fmt: skip
def test_native_rule_decisions_agree_with_python(bodies: list[bytes], wait: int, rules: Any) -> None:
    """The same traces through a sampler deciding the default kind of rules in compiled code
    and one made to evaluate them in Python: the same decisions, counts and summaries."""
    from processors.sampling import sampler as sampling
    from processors.sampling.settings import SamplingSettings

    config: dict[str, Any] = {"decision_wait": wait, "quiet_period": wait, "max_traces": 7}
    settings = SamplingSettings.model_validate({**config, **({"rules": rules} if rules else {})})

    def run() -> tuple[Any, ...]:
        s = sampling.TailSampler(settings, clock=lambda: 0)
        out = []
        for body in bodies:
            out += s.add(wire.split_by_trace(ExportTraceServiceRequest.FromString(body), 1, 0, body).fragments)
            out += s.due()
        out += s.flush()
        return ([(d.summary, d.keep, d.rule, d.sample_rate, [f.payload for f in d.fragments], d.late) for d in out],
                dict(s.stats), dict(s.decisions))  # fmt: skip

    native = run()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sampling, "native_conditions", lambda rule: None)
        assert run() == native
