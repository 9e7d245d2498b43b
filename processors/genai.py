"""GenAI usage and cost, following the OpenTelemetry GenAI semantic conventions.

``gen_ai.usage.input_tokens`` already *includes* the tokens served from the provider's
cache (``gen_ai.usage.cache_read.input_tokens``) and those written to it
(``gen_ai.usage.cache_creation.input_tokens``). Cost therefore charges the cache parts at
their own price and only the remainder at the input price; adding the three would count
cached tokens twice.

Prices come from the YAML price table (``genai.prices``): model globs, first match wins,
US dollars per million tokens. A span whose model has no price costs nothing and is
counted as unpriced, so a missing row shows up instead of silently reading as free.
"""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

MODEL_KEYS = ("gen_ai.response.model", "gen_ai.request.model")
INPUT = "gen_ai.usage.input_tokens"
OUTPUT = "gen_ai.usage.output_tokens"
CACHE_READ = ("gen_ai.usage.cache_read.input_tokens", "gen_ai.usage.cache_read_input_tokens")
CACHE_WRITE = ("gen_ai.usage.cache_creation.input_tokens", "gen_ai.usage.cache_creation_input_tokens")
USAGE_KEYS = frozenset((*MODEL_KEYS, INPUT, OUTPUT, *CACHE_READ, *CACHE_WRITE))
"""Every attribute this module reads; the span walk looks only for these."""


class Price(BaseModel):
    """One row of the price table, in US dollars per million tokens."""

    model_config = ConfigDict(extra="forbid")

    model: str
    """A glob on the model name, case-insensitive (``gpt-4o-mini*``)."""
    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    """Default: the input price."""
    cache_write: float | None = Field(default=None, ge=0)
    """Default: the input price."""


class GenAISettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prices: list[Price] = Field(default_factory=list)


MAX_TOKENS = 10**12
"""The most tokens one span may claim; larger counts are capped (a poison value such as
1e300 must not turn every total it joins into nonsense)."""


def parse_count(value: Any) -> int:
    """A token count from any attribute value: junk, negatives, NaN and infinities count as
    0, and counts above :data:`MAX_TOKENS` are capped."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return 0
    if not math.isfinite(number) or number <= 0:
        return 0
    return int(min(number, MAX_TOKENS))


def model_of(attrs: Mapping[str, Any], text: Callable[[Any], str] = str) -> str:
    """The model a span called: the response's model, else the requested one ("" if neither).
    ``text`` reads a value (the span metrics pass a reader of OTLP ``AnyValue``s)."""
    for key in MODEL_KEYS:
        value = attrs.get(key)
        if value is not None and (name := text(value)):
            return name
    return ""


@dataclass(slots=True)
class Usage:
    model: str
    input: int = 0
    output: int = 0
    cache_read: int = 0
    cache_write: int = 0

    @classmethod
    def from_attributes(cls, attrs: Mapping[str, Any], count: Callable[[Any], int] = parse_count,
                        model: str | None = None) -> Usage | None:  # fmt: skip
        """From a span's attributes; None when it is not an LLM call. ``count`` reads one
        token count from a value (plain values by default; the span metrics pass a reader of
        OTLP ``AnyValue``s, so the hot path converts nothing), ``model`` if already known."""
        model = model_of(attrs) if model is None else model
        if not model and INPUT not in attrs and OUTPUT not in attrs:
            return None
        return cls(model, count(attrs.get(INPUT)), count(attrs.get(OUTPUT)), _first(attrs, CACHE_READ, count),
                   _first(attrs, CACHE_WRITE, count))  # fmt: skip


def _first(attrs: Mapping[str, Any], keys: tuple[str, ...], count: Callable[[Any], int]) -> int:
    """The count under the first of ``keys`` present (the current name, then the deprecated one)."""
    for key in keys:
        if key in attrs:
            return count(attrs[key])
    return 0


class PriceTable:
    """``cost(usage)`` in US dollars, or None when no row matches the model."""

    def __init__(self, prices: list[Price]):
        self._rows = [(re.compile(fnmatch.translate(p.model), re.IGNORECASE), p) for p in prices]
        self._cache: dict[str, Price | None] = {}
        self.priced = bool(prices)

    def price(self, model: str) -> Price | None:
        if model not in self._cache:
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[model] = next((p for rx, p in self._rows if rx.match(model)), None)
        return self._cache[model]

    def cost(self, usage: Usage) -> float | None:
        price = self.price(usage.model)
        if price is None:
            return None
        read_price = price.input if price.cache_read is None else price.cache_read
        write_price = price.input if price.cache_write is None else price.cache_write
        uncached = max(0, usage.input - usage.cache_read - usage.cache_write)
        return (uncached * price.input + usage.cache_read * read_price + usage.cache_write * write_price
                + usage.output * price.output) / 1e6  # fmt: skip
