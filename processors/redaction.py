"""Baseline redaction: secrets and PII are replaced before anything is queued or stored.

Runs at ingress on the decoded request, so secrets never reach the queue, Kafka, disk
or logs. It covers every text field a user controls: resource, scope, span, event and
link attribute values (inside arrays and key-value lists too), span names, status
messages and event names. The replacement names what was removed, e.g.
``[REDACTED:email]``, so a reader of the waterfall knows a value was there.

Cost matters: a bytes-level prefilter runs once over the whole request body, and a
clean request (the common case) skips the per-span walk entirely.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# (kind, pattern, prefilter). The pattern finds the secret in one string; the prefilter is
# a cheap anchor of it that runs over whole request bytes. Anchors start with a literal
# (``@``, ``sk-``, ``eyJ``...) so the scan stays linear: a pattern that starts with a
# character class, like an email's local part, would rescan every long word it meets.
_PATTERNS: list[tuple[str, str, str]] = [
    ("jwt", r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*", r"eyJ[A-Za-z0-9_-]{5,}\.eyJ"),
    ("bearer_token", r"[Bb]earer[ \t]+[A-Za-z0-9\-._~+/]{8,}=*", r"earer[ \t]"),
    ("api_key", r"sk-[A-Za-z0-9_-]{20,}", r"sk-[A-Za-z0-9_-]{20}"),
    ("cloud_key", r"(?:AKIA|ASIA)[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}", r"AKIA|ASIA|AIza"),
    ("email", r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}", r"@[A-Za-z0-9-]+\."),
    ("card_number", r"[2-6]\d(?:[ -]?\d){11,17}", r"[2-6]\d(?:[ -]?\d){11}"),  # issuer digit 2-6, 13-19 digits
]
_GUARD = r"(?<![A-Za-z0-9])"  # a match must not start in the middle of a word or number


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum card numbers carry; it keeps order ids and timestamps intact."""
    total, double = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if double:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
        double = not double
    return total % 10 == 0


@dataclass
class RedactionResult:
    """What one call redacted, by kind. The values themselves are never recorded."""

    counts: Counter[str]
    scanned: bool  # False when the prefilter let the request through untouched


class Redactor:
    """Replace secrets in an OTLP ``ExportTraceServiceRequest`` in place.

    Settings in ``__init__``, work in ``__call__`` (structlog's processor shape).
    """

    def __init__(self) -> None:
        # One search per anchor: re finds a literal prefix fast, but not across an alternation.
        self._prefilters = [re.compile(pre.encode()) for _, _, pre in _PATTERNS]
        self._pattern = re.compile("|".join(f"{_GUARD}(?P<{k}>{p})" for k, p, _ in _PATTERNS))

    def __call__(self, request: Any, raw: bytes | None = None) -> RedactionResult:
        """``raw`` is the serialized request when the caller has it (saves a serialize)."""
        counts: Counter[str] = Counter()
        body = raw if raw is not None else request.SerializeToString()
        if not any(p.search(body) for p in self._prefilters):
            return RedactionResult(counts, scanned=False)
        clean = self._make_cleaner(counts)
        for rs in request.resource_spans:
            _attrs(rs.resource.attributes, clean)
            for ss in rs.scope_spans:
                _attrs(ss.scope.attributes, clean)
                for span in ss.spans:
                    span.name = clean(span.name)
                    span.status.message = clean(span.status.message)
                    _attrs(span.attributes, clean)
                    for event in span.events:
                        event.name = clean(event.name)
                        _attrs(event.attributes, clean)
                    for link in span.links:
                        _attrs(link.attributes, clean)
        return RedactionResult(counts, scanned=True)

    def redact_text(self, text: str) -> str:
        """Redact one string (used for anything outside OTLP, e.g. log lines)."""
        return self._make_cleaner(Counter())(text)

    def _make_cleaner(self, counts: Counter[str]) -> Callable[[str], str]:
        pattern = self._pattern

        def replace(m: re.Match[str]) -> str:
            kind = m.lastgroup or "secret"
            text = m.group(0)
            if kind == "card_number" and not luhn_valid(re.sub(r"[ -]", "", text)):
                return text
            counts[kind] += 1
            if kind == "bearer_token":
                return text.split(None, 1)[0] + " [REDACTED:bearer_token]"
            return f"[REDACTED:{kind}]"

        def clean(text: str) -> str:
            if not text or not pattern.search(text):
                return text
            return pattern.sub(replace, text)

        return clean


def _attrs(attributes: Any, clean: Callable[[str], str]) -> None:
    for kv in attributes:
        _value(kv.value, clean)


def _value(value: Any, clean: Callable[[str], str]) -> None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        new = clean(value.string_value)
        if new != value.string_value:
            value.string_value = new
    elif kind == "array_value":
        for item in value.array_value.values:
            _value(item, clean)
    elif kind == "kvlist_value":
        _attrs(value.kvlist_value.values, clean)
