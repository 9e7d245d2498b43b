"""How close are the sample-weighted /api/stats figures to the truth?

Starts a collector (errors kept 100%, the rest ``--keep``), sends ``--traces`` LLM requests
with the OpenTelemetry SDK (2% errors, two models, cached tokens), waits until everything
is decided and stored, and prints truth vs estimate for the request count, error rate,
tokens and cost per model, next to the naive unweighted figures:

    python -m benchmarks.stats_accuracy --traces 10000 --keep 5%
"""

from __future__ import annotations

import argparse
import random
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

from opentelemetry.trace import SpanKind, Status, StatusCode

from tests.support.collector import Collector
from tests.support.otel import Sender
from tests.test_metrics_and_stats import PRICES, cost, samples, settle


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--traces", type=int, default=10_000)
    parser.add_argument("--keep", default="5%")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rules = [{"name": "errors", "when": [{"status": "error"}], "keep": "100%"}, {"name": "default", "keep": args.keep}]
    config = {"sampling": {"decision_wait": "2s", "quiet_period": "200ms", "rules": rules}, "genai": {"prices": PRICES}}
    c = Collector(Path(tempfile.mkdtemp(prefix="tailsift-stats-")), config).start()
    rng = random.Random(args.seed)
    sender = Sender("grpc", c, seed=args.seed)
    errors = set(rng.sample(range(args.traces), args.traces // 50))
    truth: dict[str, Counter[str]] = defaultdict(Counter)
    for i in range(args.traces):
        model = "gpt-4o-mini" if rng.random() < 0.7 else "claude-sonnet-4"
        tokens_in, tokens_out = rng.randint(200, 3000), rng.randint(20, 600)
        cached = rng.randint(0, tokens_in) if model.startswith("claude") else 0
        with sender.tracer.start_as_current_span("POST /chat", kind=SpanKind.SERVER) as root:
            with sender.tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT) as llm:
                llm.set_attributes({"gen_ai.request.model": model, "gen_ai.usage.input_tokens": tokens_in,
                                    "gen_ai.usage.output_tokens": tokens_out,
                                    "gen_ai.usage.cache_read.input_tokens": cached})  # fmt: skip
            if i in errors:
                root.set_status(Status(StatusCode.ERROR))
        truth[model].update(input=tokens_in, output=tokens_out)
        truth[model]["cost_nano"] += round(cost(model, tokens_in, tokens_out, cached) * 1e9)
    sender.close()
    c.wait_for(lambda: sum(v for _, v in samples(c, "tailsift_sampler_decisions_total")) >= args.traces, 120, "decisions")
    settle(c)
    root = c.get("/api/stats", group_by="service", scope="root").json()["groups"][0]
    models = {g["group"]: g for g in c.get("/api/stats", group_by="model").json()["groups"]}
    c.stop()
    stored = root["stored_spans"]
    print(f"{args.traces:,} traces, {len(errors) / args.traces:.1%} errors; rules: errors 100%, the rest {args.keep}; "
          f"{stored:,} traces stored")  # fmt: skip
    print(f"{'figure':<34} {'truth':>14} {'weighted':>14} {'off by':>8} {'unweighted':>12}")
    print(f"{'requests':<34} {args.traces:>14,} {root['count']:>14,.0f} "
          f"{root['count'] / args.traces - 1:>+8.1%} {stored:>12,}   (±{root['count_stderr']:,.0f} stderr)")
    print(f"{'error rate':<34} {len(errors) / args.traces:>14.2%} {root['error_rate']:>14.2%} "
          f"{root['error_rate'] - len(errors) / args.traces:>+8.2%} {len(errors) / stored:>12.2%}")
    for model, t in sorted(truth.items()):
        g = models[model]
        for key, want, got in (("input tokens", t["input"], g["input_tokens"]),
                               ("output tokens", t["output"], g["output_tokens"]),
                               ("cost USD", t["cost_nano"] / 1e9, g["cost_usd"])):  # fmt: skip
            print(f"{model + ' ' + key:<34} {want:>14,.2f} {got:>14,.2f} {got / want - 1:>+8.1%}")


if __name__ == "__main__":
    main()
