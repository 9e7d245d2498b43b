"""Keep metric labels and indexed columns low-cardinality.

Labels are the dimensions that become metric labels and indexed ``LowCardinality``
columns: service, span name, status, GenAI model and the configured ``label_keys`` (such
as ``prompt_key``). Three defences, from the cheapest:

1. Span names are normalised at ingress: ids, UUIDs, long hex strings and emails become
   placeholders (``GET /users/8812`` → ``GET /users/{id}``), so a raw URL in a span name
   cannot mint a new name per request. The original can be kept in an attribute.
2. Keys known to be high-cardinality (``user.id``, ``session.id``, request ids...) are never
   labels (the config refuses them in ``label_keys``). They stay in span attributes, where
   they are useful for search, unless configured to be dropped or hashed.
3. Every label key has a budget of distinct values per window (:class:`LabelLimiter`,
   the way OTel's spanmetrics overflow works): past it, new values become ``__overflow__``,
   counted, so a misbehaving key degrades one label instead of the metrics endpoint.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from processors.units import parse_duration_ns
from processors.redaction.redactor import hash_placeholder
from processors.wire import span_names

OVERFLOW = "__overflow__"
_NAMES_CACHED = 20_000

_NORMALISE = re.compile(
    r"(?P<email>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})"
    r"|(?P<uuid>(?<![0-9A-Za-z])[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(?![0-9A-Za-z]))"
    r"|(?P<hex>(?<![0-9A-Za-z])(?=[0-9a-fA-F]*[a-fA-F])(?=[0-9a-fA-F]*\d)[0-9a-fA-F]{12,}(?![0-9A-Za-z]))"
    r"|(?P<id>(?<![^/=:?&,#\s])\d+(?![^/?&,#;\s\]]))"
)  # fmt: skip
"""A number counts as an id only as a whole token (``/users/42``, ``id=42``), never inside a
word (``gpt-4o``, ``v2``) or a version (``HTTP/1.1``)."""


class CardinalitySettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label_keys: list[str] = Field(default_factory=list)
    """Span (or resource) attribute keys that become metric labels, e.g. ``prompt_key``."""
    high_cardinality_keys: list[str] = Field(default_factory=lambda: [
        "user.id", "enduser.id", "user.email", "session.id", "request.id", "http.request.id", "gen_ai.response.id",
        "gen_ai.conversation.id", "url.full", "http.url", "url.query", "messaging.message.id",
    ])  # fmt: skip
    """Never labels. They stay in span attributes unless ``high_cardinality_action`` says otherwise."""
    high_cardinality_action: Literal["keep", "drop", "hash"] = "keep"
    """``hash`` uses ``redaction.salt`` (an HMAC), so equal ids still correlate."""
    max_values_per_label: int = Field(default=1000, ge=1)
    """Distinct values a label key may take per window; past it, ``__overflow__``."""
    max_series: int = Field(default=20_000, ge=1)
    """Series per metric family; past it, new series go to one all-``__overflow__`` series."""
    window: int = 3_600_000_000_000
    """A label value unseen for a whole window gives its place (and its series) back."""
    normalize_span_names: bool = True
    original_name_attribute: str | None = None
    """When set (e.g. ``tailsift.original_name``), a normalised span keeps its raw name there."""

    _window = field_validator("window", mode="before")(classmethod(lambda cls, v: parse_duration_ns(v)))

    @model_validator(mode="after")
    def _labels_are_not_high_cardinality(self) -> CardinalitySettings:
        for key in self.label_keys:
            if key in self.high_cardinality_keys:
                raise ValueError(f"label_keys: {key!r} is in high_cardinality_keys and can never be a label")
        return self


def normalize_name(name: str) -> str:
    """``GET /users/42/orders/9f1c...`` → ``GET /users/{id}/orders/{hex}``."""
    return _NORMALISE.sub(lambda m: "{" + str(m.lastgroup) + "}", name)


class LabelLimiter:
    """At most ``max_values`` distinct values per label key, over a sliding window.

    A value seen in the current or the previous window keeps its place; at each window
    boundary the values not seen during the window that just ended are evicted (and
    ``generation`` moves on, telling the metrics store to forget their series). Refused
    values are counted per key in ``overflows``.
    """

    def __init__(self, max_values: int, window_ns: int, clock: Any = time.monotonic_ns):
        self.max_values = max_values
        self.window_ns = window_ns
        self._clock = clock
        self._window = clock() // window_ns
        self._seen: dict[str, dict[str, int]] = {}
        self.overflows: Counter[str] = Counter()
        self.generation = 0
        """Bumped when values were evicted, so holders of series can prune them."""

    def admit(self, key: str, value: str) -> str:
        window = self._clock() // self.window_ns
        if window != self._window:
            self._rotate(window)
        seen = self._seen.setdefault(key, {})
        if value in seen:
            seen[value] = window
            return value
        if len(seen) < self.max_values:
            seen[value] = window
            return value
        self.overflows[key] += 1
        return OVERFLOW

    def _rotate(self, window: int) -> None:
        keep_from = window - 1
        for key, seen in self._seen.items():
            self._seen[key] = {v: w for v, w in seen.items() if w >= keep_from}
        self._window = window
        self.generation += 1

    def current(self, key: str, value: str) -> bool:
        return value == OVERFLOW or value in self._seen.get(key, ())

    def distinct(self, key: str) -> int:
        return len(self._seen.get(key, ()))


class CardinalityProcessor:
    """At ingress: normalise span names and apply ``high_cardinality_action``, in place.

    Settings in ``__init__``, work in ``__call__``; returns counts by what it changed (a
    :class:`processors.contract.RequestProcessor`).
    """

    name = "cardinality"
    mutates = True

    def __init__(self, settings: CardinalitySettings, salt: bytes = b""):
        self.settings = settings
        self._salt = salt
        self._names: dict[str, str] = {}
        self._keys = frozenset(settings.high_cardinality_keys)
        self._key_bytes = [k.encode() for k in settings.high_cardinality_keys]

    def __call__(self, request: Any, raw: bytes | None = None) -> Counter[str]:
        counts: Counter[str] = Counter()
        s = self.settings
        touch_keys = s.high_cardinality_action != "keep" and (
            raw is None or any(k in raw for k in self._key_bytes))  # fmt: skip
        if not s.normalize_span_names and not touch_keys:
            return counts
        if not touch_keys and all(self._normalised(name) == name for name in span_names(request, raw)):
            return counts  # the common case, decided per distinct name, not per span
        original = s.original_name_attribute
        for rs in request.resource_spans:
            if touch_keys:
                self._keys_in(rs.resource.attributes, counts)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    if touch_keys:
                        self._keys_in(span.attributes, counts)
                    if s.normalize_span_names:
                        name = span.name
                        new = self._normalised(name)
                        if new != name:
                            span.name = new
                            counts["span_names_normalized"] += 1
                            if original:
                                span.attributes.add(key=original).value.string_value = name
        return counts

    def _normalised(self, name: str) -> str:
        new = self._names.get(name)
        if new is None:
            if len(self._names) >= _NAMES_CACHED:
                self._names.clear()
            new = self._names[name] = normalize_name(name)
        return new

    def _keys_in(self, attributes: Any, counts: Counter[str]) -> None:
        doomed = []
        for i, kv in enumerate(attributes):
            if kv.key not in self._keys:
                continue
            if self.settings.high_cardinality_action == "drop":
                doomed.append(i)
                counts["high_cardinality_dropped"] += 1
            elif (kind := kv.value.WhichOneof("value")) in ("string_value", "int_value"):
                text = str(getattr(kv.value, str(kind)))
                if text.startswith("[HASH:"):
                    continue  # hashed already (e.g. by a tailsift in front of this one)
                kv.value.string_value = hash_placeholder(self._salt, kv.key, text, digits=16)
                counts["high_cardinality_hashed"] += 1
        for i in reversed(doomed):
            del attributes[i]
