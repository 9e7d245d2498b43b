"""The trace waterfall in the terminal: which step took the time (and the tokens and money).

Input is the query API's trace JSON; output is text lines of at most 100 columns. Per span:
the tree and name with its key attribute (a client span named ``GET`` reads ``GET
/orders``), kind, service, start offset from the trace start, duration, self time
(duration not covered by children), status and a bar; gen_ai tokens and cost on a line of
their own, only for spans that have them. The header carries the trace's total cost.
"""

from __future__ import annotations

from typing import Any

from processors.units import format_duration_ns

TOKEN_KEYS = (("gen_ai.usage.input_tokens", "in"), ("gen_ai.usage.output_tokens", "out"))
KEY_ATTRIBUTES = ("http.route", "url.path", "rpc.method", "db.system", "messaging.destination.name",
                  "gen_ai.request.model")  # fmt: skip
"""The first of these a span has is shown after its name: what the step was about."""
KINDS = {"Server": "srv", "Client": "cli", "Internal": "int", "Producer": "pro", "Consumer": "con"}
NAME_WIDTH, SERVICE_WIDTH, BAR_WIDTH = 32, 12, 14
LINE_WIDTH = NAME_WIDTH + SERVICE_WIDTH + BAR_WIDTH + 42  # the fixed columns and spaces: 100


def _self_time(span: dict[str, Any], children: list[dict[str, Any]]) -> int:
    """Duration minus the union of child intervals clipped to the span."""
    start, end = span["start_time_unix_nano"], span["end_time_unix_nano"]
    covered, cursor = 0, start
    for child in sorted(children, key=lambda c: c["start_time_unix_nano"]):
        lo, hi = max(child["start_time_unix_nano"], cursor), min(child["end_time_unix_nano"], end)
        if hi > lo:
            covered += hi - lo
            cursor = hi
    return max(0, int(span["duration_ns"]) - covered)


def format_cost(usd: float) -> str:
    return f"${usd:.4f}" if usd < 1 else f"${usd:,.2f}"


def _tokens(span: dict[str, Any]) -> str:
    attrs = span.get("attributes") or {}
    parts = [f"{label} {attrs[key]}" for key, label in TOKEN_KEYS if key in attrs]
    cost = span.get("cost_usd") or 0.0
    return " / ".join(parts) + (f" {format_cost(cost)}" if cost else "")


def _label(span: dict[str, Any]) -> str:
    """The span's name and its key attribute, unless the name already says it."""
    attrs = span.get("attributes") or {}
    key = next((str(attrs[k]) for k in KEY_ATTRIBUTES if attrs.get(k) not in (None, "")), "")
    return f"{span['name']} {key}" if key and key not in span["name"] else span["name"]


def render(trace: dict[str, Any]) -> list[str]:
    """Lines of the waterfall for one trace (``{"trace_id", "spans": [...]}``)."""
    spans = trace["spans"]
    by_id = {s["span_id"]: s for s in spans}
    children: dict[str, list[dict[str, Any]]] = {}
    roots = []
    for s in spans:
        parent = s["parent_span_id"]
        if parent and parent in by_id:
            children.setdefault(parent, []).append(s)
        else:
            roots.append(s)
    t0 = min(s["start_time_unix_nano"] for s in spans)
    t1 = max(s["end_time_unix_nano"] for s in spans)
    total = max(1, t1 - t0)
    rate = spans[0].get("sample_rate", 1.0)
    header = f"trace {trace['trace_id']}  {len(spans)} spans  {format_duration_ns(total)}"
    header += f"  sample rate 1/{rate:g}  kept by {spans[0].get('sampled_by', '')!r}"
    cost = sum(s.get("cost_usd") or 0.0 for s in spans)
    if cost:
        header += f"  cost {format_cost(cost)}"
    lines = [header, ""]
    cols = (f"{'span':<{NAME_WIDTH}} {'kind':<4} {'service':<{SERVICE_WIDTH}} {'start':>8} {'duration':>8} "
            f"{'self':>8} {'status':<5} timeline")  # fmt: skip
    lines += [cols, "-" * LINE_WIDTH]

    def walk(span: dict[str, Any], prefix: str, last: bool, depth: int) -> None:
        kids = sorted(children.get(span["span_id"], []), key=lambda c: c["start_time_unix_nano"])
        branch = "" if depth == 0 else ("└─ " if last else "├─ ")
        orphan = " (parent missing)" if depth == 0 and span["parent_span_id"] else ""
        name = prefix + branch + _label(span) + orphan
        name = name if len(name) <= NAME_WIDTH else name[: NAME_WIDTH - 1] + "…"
        offset = span["start_time_unix_nano"] - t0
        lo = min(BAR_WIDTH - 1, int(BAR_WIDTH * offset / total))
        width = max(1, int(BAR_WIDTH * span["duration_ns"] / total))
        bar = " " * lo + "█" * min(width, BAR_WIDTH - lo)
        status = {"Error": "ERROR", "Ok": "ok"}.get(span["status_code"], "-")
        kind = KINDS.get(span.get("kind", ""), "")
        lines.append(
            f"{name:<{NAME_WIDTH}} {kind:<4} {span['service'][:SERVICE_WIDTH]:<{SERVICE_WIDTH}} "
            f"{format_duration_ns(offset):>8} {format_duration_ns(span['duration_ns']):>8} "
            f"{format_duration_ns(_self_time(span, kids)):>8} {status:<5} |{bar:<{BAR_WIDTH}}|"
        )
        tokens = _tokens(span)
        if tokens:
            lines.append(f"{'':<{len(prefix) + len(branch)}}  tokens {tokens}"[:LINE_WIDTH])
        child_prefix = prefix + ("" if depth == 0 else ("   " if last else "│  "))
        for i, kid in enumerate(kids):
            walk(kid, child_prefix, i == len(kids) - 1, depth + 1)

    for root in sorted(roots, key=lambda s: s["start_time_unix_nano"]):
        walk(root, "", True, 0)
    errors = [s for s in spans if s["status_code"] == "Error" and s.get("status_message")]
    for s in errors:
        lines.append(f"  error in {s['name']}: {s['status_message']}"[:LINE_WIDTH])
    return lines
