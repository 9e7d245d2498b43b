"""Ingress processors in isolation: what each costs per span, on one core, in-process.

Every accepted request passes redaction, span-name normalisation and span metrics before
it is queued; this prints spans/s for each on prebuilt LLM-shaped requests (128 traces of
4 spans), clean and with secrets in 1 span of 64, for both redaction prefilter backends:

    python -m benchmarks.processors

Figures depend on the machine; compare them as ratios.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from benchmarks.ingest import build_request
from processors.cardinality import CardinalityProcessor, CardinalitySettings
from processors.genai import Price, PriceTable
from processors.redaction import Redactor
from processors.redaction.prefilter import BACKENDS
from processors.spanmetrics import SpanMetrics


def requests(dirty: bool) -> list[tuple[ExportTraceServiceRequest, bytes]]:
    out = []
    for seed in range(8):
        req = ExportTraceServiceRequest.FromString(build_request(seed))
        if dirty:
            for i, span in enumerate(req.resource_spans[0].scope_spans[0].spans):
                if i % 64 == 0:
                    span.attributes.add(key="llm.prompt").value.string_value = "mail me at ann@example.com, key sk-proj-Zx81mQ2vLr0aYbT7cNd4pEf6"
        out.append((req, req.SerializeToString()))
    return out


def rate(work: Callable[[Any, bytes], Any], batch: list[tuple[ExportTraceServiceRequest, bytes]], copies: bool,
         seconds: float = 2.0) -> float:  # fmt: skip
    """Spans/s of ``work``; ``copies`` hands it fresh copies (it edits requests in place)."""
    spans = sum(len(r.resource_spans[0].scope_spans[0].spans) for r, _ in batch)
    done, elapsed = 0, 0.0
    while elapsed < seconds:
        items = [(copy.deepcopy(r), raw) for r, raw in batch] if copies else batch
        start = time.perf_counter()
        for req, raw in items:
            work(req, raw)
        elapsed += time.perf_counter() - start
        done += spans
    return done / elapsed


def main() -> None:
    prices = PriceTable([Price(model="gpt-4o-mini*", input=0.15, output=0.6)])
    rows = []
    for dirty in (False, True):
        batch = requests(dirty)
        label = "1 span in 64 has secrets" if dirty else "clean"
        for backend in BACKENDS:
            rows.append((f"redaction ({backend} prefilter)", label, rate(Redactor(prefilter_backend=backend), batch, dirty)))
    clean = requests(False)
    rows.append(("span-name normalisation", "clean", rate(CardinalityProcessor(CardinalitySettings()), clean, False)))
    metrics = SpanMetrics(CardinalitySettings(label_keys=["http.route"]), prices)
    rows.append(("span metrics (RED + GenAI usage)", "clean", rate(metrics, clean, False)))
    print(f"{'processor':<36} {'traffic':<26} {'spans/s (one core)':>20}")
    for name, label, value in rows:
        print(f"{name:<36} {label:<26} {value:>20,.0f}")


if __name__ == "__main__":
    main()
