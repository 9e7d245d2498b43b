"""Live configuration reload: SIGHUP, or a changed file with ``tailsift run --watch``.

Sampling rules (and waits), redaction rules and the price table are the parts a team tunes
while traffic flows, so they change without a restart and without losing a buffered trace
(:meth:`collector.pipeline.Pipeline.reload`). The file is read and validated exactly as at
start: a broken file is refused with the errors ``tailsift validate`` prints, one per key
path, and the running configuration stays. Changed keys outside those sections are named
in a warning and wait for a restart.

Counted in ``tailsift_config_reloads_total{outcome="applied"|"refused"}``.

Component with start/shutdown (safe twice, and without start). Runs on the event loop only.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import Counter
from collections.abc import Callable

from collector.config import ConfigError, Settings, load_config
from collector.runtime import stop_task

log = logging.getLogger("tailsift.reload")
WATCH_SECONDS = 1.0
"""How often ``--watch`` looks at the file's modification time and size."""


class ConfigReloader:
    def __init__(self, path: str, apply: Callable[[Settings], list[str]], outcomes: Counter[str],
                 watch: bool = False):  # fmt: skip
        self.path = path
        self.apply = apply
        self.watch = watch
        self.outcomes = outcomes
        self._task: asyncio.Task[None] | None = None
        self._stamp = self._read_stamp()
        self._signal = False

    def _read_stamp(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size

    async def start(self) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
        self._signal = True
        if self.watch:
            self._task = asyncio.create_task(self._watch(), name="config-watch")

    async def shutdown(self) -> None:
        if self._signal:
            self._signal = False
            asyncio.get_running_loop().remove_signal_handler(signal.SIGHUP)
        task, self._task = self._task, None
        await stop_task(task)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_SECONDS)
            stamp = self._read_stamp()
            if stamp is not None and stamp != self._stamp:
                self.reload()

    def reload(self) -> bool:
        """Read, validate and apply the file; False (and the old configuration runs on) if it is refused."""
        self._stamp = self._read_stamp()
        try:
            settings = load_config(self.path)
        except ConfigError as exc:
            self.outcomes["refused"] += 1
            log.error("configuration reload refused; still running the previous one. %s:\n  %s",
                      self.path, "\n  ".join(exc.errors))  # fmt: skip
            return False
        try:
            restart = self.apply(settings)
        except Exception:  # a bug applying it must not stop the collector; the old parts run on
            self.outcomes["refused"] += 1
            log.exception("configuration reload failed while applying it")
            return False
        self.outcomes["applied"] += 1
        log.info("configuration reloaded from %s (sampling rules, redaction rules, prices)", self.path)
        if restart:
            log.warning("changed but only applied at the next restart: %s", ", ".join(restart))
        return True
