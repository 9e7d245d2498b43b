"""Live reload: new sampling rules under load take effect within 2 s with no buffered trace
lost; a broken file is refused with validate's errors and the old rules run on."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from opentelemetry.trace import Status, StatusCode

from processors.sampling.sampler import TailSampler, keep_by_trace_id
from processors.sampling.settings import SamplingSettings
from tests.support.collector import Collector
from tests.support.otel import Sender
from tests.support.storage import query_rows, span_rows


def rules(default: str) -> list[dict[str, Any]]:
    return [{"name": "errors", "when": [{"status": "error"}], "keep": "100%"}, {"name": "default", "keep": default}]


def test_the_sampler_takes_new_rules_without_losing_a_buffered_trace() -> None:
    """Unit level: traces buffered under the old rules are decided by the new ones; what was
    decided before keeps its rule's name (explain, late spans)."""
    from tests.test_sampler import Clock, fragment

    clock = Clock()
    s = TailSampler(SamplingSettings.model_validate({"decision_wait": "10s", "quiet_period": "1s",
                                                     "rules": rules("0%")}), clock=clock)  # fmt: skip
    s.add([fragment(1, 1)])
    clock.now = 2 * 10**9
    (first,) = s.due()
    s.add([fragment(t, 1) for t in range(2, 12)])
    ignored = s.reload(SamplingSettings.model_validate({"rules": [{"name": "all", "keep": "100%"}], "max_traces": 5}))
    assert ignored == ["sampling.max_traces"] and s.settings.max_traces == 100_000
    clock.now = 20 * 10**9
    after = s.due()
    assert not first.keep and len(after) == 10 and all(d.keep and d.rule == "all" for d in after)
    assert s.decision_for((1).to_bytes(16, "big")) == ("dropped", "default", 0.0)
    assert s.decisions == {("default", False): 1, ("all", True): 10}


@pytest.mark.e2e
def test_a_reload_under_load_applies_within_two_seconds_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    config: dict[str, Any] = {"sampling": {"quiet_period": "200ms", "decision_wait": "2s", "rules": rules("5%")},
                              "redaction": {"builtin": {"email": "off"}}}  # fmt: skip
    # The reload also turns email redaction on and prices the model error spans name.
    reloaded_config = {"sampling": {**config["sampling"], "rules": rules("50%")},
                       "genai": {"prices": [{"model": "m1", "input": 2.0, "output": 0.0}]}}  # fmt: skip
    c = Collector(tmp_path, config)
    c.args = ["--watch"]
    c.start()
    sent: list[tuple[float, str, bool]] = []  # (when sent, trace id, error)
    stop = threading.Event()

    def send() -> None:
        sender = Sender("http", c, seed=5, delay_ms=100)  # exported within ~0.1 s of ending
        n = 0
        while not stop.is_set():
            with sender.tracer.start_as_current_span("work") as span:
                error = n % 50 == 0
                if error:
                    span.set_status(Status(StatusCode.ERROR))
                    span.set_attributes({"contact": f"user{n}@example.com", "gen_ai.request.model": "m1",
                                         "gen_ai.usage.input_tokens": 1000})  # fmt: skip
                sent.append((time.monotonic(), format(span.get_span_context().trace_id, "032x"), error))
            n += 1
            time.sleep(0.004)
        sender.close()

    def write(data: dict[str, Any] | str) -> None:
        c.config_path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))

    thread = threading.Thread(target=send)
    try:
        thread.start()
        time.sleep(4)
        write({**{k: v for k, v in c.config.items() if k != "redaction"}, **reloaded_config})
        assert c.proc is not None
        os.kill(c.proc.pid, signal.SIGHUP)
        reloaded = time.monotonic()
        time.sleep(4)
        broken = {**c.config, **reloaded_config, "sampling": {**config["sampling"], "rules": [{"name": "default", "keep": "150%"}]}}
        write(broken)  # --watch sees it: refused, 50% runs on
        c.wait_for(lambda: c.metrics().get('tailsift_config_reloads_total{outcome="refused"}') == 1, 10, "refusal")
        time.sleep(2)
    finally:
        stop.set()
        thread.join(60)
    total = len(sent)
    c.wait_for(lambda: sum(v for k, v in c.metrics().items() if k.startswith("tailsift_sampler_decisions_total"))
               >= total, 30, "every trace decided")  # fmt: skip
    m = c.metrics()
    assert sum(v for k, v in m.items() if k.startswith("tailsift_sampler_decisions_total")) == total
    assert m['tailsift_config_reloads_total{outcome="applied"}'] == 1
    assert c.stop() == 0  # storage is flushed at shutdown; chDB's files are read after
    stored = set(span_rows(c.dsn))
    errors = {tid: (contact, cost) for tid, contact, cost in query_rows(
        c.dsn, "SELECT TraceId, SpanAttributes['contact'], CostUsd FROM otel_traces WHERE StatusCode = 'Error'")}
    log = c.log()
    assert "configuration reload refused" in log and "sampling.rules[0].keep" in log

    wrong = []
    for when, tid, error in sent:
        expect_kept = error or keep_by_trace_id(bytes.fromhex(tid), 0.5 if when >= reloaded + 2 else 0.05)
        if when >= reloaded + 2 or when < reloaded - 1:  # around the reload, either rule may decide
            if (tid in stored) != expect_kept:
                wrong.append((round(when - reloaded, 2), tid, error))
    after = [t for w, t, e in sent if w >= reloaded + 2 and not e]
    share = sum(t in stored for t in after) / len(after)
    print(f"\n{total} traces; kept {share:.0%} of those sent 2 s or more after SIGHUP (50% rule)")
    assert not wrong, wrong[:10]
    assert all(tid in stored for _, tid, error in sent if error)
    for when, tid, error in sent:  # redaction and prices changed with the reload too
        if error and (when >= reloaded + 2 or when < reloaded - 2):  # prices apply when rows are built
            after = when >= reloaded + 2
            contact, cost = errors[tid]
            assert ("[REDACTED:email]" in contact) == after and ("@example.com" in contact) != after, contact
            assert cost == (pytest.approx(0.002) if after else 0.0), (when - reloaded, cost)
