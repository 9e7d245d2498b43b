"""RED metrics and GenAI usage from 100% of spans, before sampling decides anything.

Sampling keeps every error and a few percent of the rest, so metrics counted from stored
spans would overstate errors. These are counted at ingress on every accepted span, the way
the OTel Collector's spanmetrics connector does: calls, errors and a duration histogram by
service, span name, status and GenAI model (plus the configured ``label_keys``), and token
and cost counters by service and model. Label values go through the
:class:`~processors.cardinality.LabelLimiter`, so the series count stays bounded.

Exemplars carry the trace ids of traces that were actually *kept*: storage reports each
kept span (``observe_kept``), so a click on an exemplar always finds its trace.

The per-span work runs in compiled code over the request's bytes
(:func:`processors.wire.metric_groups`); Python sees each distinct label set once per
request, and prometheus_client only formats the series when ``/metrics`` is scraped.
"""

from __future__ import annotations

import bisect
import re
import time
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.samples import Exemplar

from processors.cardinality import OVERFLOW, CardinalitySettings, LabelLimiter
from processors.genai import (CACHE_READ, CACHE_WRITE, INPUT, MAX_TOKENS, OUTPUT, USAGE_KEYS, PriceTable, Usage,
                              model_of, parse_count)
from processors.otlp_values import STATUS_NAMES, value_as_string
from processors.wire import MetricGroup, MetricSpec, metric_groups, resource_services

BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Duration histogram bounds, seconds: from a cache hit to a long LLM call."""
BASE_LABELS = ("service", "span_name", "status", "model")
STATUS_ERROR = 2
TOKEN_KEYS = frozenset((INPUT, OUTPUT, *CACHE_READ, *CACHE_WRITE))


def label_name(key: str) -> str:
    """An attribute key as a Prometheus label name (``prompt.key`` → ``prompt_key``)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key) if key[:1].isalpha() or key[:1] == "_" else "_" + key


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Bounds for the collector's own latencies, seconds: finer at the low end, with 20 ms (the
ack p99 issue 15 aims at) a bound of its own."""


@dataclass(slots=True)
class Histogram:
    """Counts per bucket of ``bounds`` (:data:`BUCKETS` unless given; the last bucket is
    +Inf) and the sum, in seconds."""

    buckets: list[int] = field(default_factory=lambda: [0] * (len(BUCKETS) + 1))
    sum: float = 0.0
    bounds: tuple[float, ...] = BUCKETS

    @classmethod
    def with_bounds(cls, bounds: tuple[float, ...]) -> Histogram:
        return cls([0] * (len(bounds) + 1), 0.0, bounds)

    def observe(self, seconds: float) -> None:
        self.buckets[bisect.bisect_left(self.bounds, seconds)] += 1
        self.sum += seconds

    def cumulative(self, exemplar: Exemplar | None = None) -> list[tuple[str, float] | tuple[str, float, Exemplar]]:
        """Buckets as prometheus_client wants them; the exemplar goes on its value's bucket."""
        out: list[tuple[str, float] | tuple[str, float, Exemplar]] = []
        total = 0
        bounds = self.bounds
        hit = bisect.bisect_left(bounds, exemplar.value) if exemplar is not None else -1
        for i, bound in enumerate((*bounds, float("inf"))):
            total += self.buckets[i]
            label = "+Inf" if i == len(bounds) else repr(bound)
            out.append((label, float(total), exemplar) if i == hit and exemplar is not None else (label, float(total)))
        return out


@dataclass(slots=True)
class Series:
    calls: int = 0
    errors: int = 0
    duration: Histogram = field(default_factory=Histogram)
    exemplar: tuple[str, float, float] | None = None
    """(trace id, duration seconds, unix time) of the latest kept span in this series."""


@dataclass(slots=True)
class UsageSeries:
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0
    spans: int = 0
    cost: float = 0.0
    unpriced: int = 0

    def add(self, use: Usage, spans: int = 1) -> None:
        """``use``: the usage of ``spans`` spans together."""
        self.input += use.input
        self.output += use.output
        self.cache_read += use.cache_read
        self.cache_write += use.cache_write
        self.spans += spans


def _text(value: Any) -> str:
    return str(value.string_value)


def _count(value: Any) -> int:
    """A token count from an OTLP ``AnyValue`` (int, double or, from some SDKs, string)."""
    kind = value.WhichOneof("value") if value is not None else None
    if kind == "int_value":
        return min(max(0, int(value.int_value)), MAX_TOKENS)
    if kind == "double_value":
        return parse_count(value.double_value)  # NaN and infinities are 0, not an exception
    return parse_count(value.string_value) if kind == "string_value" else 0


class SpanMetrics:
    """Settings in ``__init__``, work in ``__call__`` (one decoded request), output in ``collect``.

    A :class:`processors.contract.RequestProcessor` that reads only; its counts are the
    spans it counted (its series are read through ``collect``)."""

    name = "span_metrics"
    mutates = False

    def __init__(self, settings: CardinalitySettings, prices: PriceTable, limiter: LabelLimiter | None = None):
        self.settings = settings
        self.prices = prices
        self.limiter = limiter or LabelLimiter(settings.max_values_per_label, settings.window)
        self.label_keys = list(settings.label_keys)
        self.labels = BASE_LABELS + tuple(label_name(k) for k in self.label_keys)
        self._no_labels = ("",) * len(self.label_keys)
        self._key_names = sorted(USAGE_KEYS | frozenset(self.label_keys))
        self._keys = [k.encode() for k in self._key_names]
        # Integer token counts are summed in the compiled walk; a key that is also a label
        # or a model is read as a value instead.
        self._summable = [k in TOKEN_KEYS and k not in self.label_keys for k in self._key_names]
        self.series: dict[tuple[str, ...], Series] = {}
        self.usage: dict[tuple[str, str], UsageSeries] = {}
        self.series_overflows = 0
        self._generation = 0
        self._overflow_key = (OVERFLOW,) * len(self.labels)

    def __call__(self, request: Any, raw: bytes | None = None) -> Counter[str]:
        """Count one request. The compiled walk (:func:`processors.wire.metric_groups`) sums
        spans per distinct label set; here each label set is read once per request, and the
        limiter and the shared series see it once per request, not per span."""
        spec, services = self.walk_spec(request, raw)
        return self.count(metric_groups(request, raw, *spec), services)

    def walk_spec(self, request: Any, raw: bytes | None = None) -> tuple[MetricSpec, list[str]]:
        """What the compiled walk needs to sum ``request``'s spans (the service slot of each
        resource, the wanted keys, which are summable, the bucket bounds), and the service
        of each slot. The receiver hands it to split, which counts in its own walk."""
        slots: dict[str, int] = {}
        resources = [slots.setdefault(service, len(slots)) for service in resource_services(request, raw)]
        return (resources, self._keys, self._summable, list(BUCKETS)), list(slots)

    def count(self, groups: list[MetricGroup], services: list[str]) -> Counter[str]:
        """Add one request's groups (from :meth:`walk_spec`'s walk) to the series."""
        if self._generation != self.limiter.generation:
            self._prune()
        label_keys, no_labels = self.label_keys, self._no_labels
        local: dict[tuple[Any, ...], list[Any]] = {}  # label set -> [calls, errors, duration ns, bucket counts]
        usage: dict[tuple[str, str], UsageSeries] = {}
        for slot, name, code, values, calls, errors, duration_ns, buckets in groups:
            service = services[slot]
            found = {key: v if isinstance(v, int) else AnyValue.FromString(v)
                     for key, v in zip(self._key_names, values, strict=True) if v is not None}  # fmt: skip
            model, labels = "", no_labels
            if found:
                model = model_of(found, _text)
                if not found.keys().isdisjoint(TOKEN_KEYS):  # an LLM call: read its usage
                    use = Usage.from_attributes(found, lambda v: v if isinstance(v, int) else _count(v) * calls, model)
                    if use is not None:
                        used = usage.get((service, model))
                        if used is None:
                            used = usage[(service, model)] = UsageSeries()
                        used.add(use, calls)
                labels = tuple(value_as_string(found[k]) if k in found else "" for k in label_keys)
            key = (service, name, code, model, labels)
            acc = local.get(key)
            if acc is None:
                local[key] = [calls, errors, duration_ns, buckets]
            else:
                acc[0] += calls
                acc[1] += errors
                acc[2] += duration_ns
                acc[3] = [a + b for a, b in zip(acc[3], buckets, strict=True)]
        admit = self.limiter.admit
        for (service, name, code, model, labels), (calls, errors, duration_ns, buckets) in local.items():
            admitted = (admit("service", service), admit("span_name", name), STATUS_NAMES.get(code, "Unset"),
                   admit("model", model) if model else "",
                   *(admit(k, v) if v else "" for k, v in zip(label_keys, labels, strict=True)))  # fmt: skip
            self._merge(admitted, calls, errors, duration_ns / 1e9, buckets)
        for (service, model), used in usage.items():
            self._merge_usage((admit("service", service), admit("model", model) if model else ""), used)
        return Counter(spans_counted=sum(acc[0] for acc in local.values()))

    def _merge(self, key: tuple[str, ...], calls: int, errors: int, seconds: float, buckets: list[int]) -> None:
        series = self.series.get(key)
        if series is None:
            if len(self.series) >= self.settings.max_series - 1:  # one place is kept for the overflow series
                self.series_overflows += calls
                key = self._overflow_key
                series = self.series.get(key)
            if series is None:
                series = self.series[key] = Series()
        series.calls += calls
        series.errors += errors
        series.duration.buckets = [a + b for a, b in zip(series.duration.buckets, buckets, strict=True)]
        series.duration.sum += seconds

    def _merge_usage(self, key: tuple[str, str], used: UsageSeries) -> None:
        """Cost is linear in tokens, so it is priced once per model and request, not per span."""
        u = self.usage.get(key)
        if u is None:
            u = self.usage[key] = UsageSeries()
        for name in ("input", "output", "cache_read", "cache_write", "spans"):
            setattr(u, name, getattr(u, name) + getattr(used, name))
        cost = self.prices.cost(Usage(key[1], used.input, used.output, used.cache_read, used.cache_write))
        if cost is None:
            u.unpriced += used.spans
        else:
            u.cost += cost

    def _prune(self) -> None:
        """Forget series whose label values the limiter evicted (unseen for a window)."""
        current = self.limiter.current
        names = ("service", "span_name", None, "model", *self.label_keys)
        self.series = {key: s for key, s in self.series.items()
                       if all(n is None or v == "" or current(n, v) for n, v in zip(names, key, strict=True))}  # fmt: skip
        self.usage = {k: u for k, u in self.usage.items() if current("service", k[0]) and (not k[1] or current("model", k[1]))}
        self._generation = self.limiter.generation

    def observe_kept(self, trace_hex: str, service: str, name: str, status: str, attrs: Mapping[str, str],
                     duration_ns: int) -> None:  # fmt: skip
        """A span of a kept trace was stored: make it the exemplar of its series."""
        if attrs:
            key = (service, name, status, model_of(attrs), *[attrs.get(k, "") for k in self.label_keys])
        else:  # most spans: no GenAI or label attributes
            key = (service, name, status, "", *self._no_labels)
        series = self.series.get(key)
        if series is not None:
            series.exemplar = (trace_hex, max(0, duration_ns) / 1e9, time.time())

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        calls = CounterMetricFamily("tailsift_span_calls", "Spans received (100% of traffic, before sampling)",
                                    labels=self.labels)  # fmt: skip
        errors = CounterMetricFamily("tailsift_span_errors", "Spans with status Error (before sampling)",
                                     labels=[n for n in self.labels if n != "status"])  # fmt: skip
        duration = HistogramMetricFamily("tailsift_span_duration_seconds", "Span duration (before sampling)",
                                         labels=self.labels)  # fmt: skip
        error_totals: dict[tuple[str, ...], int] = {}
        for key, s in list(self.series.items()):
            ex = Exemplar({"trace_id": s.exemplar[0]}, s.exemplar[1], s.exemplar[2]) if s.exemplar else None
            calls.add_metric(key, s.calls, exemplar=ex)
            no_status = key[:2] + key[3:]
            error_totals[no_status] = error_totals.get(no_status, 0) + s.errors
            duration.add_metric(key, s.duration.cumulative(ex), s.duration.sum)
        for key, count in error_totals.items():
            errors.add_metric(key, count)
        yield from (calls, errors, duration)
        tokens = CounterMetricFamily("tailsift_genai_tokens", "GenAI tokens (input includes cache reads and writes)",
                                     labels=["service", "model", "type"])  # fmt: skip
        cost = CounterMetricFamily("tailsift_genai_cost_usd", "GenAI cost from the price table, US dollars",
                                   labels=["service", "model"])  # fmt: skip
        unpriced = CounterMetricFamily("tailsift_genai_unpriced_spans", "LLM spans whose model has no price",
                                       labels=["service", "model"])  # fmt: skip
        for (service, model), u in list(self.usage.items()):
            for kind in ("input", "output", "cache_read", "cache_write"):
                tokens.add_metric([service, model, kind], getattr(u, kind))
            cost.add_metric([service, model], u.cost)
            unpriced.add_metric([service, model], u.unpriced)
        yield from (tokens, cost, unpriced)
        overflow = CounterMetricFamily("tailsift_label_overflows", "Label values replaced by __overflow__",
                                       labels=["label"])  # fmt: skip
        for label_key, count in sorted(self.limiter.overflows.items()):
            overflow.add_metric([label_name(label_key)], count)
        overflow.add_metric(["(series)"], self.series_overflows)
        yield overflow
        yield GaugeMetricFamily("tailsift_span_series", "Series in tailsift_span_calls", value=len(self.series))
