"""The Kafka record value: a versioned, compressed batch of trace fragments.

Layout (defined in ``proto/tailsift/v1/envelope.proto``): one version byte, the length of the
uncompressed message (4 bytes, big-endian), then a zstd frame of it. Version 2 (written)
holds a ``tailsift.v1.Batch``: the fragments of one request bound for one partition, so a
request of 128 traces costs a few records, not 128. Version 1 (still read) held one
``tailsift.v1.Envelope``. The declared length bounds decompression, so a hostile record
cannot inflate without limit.

Anything else is an :class:`EnvelopeError`: the consumer sends such records to the
dead-letter topic instead of guessing, and carries on.
"""

from __future__ import annotations

import struct

import cramjam
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.trace.v1.trace_pb2 import Span, TracesData

from collector.errors import RequestTooLarge
from collector.kafka.envelope_pb2 import Batch, Envelope
from collector.otlp import split_by_trace
from processors import _wire
from processors.fragment import Fragment, RootInfo

VERSION = 2
READS = (1, 2)
_HEADER = struct.Struct(">BI")
MAX_DECODED = 64 * 1024 * 1024
"""Largest uncompressed envelope either side accepts; bigger fragments are split."""


class EnvelopeError(ValueError):
    """A record value that is not a tailsift envelope this version can read."""


def _envelope(fragment: Fragment) -> Envelope:
    envelope = Envelope(
        trace_id=fragment.trace_id, received_unix_nano=fragment.received_ns, traces_data=fragment.payload,
        span_count=fragment.span_count, start_unix_nano=fragment.start_ns,
        end_unix_nano=fragment.end_ns, has_error=fragment.has_error,
    )  # fmt: skip
    if fragment.root is not None:
        root = fragment.root
        envelope.root.service, envelope.root.name = root.service, root.name
        envelope.root.start_unix_nano, envelope.root.end_unix_nano = root.start_ns, root.end_ns
    return envelope


def _frame(version: int, raw: bytes) -> bytes:
    return _HEADER.pack(version, len(raw)) + bytes(cramjam.zstd.compress(raw))


def _halves(fragment: Fragment) -> list[Fragment]:
    """Split a fragment's spans in two, keeping each span's resource and scope."""
    data = TracesData.FromString(fragment.payload)
    spans = [(ri, si, span) for ri, rs in enumerate(data.resource_spans)
             for si, ss in enumerate(rs.scope_spans) for span in ss.spans]  # fmt: skip
    if len(spans) < 2:
        raise RequestTooLarge("a single span is larger than queue.kafka.max_record_size after compression")
    out = []
    for part in (spans[: len(spans) // 2], spans[len(spans) // 2 :]):
        request = ExportTraceServiceRequest()
        groups: dict[tuple[int, int], list[Span]] = {}
        for ri, si, span in part:
            groups.setdefault((ri, si), []).append(span)
        for (ri, si), chunk in groups.items():
            rs, ss = data.resource_spans[ri], data.resource_spans[ri].scope_spans[si]
            out_rs = request.resource_spans.add(schema_url=rs.schema_url)
            out_rs.resource.CopyFrom(rs.resource)
            out_ss = out_rs.scope_spans.add(schema_url=ss.schema_url)
            out_ss.scope.CopyFrom(ss.scope)
            out_ss.spans.extend(chunk)
        out.extend(split_by_trace(request, fragment.received_ns).fragments)
    return out


def encode(fragments: list[Fragment], max_record_size: int) -> list[bytes]:
    """Record values for fragments bound for one partition: usually one, more if they must
    be split to fit. A fragment too big alone is cut into halves of its spans.

    Raises :class:`RequestTooLarge` if one span alone cannot fit (the client gets 413)."""
    if not fragments:
        return []
    if sum(len(f.payload) for f in fragments) <= MAX_DECODED // 2:
        value = _frame(VERSION, pack(fragments))
        if len(value) <= max_record_size:
            return [value]
    if len(fragments) > 1:
        middle = len(fragments) // 2
        return encode(fragments[:middle], max_record_size) + encode(fragments[middle:], max_record_size)
    return [value for half in _halves(fragments[0]) for value in encode([half], max_record_size)]


def decode(value: bytes | None, source: tuple[int, int] | None = None) -> list[Fragment]:
    """A record value back into its fragments; :class:`EnvelopeError` if it is not one."""
    if not value or len(value) < _HEADER.size:
        raise EnvelopeError("empty or truncated record value")
    version, length = _HEADER.unpack_from(value)
    if version not in READS:
        raise EnvelopeError(f"unknown envelope version {version}; this tailsift reads versions 1 and 2")
    if length > MAX_DECODED:
        raise EnvelopeError(f"declared envelope size {length} exceeds the {MAX_DECODED}-byte limit")
    raw = bytearray(length)
    try:
        written = cramjam.zstd.decompress_into(value[_HEADER.size :], raw)
    except cramjam.DecompressionError as exc:
        raise EnvelopeError(f"bad zstd data: {exc}") from None
    if written != length:
        raise EnvelopeError(f"envelope is {written} bytes, header says {length}")
    try:
        envelopes = [Envelope.FromString(bytes(raw))] if version == 1 else list(Batch.FromString(bytes(raw)).envelopes)
        for env in envelopes:
            TracesData.FromString(env.traces_data)  # reject now what storage could not parse later
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise EnvelopeError(f"malformed envelope: {exc}") from None
    if not envelopes:
        raise EnvelopeError("envelope batch is empty")
    return [_fragment(env, source) for env in envelopes]


def _fragment(env: Envelope, source: tuple[int, int] | None) -> Fragment:
    if len(env.trace_id) != 16 or env.span_count == 0:
        raise EnvelopeError("envelope has no valid trace id or no spans")
    root = None
    if env.HasField("root"):
        root = RootInfo(env.root.service, env.root.name, env.root.start_unix_nano, env.root.end_unix_nano)
    return Fragment(env.trace_id, env.traces_data, env.span_count, env.start_unix_nano, env.end_unix_nano,
                    env.has_error, root, env.received_unix_nano, source)  # fmt: skip


def pack(fragments: list[Fragment]) -> bytes:
    """Fragments as an uncompressed ``tailsift.v1.Batch`` (the write-ahead log's record),
    written by the compiled extension straight from the fragments."""
    return _wire.pack(fragments)


def pack_reference(fragments: list[Fragment]) -> bytes:
    """What :func:`pack` writes, through protobuf objects: the reference
    tests/test_wire_contract.py holds it to."""
    return Batch(envelopes=[_envelope(f) for f in fragments]).SerializeToString()


def unpack(raw: bytes, source: tuple[int, int]) -> list[Fragment]:
    """A :func:`pack` record back into its fragments; :class:`EnvelopeError` if it is not one."""
    try:
        return [_fragment(env, source) for env in Batch.FromString(raw).envelopes]
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise EnvelopeError(f"malformed batch: {exc}") from None


def partition_of(trace_id: bytes, partitions: int) -> int:
    """The partition of a trace: its id's last 8 bytes (random by W3C trace context) mod the count."""
    return int.from_bytes(trace_id[8:], "big") % partitions
