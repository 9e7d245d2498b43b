"""Explained decisions: ``tailsift explain`` and ``GET /api/decisions/<id>`` say which rule
decided a trace, at what rate and why; drop rules (``keep: 0%``) are counted per rule."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from opentelemetry.trace import Status, StatusCode

from processors.sampling.explain import explain
from processors.sampling.sampler import keep_by_trace_id
from processors.sampling.settings import SamplingSettings
from tests.support.collector import Collector
from tests.support.otel import Sender
from tests.test_sampler import rid

RULES = [
    {"name": "errors", "when": [{"status": "error"}], "keep": "100%"},
    {"name": "health", "when": [{"attribute": "http.route", "value": "/health", "scope": "root"}], "keep": "0%"},
    {"name": "capped", "when": [{"service": "batch"}], "rate_limit": "2/s"},
    {"name": "default", "keep": "5%"},
]


def rules() -> SamplingSettings:
    return SamplingSettings.model_validate({"rules": RULES})


def test_a_percentage_says_where_the_trace_id_fell_against_the_threshold() -> None:
    ids = [rid(i).to_bytes(16, "big") for i in range(1, 400)]
    dropped = next(t for t in ids if not keep_by_trace_id(t, 0.05))
    kept = next(t for t in ids if keep_by_trace_id(t, 0.05))
    out = explain(dropped, "dropped", "default", 20.0, rules().rules, "decision cache")
    assert out["rules_not_matched"] == ["errors", "health", "capped"]
    assert out["trace_id_position"] < 0.95 and "under the rejection threshold 0.95 (OTEP 235)" in out["why"]
    assert "'default' (every trace) matched first; it keeps 5% of traces, chosen by trace id" in out["why"] and out["why"].endswith("so it was dropped.")
    out = explain(kept, "kept", "default", 20.0, rules().rules, "storage")
    assert out["trace_id_position"] >= 0.95 and "at or above the rejection threshold 0.95" in out["why"]
    assert "with sample rate 20 (it stands for 20 traces)" in out["why"] and out["source"] == "storage"


def test_conditions_rate_limits_and_unknown_rules_are_explained_in_words() -> None:
    tid = (7).to_bytes(16, "big")
    out = explain(tid, "dropped", "health", 0.0, rules().rules, "decision cache")
    assert "the root span's attribute http.route = '/health'" in out["why"] and "keeps 0%" in out["why"]
    assert "trace_id_position" not in out  # 0% and 100% do not look at the trace id
    out = explain(tid, "kept", "capped", 3.0, rules().rules, "decision cache")
    assert "keeps at most 2 traces/s" in out["why"] and "keeping 1 trace in 3" in out["why"] and "within" in out["why"]
    out = explain(tid, "kept", "renamed", 1.0, rules().rules, "storage")
    assert "not in the current configuration" in out["why"]
    assert "waiting for its decision" in explain(tid, "buffered", "", 0.0, rules().rules, "decision cache")["why"]


def cli(c: Collector, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "collector.cli", "explain", *args, "--api", c.api],
                          capture_output=True, text=True, timeout=60)  # fmt: skip


@pytest.mark.e2e
def test_explain_a_kept_and_a_dropped_trace_from_a_running_collector(tmp_path: Path) -> None:
    config = {"sampling": {"quiet_period": "200ms", "decision_wait": "2s", "rules": RULES}}
    with Collector(tmp_path, config).start() as c:
        sender = Sender("http", c, seed=11)
        ids: dict[str, list[str]] = {"error": [], "health": [], "other": []}
        for kind, count in (("error", 1), ("health", 20), ("other", 60)):
            for _ in range(count):
                with sender.tracer.start_as_current_span("GET /health" if kind == "health" else "chat") as span:
                    span.set_attribute("http.route", "/health" if kind == "health" else "/chat")
                    if kind == "error":
                        span.set_status(Status(StatusCode.ERROR))
                    ids[kind].append(format(span.get_span_context().trace_id, "032x"))
        sender.close()
        c.wait_for(lambda: sum(v for k, v in c.metrics().items() if k.startswith("tailsift_sampler_decisions_total"))
                   >= 81, 30, "every trace decided")  # fmt: skip
        m = c.metrics()
        assert m['tailsift_sampler_decisions_total{decision="dropped",rule="health"}'] == 20
        assert m['tailsift_sampler_decisions_total{decision="kept",rule="errors"}'] == 1

        kept = cli(c, ids["error"][0])
        assert kept.returncode == 0, kept.stderr
        assert f"trace {ids['error'][0]}: kept by rule 'errors', sample rate 1" in kept.stdout
        assert "any span's status is error" in kept.stdout

        health = cli(c, ids["health"][3])
        assert health.returncode == 0 and "dropped by rule 'health'" in health.stdout and "keeps 0%" in health.stdout

        dropped = next(t for t in ids["other"] if not keep_by_trace_id(bytes.fromhex(t), 0.05))
        answer = c.get(f"/api/decisions/{dropped}").json()
        assert answer["state"] == "dropped" and answer["rule"] == "default" and answer["sample_rate"] == 20
        assert answer["rules_not_matched"] == ["errors", "health", "capped"] and answer["trace_id_position"] < 0.95
        assert c.get(f"/api/traces/{dropped}").status_code == 404  # explained, and indeed not stored

        unknown = cli(c, "ab" * 16)
        assert unknown.returncode == 1 and "no decision known" in unknown.stderr
        assert c.get("/api/decisions/not-an-id").status_code == 400
