"""The tail sampler in isolation: microseconds per span to buffer traces and to decide them,
on one core, in-process, with the default rules (errors, slow, 5%).

Fragments are split once from bench-shaped requests (``tailsift bench --shape``), then added
in batches of 128 and decided by ``flush`` the way the pipeline asks (kept decisions only:
a dropped trace never becomes a Python object). Three rounds, each on a fresh sampler:

    python -m benchmarks.sampler [llm|fanout|deep]

Figures depend on the machine; compare commits back to back, as ratios.
"""

from __future__ import annotations

import gc
import sys
import time

from collector.bench.shapes import build_set
from collector.otlp import decode_protobuf, split_by_trace
from processors.fragment import Fragment
from processors.sampling.sampler import TailSampler
from processors.sampling.settings import SamplingSettings


def fragments(shape: str) -> list[Fragment]:
    out: list[Fragment] = []
    for template in build_set(shape):
        for _ in range(40):
            body = template.fresh()
            out += split_by_trace(decode_protobuf(body), time.time_ns(), 0, body).fragments
    return out


def main(shape: str) -> None:
    frags = fragments(shape)
    spans = sum(f.span_count for f in frags)
    gc.freeze()  # the fragments live throughout: keep collections from walking them
    print(f"{shape}: {len(frags)} traces, {spans} spans, default rules")
    for _ in range(3):
        sampler = TailSampler(SamplingSettings())
        started = time.perf_counter()
        for i in range(0, len(frags), 128):
            sampler.add(frags[i : i + 128])
        added = time.perf_counter()
        kept = sampler.flush(dropped=False)
        done = time.perf_counter()
        print(f"  add {1e6 * (added - started) / spans:.2f} µs/span, decide {1e6 * (done - added) / spans:.2f} µs/span, "
              f"kept {len(kept)} of {len(frags)} traces")  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "llm")
