"""Adaptive rules: keep about ``target`` traces per second in total, spread over keys.

A rule ``{target: "50/s", key: [service, span_name]}`` keeps a flat number of traces
however traffic grows, the way Refinery's throughput samplers and the Collector's
adaptive sampling do. Rare keys keep a larger share than frequent ones, so an endpoint
called twice a minute never vanishes behind one called a thousand times a second.

- **Rates per key.** Each key's traffic (traces/s) is estimated with an exponential moving
  average whose time constant is ``window``. The target is divided max-min fairly
  (water-filling): every key may keep up to an equal share; a key needing less keeps all
  its traces, and what it leaves is shared by the others. A key's keep probability is its
  allowance over its traffic.
- **Quick to rise, slow to fall.** A key's traffic is taken as the larger of its average
  and the last quarter second's. A tenfold step is therefore priced within 250 ms, and the
  bill does not jump for a whole window. A fall is believed only as the average decays,
  so a brief lull does not open the gates.
- **Deterministic.** A trace is kept when its trace-id hash falls under the probability,
  the same coin as ``keep: 5%``. Its sample rate (1/probability) is stored, so weighted
  stats estimate all traffic whatever the rates were at the time.
- **Bounded.** At most ``max_keys`` keys are tracked; the rest share one key, ``(other)``.
- **Scaled out.** With Kafka, each sampler of the group keeps ``target`` times its share
  of the topic's partitions (``share``, set on every rebalance), so the group keeps about
  ``target`` in all.

Single-threaded (the event loop's). The clock is the sampler's (monotonic nanoseconds),
so tests drive time.
"""

from __future__ import annotations

import math
from collections.abc import Callable

OTHER = "(other)"
_TICK_NS = 250_000_000
"""How often probabilities are set again: a step in traffic costs at most this long at the old price."""


def allot(traffic: dict[str, float], budget: float) -> dict[str, float]:
    """Split ``budget`` (traces/s) over keys max-min fairly: the keep probability of each key."""
    out: dict[str, float] = {}
    left = budget
    keys = sorted(traffic, key=traffic.__getitem__)
    for index, key in enumerate(keys):
        rate = traffic[key]
        share = left / (len(keys) - index)
        if rate <= share:
            out[key] = 1.0
            left -= rate
        else:
            out[key] = share / rate if rate > 0 else 1.0
            left -= share
    return out


class Adaptive:
    """The state of one adaptive rule: counts, averages and probabilities per key."""

    def __init__(self, target: float, window_ns: int, max_keys: int, clock: Callable[[], int]):
        self.target = target
        self.window_ns = window_ns
        self.max_keys = max_keys
        self.clock = clock
        self.share = 1.0
        """This sampler's part of the group's target (its share of the Kafka partitions)."""
        self._counts: dict[str, int] = {}
        self._average: dict[str, float] = {}
        self._last: dict[str, float] = {}
        self._probability: dict[str, float] = {}
        self._ticked = clock()

    def probability(self, key: str) -> float:
        """Count one trace under ``key`` and return the probability it is kept with."""
        self._tick()
        if key not in self._counts and key not in self._average and len(self._average) + len(self._counts) >= self.max_keys:
            key = OTHER
        self._counts[key] = self._counts.get(key, 0) + 1
        # A key not priced yet (new, or in the first quarter second) keeps everything until
        # the next tick, at most 250 ms later: rare keys are never lost while they are learned.
        return self._probability.get(key, 1.0)

    def rates(self) -> dict[str, float]:
        """Each key's estimated traffic (traces/s), as the probabilities were last set from."""
        return {k: max(self._average.get(k, 0.0), self._last.get(k, 0.0)) for k in self._average}

    def _tick(self) -> None:
        now = self.clock()
        elapsed = now - self._ticked
        if elapsed < _TICK_NS:
            return
        self._ticked = now
        seconds = elapsed / 1e9
        weight = 1.0 - math.exp(-elapsed / self.window_ns)
        last = {k: n / seconds for k, n in self._counts.items()}
        for key in set(self._average) | set(last):
            observed = last.get(key, 0.0)
            average = self._average.get(key, observed)  # a new key starts at what it showed
            average += weight * (observed - average)
            if average < 1e-3 and key not in last:
                self._average.pop(key, None)  # gone quiet: forget it
            else:
                self._average[key] = average
        self._last, self._counts = last, {}
        self._probability = allot(self.rates(), self.target * self.share)
