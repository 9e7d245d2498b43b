"""The one shape of a request processor (redaction, span-name normalisation, span metrics).

A processor is a small object: settings in ``__init__``, work in ``__call__`` (structlog's
shape). ``__call__(request, raw)`` takes a decoded ``ExportTraceServiceRequest`` and, when
the caller has them, the request's serialized bytes: a processor may scan those to skip a
request it has nothing to do in, and must give the same result without them. It returns
what it did as counts by kind (``email``, ``span_names_normalized``...; empty: nothing).

``mutates`` says whether it may change the request. After a mutating processor reports a
change, the caller's bytes no longer match the request and are not passed on. The caller
wraps every processor the same way (:func:`collector.ingest.run_processors`: counts under
the processor's ``name``), and tests/test_contracts.py holds every implementation to this.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol, runtime_checkable

__all__ = ["RequestProcessor"]


@runtime_checkable
class RequestProcessor(Protocol):
    name: str
    """Label of its counts in /metrics."""
    mutates: bool
    """True if it may change the request in place."""

    def __call__(self, request: Any, raw: bytes | None = None) -> Counter[str]: ...
