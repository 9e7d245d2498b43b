"""The extension's allocator (mimalloc) asks for no transparent huge pages, and gives freed
memory back when the memory limiter asks (``_wire.release_memory``).

mimalloc madvises its arenas for huge pages by default; with the collector's churn each
page mimalloc gave back was faulted in again as a 2 MiB page that the kernel zeroed first,
~4% of the CPU under load (benchmarks/README.md, step 9). ``native/src/lib.rs`` turns the
option off by its number in mimalloc's header, so a dependency update that renumbers it
would silently bring the cost back: this test would then see huge pages in a process that
only ran the extension.

mimalloc keeps freed pages for a second before it purges them. A wave of decided traces
is copied into Python and freed in the extension, so for that second it counted twice in
RSS; under 512 KiB spans that took the collector past its memory bound (tests/test_overload).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")

CHURN = """
import time
from collector.bench.shapes import build_set
from processors import _wire
bodies = [t.fresh() for t in build_set("llm") for _ in range(8)]
kept = []
for _ in range(200):
    for body in bodies:
        kept.append(_wire.split_fragments(body, 0, time.time_ns(), lambda at: "svc"))
    if len(kept) > 300:
        kept.clear()
rollup = open("/proc/self/smaps_rollup").read().splitlines()
print(next(line.split()[1] for line in rollup if line.startswith("AnonHugePages")))
"""


@pytest.mark.skipif(not THP.exists() or "[madvise]" not in THP.read_text(),
                    reason="huge pages are only given on request (madvise) here when this is checked")  # fmt: skip
def test_the_extension_gets_no_huge_pages() -> None:
    out = subprocess.run([sys.executable, "-c", CHURN], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)  # fmt: skip
    assert int(out.stdout.strip()) == 0, f"{out.stdout.strip()} kB of huge pages after the extension's churn"


WAVE = """
import os, time
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from processors import _wire
from processors.sampling.sampler import TailSampler
from processors.sampling.settings import SamplingSettings

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

sampler = TailSampler(SamplingSettings.model_validate({"rules": [{"name": "all", "keep": "100%"}]}))
blob = "p" * (512 * 1024)
for _ in range(25):  # 200 traces of one 512 KiB span: 100 MiB buffered in the extension
    req = ExportTraceServiceRequest()
    spans = req.resource_spans.add().scope_spans.add().spans
    for _ in range(8):
        s = spans.add(trace_id=os.urandom(16), span_id=os.urandom(8), parent_span_id=os.urandom(8), name="chunk",
                      start_time_unix_nano=time.time_ns(), end_time_unix_nano=time.time_ns() + 1000)
        s.attributes.add(key="payload").value.string_value = blob
    sampler.add(_wire.split_fragments(req.SerializeToString(), 0, time.time_ns(), lambda at: "svc")[0])
    del req, spans
decisions = sampler.flush()  # each payload copied into Python objects, and freed in the extension
print(sum(len(f.payload) for d in decisions for f in d.fragments))
before = rss()
_wire.release_memory()
print(before - rss())
"""


def test_a_decided_waves_extension_memory_is_given_back_on_request() -> None:
    out = subprocess.run([sys.executable, "-c", WAVE], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1], timeout=120)  # fmt: skip
    decided, given_back = (int(line) for line in out.stdout.split())
    assert decided > 100 * 2**20
    assert given_back > 0.8 * decided, f"{given_back >> 20} MiB given back of {decided >> 20} MiB decided"
