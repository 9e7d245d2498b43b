"""The per-span hot path, over the request's OTLP bytes, in compiled code (``native/``, Rust).

Python works per request and per trace; everything done per span runs here, in one pass
over the protobuf bytes without building an object per span: cutting a request into
per-trace fragments (:func:`split_by_trace`), listing its span names (for normalisation)
and summing span metrics by label set (:func:`metric_groups`).

The extension reads the wire format the way upb does (last scalar wins, repeated message
fields merge, unknown fields and groups skipped), and ``processors/reference.py`` holds the
pure-Python reference that ``tests/test_wire_contract.py`` runs on the same inputs: both
must give the same results. If the extension refuses a body that upb accepted (it never
should), the caller falls back to the reference, counted in :data:`FALLBACKS`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from processors import _wire, reference
from processors.fragment import Fragment, RootInfo
from processors.otlp_values import service_name, service_text

log = logging.getLogger("tailsift")
FALLBACKS: Counter[str] = Counter()
"""Bodies the extension refused and the reference handled, by function (read by /metrics;
updated on the event loop only)."""
EXPIRED = reference.EXPIRED

__all__ = ["EXPIRED", "FALLBACKS", "MetricGroup", "MetricSpec", "SplitResult", "WireRequest", "metric_groups",
           "resource_services", "span_names", "split_by_trace", "surveyed"]


MetricGroup = tuple[int, str, int, list[bytes | int | None], int, int, int, list[int]]
MetricSpec = tuple[list[int], list[bytes], list[bool], list[float]]
"""What :func:`metric_groups` sums by: (service slot per resource, keys, summable, bounds)."""


@dataclass(slots=True)
class SplitResult:
    fragments: list[Fragment]
    rejected_spans: int
    error_message: str
    expired_spans: int = 0
    groups: list[MetricGroup] | None = None
    """:func:`metric_groups` of the same body, when split was asked to count (``counting``)."""


class WireRequest:
    """An OTLP/protobuf trace request known by its bytes, decoded only when read as objects.

    Most requests need no change (no secret to redact, no span name to normalise), and
    everything else on the hot path reads bytes. So the receiver validates a body with the
    extension's ``survey`` (at least as strict as upb: what it accepts, upb accepts) instead
    of decoding it, and keeps what the processors ask before they know whether to change
    anything: the span count, the distinct span names, each resource's service, and the text
    the redactor's prefilter scans (every string and ``bytes_value`` field, without the ids,
    timestamps and framing around them: half the bytes of a typical body). Reading any
    other attribute (``resource_spans``, ``SerializeToString``, ...) decodes the request
    once, with ``decode``, and forwards to the decoded message, so a processor that must
    change the request does so as it always did.

    The surveyed facts describe ``raw``; once a processor has changed the request (the
    caller then holds ``raw`` None, see ``run_processor``), they are not used. Raises
    ValueError for a body the survey refuses (the caller decodes it with upb then). Not
    shared between threads: made and used on one.
    """

    __slots__ = ("raw", "span_count", "names", "services", "text", "_decode", "_message")

    def __init__(self, raw: bytes, decode: Callable[[bytes], Any]):
        self._message: Any = None
        self._decode = decode
        self.raw = raw
        self.span_count, self.names, services, self.text = _wire.survey(raw)
        self.services = [s if isinstance(s, str) else service_text(s) for s in services]

    @property
    def message(self) -> Any:
        """The decoded ``ExportTraceServiceRequest`` (decoded on first use)."""
        if self._message is None:
            self._message = self._decode(self.raw)
        return self._message

    def __getattr__(self, name: str) -> Any:
        return getattr(self.message, name)


def surveyed(request: Any, raw: bytes | None) -> WireRequest | None:
    """``request`` as a :class:`WireRequest` whose survey still holds (``raw`` is its
    unchanged body), else None."""
    return request if isinstance(request, WireRequest) and raw is not None and raw is request.raw else None


def resource_services(request: Any, raw: bytes | None) -> list[str]:
    """The service name of each resource of ``request``, in order."""
    known = surveyed(request, raw)
    if known is not None:
        return known.services
    return [service_name(rs.resource.attributes) for rs in request.resource_spans]


def _fallback(what: str, exc: ValueError) -> None:
    FALLBACKS[what] += 1
    log.warning("wire: %s fell back to the Python reference: %s", what, exc)


def split_by_trace(request: Any, received_ns: int | None = None, oldest_ns: int = 0,
                   raw: bytes | None = None, counting: MetricSpec | None = None) -> SplitResult:  # fmt: skip
    """Validate ids and group spans by trace id into fragments.

    ``raw`` is the request's serialized form when the caller has it unchanged (else it is
    serialized here: one C call). Spans with invalid ids, and spans that start before
    ``oldest_ns`` (storage would delete them at once, by its TTL), are rejected and counted,
    so the rest of the request is accepted (OTLP ``partial_success``): nothing is
    acknowledged and then silently deleted.

    With ``counting``, the same walk also sums the span metrics (``groups``: what
    :func:`metric_groups` gives for this body and spec); None if the extension refused the
    body (the caller then counts on its own)."""
    now = received_ns or time.time_ns()
    body = raw if raw is not None else request.SerializeToString()

    known = surveyed(request, raw)

    def service(at: int) -> str:
        if known is not None:
            return known.services[at]  # without decoding the request
        return service_name(request.resource_spans[at].resource.attributes)

    groups = None
    try:
        if counting is None:
            fragments, rejected, expired, reason = _wire.split_fragments(body, max(0, oldest_ns), now, service)
        else:
            fragments, rejected, expired, reason, groups = _wire.split_counting(body, max(0, oldest_ns), now, service,
                                                                               *counting)  # fmt: skip
    except ValueError as exc:
        _fallback("split", exc)
        fragments, rejected, expired, reason = _from_reference(request, oldest_ns, now)
    return SplitResult(fragments, rejected, reference.rejection_message(rejected, expired, reason), expired, groups)


def _from_reference(request: Any, oldest_ns: int, now: int) -> tuple[list[Fragment], int, int, str | None]:
    """:func:`reference.split`, its tuples made into fragments as the extension makes them."""
    found, rejected, expired, reason = reference.split(request, oldest_ns)
    services: dict[int, str] = {}
    fragments = []
    for trace_id, payload, count, start, end, error, root in found:
        info = None
        if root is not None:
            at, name, root_start, root_end = root
            if at not in services:
                services[at] = service_name(request.resource_spans[at].resource.attributes)
            info = RootInfo(services[at], name, root_start, root_end)
        fragments.append(Fragment(trace_id, payload, count, start, end, error, info, now))
    return fragments, rejected, expired, reason


def span_names(request: Any, raw: bytes | None) -> list[str]:
    """The distinct span names of a request, in order of first use."""
    known = surveyed(request, raw)
    if known is not None:
        return list(known.names)
    body = raw if raw is not None else request.SerializeToString()
    try:
        return _wire.span_names(body)
    except ValueError as exc:
        _fallback("span_names", exc)
        return reference.span_names(request)


def metric_groups(request: Any, raw: bytes | None, services: list[int], keys: list[bytes], summable: list[bool],
                  bounds: list[float]) -> list[MetricGroup]:  # fmt: skip
    """Spans summed per distinct (service slot, name, status code, wanted attribute values):
    ``(slot, name, code, values, calls, errors, duration_ns, buckets)``. ``services[i]`` is
    the slot of the i-th resource; ``values[k]`` is None when key k is absent (on the span
    and its resource), the ``AnyValue`` bytes, or for a ``summable`` key holding integers
    the sum of each span's value clamped to [0, 10**12]. Durations below 0 count as 0;
    ``buckets[i]`` counts spans with ``bounds[i-1] < seconds <= bounds[i]``."""
    body = raw if raw is not None else request.SerializeToString()
    try:
        return _wire.metric_groups(body, services, keys, summable, bounds)
    except ValueError as exc:
        _fallback("metric_groups", exc)
        return reference.metric_groups(request, services, keys, summable, bounds)
