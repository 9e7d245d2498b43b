"""Which redaction rules could fire on a request, from one pass over its bytes.

Most requests carry no secrets, so the redactor first asks this prefilter which rules
have a candidate anywhere in the serialized request; with none, the request is passed on
without walking a single span. With Hyperscan (the default where its wheel exists) every
rule is compiled into one database in prefilter mode, which may report a rule that
does not really match but never misses one, and the scan costs about 1 ns per byte
whatever the number of rules. Without it, Python's ``re`` searches once per rule; that
is correct and several times slower on digit-shaped rules (cards, phones, SSNs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
import re
from typing import Any

hyperscan: Any
try:
    import hyperscan
except ImportError:  # pragma: no cover - depends on the platform's wheels
    hyperscan = None

BACKENDS: tuple[str, ...] = ("hyperscan", "re") if hyperscan is not None else ("re",)


@dataclass(frozen=True)
class Candidate:
    """``name`` may be present when ``regex`` (searched in raw bytes) matches; None: always."""

    name: str
    regex: str | None
    caseless: bool = False


class Prefilter:
    """``prefilter(data) -> set of rule names`` worth running on this request."""

    def __init__(self, candidates: Sequence[Candidate], backend: str | None = None):
        backend = backend or BACKENDS[0]
        if backend not in BACKENDS:
            raise ValueError(f"prefilter backend {backend!r} is not available here (have {BACKENDS})")
        self.backend = backend
        self.always = frozenset(c.name for c in candidates if c.regex is None)
        searched = [c for c in candidates if c.regex is not None]
        self._names = [c.name for c in searched]
        self._db: Any = None
        self._res: list[tuple[str, re.Pattern[bytes]]] = []
        if backend == "hyperscan" and searched:
            flags = [hyperscan.HS_FLAG_SINGLEMATCH | hyperscan.HS_FLAG_PREFILTER | hyperscan.HS_FLAG_ALLOWEMPTY
                     | (hyperscan.HS_FLAG_CASELESS if c.caseless else 0) for c in searched]  # fmt: skip
            self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
            exprs = [str(c.regex).encode() for c in searched]
            self._db.compile(expressions=exprs, ids=list(range(len(exprs))), elements=len(exprs), flags=flags)
        else:
            self._res = [(c.name, re.compile(str(c.regex).encode(), re.IGNORECASE if c.caseless else 0))
                         for c in searched]  # fmt: skip

    def __call__(self, data: bytes) -> frozenset[str]:
        if self._db is not None:
            hits: set[int] = set()
            self._db.scan(data, match_event_handler=lambda i, _f, _t, _fl, _c: hits.add(i))
            found = {self._names[i] for i in hits}
        else:
            found = {name for name, rx in self._res if rx.search(data)}
        return self.always.union(found) if found else self.always
