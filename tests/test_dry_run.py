"""``sampling.dry_run``: rules decide and the decision is recorded, but every trace is stored
(at sample rate 1), so a team can try rules on real traffic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from processors.sampling.sampler import Decision, TailSampler, keep_by_trace_id
from processors.sampling.settings import SamplingSettings
from tests.support.collector import Collector
from tests.support.otel import Sender
from tests.support.storage import query_rows
from tests.test_sampler import Clock, fragment, rid

RULES = [
    {"name": "errors", "when": [{"status": "error"}], "keep": "100%"},
    {"name": "health", "when": [{"attribute": "http.route", "value": "/health"}], "keep": "0%"},
    {"name": "default", "keep": "10%"},
]


def decide(dry_run: bool) -> tuple[TailSampler, dict[int, Decision], list[Decision]]:
    clock = Clock()
    s = TailSampler(SamplingSettings.model_validate({"decision_wait": "10s", "quiet_period": "1s", "rules": RULES,
                                                     "dry_run": dry_run}), clock=clock)  # fmt: skip
    s.add([fragment(rid(t), 1, error=t % 7 == 0, attrs={"http.route": "/health" if t % 5 == 0 else "/chat"})
           for t in range(1, 301)])  # fmt: skip
    clock.now = 2 * 10**9
    decisions = s.due_kept()[0]  # the pipeline's call: under dry run it returns every trace
    late = s.add([fragment(rid(t), 2, parent=1) for t in range(1, 301)])
    return s, {int.from_bytes(d.summary.trace_id, "big"): d for d in decisions}, late


def test_a_dry_run_stores_everything_and_decides_as_a_normal_run() -> None:
    normal, kept, normal_late = decide(False)
    dry, stored, dry_late = decide(True)
    assert len(stored) == 300 and all(d.keep and d.sample_rate == 1.0 for d in stored.values())
    assert {t for t, d in stored.items() if d.would_keep} == set(kept)
    assert all(stored[t].rule == d.rule for t, d in kept.items())
    assert dry.decisions == normal.decisions  # counted as the rules decided
    assert len(dry_late) == 300 and all(d.keep and d.late for d in dry_late)  # late spans are stored too
    assert {int.from_bytes(d.summary.trace_id, "big") for d in normal_late} == set(kept)
    assert dry.take_settled() == []  # nothing is forgotten as dropped
    assert dry.decision_for(rid(5).to_bytes(16, "big")) == ("dropped", "health", 0.0)  # explain tells the truth
    assert sum(d.keep and d.rule == "default" for d in kept.values()) > 0  # some kept by the coin, too


@pytest.mark.e2e
def test_a_dry_run_collector_stores_every_trace_with_what_the_rules_said(tmp_path: Path) -> None:
    config: dict[str, Any] = {"sampling": {"quiet_period": "200ms", "decision_wait": "2s", "rules": RULES,
                                           "dry_run": True}}  # fmt: skip
    with Collector(tmp_path, config).start() as c:
        sender = Sender("http", c, seed=3, delay_ms=100)
        ids = []
        for i in range(200):
            with sender.tracer.start_as_current_span("op") as span:
                span.set_attribute("http.route", "/health" if i % 4 == 0 else "/chat")
                ids.append(format(span.get_span_context().trace_id, "032x"))
        sender.close()
        c.wait_for(lambda: c.metrics()["tailsift_storage_rows_total"] >= 200, 30, "every trace stored")
        m = c.metrics()
        assert m['tailsift_sampler_decisions_total{decision="dropped",rule="health"}'] == 50
        why = c.get(f"/api/decisions/{ids[0]}").json()
        assert why["state"] == "dropped" and why["dry_run"] and "stored anyway" in why["why"]
        assert len(c.get(f"/api/traces/{ids[0]}").json()["spans"]) == 1
    rows = query_rows(c.dsn, "SELECT TraceId, WouldKeep, SampleRate, SampledBy FROM tailsift_traces FINAL")
    got = {tid: (int(would), rate, rule) for tid, would, rate, rule in rows}
    assert set(got) == set(ids)
    for i, tid in enumerate(ids):
        rule = "health" if i % 4 == 0 else "default"
        would = rule == "default" and keep_by_trace_id(bytes.fromhex(tid), 0.1)
        assert got[tid] == (int(would), 1.0, rule), (i, tid, got[tid])
