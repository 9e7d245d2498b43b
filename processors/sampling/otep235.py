"""OpenTelemetry consistent probability sampling (OTEP 235): the ``ot`` entry of a span's
W3C TraceState, its threshold ``th`` and randomness ``rv``.

A trace carries 56 bits of randomness R: ``rv`` when its TraceState has one, else the last
7 bytes of its trace id (random in W3C trace ids). Sampling at probability p keeps it when R
is at or above the rejection threshold T = (1 - p) x 2^56, written ``th`` as up to 14 hex
digits without trailing zeros (``th:0`` is 100%). Every sampler of a trace that uses the
same R agrees, so a trace sampled upstream at p1 and here at p2 is either kept whole or not.

tailsift reads an incoming ``th`` as what upstream already kept: a rule keeping p of what
arrives keeps at probability p_up x p overall, so the threshold it applies and writes is
that product's, and the stored sample rate (the adjusted count) is 1/(p_up x p).
"""

from __future__ import annotations

_HEX = frozenset("0123456789abcdefABCDEF")
SPACE = 1 << 56
"""Randomness values and thresholds are 56-bit."""


def threshold(probability: float) -> int:
    """The rejection threshold for keeping ``probability`` of traces (0 keeps all)."""
    if probability >= 1.0:
        return 0
    if probability <= 0.0:
        return SPACE
    return min(SPACE - 1, round((1.0 - probability) * float(SPACE)))


def probability(th: int) -> float:
    """The sampling probability a threshold stands for."""
    return (SPACE - th) / SPACE


def randomness(trace_id: bytes) -> int:
    """R from the trace id: its last 7 bytes (W3C's random part)."""
    return int.from_bytes(trace_id[9:16], "big")


def keeps(r: int, p: float) -> bool:
    """The consistent coin: R at or above the threshold for ``p``."""
    if p >= 1.0:
        return True
    if p <= 0.0:
        return False
    return r >= threshold(p)


def encode(th: int) -> str:
    return format(th, "014x").rstrip("0") or "0"


def parse(trace_state: str) -> tuple[int | None, int | None]:
    """(th, rv) from a TraceState's ``ot`` entry; None for each that is absent or malformed."""
    th = rv = None
    for member in trace_state.split(","):
        key, _, value = member.strip().partition("=")
        if key != "ot":
            continue
        for item in value.split(";"):
            name, _, text = item.partition(":")
            number = int(text, 16) if 0 < len(text) <= 14 and all(c in _HEX for c in text) else None
            if name == "th" and number is not None:
                th = number << 4 * (14 - len(text))
            elif name == "rv" and number is not None and len(text) == 14:
                rv = number
    return th, rv


def with_threshold(trace_state: str, th: int | None) -> str:
    """The TraceState with ``ot``'s ``th`` set to ``th`` (None: removed, as a sampler that is
    not consistent must), other ``ot`` values and other vendors' entries kept. The ``ot``
    entry moves to the front, as W3C asks of an entry a participant changed."""
    others, values = [], []
    for member in trace_state.split(",") if trace_state else []:
        key, _, value = member.strip().partition("=")
        if key == "ot":
            values = [v for v in value.split(";") if v and not v.startswith("th:")]
        elif member.strip():
            others.append(member.strip())
    if th is not None:
        values.insert(0, f"th:{encode(th)}")
    return ",".join(([f"ot={';'.join(values)}"] if values else []) + others)
