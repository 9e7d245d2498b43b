"""Configuration: every error names its key path; `validate` and `run` refuse bad configs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from collector.config import ConfigError, load_config

BAD = """
receivers:
  otlp:
    grpc: {endpoint: "127.0.0.1:4317"}
    htp: {endpoint: "x"}
sampling:
  decision_wait: 10x
  rules:
    - name: errors
      when: [{status: error}]
      keep: 100%
    - name: slow
      when: [{duration: ">= 2s"}]
      keep: 100%
    - name: expensive
      when: [{attribute: gen_ai.usage.output_tokens, op: ">", value: 4000}]
      keep: 150%
    - name: regex
      when: [{attribute: a, op: matches, value: "(("}]
      rate_limit: 5/s
    - name: default
      keep: 5%
storage:
  clickhouse: {dsn: "mysql://x"}
"""

EXPECTED = [
    "receivers.otlp.htp: unknown key",
    "sampling.decision_wait: '10x' is not a duration such as 2s or 150ms",
    "sampling.rules[2].keep: must be between 0% and 100%",
    "sampling.rules[3].when[0]: invalid regular expression",
    "storage.clickhouse.dsn: must start with chdb://, http:// or https://",
]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def test_every_error_is_reported_with_its_key_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, BAD))
    for expected in EXPECTED:
        assert any(line.startswith(expected) for line in err.value.errors), (expected, err.value.errors)
    assert len(err.value.errors) == len(EXPECTED)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("sampling: {rules: [{name: a, when: [{status: error}], keep: 1}]}", "sampling.rules: the last rule ('a') must have no conditions"),
        ("sampling: {rules: [{name: a, keep: 1}, {name: a, keep: 1}]}", "sampling.rules: rule name 'a' is used twice"),
        ("sampling: {rules: [{name: a, keep: 1, rate_limit: 5/s}]}", "sampling.rules[0]: a rule needs exactly one of keep, rate_limit or target"),
        ("sampling: {rules: [{name: a, when: [{service: x, status: ok}], keep: 1}, {name: b, keep: 1}]}", "sampling.rules[0].when[0]: a condition needs exactly one"),
        ("sampling: {rules: [{name: a, when: [{attribute: k, op: between}], keep: 1}, {name: b, keep: 1}]}", "sampling.rules[0].when[0].op: Input should be"),
        ("sampling: {rules: [{name: a, rate_limit: lots}]}", "sampling.rules[0].rate_limit: 'lots' is not a rate such as 100/s"),
        ("query: {endpoint: nowhere}", "query.endpoint: 'nowhere' is not host:port"),
        ("query: {tls: {cert_file: /nonexistent.pem, key_file: /nonexistent-key.pem}}", "query.tls.cert_file: cannot read /nonexistent.pem"),
        ("receivers: {otlp: {http: {tls: {cert_file: /etc/hostname, key_file: /etc/hostname}}}}", "receivers.otlp.http.tls: cert_file/key_file: not a matching PEM certificate and key"),
        ("receivers: {otlp: {grpc: {auth: {bearer_tokens: []}}}}", "receivers.otlp.grpc.auth: bearer_tokens: at least one token is needed"),
        ("receivers: {otlp: {http: {auth: {bearer_tokens: [short]}}}}", "receivers.otlp.http.auth.bearer_tokens[0].token: a token must be at least 16 characters"),
        ("query: {auth: {bearer_tokens_file: /nonexistent-tokens}}", "query.auth: bearer_tokens_file: cannot read /nonexistent-tokens"),
        ("query: {auth: {bearer_tokens: [{token: abcdefghijklmnopqrst, tenant: 'a b'}]}}", "query.auth.bearer_tokens[0].tenant: String should match pattern"),
        ("queue: {kind: kafka, kafka: {security_protocol: SASL_SSL}}", "queue.kafka: sasl: security_protocol SASL_SSL needs sasl.username"),
        ("queue: {kind: kafka, kafka: {security_protocol: TLS}}", "queue.kafka.security_protocol: Input should be"),
        ("storage: {clickhouse: {dsn: 'https://h:8443', ca_file: /nonexistent-ca.pem}}", "storage.clickhouse.ca_file: cannot read /nonexistent-ca.pem"),
        ("queue: {max_size: 1KiB}", "(top level): queue.max_size must be at least receivers.otlp.max_request_size"),
        ("receivers: [1, 2", "invalid YAML at line"),
        ("- a list", "the top level must be a mapping"),
    ],
)  # fmt: skip
def test_specific_errors(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, text))
    assert any(expected in line for line in err.value.errors), err.value.errors


def test_defaults_and_env_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = load_config(None)
    assert s.receivers.otlp.grpc and s.receivers.otlp.grpc.endpoint == "127.0.0.1:4317"
    assert s.query.endpoint == "127.0.0.1:3200" and s.storage.clickhouse.ttl_days == 7
    assert [r.name for r in s.sampling.rules] == ["errors", "slow", "default"]
    monkeypatch.setenv("TAILSIFT_SAMPLING__DECISION_WAIT", "3s")
    monkeypatch.setenv("TAILSIFT_STORAGE__CLICKHOUSE__DSN", "http://u:hunter2@db:8123/otel")
    s = load_config(write(tmp_path, "sampling: {decision_wait: 30s}"))
    assert s.sampling.decision_wait == 3_000_000_000
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.model_dump())


def test_validate_and_run_refuse_a_bad_config(tmp_path: Path) -> None:
    path = write(tmp_path, BAD)
    for command in (["validate", "--config", str(path)], ["run", "--config", str(path)]):
        out = subprocess.run([sys.executable, "-m", "collector.cli", *command], capture_output=True, text=True, timeout=60)
        assert out.returncode == 2
        for expected in EXPECTED:
            assert expected in out.stderr
    good = write(tmp_path, "sampling: {rules: [{name: all, keep: 10%}]}")
    ok = subprocess.run([sys.executable, "-m", "collector.cli", "validate", "--config", str(good)], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0, ok.stderr


def test_cluster_deploy_files_are_valid() -> None:
    cluster = Path(__file__).resolve().parents[1] / "deploy" / "cluster"
    for name in ("receiver.yaml", "sampler.yaml"):
        settings = load_config(cluster / name)
        assert settings.queue.kind == "kafka" and settings.queue.kafka.replication_factor == 3
    assert load_config(cluster.parent / "kafka" / "tailsift.yaml").queue.kafka.bootstrap_servers == "127.0.0.1:9092"
    compose = yaml.safe_load((cluster / "docker-compose.yml").read_text())
    assert {"kafka-1", "kafka-2", "kafka-3", "clickhouse-1", "clickhouse-2", "receiver-1", "sampler-2"} <= set(
        compose["services"])  # fmt: skip
