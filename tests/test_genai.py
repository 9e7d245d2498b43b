"""GenAI usage and cost: cached tokens are part of input tokens and are not counted twice."""

from __future__ import annotations

import pytest

from collector.waterfall import render
from processors.genai import Price, PriceTable, Usage

PRICES = PriceTable([
    Price(model="gpt-4o-mini*", input=0.15, output=0.60, cache_read=0.075),
    Price(model="claude-sonnet-4*", input=3.0, output=15.0, cache_read=0.30, cache_write=3.75),
    Price(model="*", input=1.0, output=2.0),
])  # fmt: skip


def test_usage_reads_the_conventions() -> None:
    u = Usage.from_attributes({"gen_ai.request.model": "gpt-4o-mini", "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
                               "gen_ai.usage.input_tokens": 1000, "gen_ai.usage.output_tokens": "200",
                               "gen_ai.usage.cache_read.input_tokens": 600})  # fmt: skip
    assert u == Usage("gpt-4o-mini-2024-07-18", 1000, 200, 600, 0)
    assert Usage.from_attributes({"http.route": "/chat"}) is None


def test_cached_tokens_are_charged_once_at_their_own_price() -> None:
    u = Usage("gpt-4o-mini", input=1000, output=200, cache_read=600)
    # 400 uncached at 0.15, 600 cached at 0.075, 200 out at 0.60 (per million)
    assert PRICES.cost(u) == pytest.approx((400 * 0.15 + 600 * 0.075 + 200 * 0.60) / 1e6)
    w = Usage("claude-sonnet-4-5", input=5000, output=100, cache_read=1000, cache_write=3000)
    assert PRICES.cost(w) == pytest.approx((1000 * 3.0 + 1000 * 0.30 + 3000 * 3.75 + 100 * 15.0) / 1e6)


def test_first_matching_row_wins_and_unknown_models_are_unpriced() -> None:
    assert PRICES.price("GPT-4o-mini") is not None and PRICES.price("GPT-4o-mini").input == 0.15  # type: ignore[union-attr]
    assert PRICES.cost(Usage("mistral-large", 1_000_000, 0)) == pytest.approx(1.0)
    assert PriceTable([]).cost(Usage("gpt-4o", 10, 10)) is None


def test_waterfall_shows_span_and_trace_cost() -> None:
    span = {"span_id": "01", "parent_span_id": "", "name": "llm.chat", "service": "chat", "start_time_unix_nano": 0,
            "end_time_unix_nano": 10**9, "duration_ns": 10**9, "status_code": "Ok", "sample_rate": 1.0,
            "attributes": {"gen_ai.usage.input_tokens": "812", "gen_ai.usage.output_tokens": "95"}, "cost_usd": 0.0123}
    lines = render({"trace_id": "ab" * 16, "spans": [span]})
    assert "cost $0.0123" in lines[0] and "tokens in 812 / out 95 $0.0123" in lines[5]


def test_waterfall_fits_100_columns_with_kind_and_key_attribute() -> None:
    def span(i: int, parent: str, name: str, kind: str, **attrs: object) -> dict[str, object]:
        return {"span_id": f"{i:02x}", "parent_span_id": parent, "name": name, "service": "checkout-service-eu",
                "kind": kind, "start_time_unix_nano": i * 10**6, "end_time_unix_nano": 10**9, "status_code": "Unset",
                "duration_ns": 10**9 - i * 10**6, "attributes": attrs, "cost_usd": 0.0}  # fmt: skip
    spans = [span(1, "", "POST /checkout", "Server", **{"http.route": "/checkout"}),
             span(2, "01", "GET", "Client", **{"url.path": "/inventory/items/reserve"}),
             span(3, "02", "SELECT", "Client", **{"db.system": "postgresql"})]
    spans += [span(4 + d, f"{3 + d:02x}", "a-rather-long-internal-step-name", "Internal") for d in range(8)]
    spans.append(span(12, "0b", "chat", "Client", **{"gen_ai.request.model": "gpt-4o-mini",
                                                      "gen_ai.usage.input_tokens": 1200, "gen_ai.usage.output_tokens": 90}))
    lines = render({"trace_id": "cd" * 16, "spans": spans})
    assert max(len(line) for line in lines) <= 100, max(lines, key=len)
    text = "\n".join(lines)
    assert "POST /checkout" in text and "GET /inventory/items/reserve" in text and "SELECT postgresql" in text
    assert " cli " in text and " srv " in text and "tokens in 1200 / out 90" in text
    assert "POST /checkout /checkout" not in text  # the route is already in the name
