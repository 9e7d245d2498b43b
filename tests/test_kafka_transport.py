"""The Kafka record envelope and the commit watermark, without a broker."""

from __future__ import annotations

import filecmp
import os
import struct
import subprocess
import sys
from pathlib import Path

import cramjam
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import TracesData

from collector.errors import RequestTooLarge
from collector.kafka import envelope
from collector.kafka.ledger import OffsetLedger
from collector.otlp import split_by_trace
from processors.fragment import Fragment

ROOT = Path(__file__).resolve().parents[1]


def fragment(spans: int = 3, blob: int = 10, error_at: int | None = None) -> Fragment:
    request = ExportTraceServiceRequest()
    rs = request.resource_spans.add()
    rs.resource.attributes.add(key="service.name").value.string_value = "checkout"
    ss = rs.scope_spans.add()
    for i in range(spans):
        span = ss.spans.add(trace_id=b"\x01" * 16, span_id=(i + 1).to_bytes(8, "big"), name=f"step-{i}",
                            start_time_unix_nano=1000 + i, end_time_unix_nano=2000 + i * 10)  # fmt: skip
        if i:
            span.parent_span_id = (1).to_bytes(8, "big")
        if i == error_at:
            span.status.code = 2
        span.attributes.add(key="blob").value.bytes_value = os.urandom(blob)  # incompressible
    return split_by_trace(request, received_ns=42).fragments[0]


def test_envelope_round_trip_keeps_every_fact() -> None:
    original = fragment(error_at=2)
    other = fragment(spans=1)
    other.trace_id = b"\x02" * 16
    (value,) = envelope.encode([original, other], 1 << 20)  # one record for both traces
    assert value[0] == envelope.VERSION == 2
    back, second = envelope.decode(value, (3, 17))
    assert back.source == second.source == (3, 17) and second.trace_id == b"\x02" * 16
    assert back.root is not None and back.root.name == "step-0" and back.root.service == "checkout"


def test_version_1_records_are_still_read() -> None:
    from collector.kafka.envelope_pb2 import Envelope

    original = fragment()
    raw = Envelope(trace_id=original.trace_id, received_unix_nano=42, traces_data=original.payload, span_count=3,
                   start_unix_nano=1000, end_unix_nano=2020).SerializeToString()  # fmt: skip
    (back,) = envelope.decode(struct.pack(">BI", 1, len(raw)) + bytes(cramjam.zstd.compress(raw)), (0, 1))
    assert (back.trace_id, back.payload, back.span_count, back.end_ns) == (original.trace_id, original.payload, 3, 2020)


def test_traces_are_spread_over_partitions_by_id() -> None:
    counts = [0] * 12
    for _ in range(12_000):
        counts[envelope.partition_of(os.urandom(16), 12)] += 1
    assert min(counts) > 800 and envelope.partition_of(b"\x00" * 8 + (13).to_bytes(8, "big"), 12) == 1


def test_envelope_keeps_every_fact() -> None:
    original = fragment(error_at=2)
    (value,) = envelope.encode([original], 1 << 20)
    (back,) = envelope.decode(value, (3, 17))
    assert back.source == (3, 17)
    assert (back.trace_id, back.payload, back.span_count, back.start_ns, back.end_ns, back.has_error, back.root,
            back.received_ns) == (original.trace_id, original.payload, 3, 1000, 2020, True, original.root, 42)  # fmt: skip
    assert back.root is not None and back.root.name == "step-0" and back.root.service == "checkout"


@pytest.mark.parametrize(("value", "why"), [
    (b"", "empty"),
    (b"\x01\x00", "truncated"),
    (b"\x03" + bytes(20), "unknown envelope version 3"),
    (struct.pack(">BI", 2, 0) + bytes(cramjam.zstd.compress(b"")), "batch is empty"),
    (b"\x7b" + b"{\"json\": true}", "unknown envelope version 123"),
    (struct.pack(">BI", 1, 10) + b"not zstd at all", "bad zstd"),
    (struct.pack(">BI", 1, 1 << 30) + b"x", "exceeds"),
    (struct.pack(">BI", 1, 5) + bytes(cramjam.zstd.compress(b"\xff\xff\xff\xff\xff")), "malformed envelope"),
    (struct.pack(">BI", 1, 3) + bytes(cramjam.zstd.compress(b"abcdef")), "failed to write"),
])  # fmt: skip
def test_envelope_refuses_what_it_cannot_read(value: bytes, why: str) -> None:
    with pytest.raises(envelope.EnvelopeError) as refused:
        envelope.decode(value)
    assert why in str(refused.value)


def test_large_fragments_are_split_into_records_that_fit() -> None:
    big = fragment(spans=40, blob=20_000)  # 800 KB that zstd cannot shrink
    small = fragment(spans=2)
    small.trace_id = b"\x05" * 16
    values = envelope.encode([small, big], 128 * 1024)
    assert len(values) > 4 and all(len(v) <= 128 * 1024 for v in values)
    parts = [p for v in values for p in envelope.decode(v) if p.trace_id == big.trace_id]
    assert sum(p.trace_id == small.trace_id for v in values for p in envelope.decode(v)) == 1
    assert sum(p.span_count for p in parts) == 40
    ids = [s.span_id for p in parts for rs in TracesData.FromString(p.payload).resource_spans
           for ss in rs.scope_spans for s in ss.spans]  # fmt: skip
    assert sorted(ids) == [(i + 1).to_bytes(8, "big") for i in range(40)]
    assert sum(p.root is not None for p in parts) == 1  # the root stays a root, once
    with pytest.raises(RequestTooLarge):
        envelope.encode([fragment(spans=1, blob=300_000)], 64 * 1024)  # one span cannot be split


def test_generated_envelope_code_is_current(tmp_path: Path) -> None:
    subprocess.run(["bash", str(ROOT / "proto" / "generate.sh"), str(tmp_path)], check=True, cwd=ROOT,
                   env=dict(os.environ, PYTHON=sys.executable))  # fmt: skip
    for name in ("envelope_pb2.py", "envelope_pb2.pyi"):
        assert filecmp.cmp(tmp_path / name, ROOT / "collector" / "kafka" / name, shallow=False), name


def test_ledger_commits_only_below_the_oldest_unsettled_record() -> None:
    ledger = OffsetLedger()
    assert ledger.watermark(0) is None  # nothing consumed: nothing to commit
    for offset in range(10, 15):
        ledger.track(0, offset)
    ledger.track(1, 7)
    assert ledger.watermark(0) == 10
    ledger.settle(0, 12)
    ledger.settle(0, 11)
    assert ledger.watermark(0) == 10  # 10 still waits for its trace's decision
    ledger.settle(0, 10)
    assert ledger.watermark(0) == 13
    assert ledger.open_records() == 3
    ledger.settle(0, 14)
    ledger.settle(0, 13)
    assert ledger.watermark(0) == 15  # all settled: commit the next offset
    ledger.settle(0, 99)  # never consumed: ignored
    ledger.track(0, 15)
    assert ledger.watermark(0) == 15
    ledger.track(0, 16, parts=3)  # a record of three traces settles with the last of them
    ledger.settle(0, 15)
    ledger.settle(0, 16)
    ledger.settle(0, 16)
    assert ledger.watermark(0) == 16
    ledger.settle(0, 16)
    assert ledger.watermark(0) == 17
    ledger.forget({0})
    ledger.settle(0, 17)
    assert ledger.watermark(0) is None and ledger.watermark(1) == 7
