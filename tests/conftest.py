"""Shared fixtures: the real Kafka broker (tests/support/kafka.py) and a ClickHouse HTTP
endpoint served by the real engine (tests/support/clickhouse_http.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.collector import free_port
from tests.support.kafka import Broker, kafka_queue


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The listeners of a running broker (plain, ssl, sasl_ssl) and its CA file: CI's
    (TAILSIFT_TEST_KAFKA, _KAFKA_SSL, _KAFKA_SASL, _KAFKA_CA) or one of our own."""
    given = os.environ.get("TAILSIFT_TEST_KAFKA")
    if given:
        yield {"plain": given, "ssl": os.environ.get("TAILSIFT_TEST_KAFKA_SSL", ""),
               "sasl_ssl": os.environ.get("TAILSIFT_TEST_KAFKA_SASL", ""), "ca": os.environ.get("TAILSIFT_TEST_KAFKA_CA", "")}
        return
    broker = Broker(tmp_path_factory.mktemp("kafka")).start()
    yield {"plain": broker.bootstrap, "ssl": broker.ssl_bootstrap, "sasl_ssl": broker.sasl_bootstrap,
           "ca": str(broker.ca_file)}  # fmt: skip
    broker.stop()


@pytest.fixture(scope="session")
def kafka(kafka_broker: dict[str, str]) -> str:
    """Bootstrap address of the test broker's plain-text listener."""
    return kafka_broker["plain"]


def _listener(kafka_broker: dict[str, str], name: str) -> tuple[str, str]:
    if not kafka_broker[name] or not kafka_broker["ca"]:
        pytest.fail("TAILSIFT_TEST_KAFKA is set without TAILSIFT_TEST_KAFKA_SSL, _SASL and _CA (deploy/kafka/kafka.sh "
                    "serves TLS on KAFKA_PORT+2, SASL_SSL on +3, with $KAFKA_DIR/tls/ca.pem)")
    return kafka_broker[name], kafka_broker["ca"]


@pytest.fixture(scope="session")
def kafka_ssl(kafka_broker: dict[str, str]) -> tuple[str, str]:
    """(bootstrap, CA file) of the test broker's TLS listener."""
    return _listener(kafka_broker, "ssl")


@pytest.fixture(scope="session")
def kafka_sasl(kafka_broker: dict[str, str]) -> tuple[str, str]:
    """(bootstrap, CA file) of the test broker's SASL_SSL listener (SASL/PLAIN)."""
    return _listener(kafka_broker, "sasl_ssl")


@pytest.fixture(params=["memory", "kafka"])
def queue_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Collector config for each queue kind: tests taking this run once per queue."""
    if request.param == "memory":
        return {}
    return kafka_queue(request.getfixturevalue("kafka"))


def _serve_clickhouse(tmp_path: Path, *tls: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    port, log = free_port(), tmp_path / "statements.jsonl"
    extra = ["--tls-cert", tls[0], "--tls-key", tls[1]] if tls else []
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.clickhouse_http", "--port", str(port),
         "--path", str(tmp_path / "server-data"), "--log", str(log), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{'https' if tls else 'http'}://127.0.0.1:{port}/ping", timeout=1, verify=False).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    return proc, port, log


@pytest.fixture
def clickhouse_http(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    proc, port, log = _serve_clickhouse(tmp_path)
    yield f"http://tailsift:s3cret-pw@127.0.0.1:{port}/default", log
    proc.kill()
    proc.wait()


@pytest.fixture
def clickhouse_https(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """The same over HTTPS: (DSN, CA file), with a certificate from a CA made here."""
    from tests.support.certs import CA

    ca = CA(tmp_path / "pki")
    server = ca.issue("clickhouse")
    proc, port, _ = _serve_clickhouse(tmp_path, str(server.cert), str(server.key))
    yield f"https://tailsift:s3cret-pw@127.0.0.1:{port}/default", ca.path
    proc.kill()
    proc.wait()
