"""Load for durability tests: OTLP/HTTP requests from threads, remembering what was acknowledged.

Bodies come from ``tailsift bench``'s prebuilt shapes with fresh trace ids per send, so the
sender is cheap. Every error trace of a request answered 200 is *acknowledged*: the promise
under test is that each of those ends up stored, whatever happens to the collector.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from collector.bench.shapes import build_set


@dataclass
class Load:
    url: str
    threads: int = 4
    shape: str = "llm"
    acked_errors: set[str] = field(default_factory=set)
    answers: Counter[str] = field(default_factory=Counter)
    retry_after: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _workers: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> Load:
        templates = build_set(self.shape)
        for n in range(self.threads):
            worker = threading.Thread(target=self._run, args=(templates[n::self.threads],), daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def _run(self, templates: list) -> None:  # type: ignore[type-arg]
        session = requests.Session()
        i = 0
        while not self._stop.is_set():
            template = templates[i % len(templates)]
            i += 1
            body, ids = template.fresh_with_ids()
            try:
                resp = session.post(self.url, data=body, headers={"Content-Type": "application/x-protobuf"}, timeout=30)
            except requests.RequestException:
                with self._lock:
                    self.answers["connection error"] += 1
                time.sleep(0.05)
                continue
            with self._lock:
                self.answers[str(resp.status_code)] += 1
                if resp.status_code == 200:
                    self.acked_errors.update(ids[16 * k : 16 * k + 16].hex() for k in template.errors)
                elif "Retry-After" in resp.headers:
                    self.retry_after.add(resp.headers["Retry-After"])
            if resp.status_code in (429, 503):
                time.sleep(0.05)

    def stop(self) -> Load:
        self._stop.set()
        for worker in self._workers:
            worker.join(60)
        return self
