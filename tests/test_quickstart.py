"""The README's quickstart, as a new user runs it: an app under ``opentelemetry-instrument``
with only the README's environment variables, over gRPC and over http/protobuf. Its trace
is stored, its logs are stored in otel_logs linked to the trace, its metrics taken (counted and
dropped, not refused), and the app
prints no export error. A gRPC exporter sent to the HTTP port is named in one log line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.collector import Collector

APP = Path(__file__).parent / "apps" / "quickstart_app.py"
INSTRUMENT = Path(sys.executable).with_name("opentelemetry-instrument")


def run_app(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([str(INSTRUMENT), sys.executable, str(APP)], capture_output=True, text=True, timeout=120,
                          env={**base, **env})  # fmt: skip


@pytest.fixture(scope="module")
def collector(tmp_path_factory: pytest.TempPathFactory) -> Collector:
    c = Collector(tmp_path_factory.mktemp("quickstart")).start()
    yield c  # type: ignore[misc]
    c.stop()


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_the_readme_quickstart_works_as_written(collector: Collector, protocol: str) -> None:
    # The README's variables: the endpoint for the protocol, the service name, and for logs
    # the Python SDK's switch that sends `logging` records.
    endpoint = f"http://127.0.0.1:{collector.grpc_port if protocol == 'grpc' else collector.http_port}"
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_SERVICE_NAME": f"checkout-{protocol[:4]}",
           "OTEL_PYTHON_LOGGING_AUTO_INSTRUMENTATION_ENABLED": "true"}  # fmt: skip
    if protocol != "grpc":
        env["OTEL_EXPORTER_OTLP_PROTOCOL"] = protocol
    before = collector.metrics()
    app = run_app(env)
    assert app.returncode == 0, app.stderr
    trace_id = app.stdout.split()[-1]
    # the app prints its trace id, whose hex digits may spell "404" by chance
    output = (app.stdout + app.stderr).lower().replace(trace_id, "<trace id>")
    for complaint in ("failed to export", "transient error", "unimplemented", "404", "exception"):
        assert complaint not in output, app.stdout + app.stderr
    collector.wait_for(lambda: collector.get(f"/api/traces/{trace_id}").status_code == 200, what="the app's trace")

    def counted(signal: str) -> float:
        key = f'tailsift_receiver_signals_dropped_total{{signal="{signal}"}}'
        return collector.metrics().get(key, 0.0) - before.get(key, 0.0)

    collector.wait_for(lambda: counted("metrics") > 0, what="metrics taken")
    # the log line is stored in otel_logs, linked to the trace it was written in
    logs = collector.get(f"/api/traces/{trace_id}").json()["logs"]
    assert [(entry["body"], entry["severity_text"]) for entry in logs] == [("payment provider timed out", "WARN")]
    assert logs[0]["span_id"] and logs[0]["service"] == env["OTEL_SERVICE_NAME"]


def test_a_grpc_exporter_on_the_http_port_is_named_in_the_log(collector: Collector) -> None:
    """The most common first-run mistake: the Python SDK defaults to gRPC, sent to :4318."""
    before = collector.metrics().get('tailsift_connections_closed_total{reason="http2_client",server="otlp_http"}', 0)
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.http_port}", "OTEL_SERVICE_NAME": "wrong-port",
           "OTEL_EXPORTER_OTLP_TIMEOUT": "2000", "OTEL_METRICS_EXPORTER": "none", "OTEL_LOGS_EXPORTER": "none"}
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    app = subprocess.Popen([str(INSTRUMENT), sys.executable, str(APP)], env={**base, **env},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:  # the exporter retries for a while; the hint is logged at its first connection
        collector.wait_for(lambda: "OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf" in collector.log(), what="the hint")
    finally:
        app.kill()
        app.wait()
    after = collector.metrics()['tailsift_connections_closed_total{reason="http2_client",server="otlp_http"}']
    assert after > before
    assert "Traceback" not in collector.log()


def test_metrics_and_logs_bodies_are_checked_and_counted(collector: Collector, tmp_path: Path) -> None:
    """Malformed bodies are 400; logs: drop counts without storing; off refuses."""
    import requests
    from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

    url = f"http://127.0.0.1:{collector.http_port}/v1"
    proto = {"Content-Type": "application/x-protobuf"}
    assert requests.post(f"{url}/metrics", data=b"\xff\xff not protobuf", headers=proto, timeout=10).status_code == 400
    logs = ExportLogsServiceRequest()
    for body in ("first", "second", "third"):
        logs.resource_logs.add().scope_logs.add().log_records.add().body.string_value = body
    assert requests.post(f"{url}/logs", data=b"\xff\xff not protobuf", headers=proto, timeout=10).status_code == 400
    before = collector.metrics().get("tailsift_receiver_log_records_stored_total", 0.0)
    assert requests.post(f"{url}/logs", data=logs.SerializeToString(), headers=proto, timeout=10).status_code == 200
    json_body = b'{"resourceLogs": [{"scopeLogs": [{"logRecords": [{"traceId": "5b8efff798038103d269b633813fc60c", ' \
                b'"body": {"stringValue": "x"}}]}]}]}'
    answer = requests.post(f"{url}/logs", data=json_body, headers={"Content-Type": "application/json"}, timeout=10)
    assert answer.status_code == 200 and answer.headers["Content-Type"].startswith("application/json")
    assert collector.metrics()["tailsift_receiver_log_records_stored_total"] == before + 4
    assert "first" not in collector.log()  # nothing of their content is logged

    with Collector(tmp_path / "drop", {"receivers": {"otlp": {"logs": "drop"}}}).start() as dropping:
        answer = requests.post(f"http://127.0.0.1:{dropping.http_port}/v1/logs", data=logs.SerializeToString(),
                               headers=proto, timeout=10)  # fmt: skip
        assert answer.status_code == 200
        assert dropping.metrics()['tailsift_receiver_signals_dropped_total{signal="logs"}'] == 3
    with Collector(tmp_path / "off", {"receivers": {"otlp": {"metrics": "off", "logs": "off"}}}).start() as off:
        refused = requests.post(f"http://127.0.0.1:{off.http_port}/v1/logs", data=b"", headers=proto, timeout=10)
        assert refused.status_code == 404
