"""The search API's filters on the real embedded engine: a span name anywhere in the trace,
attribute key=value pairs (span or resource, each on any span, all required), and the rule
that kept each trace in the answer."""

from __future__ import annotations

import pytest

from collector.config import ClickHouseSettings
from collector.query_api import BadParameter, _attributes
from collector.storage import ClickHouseStore
from tests.support.writer import kept, request, write_all


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> ClickHouseStore:
    tmp = tmp_path_factory.mktemp("search")
    model = request(1, attrs={"gen_ai.request.model": "gpt-4o"})
    query = request(2, name="db.query", attrs={"tier": "gold"})
    billing = query.resource_spans.add()  # a second service in trace 2, under its root
    billing.resource.attributes.add(key="service.name").value.string_value = "billing"
    charge = billing.scope_spans.add().spans.add()
    charge.CopyFrom(query.resource_spans[0].scope_spans[0].spans[1])
    charge.span_id, charge.name = (9).to_bytes(8, "big"), "charge"
    split = request(3, spans=2)  # "a" on its first span, "b" on its second
    first, second = split.resource_spans[0].scope_spans[0].spans
    first.attributes.add(key="a").value.string_value = "1"
    second.attributes.add(key="b").value.string_value = "2"
    write_all(tmp, [kept(model), kept(query), kept(split)])
    store = ClickHouseStore(ClickHouseSettings(dsn=f"chdb://{tmp / 'db'}", ttl_days=0))  # type: ignore[arg-type]
    store.connect()
    return store


def ids(store: ClickHouseStore, **filters: object) -> set[int]:
    return {int(t["trace_id"], 16) for t in store.search_traces(**filters)}


def test_span_name_matches_any_span_and_name_only_the_root(store: ClickHouseStore) -> None:
    assert ids(store, span_name="db.query") == {2}
    assert ids(store, span_name="nothing") == set()
    assert ids(store, name="op") == {1, 3}


def test_span_service_matches_any_span_and_service_only_the_root(store: ClickHouseStore) -> None:
    assert ids(store, span_service="isolation") == {1, 2, 3}
    assert ids(store, span_service="billing") == {2}
    assert ids(store, service="billing") == set()  # it is not the root's service
    assert ids(store, span_service="billing", span_name="charge") == {2}
    assert ids(store, span_service="shipping") == set()


def test_attributes_match_span_or_resource_and_all_are_required(store: ClickHouseStore) -> None:
    assert ids(store, attributes=[("gen_ai.request.model", "gpt-4o")]) == {1}
    assert ids(store, attributes=[("a", "1"), ("b", "2")]) == {3}  # on two different spans
    assert ids(store, attributes=[("a", "1"), ("b", "3")]) == set()
    assert ids(store, attributes=[("service.name", "isolation")]) == {1, 2, 3}  # a resource attribute
    assert ids(store, attributes=[("tier", "gold")], span_name="db.query") == {2}
    assert ids(store, attributes=[("tier", "gold")], span_name="op") == set()
    assert ids(store) == {1, 2, 3}


def test_each_trace_says_which_rule_kept_it(store: ClickHouseStore) -> None:
    assert {t["sampled_by"] for t in store.search_traces()} == {"errors"}


def test_attribute_parameters_split_at_the_first_equals_sign() -> None:
    assert _attributes(["url=/a?b=c", " k = v "]) == [("url", "/a?b=c"), ("k", " v ")]
    for bad in (["no-equals"], ["=value"], ["k=v"] * 11):
        with pytest.raises(BadParameter, match="attribute"):
            _attributes(bad)
