"""What the query API reads, and nothing more: stored traces and what the sampler remembers.

:class:`TraceReader` is the query API's only view of the pipeline, so it can be served by
another implementation (a read-only process, a test double of the same contract) and the
API never reaches into the writer or the sampler. :class:`StoredTraces` is the one in
``tailsift run``: every storage call runs on the writer's storage thread (chDB clients are
not thread-safe, and one thread also orders reads after the inserts before them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from collector.storage import ClickHouseStore
from collector.writer import StorageWriter
from processors.sampling.explain import explain
from processors.sampling.sampler import TailSampler

Decision = tuple[str, str, float]
"""(state: "buffered" | "kept" | "dropped", rule, sample rate)."""


class TraceReader(Protocol):
    async def trace(self, trace_id: str, tenant: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """A trace's spans and log records (only ``tenant``'s, when given); empty if not stored."""
        ...

    async def search(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Trace summaries matching the API's search parameters, newest first."""
        ...

    async def stats(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        """Sample-rate weighted groups for the API's stats parameters."""
        ...

    def decision_for(self, trace_id: bytes) -> Decision | None:
        """What the sampler remembers of a trace, if anything."""
        ...

    async def explain(self, trace_id: str, tenant: str | None) -> dict[str, Any] | None:
        """Why a trace was kept or dropped (:func:`processors.sampling.explain.explain`), from
        the decision caches (not for a tenant: they know no tenants) or else the stored rows."""
        ...


class StoredTraces:
    """:class:`TraceReader` over the writer's store and the sampler's decision cache."""

    def __init__(self, writer: StorageWriter, sampler: TailSampler | None):
        self.writer = writer
        self.sampler = sampler

    async def _run(self, query: Callable[[ClickHouseStore], Any]) -> Any:
        return await self.writer.run(query, self.writer.store)

    async def trace(self, trace_id: str, tenant: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        spans = await self._run(lambda store: store.get_trace(trace_id, tenant))
        logs = await self._run(lambda store: store.trace_logs(trace_id, tenant)) if spans else []
        return spans, logs

    async def search(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._run(lambda store: store.search_traces(**params))
        return result

    async def stats(self, params: dict[str, Any]) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = await self._run(lambda store: store.stats(**params))
        return result

    def decision_for(self, trace_id: bytes) -> Decision | None:
        return self.sampler.decision_for(trace_id) if self.sampler is not None else None

    async def explain(self, trace_id: str, tenant: str | None) -> dict[str, Any] | None:
        rules = self.sampler.settings.rules if self.sampler is not None else []
        tid = bytes.fromhex(trace_id)
        known = self.decision_for(tid) if tenant is None else None
        dry_run = self.sampler is not None and self.sampler.settings.dry_run
        if known is not None:
            return explain(tid, *known, rules, "decision cache", dry_run)
        spans = await self._run(lambda store: store.get_trace(trace_id, tenant))
        if not spans:
            return None
        return explain(tid, "kept", spans[0]["sampled_by"], spans[0]["sample_rate"], rules, "storage")
