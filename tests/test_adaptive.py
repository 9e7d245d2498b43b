"""Adaptive rules (``target: N/s`` over ``key``): a flat kept rate whatever the traffic, rare
keys kept, weighted counts that still estimate all traffic. Driven by the sampler's clock."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError

from processors.fragment import Fragment, RootInfo
from processors.sampling.adaptive import allot
from processors.sampling.sampler import Decision, TailSampler
from processors.sampling.settings import SamplingSettings

S = 1_000_000_000
TICK = S // 10


class Clock:
    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


IDS = random.Random(235)


def trace(service: str, name: str, now: int, error: bool = False) -> Fragment:
    """A one-span trace with its root: what the sampler reads for a key of service and name."""
    return Fragment(IDS.randbytes(16), b"", 1, now, now + 1000, error, RootInfo(service, name, now, now + 1000))


def sampler(rules: list[dict[str, Any]]) -> tuple[TailSampler, Clock]:
    clock = Clock()
    settings = SamplingSettings.model_validate({"decision_wait": "1s", "quiet_period": "100ms", "rules": rules})
    return TailSampler(settings, clock=clock), clock


def run(s: TailSampler, clock: Clock, seconds: float, per_second: dict[str, float],
        errors: float = 0.0) -> list[tuple[str, Decision]]:  # fmt: skip
    """Offer traffic (traces/s per key, as ``service`` names) for ``seconds``; the decisions."""
    out: list[tuple[str, Decision]] = []
    owed = Counter[str]()
    keys: dict[bytes, str] = {}
    for _ in range(int(seconds * S / TICK)):
        batch = []
        for key, rate in per_second.items():
            owed[key] += rate * TICK / S
            while owed[key] >= 1:
                owed[key] -= 1
                f = trace(key, "GET /", clock.now, error=errors > 0 and len(keys) % int(1 / errors) == 0)
                keys[f.trace_id] = key
                batch.append(f)
        s.add(batch)
        clock.now += TICK
        out += [(keys[d.summary.trace_id], d) for d in s.due()]
    return out


ADAPTIVE = [{"name": "errors", "when": [{"status": "error"}], "keep": "100%"},
            {"name": "flat", "target": "50/s", "key": ["service", "span_name"]}]  # fmt: skip


def test_a_target_keeps_a_flat_rate_rare_keys_and_unbiased_weighted_counts() -> None:
    s, clock = sampler(ADAPTIVE)
    traffic = {"busy": 2000.0, "rare": 20.0}
    run(s, clock, 30, traffic)  # warm-up: one window
    decided = run(s, clock, 60, traffic, errors=0.01)
    kept = [(key, d) for key, d in decided if d.keep]
    print(f"\nkept {len(kept) / 60:.1f}/s of {sum(traffic.values()):.0f}/s (target 50/s, plus errors)")
    flat = [(key, d) for key, d in kept if d.rule == "flat"]
    assert abs(len(flat) / 60 - 50) <= 0.15 * 50, len(flat) / 60
    rare = [d for key, d in decided if key == "rare" and d.rule == "flat"]
    assert sum(d.keep for d in rare) >= 0.5 * len(rare)
    print(f"rare key kept {sum(d.keep for d in rare) / len(rare):.0%}")
    for key in traffic:
        truth = sum(1 for k, _ in decided if k == key)
        weighted = sum(d.sample_rate for k, d in kept if k == key)
        print(f"{key}: weighted {weighted:.0f} of {truth} ({weighted / truth - 1:+.1%})")
        assert abs(weighted - truth) <= 0.10 * truth, (key, weighted, truth)
    errors = [d for _, d in decided if d.summary.has_error]
    assert errors and all(d.keep and d.rule == "errors" for d in errors)


def test_a_tenfold_step_is_priced_within_one_window() -> None:
    s, clock = sampler(ADAPTIVE)
    run(s, clock, 40, {"busy": 200.0, "rare": 20.0})
    step = {"busy": 2000.0, "rare": 20.0}
    decided = run(s, clock, 30, step)  # one window after the step
    last = decided[-sum(int(r * 10) for r in step.values()):]  # its last 10 seconds, about
    kept_per_second = sum(d.keep for _, d in last) / 10
    print(f"\n10x step: {kept_per_second:.1f}/s kept in the window's last 10 s, "
          f"{sum(d.keep for _, d in decided[: len(last) // 2]) / 5:.1f}/s in its first 5 s (target 50/s)")
    assert abs(kept_per_second - 50) <= 0.25 * 50, kept_per_second
    first = decided[: sum(int(r * 5) for r in step.values())]  # and no bill spike while it adapts
    assert sum(d.keep for _, d in first) / 5 <= 2 * 50


def test_the_group_keeps_the_target_a_sampler_its_share() -> None:
    s, clock = sampler(ADAPTIVE)
    s.set_share(0.25)  # one of four samplers (a quarter of the partitions)
    run(s, clock, 30, {"busy": 500.0})
    kept = sum(d.keep for _, d in run(s, clock, 30, {"busy": 500.0})) / 30
    assert abs(kept - 12.5) <= 0.15 * 12.5, kept


def test_a_reload_keeps_the_share_of_the_group() -> None:
    s, clock = sampler([{"name": "all", "keep": "100%"}])
    s.set_share(0.5)  # assigned half the partitions before the adaptive rule existed
    s.reload(SamplingSettings.model_validate({"rules": ADAPTIVE}))
    adaptive = s._rules[1][3]
    assert adaptive is not None and adaptive.share == 0.5


def test_allot_is_max_min_fair() -> None:
    assert allot({"a": 2000.0, "b": 20.0}, 50.0) == {"a": 30 / 2000, "b": 1.0}
    assert allot({"a": 10.0, "b": 10.0}, 50.0) == {"a": 1.0, "b": 1.0}
    assert allot({"a": 100.0, "b": 100.0}, 50.0) == {"a": 0.25, "b": 0.25}


def test_many_keys_are_bounded() -> None:
    rules = [{"name": "flat", "target": "10/s", "key": ["service"], "max_keys": 5}]
    s, clock = sampler(rules)
    run(s, clock, 3, {f"svc-{i}": 5.0 for i in range(50)})
    adaptive = s._rules[0][3]
    assert adaptive is not None and len(adaptive.rates()) <= 6  # five keys and (other)


@pytest.mark.parametrize(("rule", "message"), [
    ({"name": "x", "target": "50/s", "keep": "5%"}, "exactly one of keep, rate_limit or target"),
    ({"name": "x", "keep": "5%", "key": ["service"]}, "key, window and max_keys go with target"),
    ({"name": "x", "target": "fast"}, "is not a rate such as 100/s"),
    ({"name": "x", "target": "50/s", "window": "10ms"}, "at least 1s"),
    ({"name": "x", "target": "50/s", "key": []}, "list the fields"),
])  # fmt: skip
def test_adaptive_rule_errors_name_the_problem(rule: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        SamplingSettings.model_validate({"rules": [rule]})
