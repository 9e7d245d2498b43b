"""A real Apache Kafka broker for tests, started with deploy/kafka/kafka.sh.

CI starts one broker before the tests and exports ``TAILSIFT_TEST_KAFKA`` (its bootstrap
address); without it, the session starts its own on free ports. Tests that stop and
restart a broker get a private one (``Broker``), so the shared one is never disturbed.
Every test uses its own topic and consumer group.
"""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path
from typing import Any

from collector.bench.target import free_port

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "kafka" / "kafka.sh"


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A free port whose three successors (KRaft controller, TLS, SASL_SSL) are free too."""
    for _ in range(100):
        port = free_port()  # below the ephemeral range: no client's source port takes it
        if port < 65532 and all(_free(port + i) for i in (1, 2, 3)):
            return port
    raise RuntimeError("no free pair of ports")


class Broker:
    """One single-node broker in ``directory``; ``start``/``stop`` keep its data."""

    def __init__(self, directory: Path, port: int | None = None):
        self.directory = directory
        self.port = port or free_port_pair()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ssl_bootstrap(self) -> str:
        """The TLS listener kafka.sh adds on port + 2, its certificate signed by :attr:`ca_file`."""
        return f"127.0.0.1:{self.port + 2}"

    @property
    def sasl_bootstrap(self) -> str:
        """The SASL_SSL listener kafka.sh adds on port + 3 (SASL/PLAIN, see :data:`SASL_USER`)."""
        return f"127.0.0.1:{self.port + 3}"

    @property
    def ca_file(self) -> Path:
        return self.directory / "tls" / "ca.pem"

    def _run(self, command: str) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, KAFKA_PORT=str(self.port), KAFKA_DIR=str(self.directory))
        return subprocess.run(["bash", str(SCRIPT), command], env=env, capture_output=True, text=True, timeout=180)

    def start(self) -> Broker:
        result = self._run("start")
        if result.returncode != 0:
            raise RuntimeError(f"kafka.sh start failed:\n{result.stderr}")
        assert result.stdout.strip() == self.bootstrap, result.stdout
        return self

    def stop(self) -> None:
        self._run("stop")

    def running(self) -> bool:
        return self._run("status").returncode == 0


SASL_USER, SASL_PASSWORD = "tailsift", "tailsift-dev-secret"
"""kafka.sh's development credentials for its SASL_SSL listener."""


def kafka_ssl_queue(bootstrap: str, ca_file: str, **extra: Any) -> dict[str, Any]:
    """Collector config for the Kafka queue over TLS (kafka.sh's SSL listener)."""
    return kafka_queue(bootstrap, security_protocol="SSL", tls={"ca_file": ca_file}, **extra)


def kafka_queue(bootstrap: str, **extra: Any) -> dict[str, Any]:
    """Collector config for the Kafka queue on a fresh topic and group."""
    name = uuid.uuid4().hex[:10]
    settings = {"bootstrap_servers": bootstrap, "topic": f"spans-{name}", "group": f"samplers-{name}",
                "partitions": 4, "commit_interval": "200ms"}  # fmt: skip
    return {"queue": {"kind": "kafka", "kafka": {**settings, **extra}}}
