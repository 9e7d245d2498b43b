"""Why a trace was kept or dropped, in words: what ``tailsift explain`` and
``GET /api/decisions/<trace_id>`` answer.

A decision is (state, rule, sample rate), from the sampler's decision caches or from the
stored rows. The rules are evaluated in order and the first match decides, so the answer
names the rules that did not match, the one that did with its conditions in words, and how
its policy chose: for a percentage, where this trace id's randomness falls against the
threshold (the OTEP 235 coin every replica, and any consistent sampler, flips); for a rate limit, the share it was
keeping when it decided.
"""

from __future__ import annotations

from typing import Any

from processors.sampling import otep235
from processors.sampling.rules import Condition, Rule, parse_duration_expr


def describe_condition(c: Condition) -> str:
    """One condition as a phrase, e.g. ``any span's status is error``."""
    where = "the root span's" if c.scope == "root" else "any span's"
    if c.duration is not None:
        op, bound = parse_duration_expr(c.duration)
        return f"{'the root span' if c.scope == 'root' else 'the trace'} lasts {op} {bound / 1e9:g}s"
    if c.status is not None:
        return f"{where} status {'is not' if c.op == '!=' else 'is'} {c.status}"
    if c.attribute is not None:
        op = c.op or ("=" if c.value is not None else "exists")
        if op in ("exists", "not_exists"):
            return f"{where} attribute {c.attribute} {'exists' if op == 'exists' else 'does not exist'}"
        return f"{where} attribute {c.attribute} {op} {c.value!r}"
    subject = "service" if c.service is not None else "span name"
    return f"{where} {subject} {c.op or '='} {c._operand()!r}"


def describe_policy(rule: Rule) -> str:
    """``keeps at most 10 traces/s``, ``keeps 5% of traces, chosen by trace id``."""
    if rule.rate_limit is not None:
        return f"keeps at most {rule.rate_limit:g} traces/s"
    if rule.target is not None:
        return f"keeps about {rule.target:g} traces/s in all, spread over {' / '.join(rule.keys)}"
    keep = rule.keep or 0.0
    return f"keeps {100 * keep:g}% of traces" + (", chosen by trace id" if 0.0 < keep < 1.0 else "")


def describe_rule(rule: Rule) -> str:
    """``rule 'errors' (any span's status is error)``."""
    return f"rule {rule.name!r} ({' and '.join(describe_condition(c) for c in rule.when) or 'every trace'})"


def explain(trace_id: bytes, state: str, rule_name: str, rate: float, rules: list[Rule], source: str,
            dry_run: bool = False) -> dict[str, Any]:  # fmt: skip
    """The answer for one trace. ``state`` is "kept", "dropped" or "buffered"; ``source`` says
    where the decision was read ("decision cache" or "storage"); ``dry_run``: everything is
    stored whatever the rules say."""
    answer: dict[str, Any] = {"trace_id": trace_id.hex(), "state": state, "source": source}
    if dry_run:
        answer["dry_run"] = True
    if state == "buffered":
        answer["why"] = ("it is buffered, waiting for its decision: after sampling.quiet_period without new spans "
                         "once its root span is in, or after sampling.decision_wait")  # fmt: skip
        return answer
    answer.update(rule=rule_name, sample_rate=rate)
    index = next((i for i, r in enumerate(rules) if r.name == rule_name), None)
    if index is None:
        answer["why"] = (f"{state} by rule {rule_name!r}, which is not in the current configuration "
                         "(it was decided under an earlier one)")  # fmt: skip
        return answer
    rule = rules[index]
    before = [r.name for r in rules[:index]]
    answer["rules_not_matched"] = before
    answer["matched"] = f"{describe_rule(rule)}: it {describe_policy(rule)}"
    parts = [f"rules {', '.join(map(repr, before))} did not match" if before else "",
             f"{describe_rule(rule)} matched first", f"it {describe_policy(rule)}"]  # fmt: skip
    if rule.rate_limit is not None:
        share = f"it was keeping 1 trace in {rate:g}" if rate else "it was over its limit"
        parts.append(f"{share}, and this one was {'within' if state == 'kept' else 'over'} the limit")
    else:
        # What it kept overall: the rule's share times upstream's (OTEP 235 th), 1 / the adjusted count.
        probability = 1.0 / rate if rate else (rule.keep or 0.0)
        if rule.target is not None:
            parts.append(f"its key was being kept with probability {probability:.4g}")
        if 0.0 < probability < 1.0:
            position = otep235.randomness(trace_id) / otep235.SPACE
            threshold = otep235.threshold(probability) / otep235.SPACE
            answer["trace_id_position"] = position
            side = "at or above" if position >= threshold else "under"
            parts.append(f"this trace id's randomness (its last 56 bits) is {position:.4f} of the range, {side} "
                         f"the rejection threshold {threshold:.4g} (OTEP 235)")  # fmt: skip
    parts.append(f"so it was {state}" + (f" with sample rate {rate:g} (it stands for {rate:g} traces)"
                                         if state == "kept" and rate > 1 else ""))  # fmt: skip
    if dry_run and state == "dropped":
        parts.append("sampling.dry_run is on, so it was stored anyway (at sample rate 1)")
    text = "; ".join(p for p in parts if p)
    answer["why"] = text[0].upper() + text[1:] + "."
    return answer
