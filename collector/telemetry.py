"""The pipeline's own metrics, on ``/metrics`` in Prometheus format.

Components keep plain integer counters on the hot path (a dict increment is far cheaper
than a labelled prometheus metric); this collector reads them when Prometheus scrapes.
Everything an operator needs to see overload is here: refused requests, buffered traces,
early decisions forced by memory bounds, late spans, queue depth, pending inserts.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from collector.kafka.queue import KafkaQueue
from collector.queue import MemoryQueue
from processors import wire
from processors.spanmetrics import Histogram

if TYPE_CHECKING:
    from collector.ingest import Ingest
    from collector.pipeline import Pipeline
    from collector.queue import Queue
    from collector.writer import StorageWriter
    from processors.sampling.sampler import TailSampler


class PipelineCollector(Collector):
    def __init__(self, pipeline: Pipeline):
        self.p = pipeline

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        p = self.p
        # Read in the same pass as the counters, so a client can compute exact rates between
        # two scrapes even when an answer is slow to come (tailsift bench does).
        yield GaugeMetricFamily("tailsift_scrape_unixtime_seconds", "When this scrape was collected",
                                value=time.time())  # fmt: skip
        if p.ingest is not None:
            yield from self._ingest(p.ingest)
            yield _histogram("tailsift_receiver_export_seconds", "Each trace export request (gRPC or HTTP), from "
                             "its whole body to the answer, refusals included", p.ingest.export_latency)  # fmt: skip
            fallbacks = CounterMetricFamily("tailsift_wire_fallbacks",
                                            "Request bodies the compiled hot path refused and the Python reference "
                                            "(or upb's decode) handled (expected: none)", labels=["function"])  # fmt: skip
            for function, count in sorted(wire.FALLBACKS.items()):
                fallbacks.add_metric([function], count)
            yield fallbacks
        if p.metrics is not None:
            yield from p.metrics.collect()
        if p.memory is not None:
            yield GaugeMetricFamily("tailsift_memory_rss_bytes", "Resident memory, as the memory limiter last read it",
                                    value=p.memory.rss)  # fmt: skip
            yield GaugeMetricFamily("tailsift_memory_reserved_bytes", "Bytes reserved by requests being received "
                                    "and decoded", value=p.memory.reserved)  # fmt: skip
            yield GaugeMetricFamily("tailsift_memory_soft_limit_bytes", "RSS past which new data is refused",
                                    value=p.memory.soft_limit)  # fmt: skip
            yield CounterMetricFamily("tailsift_memory_refused_requests", "Requests refused (429) by the memory limit",
                                      value=p.memory.refused)  # fmt: skip
        reloads = CounterMetricFamily("tailsift_config_reloads", "Configuration reloads (SIGHUP, --watch)",
                                      labels=["outcome"])  # fmt: skip
        for outcome in ("applied", "refused"):
            reloads.add_metric([outcome], p.config_reloads[outcome])
        yield reloads
        yield _histogram("tailsift_decision_latency_seconds", "From a trace's first span to its decision",
                         p.decision_latency)  # fmt: skip
        yield _histogram("tailsift_event_loop_lag_seconds", "How late a 50 ms timer fires on the event loop",
                         p.runtime.loop_lag)  # fmt: skip
        yield _histogram("tailsift_gc_pause_seconds", "Duration of each garbage collection", p.runtime.gc_pause)
        if p.sampler is not None:
            yield from self._sampler(p.sampler)
        yield from self._queue(p.queue)
        if p.writer is not None:
            yield from self._storage(p.writer)
        yield from self._servers(p)
        if p.ingest is None:
            return
        dropped = CounterMetricFamily("tailsift_receiver_signals_dropped", "OTLP metrics data points and log "
                                      "records accepted and discarded (receivers.otlp.metrics/logs: drop)",
                                      labels=["signal"])  # fmt: skip
        for signal in p.settings.receivers.otlp.served_signals:
            dropped.add_metric([signal], p.ingest.signals.items[signal])
        yield dropped
        if p.ingest.store_logs is not None:
            yield CounterMetricFamily("tailsift_receiver_log_records_stored", "OTLP log records stored in otel_logs",
                                      value=p.ingest.stats["log_records_stored"])  # fmt: skip

    def _servers(self, p: Pipeline) -> Iterator[CounterMetricFamily]:
        """Refused tokens, connections closed by the hygiene rules, certificate reloads."""
        servers = {"otlp_grpc": p.grpc, "otlp_http": p.http, "query": p.query}
        refused = CounterMetricFamily("tailsift_auth_failures", "Requests refused for a missing or invalid bearer "
                                      "token", labels=["server"])  # fmt: skip
        closed = CounterMetricFamily("tailsift_connections_closed", "Connections the server closed: evicted at "
                                     "max_connections, refused with every slot busy, or past read_header_timeout",
                                     labels=["server", "reason"])  # fmt: skip
        reloads = CounterMetricFamily("tailsift_tls_reloads", "TLS certificates reloaded after rotation", labels=["server"])
        for name, server in servers.items():
            if server is None:
                continue
            if server.auth is not None:
                refused.add_metric([name], server.unauthenticated)
            guard = getattr(server, "guard", None)
            if guard is not None:
                for reason, count in sorted(guard.stats.items()):
                    closed.add_metric([name, reason], count)
            if server.tls is not None:
                reloads.add_metric([name], server.tls.reloads)
        yield refused
        yield closed
        yield reloads

    def _ingest(self, ingest: Ingest) -> Iterator[CounterMetricFamily]:
        spans = CounterMetricFamily("tailsift_receiver_spans", "Spans by outcome at ingress", labels=["outcome"])
        for outcome in ("accepted", "rejected", "refused"):
            spans.add_metric([outcome], ingest.stats[f"spans_{outcome}"])
        yield spans
        expired = CounterMetricFamily("tailsift_receiver_spans_expired", "Spans rejected (partial_success) because "
                                      "they start before the storage retention", value=ingest.stats["spans_rejected_expired"])  # fmt: skip
        yield expired
        requests = CounterMetricFamily("tailsift_receiver_requests", "Export requests by outcome", labels=["outcome"])
        for outcome in ("accepted", "refused"):
            requests.add_metric([outcome], ingest.stats[f"requests_{outcome}"])
        yield requests
        redactions = CounterMetricFamily("tailsift_redactions", "Values redacted, by rule", labels=["rule"])
        for rule, count in sorted(ingest.redactions.items()):
            redactions.add_metric([rule], count)
        yield redactions
        cardinality = CounterMetricFamily("tailsift_cardinality_events", "Span names normalised, high-cardinality "
                                          "attributes dropped or hashed", labels=["event"])  # fmt: skip
        for event in ("span_names_normalized", "high_cardinality_dropped", "high_cardinality_hashed"):
            cardinality.add_metric([event], ingest.processed.get("cardinality", Counter())[event])
        yield cardinality

    def _sampler(self, s: TailSampler) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        yield GaugeMetricFamily("tailsift_sampler_buffered_traces", "Traces awaiting a decision", value=s.buffered_traces)
        yield GaugeMetricFamily("tailsift_sampler_buffered_spans", "Spans awaiting a decision", value=s.buffered_spans)
        events = CounterMetricFamily(
            "tailsift_sampler_events", "Sampler events: why traces were decided, late spans", labels=["event"]
        )
        for event, count in sorted(s.stats.items()):
            events.add_metric([event], count)
        yield events
        decisions = CounterMetricFamily("tailsift_sampler_decisions", "Trace decisions", labels=["rule", "decision"])
        for (rule, keep), count in sorted(s.decisions.items()):
            decisions.add_metric([rule, "kept" if keep else "dropped"], count)
        yield decisions

    def _queue(self, queue: Queue) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        yield GaugeMetricFamily("tailsift_queue_bytes",
                                "Bytes in the in-process queue, or sent to Kafka and not yet acknowledged",
                                value=queue.depth_bytes)  # fmt: skip
        if isinstance(queue, MemoryQueue) and queue.wal is not None:
            yield GaugeMetricFamily("tailsift_wal_bytes", "Size of the write-ahead log on disk", value=queue.wal.size_bytes)
            yield GaugeMetricFamily("tailsift_wal_replay_pending_records", "Logged requests still to replay after a "
                                    "restart", value=queue.replay_pending)  # fmt: skip
            yield CounterMetricFamily("tailsift_wal_syncs", "fdatasync calls (one per group commit)", value=queue.wal.syncs)
            yield _histogram("tailsift_wal_sync_seconds", "Each group commit, from asking for the fdatasync to the "
                             "event loop seeing it done", queue.wal.sync_latency)  # fmt: skip
        if isinstance(queue, KafkaQueue):
            events = CounterMetricFamily("tailsift_kafka_events", "Kafka transport events", labels=["event"])
            for event, count in sorted(queue.stats.items()):
                events.add_metric([event], count)
            yield events
            yield GaugeMetricFamily("tailsift_kafka_unsettled_records",
                                    "Records on assigned partitions not yet stored or dropped (replayed after a crash)",
                                    value=queue.lag())  # fmt: skip
            yield GaugeMetricFamily("tailsift_kafka_assigned_partitions", "Partitions this sampler reads (0 while "
                                    "the group waits for a crashed member to time out)", value=queue.assigned())  # fmt: skip

    def _storage(self, w: StorageWriter) -> Iterator[CounterMetricFamily | GaugeMetricFamily | HistogramMetricFamily]:
        yield GaugeMetricFamily("tailsift_storage_pending_rows", "Span rows waiting for insert", value=w.pending_rows)
        yield CounterMetricFamily("tailsift_storage_rows", "Span rows inserted", value=w.rows_written)
        yield CounterMetricFamily("tailsift_storage_insert_failures", "Failed inserts (retried)", value=w.insert_failures)
        yield GaugeMetricFamily("tailsift_storage_pending_bytes", "Span bytes waiting for insert", value=w.pending_bytes)
        yield CounterMetricFamily("tailsift_storage_rows_rejected", "Span rows ClickHouse refused even alone, "
                                  "stored in the tailsift_rejected table", value=w.rows_rejected)  # fmt: skip
        yield CounterMetricFamily("tailsift_storage_rows_already_stored", "Replayed span rows found stored before a "
                                  "restart, not inserted again", value=w.rows_already_stored)  # fmt: skip
        clamped = CounterMetricFamily("tailsift_storage_values_clamped", "Values made storable (timestamps past "
                                      "2100, token counts not finite, negative or absurd)", labels=["kind"])  # fmt: skip
        for kind in ("timestamp", "token_count"):
            clamped.add_metric([kind], w.rows.clamped[kind])
        yield clamped
        yield _histogram("tailsift_storage_insert_seconds", "Duration of inserts into ClickHouse", w.insert_latency)


def _histogram(name: str, doc: str, h: Histogram) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=[])
    family.add_metric([], h.cumulative(), h.sum)
    return family


def build_registry(pipeline: Pipeline) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(PipelineCollector(pipeline))
    return registry
