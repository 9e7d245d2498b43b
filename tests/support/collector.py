"""Run a real ``tailsift run`` process for end-to-end tests, on free loopback ports."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import requests
import yaml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Collector:
    """A collector subprocess. ``config`` is merged over endpoints and a data dir under ``workdir``."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None, data_dir: Path | None = None,
                 role: str = "all"):  # fmt: skip
        self.workdir = workdir
        self.role = role
        workdir.mkdir(parents=True, exist_ok=True)
        self.grpc_port, self.http_port, self.api_port = free_port(), free_port(), free_port()
        data = data_dir or workdir / "data"
        base = {
            "receivers": {"otlp": {"grpc": {"endpoint": f"127.0.0.1:{self.grpc_port}"},
                                   "http": {"endpoint": f"127.0.0.1:{self.http_port}"}}},
            "storage": {"clickhouse": {"dsn": f"chdb://{data}", "flush_interval": "200ms"}},
            "query": {"endpoint": f"127.0.0.1:{self.api_port}"},
        }  # fmt: skip
        self.config = deep_merge(base, config or {})
        self.dsn = self.config["storage"]["clickhouse"]["dsn"]
        self.config_path = workdir / "tailsift.yaml"
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = workdir / "collector.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/v1/traces"

    def start(self, timeout: float = 60.0) -> Collector:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "collector.cli", "run", "--config", str(self.config_path), "--role", self.role],
            stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, cwd=self.workdir, env=env,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"collector exited with {self.proc.returncode}:\n{self.log()}")
            if "tailsift running" in self.log():
                return self
            time.sleep(0.1)
        raise TimeoutError(f"collector did not start:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, **params: Any) -> requests.Response:
        return requests.get(self.api + path, params=params, timeout=30)

    def metrics(self) -> dict[str, float]:
        out = {}
        for line in self.get("/metrics").text.splitlines():
            m = re.match(r"^(tailsift_\S+?)\s+(\S+)$", line)
            if m:
                out[m.group(1)] = float(m.group(2))
        return out

    def wait_for(self, predicate: Any, timeout: float = 30.0, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.2)
        raise TimeoutError(f"timed out waiting for {what}\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise
