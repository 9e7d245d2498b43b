"""The web UI, in a real browser (Debian's chromium, headless, driven by Playwright) against a
real collector fed by the OpenTelemetry SDK. Assertions read what is on screen (visible
text, the accessibility tree's roles and states), never the HTML source; the page's own
network log proves it asked no host but the collector."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.trace import Status, StatusCode
from playwright.sync_api import Page, expect

from tests.support import demo_traces
from tests.support.collector import Collector
from tests.support.otel import Sender
from tests.support.ui import browser_page, open_page, run_axe, screenshot

pytestmark = pytest.mark.e2e

CONFIG = {"sampling": {"rules": [{"name": "errors", "when": [{"status": "error"}], "keep": "100%"},
                                 {"name": "default", "keep": "100%"}]},
          "genai": {"prices": [{"model": "gpt-4o*", "input": 2.5, "output": 10.0}]}}  # fmt: skip
"""Every trace kept (so the stats are exact), and a price so cost shows: 812 input and 96
output tokens cost 812 × 2.5e-6 + 96 × 1e-5 = $0.00299 per call."""


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Collector, demo_traces.DemoTraces]]:
    with Collector(tmp_path_factory.mktemp("ui") / "collector", CONFIG).start() as c:
        sent = demo_traces.send(c)
        for trace_id in (sent.checkout, sent.linked, sent.hostile, *sent.ordinary):
            c.wait_for(lambda t=trace_id: c.get(f"/api/traces/{t}").status_code == 200, 60, f"trace {trace_id}")
        yield c, sent


@pytest.fixture
def browser(shop: Any) -> Iterator[tuple[Page, Any]]:
    """A page; afterwards, no script error, and no request to any host but the collector."""
    with browser_page() as (page, log):
        yield page, log
    assert not log.errors, log.errors
    assert log.requests and log.hosts() == {shop[0].api.split("//")[1]}, log.hosts()


def rows(page: Page) -> Any:
    return page.get_by_role("treeitem")


def test_find_an_error_trace_open_it_fold_a_subtree_read_a_span_and_follow_its_link(shop: Any, browser: Any) -> None:
    c, sent = shop
    page, log = browser
    open_page(page, c.api + "/")
    expect(page.get_by_role("status")).to_have_text(f"{3 + len(sent.ordinary)} traces")
    screenshot(page, "ui-search")
    page.get_by_label("Status").select_option("true")
    page.get_by_label("Any span named").fill("db.query")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r"error=true"))
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_role("status")).to_have_text("1 trace")
    expect(page.get_by_role("row", name="POST /checkout")).to_contain_text("$0.00299")  # the LLM call's cost
    page.get_by_role("link", name="POST /checkout").click()
    page.wait_for_url(f"**/trace/{sent.checkout}")
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_role("heading", level=1)).to_have_text("shop-frontend POST /checkout")
    expect(rows(page)).to_have_count(5)
    cart = page.get_by_role("treeitem", name="cart.load")
    expect(cart).to_have_attribute("aria-expanded", "true")
    cart.locator(".toggle").click()  # fold: db.query goes out of sight
    expect(page.get_by_role("treeitem", name="db.query")).to_have_count(0)
    expect(page.get_by_role("treeitem", name="cart.load")).to_have_attribute("aria-expanded", "false")
    page.get_by_role("treeitem", name="cart.load").locator(".toggle").click()
    db = page.get_by_role("treeitem", name="db.query")
    expect(db).to_be_visible()
    db.click()
    details = page.get_by_role("complementary", name="Span details")
    expect(details.get_by_role("heading", name="db.query")).to_be_visible()
    expect(details).to_contain_text("Status: Error — statement timeout after 2s")
    statement = details.get_by_role("row", name="db.statement")
    expect(statement).to_contain_text("SELECT * FROM carts WHERE id = $1")
    expect(statement).to_contain_text("string")
    expect(details).to_contain_text("exception")  # its event
    logs = details.get_by_role("region", name="Logs")
    expect(logs).to_contain_text("ERROR")
    expect(logs).to_contain_text("cart 7 could not be read: statement timeout")
    page.get_by_role("treeitem", name="chat gpt-4o").click()
    expect(details.get_by_role("heading", name="Input messages")).to_be_visible()
    expect(details).to_contain_text("Why was my order refused?")
    expect(details).to_contain_text("The payment service timed out.")
    expect(details.get_by_role("row", name="gen_ai.usage.input_tokens")).to_contain_text("812 int")
    screenshot(page, "ui-trace")
    page.get_by_role("treeitem", name="payment.retry").click()
    details.get_by_role("link", name=f"trace {sent.linked}").click()
    page.wait_for_url(f"**/trace/{sent.linked}")
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_role("heading", level=1)).to_have_text("shop-frontend GET /orders")


def test_stats_compare_two_prompt_versions_side_by_side(shop: Any, browser: Any) -> None:
    c, _ = shop
    page, log = browser
    open_page(page, c.api + "/stats")
    page.get_by_label("Group by").select_option("prompt_key")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile("group_by=prompt_key"))
    page.wait_for_selector("body[data-ready=true]")
    v1 = page.get_by_role("row", name="refusal-v1")
    expect(v1).to_contain_text("42.9%")  # 3 of 7 v1 calls failed (6 ordinary, i % 4 == 0; and checkout's), weight 1 each
    page.get_by_role("button", name="Add refusal-v1 to the comparison").click()
    page.wait_for_selector("body[data-ready=true]")
    page.get_by_role("button", name="Add refusal-v2 to the comparison").click()
    page.wait_for_selector("body[data-ready=true]")
    table = page.get_by_role("table", name="refusal-v1 compared with refusal-v2")
    expect(table.get_by_role("row", name=re.compile("^Error rate"))).to_contain_text("-42.9% (more than noise)")
    expect(page.get_by_role("button", name="Remove refusal-v2 from the comparison")).to_have_attribute("aria-pressed", "true")
    screenshot(page, "ui-stats")
    page.get_by_role("link", name="refusal-v2").click()  # a group opens its traces
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_role("status")).to_have_text("6 traces")
    open_page(page, c.api + "/stats")
    page.get_by_label("Group by").select_option("")  # any attribute
    page.get_by_label("Attribute key").fill("gen_ai.request.model")
    page.get_by_role("button", name="Show").click()
    page.wait_for_url(re.compile(r"group_by=gen_ai.request.model"))
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_role("row", name="gpt-4o")).to_contain_text("23.1%")  # 3 failed LLM calls of 13


def test_the_waterfall_works_from_the_keyboard(shop: Any, browser: Any) -> None:
    c, sent = shop
    page, _ = browser
    open_page(page, c.api + f"/trace/{sent.checkout}")
    page.keyboard.press("Tab")  # skip link
    for _ in range(10):  # Tab until a row of the tree has the focus
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.getAttribute('role')") == "treeitem":
            break
    focused = page.locator("[role=treeitem]:focus")
    expect(focused).to_contain_text("POST /checkout")
    page.keyboard.press("ArrowDown")
    expect(focused).to_contain_text("cart.load")
    page.keyboard.press("ArrowLeft")  # folds cart.load
    expect(focused).to_have_attribute("aria-expanded", "false")
    expect(rows(page)).to_have_count(4)
    page.keyboard.press("ArrowRight")  # unfolds it
    page.keyboard.press("ArrowRight")  # to its first child
    expect(focused).to_contain_text("db.query")
    page.keyboard.press("Enter")
    expect(page.get_by_role("complementary", name="Span details").get_by_role("heading", name="db.query")).to_be_visible()
    page.keyboard.press("ArrowLeft")  # a leaf: to its parent
    expect(focused).to_contain_text("cart.load")
    page.keyboard.press("End")
    expect(focused).to_contain_text("payment.retry")


def test_find_a_span_jump_to_errors_and_fold_everything(shop: Any, browser: Any) -> None:
    c, sent = shop
    page, _ = browser
    open_page(page, c.api + f"/trace/{sent.checkout}")
    details = page.get_by_role("complementary", name="Span details")
    page.get_by_role("button", name="Fold all", exact=True).click()
    expect(rows(page)).to_have_count(4)  # the root stays open; cart.load is folded
    page.get_by_role("button", name="Next error").click()  # db.query, under the folded cart.load
    expect(details.get_by_role("heading", name="db.query")).to_be_visible()
    expect(rows(page)).to_have_count(5)
    expect(page.get_by_role("toolbar", name="Find in this trace").get_by_role("status")).to_have_text("1 of 1")
    page.get_by_label("Find span").fill("gpt")
    page.get_by_label("Find span").press("Enter")
    expect(details.get_by_role("heading", name="chat gpt-4o")).to_be_visible()
    page.get_by_label("Find span").fill("no-such-span")
    page.get_by_label("Find span").press("Enter")
    expect(page.get_by_role("toolbar", name="Find in this trace").get_by_role("status")).to_have_text("no match")
    page.get_by_role("button", name="Unfold all").click()
    expect(rows(page)).to_have_count(5)


def test_axe_core_finds_no_violation_on_the_three_pages(shop: Any, browser: Any) -> None:
    c, sent = shop
    page, _ = browser
    for path in ("/", f"/trace/{sent.checkout}", "/stats?group_by=prompt_key&compare=refusal-v1&compare=refusal-v2"):
        open_page(page, c.api + path)
        if path.startswith("/trace/"):
            page.get_by_role("treeitem", name="chat gpt-4o").click()
        violations = run_axe(page)
        assert not violations, [(v["id"], v["help"], [n["target"] for n in v["nodes"]][:3]) for v in violations]


def test_markup_in_span_data_is_shown_as_text_and_never_runs(shop: Any, browser: Any) -> None:
    c, sent = shop
    page, _ = browser
    open_page(page, c.api + "/?error=true")
    expect(page.get_by_role("link", name=demo_traces.HOSTILE_NAME)).to_be_visible()
    open_page(page, c.api + f"/trace/{sent.hostile}")
    expect(page.get_by_role("heading", level=1)).to_contain_text(demo_traces.HOSTILE_NAME)
    rows(page).first.click()
    details = page.get_by_role("complementary", name="Span details")
    expect(details).to_contain_text("<script>window.__pwned=2</script>")
    expect(details).to_contain_text("<i>boom</i>")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("main img, main script, main i, main b").count() == 0


def test_a_metrics_exemplar_opens_its_trace(shop: Any, browser: Any) -> None:
    c, _ = shop
    page, _ = browser
    text = requests.get(c.api + "/metrics", headers={"Accept": "application/openmetrics-text"}, timeout=30).text
    exemplar = re.search(r'# \{trace_id="([0-9a-f]{32})"\}', text)
    assert exemplar, "no exemplar on /metrics"
    open_page(page, c.api + f"/trace/{exemplar.group(1)}")
    expect(page.locator("p.mono")).to_have_text(f"trace {exemplar.group(1)}")
    expect(rows(page).first).to_be_visible()


def test_bad_ids_and_filters_get_their_reason_on_screen(shop: Any, browser: Any) -> None:
    c, _ = shop
    page, _ = browser
    open_page(page, c.api + "/trace/not-a-trace-id")
    expect(page.get_by_role("alert")).to_contain_text("must be 32 hex characters")
    open_page(page, c.api + "/trace/" + "ab" * 16)
    expect(page.get_by_role("alert")).to_contain_text("not found")
    open_page(page, c.api + "/?attribute=no-equals-sign")
    expect(page.get_by_role("alert")).to_contain_text("attribute: 'no-equals-sign' must be key=value")


def test_time_range_presets_and_absolute_times_go_into_the_url(shop: Any, browser: Any) -> None:
    c, sent = shop
    page, _ = browser
    everything = f"{3 + len(sent.ordinary)} traces"
    open_page(page, c.api + "/")
    page.get_by_label("Time range").select_option("15m")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r"since=15m"))
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_role("status")).to_have_text(everything)
    expect(page.get_by_label("Time range")).to_have_value("15m")  # the form shows what the URL holds
    page.get_by_label("Time range").select_option("custom")
    page.get_by_label("From", exact=True).fill("2020-01-01T00:00")
    page.get_by_label("To", exact=True).fill("2020-01-02T00:00")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r"since=2020-01-01T00%3A00%3A00.000Z&until=2020-01-02"))
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_role("status")).to_have_text("No kept trace matches these filters.")
    expect(page.get_by_label("From", exact=True)).to_have_value("2020-01-01T00:00")
    page.get_by_label("To", exact=True).fill("2099-01-01T00:00")
    page.get_by_role("button", name="Search").click()
    page.wait_for_url(re.compile(r"until=2099"))
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_role("status")).to_have_text(everything)


def test_clicking_the_histogram_narrows_the_search_to_that_duration(shop: Any, browser: Any) -> None:
    c, _ = shop
    page, _ = browser
    open_page(page, c.api + "/")
    bars = page.get_by_role("link", name=re.compile(r"^\d+ traces? \("))
    label = bars.first.get_attribute("aria-label") or ""
    wanted = int(label.split(" ")[0])
    bars.first.click()
    page.wait_for_url(re.compile("min_duration_ms=.*max_duration_ms="))
    page.wait_for_selector("body[data-ready=true]")
    expect(page.get_by_role("status")).to_have_text(f"{wanted} trace{'' if wanted == 1 else 's'}")


def test_ten_thousand_spans_render_only_the_rows_in_view(shop: Any, browser: Any) -> None:
    c, _ = shop
    page, _ = browser
    trace_id = demo_traces.big_trace(c, 10_000)
    c.wait_for(lambda: len(c.get(f"/api/traces/{trace_id}").json().get("spans", [])) == 10_000, 120, "10,000 spans")
    open_page(page, c.api + f"/trace/{trace_id}")
    expect(page.locator("dl.facts")).to_contain_text("10000")
    assert rows(page).count() < 100  # about a screen and its overscan, not 10,000
    rows(page).first.focus()
    page.keyboard.press("End")
    expect(page.locator("[role=treeitem]:focus")).to_contain_text("last-step")
    assert rows(page).count() < 100
    page.get_by_label("Find span").fill("step-39")  # 249 matches (i % 40 == 39, less the renamed last one), across the whole tree
    page.get_by_label("Find span").press("Enter")
    expect(page.get_by_role("toolbar", name="Find in this trace").get_by_role("status")).to_have_text("1 of 249")
    page.get_by_label("Find span").press("Shift+Enter")
    expect(page.get_by_role("toolbar", name="Find in this trace").get_by_role("status")).to_have_text("249 of 249")
    expect(page.get_by_role("complementary", name="Span details").get_by_role("heading", name="step-39")).to_be_visible()
    assert rows(page).count() < 100


def test_with_query_auth_the_page_asks_for_a_token_and_shows_nothing_without_one(tmp_path: Path) -> None:
    token = "ui-operator-token-0123456789abcdef"
    with Collector(tmp_path / "collector", {"query": {"auth": {"bearer_tokens": [token]}}}).start() as c:
        sent = demo_traces.send(c)
        assert c.get(f"/api/traces/{sent.checkout}").status_code == 401  # the API itself
        with browser_page() as (page, log):
            page.goto(c.api + "/")
            dialog = page.get_by_role("dialog", name="This collector asks for a token")
            expect(dialog).to_be_visible()
            expect(page.get_by_role("table")).to_have_count(0)
            dialog.get_by_label("API token").fill("wrong-token-wrong-token-wrong")
            dialog.get_by_role("button", name="Sign in").click()
            expect(dialog).to_contain_text("That token was not accepted")
            dialog.get_by_label("API token").fill(token)
            dialog.get_by_role("button", name="Sign in").click()
            page.wait_for_selector("body[data-ready=true]")
            c.wait_for(lambda: requests.get(c.api + f"/api/traces/{sent.checkout}", timeout=10,
                                            headers={"Authorization": f"Bearer {token}"}).status_code == 200, 60, "stored")  # fmt: skip
            page.reload()
            page.wait_for_selector("body[data-ready=true]")
            expect(page.get_by_role("link", name="POST /checkout")).to_be_visible()
            assert not log.errors, log.errors


def test_parent_cycles_orphans_and_deep_chains_still_show_every_span(shop: Any, browser: Any) -> None:
    c, _ = shop
    page, _ = browser
    trace_id = demo_traces.tangled_trace(c)
    c.wait_for(lambda: len(c.get(f"/api/traces/{trace_id}").json().get("spans", [])) == 63, 60, "the tangled trace")
    open_page(page, c.api + f"/trace/{trace_id}")
    expect(page.locator("dl.facts")).to_contain_text("63")
    for name in ("cycle-a", "cycle-b", "orphan", "chain-0"):
        expect(page.get_by_role("treeitem", name=name, exact=False).first).to_be_visible()
    page.get_by_label("Find span").fill("chain-59")
    page.get_by_label("Find span").press("Enter")
    deepest = page.get_by_role("treeitem", name="chain-59")
    expect(deepest).to_have_attribute("aria-level", "60")
    expect(deepest).to_be_in_viewport()
    page.get_by_role("button", name="Fold all", exact=True).click()
    page.get_by_role("button", name="Next error").click()  # chain-59, 60 levels down, unfolded again
    expect(page.get_by_role("complementary", name="Span details").get_by_role("heading", name="chain-59")).to_be_visible()


def test_a_new_user_sees_how_to_send_traces_then_their_first_trace(tmp_path: Path) -> None:
    with Collector(tmp_path / "collector").start() as c, browser_page() as (page, log):
        open_page(page, c.api + "/")
        expect(page.get_by_role("status")).to_have_text("No traces stored yet.")
        steps = page.get_by_role("region", name="Getting started")
        expect(steps).to_contain_text("OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318")
        sender = Sender("http", c, service="first-app", delay_ms=100)
        with sender.tracer.start_as_current_span("GET /hello") as span:
            span.set_status(Status(StatusCode.ERROR, "first failure"))
        sender.close()
        c.wait_for(lambda: c.get("/api/traces").json()["traces"], 60, "the first trace")
        open_page(page, c.api + "/")
        expect(page.get_by_role("link", name="first-app GET /hello")).to_be_visible()
        expect(page.get_by_role("region", name="Getting started")).to_have_count(0)
        assert not log.errors, log.errors
