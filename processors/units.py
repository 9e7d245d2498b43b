"""Parsers for the human-friendly values users write in YAML: durations, sizes, ratios.

Kept apart from the config models so the sampler's rule parser (``duration: ">= 2s"``)
and the CLI (``--min-duration 2s``) share exactly one definition of what "2s" means.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, ConfigDict, field_validator

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h|d)?\s*$")
_DURATION_NS = {
    "ns": 1,
    "us": 1_000,
    "µs": 1_000,
    "ms": 1_000_000,
    "s": 1_000_000_000,
    "m": 60_000_000_000,
    "h": 3_600_000_000_000,
    "d": 86_400_000_000_000,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B|B)?\s*$", re.IGNORECASE)
_SIZE_MULT = {"b": 1, "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
              "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4}


def parse_duration_ns(value: object) -> int:
    """Return nanoseconds for ``"2s"``, ``"150ms"``, ``"1.5m"``; a bare number means seconds."""
    if isinstance(value, bool):
        raise ValueError("must be a duration such as 2s or 150ms")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError("must not be negative")
        return int(value * 1_000_000_000)
    if not isinstance(value, str):
        raise ValueError("must be a duration such as 2s or 150ms")
    m = _DURATION.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a duration such as 2s or 150ms")
    return int(float(m.group(1)) * _DURATION_NS[m.group(2) or "s"])


def parse_size(value: object) -> int:
    """Return bytes for ``"16MiB"``, ``"512KB"`` or a bare integer."""
    if isinstance(value, bool):
        raise ValueError("must be a size such as 16MiB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if not isinstance(value, str):
        raise ValueError("must be a size such as 16MiB")
    m = _SIZE.match(value)
    if not m:
        raise ValueError(f"{value!r} is not a size such as 16MiB")
    return int(float(m.group(1)) * _SIZE_MULT[(m.group(2) or "b").lower()])


def parse_ratio(value: object) -> float:
    """Return a fraction in [0, 1] for ``"5%"`` or ``0.05``."""
    if isinstance(value, bool):
        raise ValueError("must be a percentage such as 5% or a fraction such as 0.05")
    if isinstance(value, str):
        text = value.strip()
        try:
            ratio = float(text[:-1]) / 100 if text.endswith("%") else float(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage such as 5% or a fraction such as 0.05") from None
    elif isinstance(value, (int, float)):
        ratio = float(value)
    else:
        raise ValueError("must be a percentage such as 5% or a fraction such as 0.05")
    if not 0.0 <= ratio <= 1.0:
        raise ValueError("must be between 0% and 100%")
    return ratio


def parse_rate(value: object) -> float:
    """Return events per second for ``"100/s"``, ``"600/m"``."""
    if not isinstance(value, str):
        raise ValueError("must be a rate such as 100/s")
    m = re.match(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$", value)
    if not m:
        raise ValueError(f"{value!r} is not a rate such as 100/s")
    per = {"s": 1.0, "m": 60.0, "h": 3600.0}[m.group(2)]
    rate = float(m.group(1)) / per
    if rate <= 0:
        raise ValueError("must be greater than 0")
    return rate


def format_duration_ns(ns: int | float) -> str:
    """Short human form used by the waterfall: 850µs, 12.3ms, 2.41s."""
    if ns < 1_000_000:
        return f"{ns / 1_000:.0f}µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.1f}ms"
    return f"{ns / 1_000_000_000:.2f}s"


class StrictModel(BaseModel):
    """Base of every configuration model: an unknown key is an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


def duration_fields(*names: str) -> Any:
    """A pydantic validator that reads ``10s``/``250ms``-style durations into nanoseconds."""
    return field_validator(*names, mode="before")(classmethod(lambda cls, v: parse_duration_ns(v)))


def size_fields(*names: str) -> Any:
    """A pydantic validator that reads ``16MiB``-style sizes into bytes."""
    return field_validator(*names, mode="before")(classmethod(lambda cls, v: parse_size(v)))


def _readable(value: str | None) -> str | None:
    if value is not None:
        try:
            with open(value, "rb"):
                pass
        except OSError as exc:
            raise ValueError(f"cannot read {value}: {exc.strerror}") from None
    return value


def readable_files(*names: str) -> Any:
    """A pydantic validator: these keys name files that must exist and be readable now, so
    a typo is a config error naming the key, not a failure at the first connection."""
    return field_validator(*names)(classmethod(lambda cls, v: _readable(v)))
