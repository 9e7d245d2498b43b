"""A small app for the quickstart test, run under ``opentelemetry-instrument`` with nothing
but the README's environment variables: it records a trace with an error, a log line and a
metric, the three signals an auto-instrumented app exports, then prints its trace id."""

import logging

from opentelemetry import metrics, trace
from opentelemetry.trace import Status, StatusCode

tracer = trace.get_tracer("quickstart")
requests_served = metrics.get_meter("quickstart").create_counter("app.requests")
log = logging.getLogger("quickstart")

with tracer.start_as_current_span("POST /checkout") as span:
    log.warning("payment provider timed out")
    requests_served.add(1, {"route": "/checkout"})
    span.set_status(Status(StatusCode.ERROR, "payment timeout"))
    print(format(span.get_span_context().trace_id, "032x"))
