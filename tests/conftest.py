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
def kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap address of a running broker: CI's (TAILSIFT_TEST_KAFKA) or one of our own."""
    given = os.environ.get("TAILSIFT_TEST_KAFKA")
    if given:
        yield given
        return
    broker = Broker(tmp_path_factory.mktemp("kafka")).start()
    yield broker.bootstrap
    broker.stop()


@pytest.fixture(params=["memory", "kafka"])
def queue_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    """Collector config for each queue kind: tests taking this run once per queue."""
    if request.param == "memory":
        return {}
    return kafka_queue(request.getfixturevalue("kafka"))


@pytest.fixture
def clickhouse_http(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    port, log = free_port(), tmp_path / "statements.jsonl"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.clickhouse_http", "--port", str(port),
         "--path", str(tmp_path / "server-data"), "--log", str(log)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if requests.get(f"http://127.0.0.1:{port}/ping", timeout=1).ok:
                break
        except requests.ConnectionError:
            time.sleep(0.1)
    yield f"http://tailsift:s3cret-pw@127.0.0.1:{port}/default", log
    proc.kill()
    proc.wait()
