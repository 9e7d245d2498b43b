"""Adaptive sampling end to end: a running collector, OTLP/HTTP traffic on two keys, and what
``/api/stats`` and ``/metrics`` say (issue 14's acceptance, measured).

Two services send one-span traces: ``busy`` at 2,000 traces/s (1% errors) and ``rare`` at
20/s. The rules keep every error, then about 50 traces/s spread over ``service`` (window
30 s). After 60 s, ``busy`` steps up tenfold for 30 s (one window). Printed:

- traces kept per second by the adaptive rule over the last 30 s before the step, and
  over the last 10 s of the window after it (target 50/s);
- the share of ``rare``'s traces kept;
- per service, the sample-rate weighted count from ``/api/stats`` against what was sent;
- error traces kept against error traces sent.

    python -m benchmarks.adaptive [--steady 60] [--step 30]

Needs about two cores for three minutes; figures are ratios to the truth, not speeds.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
import urllib.request
from collections import Counter
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

from collector.bench.target import OwnCollector

TICK = 0.1
RULES = [{"name": "errors", "when": [{"status": "error"}], "keep": "100%"},
         {"name": "flat", "target": "50/s", "key": ["service"], "window": "30s"}]  # fmt: skip


def request(counts: dict[str, int], rng: random.Random, sent: Counter[str]) -> bytes:
    """One request with ``counts[service]`` one-span traces per service (1% of busy's errors)."""
    req = ExportTraceServiceRequest()
    now = time.time_ns()
    for service, n in counts.items():
        rs = req.resource_spans.add()
        rs.resource.attributes.add(key="service.name").value.string_value = service
        spans = rs.scope_spans.add().spans
        for _ in range(n):
            s = spans.add(trace_id=rng.randbytes(16), span_id=rng.randbytes(8), name="GET /",
                          start_time_unix_nano=now, end_time_unix_nano=now + 2_000_000)  # fmt: skip
            sent[service] += 1
            if service == "busy" and rng.random() < 0.01:
                s.status.code = 2  # type: ignore[assignment]
                sent["errors"] += 1
    return req.SerializeToString()


def send(url: str, rates: dict[str, float], seconds: float, rng: random.Random, sent: Counter[str]) -> None:
    owed: dict[str, float] = dict.fromkeys(rates, 0.0)
    deadline = next_tick = time.monotonic()
    deadline += seconds
    while next_tick < deadline:
        counts = {}
        for service, rate in rates.items():
            owed[service] += rate * TICK
            counts[service] = int(owed[service])
            owed[service] -= counts[service]
        body = request(counts, rng, sent)
        post = urllib.request.Request(url, data=body, headers={"Content-Type": "application/x-protobuf"})
        with urllib.request.urlopen(post, timeout=30) as resp:
            assert resp.status == 200, resp.status
        next_tick += TICK
        time.sleep(max(0.0, next_tick - time.monotonic()))


def metric(api: str, name: str) -> float:
    """A metric's value from /metrics (a bare name: the sum over its labels)."""
    with urllib.request.urlopen(f"{api}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    labels = "" if "{" in name else r"(?:\{[^}]*\})?"  # a bare name sums its labelled series
    return sum(float(m.group(1)) for m in re.finditer(rf"^{re.escape(name)}{labels}\s+(\S+)$", text, re.M))


KEPT_FLAT = 'tailsift_sampler_decisions_total{decision="kept",rule="flat"}'


def main(steady: float, step: float) -> dict[str, Any]:
    c = OwnCollector({"sampling": {"quiet_period": "500ms", "rules": RULES}}).start()
    rng, sent = random.Random(int.from_bytes(os.urandom(4), "big")), Counter[str]()
    started_ns = time.time_ns()
    try:
        send(c.http_url, {"busy": 2000, "rare": 20}, steady - 30, rng, sent)
        before = metric(c.api, KEPT_FLAT)
        send(c.http_url, {"busy": 2000, "rare": 20}, 30, rng, sent)
        steady_rate = (metric(c.api, KEPT_FLAT) - before) / 30
        send(c.http_url, {"busy": 20000, "rare": 20}, step - 10, rng, sent)
        before = metric(c.api, KEPT_FLAT)
        send(c.http_url, {"busy": 20000, "rare": 20}, 10, rng, sent)
        step_rate = (metric(c.api, KEPT_FLAT) - before) / 10
        total = sent["busy"] + sent["rare"]
        while metric(c.api, "tailsift_sampler_decisions_total") < total:
            time.sleep(0.5)
        time.sleep(3)  # the last inserts (flush_interval 1s)
        with urllib.request.urlopen(f"{c.api}/api/stats?group_by=service&scope=root&since={started_ns}", timeout=60) as r:
            groups = {g["group"]: g for g in json.load(r)["groups"]}
        errors_kept = metric(c.api, 'tailsift_sampler_decisions_total{decision="kept",rule="errors"}')
    finally:
        c.stop()
    out = {"kept_per_s_steady": steady_rate, "kept_per_s_after_step": step_rate,
           "rare_kept_share": groups["rare"]["stored_spans"] / sent["rare"],
           "weighted_vs_sent": {k: groups[k]["count"] / sent[k] - 1 for k in ("busy", "rare")},
           "errors": (errors_kept, sent["errors"]), "sent": dict(sent)}  # fmt: skip
    print(f"adaptive rule, target 50/s: {steady_rate:.1f}/s kept steady ({steady_rate / 50 - 1:+.0%}), "
          f"{step_rate:.1f}/s in the last 10 s of the window after a tenfold step ({step_rate / 50 - 1:+.0%})")
    print(f"rare (20/s): {out['rare_kept_share']:.0%} of its traces kept")
    for key, err in out["weighted_vs_sent"].items():
        print(f"{key}: /api/stats weighted count {groups[key]['count']:,.0f} for {sent[key]:,} sent ({err:+.1%}), "
              f"± {groups[key]['count_stderr']:,.0f}")
    print(f"error traces kept {errors_kept:.0f} of {sent['errors']} sent")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steady", type=float, default=60.0)
    parser.add_argument("--step", type=float, default=30.0)
    args = parser.parse_args()
    main(args.steady, args.step)
