"""Unbiased numbers from sampled traces, end to end with the SDK's OTLP exporter:

- RED metrics and GenAI usage on /metrics count 100% of spans, before sampling, with
  bounded label cardinality (100k distinct user ids never become series);
- /api/stats and ``tailsift stats`` weight every stored span by its sample rate, so
  keeping every error and 5% of the rest still gives the true error rate, request count,
  tokens and cost.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from collections import Counter, defaultdict
from typing import Any

import pytest
import requests
from opentelemetry.trace import SpanKind, Status, StatusCode

from collector.bench.target import Scraper
from tests.support.collector import Collector
from tests.support.otel import Sender

PRICES = [
    {"model": "gpt-4o-mini*", "input": 0.15, "output": 0.60, "cache_read": 0.075},
    {"model": "claude-sonnet-4*", "input": 3.0, "output": 15.0, "cache_read": 0.30},
]
MAX_SERIES, MAX_VALUES = 500, 50
CONFIG = {
    "sampling": {"decision_wait": "2s", "quiet_period": "200ms", "rules": [
        {"name": "errors", "when": [{"status": "error"}], "keep": "100%"},
        {"name": "default", "keep": "5%"},
    ]},
    "cardinality": {"label_keys": ["prompt_key", "tenant"], "max_values_per_label": MAX_VALUES,
                    "max_series": MAX_SERIES},
    "genai": {"prices": PRICES},
}  # fmt: skip


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Any:
    c = Collector(tmp_path_factory.mktemp("stats"), CONFIG).start()
    yield c
    assert c.stop() == 0, c.log()


def samples(collector: Collector, name: str) -> list[tuple[dict[str, str], float]]:
    return [(labels, v) for n, labels, v in Scraper(collector.api).samples() if n == name]


def settle(collector: Collector) -> None:
    """Wait until nothing is buffered for a decision or waiting for an insert."""
    assert Scraper(collector.api).settle(90), f"the pipeline did not settle\n{collector.log()[-3000:]}"


def cost(model: str, tokens_in: int, tokens_out: int, cached: int) -> float:
    p = PRICES[0] if model.startswith("gpt") else PRICES[1]
    return ((tokens_in - cached) * p["input"] + cached * p["cache_read"] + tokens_out * p["output"]) / 1e6


def test_stats_are_weighted_by_sample_rate(collector: Collector) -> None:
    rng = random.Random(20261124)
    sender = Sender("grpc", collector, seed=4)
    n = 10_000
    # Exactly 2%, and v2 (odd i) fails three times as often as v1: a difference well beyond
    # the estimates' error, so comparing them does not depend on which traces were kept.
    errors = set(rng.sample(range(1, n, 2), 150)) | set(rng.sample(range(0, n, 2), 50))
    truth: dict[str, Counter[str]] = defaultdict(Counter)
    prompt_errors: Counter[str] = Counter()
    for i in range(n):
        model = "gpt-4o-mini" if rng.random() < 0.7 else "claude-sonnet-4"
        prompt = "v2" if i % 2 else "v1"
        tokens_in, tokens_out = rng.randint(200, 3000), rng.randint(20, 600)
        cached = rng.randint(0, tokens_in) if model.startswith("claude") else 0
        with sender.tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER) as root:
            with sender.tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT) as llm:
                # v2 is tagged the way OpenLLMetry does it; group_by=prompt_key finds both
                key = "prompt_key" if prompt == "v1" else "traceloop.association.properties.prompt_key"
                llm.set_attributes({"gen_ai.request.model": model, "gen_ai.usage.input_tokens": tokens_in,
                                    "gen_ai.usage.output_tokens": tokens_out, key: prompt,
                                    "gen_ai.usage.cache_read.input_tokens": cached})  # fmt: skip
                if i in errors:
                    llm.set_status(Status(StatusCode.ERROR, "upstream 500"))
            if i in errors:
                root.set_status(Status(StatusCode.ERROR))
                prompt_errors[prompt] += 1
        truth[model].update(input=tokens_in, output=tokens_out, cached=cached, spans=1)
        truth[model]["cost_nano"] += round(cost(model, tokens_in, tokens_out, cached) * 1e9)
    sender.close()

    def decided() -> float:
        return sum(v for _, v in samples(collector, "tailsift_sampler_decisions_total"))

    collector.wait_for(lambda: decided() >= n, 60, "every trace decided")
    settle(collector)

    # Before sampling, /metrics counted every span exactly.
    calls = samples(collector, "tailsift_span_calls_total")
    assert sum(v for labels, v in calls if labels["span_name"] == "POST /chat") == n
    assert sum(v for labels, v in calls if labels["span_name"] == "POST /chat" and labels["status"] == "Error") == 200
    tokens = {(labels["model"], labels["type"]): v for labels, v in samples(collector, "tailsift_genai_tokens_total")}
    for model, t in truth.items():
        assert tokens[(model, "input")] == t["input"] and tokens[(model, "output")] == t["output"]
        assert tokens[(model, "cache_read")] == t["cached"]

    # After sampling, stats re-weight what was kept.
    requests_ = collector.get("/api/stats", group_by="service", scope="root").json()["groups"]
    assert len(requests_) == 1 and requests_[0]["group"] == "chat-api"
    chat = requests_[0]
    stored_error_share = 200 / chat["stored_spans"]
    assert stored_error_share > 0.2  # unweighted, the kept sample would claim >20% errors
    assert abs(chat["count"] - n) <= 0.1 * n, chat
    assert 0 < chat["count_stderr"] < 0.1 * n  # the estimate says how far to trust it
    assert abs(chat["error_rate"] - 0.02) <= 0.005, chat
    assert 0 < chat["error_rate_stderr"] < 0.005, chat
    assert 0 < chat["p50_ms"] <= chat["p95_ms"] <= chat["p99_ms"]

    by_prompt = {g["group"]: g for g in collector.get("/api/stats", group_by="prompt_key").json()["groups"]}
    for prompt in ("v1", "v2"):
        assert abs(by_prompt[prompt]["error_rate"] - prompt_errors[prompt] / (n / 2)) <= 0.005, by_prompt[prompt]
    for bad, message in ((dict(group_by="a b"), "group_by"), (dict(scope="leaf"), "scope"), (dict(limit="0"), "limit"),
                         (dict(since="yesterday"), "since"), (dict(colour="red"), "unknown parameter 'colour'")):
        response = collector.get("/api/stats", **bad)
        assert response.status_code == 400 and message in response.json()["error"]
    cli = subprocess.run([sys.executable, "-m", "collector.cli", "stats", "--group-by", "prompt_key",
                          "--api", collector.api], capture_output=True, text=True, timeout=60)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    rows = {line.split()[0]: line.split() for line in cli.stdout.splitlines()[1:] if line.startswith("v")}
    assert set(rows) == {"v1", "v2"} and float(rows["v2"][3]) > float(rows["v1"][3])  # v2 fails more often
    assert rows["v1"][2].startswith("±") and rows["v1"][4].startswith("±")  # counts and rates carry their error

    # Exemplars point at traces that were kept.
    text = requests.get(collector.api + "/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=30).text
    exemplars = set(re.findall(r'# \{trace_id="([0-9a-f]{32})"\}', text))
    assert exemplars
    for trace_id in list(exemplars)[:5]:
        assert collector.get(f"/api/traces/{trace_id}").status_code == 200


def test_token_and_cost_totals_per_model(collector: Collector) -> None:
    """100k single-span LLM calls, errors kept whole and 5% of the rest: the weighted totals
    per model match what was sent. (Fewer calls would not do: a 5% sample of n spans has a
    relative standard error near sqrt(19/n), about 2% per model here.)"""
    rng = random.Random(7)
    sender = Sender("http", collector, service="llm-batch", seed=11)
    truth: dict[str, Counter[str]] = defaultdict(Counter)
    n = 100_000
    for i in range(n):
        model = "gpt-4o-mini" if i % 2 else "claude-sonnet-4"
        tokens_in, tokens_out = rng.randint(200, 3000), rng.randint(20, 600)
        cached = rng.randint(0, tokens_in) if rng.random() < 0.5 else 0
        with sender.tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT) as llm:
            llm.set_attributes({"gen_ai.request.model": model, "gen_ai.usage.input_tokens": tokens_in,
                                "gen_ai.usage.output_tokens": tokens_out,
                                "gen_ai.usage.cache_read.input_tokens": cached})  # fmt: skip
            if i % 100 == 0:
                llm.set_status(Status(StatusCode.ERROR, "rate limited"))
        truth[model].update(input=tokens_in, output=tokens_out, spans=1)
        truth[model]["cost_nano"] += round(cost(model, tokens_in, tokens_out, cached) * 1e9)
    sender.close()

    def llm_calls() -> float:
        return sum(v for labels, v in samples(collector, "tailsift_span_calls_total") if labels["service"] == "llm-batch")

    collector.wait_for(lambda: llm_calls() >= n, 90, "every span counted")
    costs = {labels["model"]: v for labels, v in samples(collector, "tailsift_genai_cost_usd_total")
             if labels["service"] == "llm-batch"}  # fmt: skip
    for model, t in truth.items():  # before sampling: exact (up to float rounding)
        assert costs[model] == pytest.approx(t["cost_nano"] / 1e9, rel=1e-6)

    def stored() -> int:
        groups = collector.get("/api/stats", group_by="model", service="llm-batch").json()["groups"]
        return sum(g["stored_spans"] for g in groups)

    settle(collector)
    by_model = {g["group"]: g for g in collector.get("/api/stats", group_by="model", service="llm-batch").json()["groups"]}
    for model, t in truth.items():
        got = by_model[model]
        for key, want in (("input_tokens", t["input"]), ("output_tokens", t["output"]),
                          ("cost_usd", t["cost_nano"] / 1e9), ("count", t["spans"])):  # fmt: skip
            assert abs(got[key] - want) <= 0.1 * want, (model, key, got[key], want)
        assert got["stored_spans"] < 0.1 * t["spans"]  # the totals really are estimates from a sample


def test_user_ids_never_become_series(collector: Collector) -> None:
    sender = Sender("http", collector)
    users = [str(3_000_000 + i) for i in range(100_000)]
    for t in range(1000):
        with sender.tracer.start_as_current_span("GET /batch"):
            for uid in users[t * 100:(t + 1) * 100]:
                with sender.tracer.start_as_current_span(f"GET /users/{uid}") as span:
                    span.set_attributes({"user.id": uid, "tenant": f"tenant-{int(uid) - 3_000_000}"})
    sender.close()
    name = "GET /users/{id}"
    collector.wait_for(lambda: sum(v for labels, v in samples(collector, "tailsift_span_calls_total")
                                   if labels["span_name"] == name) >= len(users), 60, "every span counted")  # fmt: skip
    calls = samples(collector, "tailsift_span_calls_total")
    assert len(calls) <= MAX_SERIES
    assert all("user_id" not in labels and "user.id" not in labels for labels, _ in calls)
    values = {v for labels, _ in calls for v in labels.values()}
    assert not values & set(users) and not any(uid in v for v in values for uid in users[:100])
    tenants = Counter()
    for labels, v in calls:
        if labels["span_name"] == name:
            tenants[labels["tenant"]] += int(v)
    assert len(tenants) == MAX_VALUES + 1  # the budget, plus the overflow series
    assert tenants["__overflow__"] == len(users) - MAX_VALUES
    overflows = {labels["label"]: v for labels, v in samples(collector, "tailsift_label_overflows_total")}
    assert overflows["tenant"] == len(users) - MAX_VALUES
