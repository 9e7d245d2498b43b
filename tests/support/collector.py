"""Run a real ``tailsift run`` process for end-to-end tests, on free loopback ports (the same
runner ``tailsift bench`` uses)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import requests

from collector.bench.target import OwnCollector, free_port

__all__ = ["Collector", "deep_merge", "free_port"]


def deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


class Collector(OwnCollector):
    """A collector subprocess for tests (see :class:`collector.bench.target.OwnCollector`),
    flushing storage every 200 ms unless ``config`` says otherwise, with test helpers."""

    def __init__(self, workdir: Path, config: dict[str, Any] | None = None, data_dir: Path | None = None,
                 role: str = "all"):  # fmt: skip
        quick = {"storage": {"clickhouse": {"flush_interval": "200ms"}}}
        super().__init__(deep_merge(quick, config or {}), workdir, data_dir, role)

    def __enter__(self) -> Collector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

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
