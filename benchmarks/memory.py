"""Memory per buffered span: what the sampler holds while it waits to decide, against the
span's size on the wire.

Builds requests of each ``tailsift bench`` shape, splits them by trace as the receiver
does, buffers every fragment in a :class:`TailSampler` that decides nothing yet, and
measures what stays on the Python heap (tracemalloc) once the requests are gone, plus what
the compiled buffer holds outside it (its tables, queues and per-trace entries, which
tracemalloc cannot see; ``TailSampler.native_bytes``):

    python -m benchmarks.memory

Prints bytes per buffered span and the ratio to the span's share of the OTLP request.
"""

from __future__ import annotations

import gc
import tracemalloc

from collector.bench.shapes import SHAPES, build_set
from collector.config import load_config
from collector.otlp import decode_protobuf, split_by_trace
from processors.sampling.sampler import TailSampler

REQUESTS = 400


def measure(shape: str) -> tuple[float, float]:
    templates = build_set(shape)
    settings = load_config(None, {"sampling": {"decision_wait": "1h", "quiet_period": "1h", "max_traces": 10**7,
                                               "max_buffered_spans": 10**8}}).sampling  # fmt: skip
    sampler = TailSampler(settings)
    wire = spans = 0
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(REQUESTS):
        template = templates[i % len(templates)]
        body = template.fresh()
        wire += len(body)
        spans += template.spans
        sampler.add(split_by_trace(decode_protobuf(body)).fragments)  # the request is garbage after this
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before + sampler.native_bytes
    tracemalloc.stop()
    assert sampler.buffered_spans == spans
    return held / spans, wire / spans


def main() -> None:
    print(f"{'shape':<8} {'bytes/span buffered':>20} {'bytes/span OTLP':>16} {'ratio':>7}")
    for shape in SHAPES:
        buffered, wire = measure(shape)
        print(f"{shape:<8} {buffered:>20,.0f} {wire:>16,.0f} {buffered / wire:>6.2f}x")


if __name__ == "__main__":
    main()
