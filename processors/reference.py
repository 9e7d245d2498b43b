"""Pure-Python reference of the compiled hot path (``processors._wire``, from ``native/``).

Each function takes a decoded request and returns exactly what its compiled twin returns
from the request's bytes. It runs in production only if the extension ever refuses a body
that upb accepted; its real job is ``tests/test_wire_contract.py``, which runs both on the
same inputs (generated, hostile and the bench's shapes) and requires the same results, so
the two cannot drift. Readable first: this is the specification.
"""

from __future__ import annotations

import bisect
from typing import Any

from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, TracesData

_ZERO_TRACE = bytes(16)
_ZERO_SPAN = bytes(8)
STATUS_ERROR = 2
MAX_TOKENS = 10**12
EXPIRED = "start time is older than the storage retention (storage.clickhouse.ttl_days), so it would be deleted on arrival"
RawFragment = tuple[bytes, bytes, int, int, int, bool, tuple[int, str, int, int] | None]


def invalid_id_reason(span: Any) -> str | None:
    if len(span.trace_id) != 16 or span.trace_id == _ZERO_TRACE:
        return "trace_id must be 16 bytes and not all zero"
    if len(span.span_id) != 8 or span.span_id == _ZERO_SPAN:
        return "span_id must be 8 bytes and not all zero"
    if span.parent_span_id and len(span.parent_span_id) != 8:
        return "parent_span_id must be empty or 8 bytes"
    return None


def rejection_message(rejected: int, expired: int, reason: str | None) -> str:
    """The ``partial_success`` message for spans left out of a request ("" when none were)."""
    if not rejected:
        return ""
    reasons = ([f"{rejected - expired} with invalid ids ({reason})"] if rejected > expired else []) + (
        [f"{expired} whose {EXPIRED}"] if expired else [])
    return f"{rejected} spans rejected: " + "; ".join(reasons)


def split(request: Any, oldest_ns: int) -> tuple[list[RawFragment], int, int, str | None]:
    """Valid spans grouped by trace id, in order of first use, each group as one serialized
    ``TracesData`` with its spans under their own resource and scope; spans with invalid
    ids, or starting before ``oldest_ns``, rejected. The root is the trace's last span
    without a parent: (resource index, name, start, end)."""
    groups: dict[bytes, list[Any]] = {}  # trace id -> [spans, start, end, error, root, {(ri, si): [spans]}]
    rejected = expired = 0
    reason: str | None = None
    for ri, rs in enumerate(request.resource_spans):
        for si, ss in enumerate(rs.scope_spans):
            for span in ss.spans:
                why = invalid_id_reason(span)
                if why is not None:
                    rejected += 1
                    reason = reason or why
                    continue
                start, end = span.start_time_unix_nano, span.end_time_unix_nano
                if start < oldest_ns:
                    rejected += 1
                    expired += 1
                    continue
                group = groups.setdefault(span.trace_id, [0, start, end, False, None, {}])
                group[0] += 1
                group[1], group[2] = min(group[1], start), max(group[2], end)
                group[3] = group[3] or span.status.code == STATUS_ERROR
                if not span.parent_span_id:
                    group[4] = (ri, span.name, start, end)
                group[5].setdefault((ri, si), []).append(span)
    out: list[RawFragment] = []
    for trace_id, (count, start, end, error, root, chunks) in groups.items():
        data = TracesData()
        for (ri, si), spans in chunks.items():
            rs, ss = request.resource_spans[ri], request.resource_spans[ri].scope_spans[si]
            scope = ScopeSpans(scope=ss.scope, schema_url=ss.schema_url, spans=spans)
            data.resource_spans.append(ResourceSpans(resource=rs.resource, schema_url=rs.schema_url, scope_spans=[scope]))
        out.append((trace_id, data.SerializeToString(), count, start, end, error, root))
    return out, rejected, expired, reason


def span_names(request: Any) -> list[str]:
    return list(dict.fromkeys(span.name for rs in request.resource_spans for ss in rs.scope_spans for span in ss.spans))


def _wanted(attributes: Any, keys: list[bytes]) -> dict[bytes, Any]:
    """The wanted keys' values (the last of duplicate keys wins, as in a dict)."""
    return {k: kv.value for kv in attributes if (k := kv.key.encode()) in keys}


def metric_groups(request: Any, services: list[int], keys: list[bytes], summable: list[bool],
                  bounds: list[float]) -> list[tuple[int, str, int, list[bytes | int | None], int, int, int, list[int]]]:  # fmt: skip
    """See :func:`processors.wire.metric_groups`."""
    groups: dict[tuple[Any, ...], list[Any]] = {}
    for ri, rs in enumerate(request.resource_spans):
        resource = _wanted(rs.resource.attributes, keys)
        service = services[ri] if ri < len(services) else 2**32 - 1
        for ss in rs.scope_spans:
            for span in ss.spans:
                found = {**resource, **_wanted(span.attributes, keys)}
                parts: list[Any] = []
                ints: list[int | None] = []
                for k, key in enumerate(keys):
                    value = found.get(key)
                    is_int = value is not None and summable[k] and value.WhichOneof("value") == "int_value"
                    ints.append(min(max(0, value.int_value), MAX_TOKENS) if value is not None and is_int else None)
                    parts.append(None if value is None else "int" if is_int else value.SerializeToString())
                code = span.status.code
                group = groups.get((service, span.name, code, *parts))
                if group is None:
                    values = [0 if p == "int" else p for p in parts]
                    group = groups[(service, span.name, code, *parts)] = [
                        service, span.name, code, values, 0, 0, 0, [0] * (len(bounds) + 1)]
                ns = max(0, span.end_time_unix_nano - span.start_time_unix_nano)
                group[4] += 1
                group[5] += code == STATUS_ERROR
                group[6] += ns
                group[7][bisect.bisect_left(bounds, ns / 1e9)] += 1
                for k, n in enumerate(ints):
                    if n is not None:
                        group[3][k] += n
    return [(g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7]) for g in groups.values()]
