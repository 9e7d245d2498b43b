"""Safe to expose: TLS and mTLS with rotation, bearer tokens, tenants (issue 11).

Every check goes through a real ``tailsift run`` process and the official OTel SDK
exporters, with certificates generated here (tests/support/certs.py)."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests
from cryptography import x509
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace.export import SpanExportResult

from tests.support.certs import CA, Pair
from tests.support.collector import Collector
from tests.support.otel import error_span

TOKENS = {"team-a": "token-for-team-a-0123456789", "team-b": "token-for-team-b-9876543210"}
OPERATOR = "operator-token-abcdefghijklmnop"
SCRAPER = "scraper-token-abcdefghijklmnopq"
EXPORT = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


@pytest.fixture(autouse=True)
def _no_ca_bundle_override(monkeypatch: pytest.MonkeyPatch) -> None:
    """requests lets REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE win over a session's own CA file
    (psf/requests#3829), which would hide the exporter's ``certificate_file``."""
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)


def served_serial(port: int, ca: Path, alpn: str | None = None) -> int:
    """The serial number of the certificate a server presents in a new handshake."""
    context = ssl.create_default_context(cafile=str(ca))
    if alpn:
        context.set_alpn_protocols([alpn])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def tls_block(pair: Pair, client_ca: Path | None = None, reload: str | None = None) -> dict[str, Any]:
    block: dict[str, Any] = {"cert_file": str(pair.cert), "key_file": str(pair.key)}
    if client_ca is not None:
        block["client_ca_file"] = str(client_ca)
    if reload is not None:
        block["reload_interval"] = reload
    return block


def stored(collector: Collector, trace_id: str, ca: Path | None = None, token: str | None = None) -> bool:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(f"{collector.api}/api/traces/{trace_id}", verify=str(ca) if ca else True,
                            headers=headers, timeout=10)  # fmt: skip
    return response.status_code == 200


def test_tls_sdk_exporters_and_plaintext_refused(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    server = ca.issue("server")
    tls = tls_block(server)
    config = {"receivers": {"otlp": {"grpc": {"tls": tls}, "http": {"tls": tls}}}, "query": {"tls": tls}}
    with Collector(tmp_path / "collector", config).start() as c:
        span, http_trace = error_span("over-https")
        exporter = HttpExporter(endpoint=c.http_url, certificate_file=str(ca.path), timeout=10)
        assert c.http_url.startswith("https://")
        assert exporter.export([span]) is SpanExportResult.SUCCESS
        span, grpc_trace = error_span("over-grpc-tls")
        credentials = grpc.ssl_channel_credentials(ca.path.read_bytes())
        exporter = GrpcExporter(endpoint=c.grpc_endpoint, insecure=False, credentials=credentials, timeout=10)
        assert exporter.export([span]) is SpanExportResult.SUCCESS
        for trace_id in (http_trace, grpc_trace):
            c.wait_for(lambda t=trace_id: stored(c, t, ca.path), what=f"trace {trace_id} over TLS")  # type: ignore[misc]

        # The CLI reads an https:// API with --ca-file (and refuses it without).
        cli = [sys.executable, "-m", "collector.cli", "trace", http_trace, "--api", c.api]
        shown = subprocess.run([*cli, "--ca-file", str(ca.path)], capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0 and "POST /chat" in shown.stdout, shown.stderr
        untrusted = subprocess.run(cli, capture_output=True, text=True, timeout=60, env={
            k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")})  # fmt: skip
        assert untrusted.returncode == 1 and "CERTIFICATE_VERIFY_FAILED" in untrusted.stderr

        # Plain-text clients get no service on TLS ports.
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.post(c.http_url.replace("https:", "http:"), data=b"", timeout=5,
                          headers={"Content-Type": "application/x-protobuf"})  # fmt: skip
        with pytest.raises(requests.exceptions.ConnectionError):
            requests.get(c.api.replace("https:", "http:") + "/healthz", timeout=5)
        span, plain_trace = error_span("plaintext")
        assert GrpcExporter(endpoint=c.grpc_endpoint, insecure=True, timeout=3).export([span]) is SpanExportResult.FAILURE
        # A client that does not trust the CA refuses the server.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(c.api + "/healthz", timeout=5)


def test_mtls_requires_a_client_certificate(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    clients = CA(tmp_path / "clients", "tailsift test client CA")
    server, client = ca.issue("server"), clients.issue("client", "chat-api", client=True)
    stranger = CA(tmp_path / "strangers", "someone else").issue("stranger", "intruder", client=True)
    tls = tls_block(server, clients.path)
    config = {"receivers": {"otlp": {"grpc": {"tls": tls}, "http": {"tls": tls}}}}
    with Collector(tmp_path / "collector", config).start() as c:
        span, trace_id = error_span("mtls")
        bare = HttpExporter(endpoint=c.http_url, certificate_file=str(ca.path), timeout=5)
        assert bare.export([span]) is SpanExportResult.FAILURE
        wrong = HttpExporter(endpoint=c.http_url, certificate_file=str(ca.path), timeout=5,
                             client_certificate_file=str(stranger.cert), client_key_file=str(stranger.key))
        assert wrong.export([span]) is SpanExportResult.FAILURE
        good = HttpExporter(endpoint=c.http_url, certificate_file=str(ca.path), timeout=10,
                            client_certificate_file=str(client.cert), client_key_file=str(client.key))
        assert good.export([span]) is SpanExportResult.SUCCESS

        root = ca.path.read_bytes()
        no_cert = GrpcExporter(endpoint=c.grpc_endpoint, insecure=False, timeout=3,
                               credentials=grpc.ssl_channel_credentials(root))  # fmt: skip
        assert no_cert.export([span]) is SpanExportResult.FAILURE
        with_cert = grpc.ssl_channel_credentials(root, client.key.read_bytes(), client.cert.read_bytes())
        span, grpc_trace = error_span("mtls-grpc")
        exporter = GrpcExporter(endpoint=c.grpc_endpoint, insecure=False, credentials=with_cert, timeout=10)
        assert exporter.export([span]) is SpanExportResult.SUCCESS
        for t in (trace_id, grpc_trace):
            c.wait_for(lambda t=t: stored(c, t), what="traces sent with a client certificate")  # type: ignore[misc]


def test_certificates_rotate_without_restart(tmp_path: Path) -> None:
    ca = CA(tmp_path / "pki")
    live = ca.issue("live")
    tls = tls_block(live, reload="200ms")
    config = {"receivers": {"otlp": {"grpc": {"tls": tls}, "http": {"tls": tls}}}, "query": {"tls": tls}}
    with Collector(tmp_path / "collector", config).start() as c:
        ports = {"http": (c.http_port, None), "grpc": (c.grpc_port, "h2"), "query": (c.api_port, None)}
        first = {name: served_serial(port, ca.path, alpn) for name, (port, alpn) in ports.items()}
        assert set(first.values()) == {live.serial}
        rotated = ca.issue("rotated")
        time.sleep(1.1)  # a new modification time, whatever the file system's resolution
        shutil.copy(rotated.key, live.key)
        shutil.copy(rotated.cert, live.cert)
        for name, (port, alpn) in ports.items():
            c.wait_for(lambda p=port, a=alpn: served_serial(p, ca.path, a) == rotated.serial, timeout=15,
                       what=f"{name} to present the rotated certificate")  # type: ignore[misc]
        span, trace_id = error_span("after-rotation")
        assert HttpExporter(endpoint=c.http_url, certificate_file=str(ca.path), timeout=10).export([span]) \
            is SpanExportResult.SUCCESS
        assert c.proc is not None and c.proc.poll() is None, "the collector restarted"


def _post(url: str, token: str | None, body: bytes = b"") -> requests.Response:
    headers = {"Content-Type": "application/x-protobuf"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return requests.post(url, data=body or ExportTraceServiceRequest().SerializeToString(), headers=headers, timeout=10)


def _grpc_code(endpoint: str, token: str | None) -> grpc.StatusCode:
    with grpc.insecure_channel(endpoint) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        metadata = [("authorization", f"Bearer {token}")] if token is not None else []
        try:
            call(ExportTraceServiceRequest().SerializeToString(), metadata=metadata, timeout=10)
        except grpc.RpcError as exc:
            return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


@pytest.fixture
def authed(tmp_path: Path) -> Any:
    tokens = [{"token": t, "tenant": tenant} for tenant, t in TOKENS.items()]
    token_file = tmp_path / "operator-tokens"
    token_file.write_text(f"# operators\n{OPERATOR}\n")
    auth = {"bearer_tokens": tokens, "bearer_tokens_file": str(token_file)}
    config = {"receivers": {"otlp": {"grpc": {"auth": auth}, "http": {"auth": auth}}},
              "query": {"auth": auth, "metrics_auth": {"bearer_tokens": [SCRAPER]}}}  # fmt: skip
    with Collector(tmp_path / "collector", config).start() as c:
        yield c


def test_auth_refuses_missing_and_wrong_tokens(authed: Collector, monkeypatch: pytest.MonkeyPatch) -> None:
    c, wrong = authed, "not-a-configured-token-000"
    for token in (None, wrong, TOKENS["team-a"][:-1], ""):
        response = _post(c.http_url, token)
        assert response.status_code == 401, response.text
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert _grpc_code(c.grpc_endpoint, token) is grpc.StatusCode.UNAUTHENTICATED
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        assert requests.get(c.api + "/api/traces", headers=headers, timeout=10).status_code == 401
    assert requests.get(c.api + "/api/traces", headers={"Authorization": f"Basic {OPERATOR}"}, timeout=10).status_code == 401
    assert _post(c.http_url, OPERATOR).status_code == 200
    assert _grpc_code(c.grpc_endpoint, TOKENS["team-b"]) is grpc.StatusCode.OK

    # The SDK's own environment variable works unchanged, for both exporters.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"Authorization=Bearer%20{OPERATOR}")
    span, http_trace = error_span("env-headers-http")
    assert HttpExporter(endpoint=c.http_url, timeout=10).export([span]) is SpanExportResult.SUCCESS
    span, grpc_trace = error_span("env-headers-grpc")
    assert GrpcExporter(endpoint=c.grpc_endpoint, insecure=True, timeout=10).export([span]) is SpanExportResult.SUCCESS
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_HEADERS")
    span, _ = error_span("no-token")
    assert HttpExporter(endpoint=c.http_url, timeout=5).export([span]) is SpanExportResult.FAILURE
    for trace_id in (http_trace, grpc_trace):
        c.wait_for(lambda t=trace_id: stored(c, t, token=OPERATOR), what="exports with env headers")  # type: ignore[misc]

    # /healthz stays open; /metrics takes the scraper's token, and only it.
    assert requests.get(c.api + "/healthz", timeout=10).status_code == 200
    assert requests.get(c.api + "/metrics", timeout=10).status_code == 401
    assert requests.get(c.api + "/metrics", headers={"Authorization": f"Bearer {OPERATOR}"}, timeout=10).status_code == 401
    metrics = requests.get(c.api + "/metrics", headers={"Authorization": f"Bearer {SCRAPER}"}, timeout=10)
    assert metrics.status_code == 200 and "tailsift_" in metrics.text

    # The web UI's pages and scripts load without a token (they hold no data); every API
    # call they make needs one, and a page on another Host name is refused like the API.
    for path in ("/", f"/trace/{http_trace}", "/stats", "/ui/app.js"):
        page = requests.get(c.api + path, timeout=10)
        assert page.status_code == 200 and http_trace.encode() not in page.content
    assert requests.get(c.api + f"/api/traces/{http_trace}", timeout=10).status_code == 401
    assert requests.get(c.api + "/", headers={"Host": "attacker.example"}, timeout=10).status_code == 421

    # The CLI: --token or TAILSIFT_TOKEN.
    cli = [sys.executable, "-m", "collector.cli", "traces", "--api", c.api]
    refused = subprocess.run(cli, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 1 and "bearer token" in refused.stderr
    listed = subprocess.run([*cli, "--token", OPERATOR], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and http_trace in listed.stdout, listed.stderr
    env_token = subprocess.run([sys.executable, "-m", "collector.cli", "trace", grpc_trace, "--api", c.api],
                               capture_output=True, text=True, timeout=60, env={**os.environ,
                               "TAILSIFT_TOKEN": OPERATOR})  # fmt: skip
    assert env_token.returncode == 0 and "POST /chat" in env_token.stdout, env_token.stderr

    # No token, right or wrong, is ever written out.
    exposed = c.log() + metrics.text + refused.stderr + _post(c.http_url, wrong).text
    for secret in (*TOKENS.values(), OPERATOR, SCRAPER, wrong):
        assert secret not in exposed


def test_tenants_are_stamped_and_separated(authed: Collector) -> None:
    c = authed
    sent: dict[str, str] = {}
    for tenant, token in TOKENS.items():
        # team-a claims to be team-b in its resource: the token decides, not the client.
        span, trace_id = error_span(f"svc-{tenant}", **{"tailsift.tenant": "team-b"})
        exporter = HttpExporter(endpoint=c.http_url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert exporter.export([span]) is SpanExportResult.SUCCESS
        sent[tenant] = trace_id
    span, operator_trace = error_span("svc-operator", **{"tailsift.tenant": "team-a"})
    assert GrpcExporter(endpoint=c.grpc_endpoint, insecure=True, timeout=10,
                        headers=(("authorization", f"Bearer {OPERATOR}"),)).export([span]) is SpanExportResult.SUCCESS

    def search(token: str, **params: str) -> set[str]:
        response = requests.get(c.api + "/api/traces", params=params, timeout=10,
                                headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        assert response.status_code == 200, response.text
        return {t["trace_id"] for t in response.json()["traces"]}

    c.wait_for(lambda: len(search(OPERATOR)) == 3, what="three traces stored")
    assert search(OPERATOR, tenant="team-a") == {sent["team-a"]}
    assert search(OPERATOR, tenant="team-b") == {sent["team-b"]}
    for tenant, token in TOKENS.items():
        assert search(token) == {sent[tenant]}  # a tenant's token sees only its own
        spans = requests.get(f"{c.api}/api/traces/{sent[tenant]}", headers={"Authorization": f"Bearer {OPERATOR}"},
                             timeout=10).json()["spans"]  # fmt: skip
        assert {s["resource_attributes"].get("tailsift.tenant") for s in spans} == {tenant}
    operator_spans = requests.get(f"{c.api}/api/traces/{operator_trace}", timeout=10,
                                  headers={"Authorization": f"Bearer {OPERATOR}"}).json()["spans"]  # fmt: skip
    assert all("tailsift.tenant" not in s["resource_attributes"] for s in operator_spans)
    a_token = {"Authorization": f"Bearer {TOKENS['team-a']}"}
    assert requests.get(f"{c.api}/api/traces/{sent['team-b']}", headers=a_token, timeout=10).status_code == 404
    assert requests.get(c.api + "/api/traces", params={"tenant": "team-b"}, headers=a_token, timeout=10).status_code == 403
    stats = requests.get(c.api + "/api/stats", headers=a_token, timeout=10).json()["groups"]
    assert {g["group"] for g in stats} == {"svc-team-a"}
    # Decisions: a tenant hears of its own stored traces only, never from the sampler's
    # caches (they know no tenants); the operator hears of any.
    decision = requests.get(f"{c.api}/api/decisions/{sent['team-a']}", headers=a_token, timeout=10).json()
    assert decision["state"] == "kept" and decision["source"] == "storage"
    assert requests.get(f"{c.api}/api/decisions/{sent['team-b']}", headers=a_token, timeout=10).status_code == 404
    assert requests.get(f"{c.api}/api/decisions/{sent['team-b']}", timeout=10).status_code == 401
    assert requests.get(f"{c.api}/api/decisions/{sent['team-b']}", headers={"Authorization": f"Bearer {OPERATOR}"},
                        timeout=10).json()["state"] == "kept"  # fmt: skip

    # Logs are stamped the same way: team-a's log, claiming team-b, is seen with team-a's token.
    logs = ExportLogsServiceRequest()
    rl = logs.resource_logs.add()
    rl.resource.attributes.add(key="tailsift.tenant").value.string_value = "team-b"
    rl.scope_logs.add().log_records.add(trace_id=bytes.fromhex(sent["team-a"])).body.string_value = "charged"
    assert _post(c.http_url.replace("/v1/traces", "/v1/logs"), TOKENS["team-a"], logs.SerializeToString()).ok
    trace = requests.get(f"{c.api}/api/traces/{sent['team-a']}", headers=a_token, timeout=10).json()
    assert [entry["body"] for entry in trace["logs"]] == ["charged"]
