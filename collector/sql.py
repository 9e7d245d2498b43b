"""Every SQL statement tailsift runs, in one place.

The same text goes to the embedded chDB engine and to a ClickHouse server over HTTP; only
the clickhouse-connect client differs. ``tests/test_sql_shared.py`` checks that a server
receives exactly these statements.

``otel_traces`` keeps the column names of the OTel Collector ClickHouse exporter, so
Grafana's ClickHouse trace view reads it as is; ``SampleRate`` and ``SampledBy`` are
ours. ``tailsift_traces`` is one row per kept trace, written when it is decided (and
replaced by a newer version if late spans arrive).

Storage is idempotent, because the Kafka queue delivers at least once (a crash or a
rebalance replays records whose traces were not yet settled): both tables are
ReplacingMergeTree, spans keyed by (trace, span id). Reads of spans deduplicate with
``LIMIT 1 BY`` rather than FINAL, so they also work on an ``otel_traces`` the exporter
created (a MergeTree); the summary table is always ours and is read with FINAL.

On such a table the migrations add tailsift's columns (``SampleRate`` defaults to 1), and
traces others wrote are listed from their spans (see :data:`SEARCH_TRACES`).
"""

from __future__ import annotations

SPANS_TABLE = "otel_traces"
TRACES_TABLE = "tailsift_traces"
REJECTED_TABLE = "tailsift_rejected"
LOGS_TABLE = "otel_logs"
LOOKUP_TABLE = f"{SPANS_TABLE}_trace_id_ts"
"""The OTel ClickHouse exporter's trace-id → time-range lookup, which Grafana's ClickHouse
data source and the exporter's own queries use to bound a trace-by-id read in time."""


def _ttl(column: str, days: int) -> str:
    return f"TTL toDateTime({column}) + toIntervalDay({days})" if days > 0 else ""


SAMPLE_WEIGHT = ("toUInt64(floor(SampleRate) + (cityHash64(TraceId) % 1000000 < "
                 "(SampleRate - floor(SampleRate)) * 1000000))")
"""``SampleWeight``: ``SampleRate`` as a whole number for tools that weight only by integers
(ClickStack's ``sampleRateExpression``). A rate of 3.33 becomes 3 or 4, chosen per trace by
its id so that the weight is 3.33 on average: sums of it stay unbiased estimates of all
traffic, and every span of a trace gets the same weight."""


def create_spans_table(ttl_days: int) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {SPANS_TABLE} (
    Timestamp DateTime64(9) CODEC(Delta, ZSTD(1)),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    ParentSpanId String CODEC(ZSTD(1)),
    TraceState String CODEC(ZSTD(1)),
    SpanName LowCardinality(String) CODEC(ZSTD(1)),
    SpanKind LowCardinality(String) CODEC(ZSTD(1)),
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion String CODEC(ZSTD(1)),
    SpanAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    Duration UInt64 CODEC(ZSTD(1)),
    StatusCode LowCardinality(String) CODEC(ZSTD(1)),
    StatusMessage String CODEC(ZSTD(1)),
    Events Nested (
        Timestamp DateTime64(9),
        Name LowCardinality(String),
        Attributes Map(LowCardinality(String), String),
        AttributeTypes Map(LowCardinality(String), LowCardinality(String))
    ) CODEC(ZSTD(1)),
    Links Nested (
        TraceId String,
        SpanId String,
        TraceState String,
        Attributes Map(LowCardinality(String), String)
    ) CODEC(ZSTD(1)),
    SampleRate Float64 CODEC(ZSTD(1)),
    SampledBy LowCardinality(String) CODEC(ZSTD(1)),
    CostUsd Float64 CODEC(ZSTD(1)),
    SampleWeight UInt64 MATERIALIZED {SAMPLE_WEIGHT},
    SpanAttributeTypes Map(LowCardinality(String), LowCardinality(String)) CODEC(ZSTD(1)),
    ResourceAttributeTypes Map(LowCardinality(String), LowCardinality(String)) CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_span_attr_key mapKeys(SpanAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_duration Duration TYPE minmax GRANULARITY 1
) ENGINE = ReplacingMergeTree
PARTITION BY toDate(Timestamp)
ORDER BY (ServiceName, SpanName, toDateTime(Timestamp), TraceId, SpanId)
{_ttl("Timestamp", ttl_days)}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000
"""


def create_traces_table(ttl_days: int) -> str:
    return f"""
CREATE TABLE IF NOT EXISTS {TRACES_TABLE} (
    TraceId String,
    Start DateTime64(9),
    End DateTime64(9),
    DurationNs UInt64,
    RootService LowCardinality(String),
    RootName LowCardinality(String),
    RootStart DateTime64(9),
    RootEnd DateTime64(9),
    SpanCount UInt32,
    HasError UInt8,
    SampleRate Float64,
    SampledBy LowCardinality(String),
    Tenant LowCardinality(String),
    SourcePartition Int32,
    SourceOffset Int64,
    Decided DateTime64(9),
    Version UInt64,
    WouldKeep UInt8 DEFAULT 1,
    INDEX idx_decided Decided TYPE minmax GRANULARITY 1
) ENGINE = ReplacingMergeTree(Version)
ORDER BY TraceId
{_ttl("Start", ttl_days)}
"""


def create_rejected_table(ttl_days: int) -> str:
    """Dead letters: span rows ClickHouse refused even when inserted alone. ``Payload`` is
    the span as OTLP ``TracesData`` protobuf (after redaction), base64-encoded, so it can be
    inspected or sent again: ``SELECT Reason, count() FROM tailsift_rejected GROUP BY Reason``."""
    return f"""
CREATE TABLE IF NOT EXISTS {REJECTED_TABLE} (
    Received DateTime64(9),
    TraceId String,
    SpanId String,
    Reason String,
    Payload String CODEC(ZSTD(1))
) ENGINE = MergeTree
ORDER BY (Received, TraceId)
{_ttl("Received", ttl_days)}
"""


def create_logs_table(ttl_days: int) -> str:
    """The exporter's ``otel_logs``: OTLP log records, with the trace and span they belong to."""
    return f"""
CREATE TABLE IF NOT EXISTS {LOGS_TABLE} (
    Timestamp DateTime64(9) CODEC(Delta(8), ZSTD(1)),
    TimestampTime DateTime DEFAULT toDateTime(Timestamp),
    TraceId String CODEC(ZSTD(1)),
    SpanId String CODEC(ZSTD(1)),
    TraceFlags UInt8,
    SeverityText LowCardinality(String) CODEC(ZSTD(1)),
    SeverityNumber UInt8,
    ServiceName LowCardinality(String) CODEC(ZSTD(1)),
    Body String CODEC(ZSTD(1)),
    ResourceSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ResourceAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    ScopeSchemaUrl LowCardinality(String) CODEC(ZSTD(1)),
    ScopeName String CODEC(ZSTD(1)),
    ScopeVersion LowCardinality(String) CODEC(ZSTD(1)),
    ScopeAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    LogAttributes Map(LowCardinality(String), String) CODEC(ZSTD(1)),
    INDEX idx_trace_id TraceId TYPE bloom_filter(0.001) GRANULARITY 1,
    INDEX idx_res_attr_key mapKeys(ResourceAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_log_attr_key mapKeys(LogAttributes) TYPE bloom_filter(0.01) GRANULARITY 1,
    INDEX idx_body Body TYPE tokenbf_v1(32768, 3, 0) GRANULARITY 8
) ENGINE = MergeTree
PARTITION BY toDate(TimestampTime)
PRIMARY KEY (ServiceName, TimestampTime)
ORDER BY (ServiceName, TimestampTime, Timestamp)
{_ttl("TimestampTime", ttl_days)}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1, non_replicated_deduplication_window = 10000
"""


LOG_COLUMNS = [
    "Timestamp", "TraceId", "SpanId", "TraceFlags", "SeverityText", "SeverityNumber", "ServiceName", "Body",
    "ResourceSchemaUrl", "ResourceAttributes", "ScopeSchemaUrl", "ScopeName", "ScopeVersion", "ScopeAttributes",
    "LogAttributes",
]  # fmt: skip

# A trace's logs, for the trace view (at most 1,000, oldest first).
TRACE_LOGS = f"""
SELECT toUnixTimestamp64Nano(Timestamp), SpanId, SeverityText, SeverityNumber, ServiceName, Body, LogAttributes
FROM {LOGS_TABLE}
WHERE TraceId = {{trace_id:String}}
  AND ({{tenant:Nullable(String)}} IS NULL OR ResourceAttributes['tailsift.tenant'] = {{tenant:Nullable(String)}})
ORDER BY Timestamp
LIMIT 1000
"""


def create_lookup_table(ttl_days: int) -> str:
    """The exporter's ``otel_traces_trace_id_ts``: per trace id its first and last span time."""
    return f"""
CREATE TABLE IF NOT EXISTS {LOOKUP_TABLE} (
    TraceId String CODEC(ZSTD(1)),
    Start SimpleAggregateFunction(min, DateTime) CODEC(ZSTD(1)),
    End SimpleAggregateFunction(max, DateTime) CODEC(ZSTD(1))
) ENGINE = AggregatingMergeTree
PARTITION BY toStartOfWeek(Start)
ORDER BY (TraceId)
{_ttl("Start", ttl_days)}
SETTINGS index_granularity = 8192, ttl_only_drop_parts = 1
"""


def _lookup_select(spans: str, where: str = "TraceId != ''") -> str:
    return f"SELECT TraceId, min(Timestamp) AS Start, max(Timestamp) AS End FROM {spans} WHERE {where} GROUP BY TraceId"


# Fills the lookup on every insert into the spans table (min/max: replays change nothing).
CREATE_LOOKUP_VIEW = f"CREATE MATERIALIZED VIEW IF NOT EXISTS {LOOKUP_TABLE}_mv TO {LOOKUP_TABLE} AS {_lookup_select(SPANS_TABLE)}"
LOOKUP_EXISTS = f"EXISTS TABLE {LOOKUP_TABLE}"
# Inserts carry a token made from their rows (``insert_deduplication_token``), so a block
# sent twice (an insert retried after its answer was lost) is stored once; this turns the
# check on for a spans table that was created without it (a server's Replicated tables
# have it already, through replicated_deduplication_window).
DEDUPLICATION_WINDOW = f"ALTER TABLE {SPANS_TABLE} MODIFY SETTING non_replicated_deduplication_window = 10000"
# Run once when the lookup is created on a database that already holds spans.
LOOKUP_BACKFILL = f"INSERT INTO {LOOKUP_TABLE} {_lookup_select(SPANS_TABLE)}"
# A replay found these traces' spans stored: their lookup rows, again, in case a crash came
# between the spans' part and the view's (an insert and its view are not one transaction).
LOOKUP_REFILL = f"INSERT INTO {LOOKUP_TABLE} {_lookup_select(SPANS_TABLE, 'TraceId IN {trace_ids:Array(String)}')}"


def cluster_ddl(cluster: str, database: str, ttl_days: int) -> list[str]:
    """The same tables for a ClickHouse cluster: ``<table>_local`` replicated on every node,
    and ``<table>`` as a Distributed table over them, sharded by trace id so that a trace
    (and every copy of a span) lives on one shard, where FINAL and LIMIT BY see it whole.
    tailsift reads and writes ``<table>``; its own CREATE ... IF NOT EXISTS then finds it."""
    out = [f"CREATE DATABASE IF NOT EXISTS {database} ON CLUSTER '{cluster}'\n"]
    tables = ((SPANS_TABLE, create_spans_table(ttl_days)), (TRACES_TABLE, create_traces_table(ttl_days)),
              (REJECTED_TABLE, create_rejected_table(ttl_days)), (LOOKUP_TABLE, create_lookup_table(ttl_days)),
              (LOGS_TABLE, create_logs_table(ttl_days)))
    for table, ddl in tables:
        path = f"'/clickhouse/tables/{{shard}}/{database}/{table}', '{{replica}}'"
        local = ddl.replace(f"CREATE TABLE IF NOT EXISTS {table} (",
                            f"CREATE TABLE IF NOT EXISTS {database}.{table}_local ON CLUSTER '{cluster}' (")
        local = local.replace("ENGINE = ReplacingMergeTree(Version)", f"ENGINE = ReplicatedReplacingMergeTree({path}, Version)")
        local = local.replace("ENGINE = ReplacingMergeTree\n", f"ENGINE = ReplicatedReplacingMergeTree({path})\n")
        local = local.replace("ENGINE = MergeTree\n", f"ENGINE = ReplicatedMergeTree({path})\n")
        local = local.replace("ENGINE = AggregatingMergeTree\n", f"ENGINE = ReplicatedAggregatingMergeTree({path})\n")
        out.append(local)
        out.append(f"CREATE TABLE IF NOT EXISTS {database}.{table} ON CLUSTER '{cluster}' AS {database}.{table}_local\n"
                   f"ENGINE = Distributed('{cluster}', '{database}', '{table}_local', cityHash64(TraceId))\n")
    # Each node fills its own lookup shard from its own spans shard (both sharded by trace id).
    out.append(f"CREATE MATERIALIZED VIEW IF NOT EXISTS {database}.{LOOKUP_TABLE}_mv_local ON CLUSTER '{cluster}' "
               f"TO {database}.{LOOKUP_TABLE}_local AS {_lookup_select(f'{database}.{SPANS_TABLE}_local')}\n")
    return out


SPAN_COLUMNS = [
    "Timestamp", "TraceId", "SpanId", "ParentSpanId", "TraceState", "SpanName", "SpanKind",
    "ServiceName", "ResourceAttributes", "ScopeName", "ScopeVersion", "SpanAttributes",
    "Duration", "StatusCode", "StatusMessage",
    "Events.Timestamp", "Events.Name", "Events.Attributes", "Events.AttributeTypes",
    "Links.TraceId", "Links.SpanId", "Links.TraceState", "Links.Attributes",
    "SampleRate", "SampledBy", "CostUsd", "SpanAttributeTypes", "ResourceAttributeTypes",
]  # fmt: skip

COLUMN_TYPES = "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {table:String}"

TRACE_COLUMNS = [
    "TraceId", "Start", "End", "DurationNs", "RootService", "RootName", "RootStart", "RootEnd",
    "SpanCount", "HasError", "SampleRate", "SampledBy", "Tenant", "SourcePartition", "SourceOffset",
    "Decided", "Version", "WouldKeep",
]  # fmt: skip

REJECTED_COLUMNS = ["Received", "TraceId", "SpanId", "Reason", "Payload"]

GET_TRACE = f"""
SELECT SpanId, ParentSpanId, SpanName, ServiceName, SpanKind,
       toUnixTimestamp64Nano(Timestamp) AS StartNs, Duration, StatusCode, StatusMessage,
       SpanAttributes, ResourceAttributes,
       arrayMap(t -> toUnixTimestamp64Nano(t), Events.Timestamp) AS EventTimes,
       Events.Name, Events.Attributes, SampleRate, SampledBy, CostUsd,
       SpanAttributeTypes, ResourceAttributeTypes, Events.AttributeTypes, ScopeName, ScopeVersion, TraceState,
       Links.TraceId, Links.SpanId, Links.TraceState, Links.Attributes
FROM {SPANS_TABLE}
WHERE TraceId = {{trace_id:String}}
  AND ({{tenant:Nullable(String)}} IS NULL OR ResourceAttributes['tailsift.tenant'] = {{tenant:Nullable(String)}})
ORDER BY Timestamp, SpanId
LIMIT 1 BY SpanId
"""

# Traces with a span named ``span_name`` (any span, not only the root), a span of service
# ``span_service``, and for each key=value pair a span carrying it as a span or resource
# attribute (not necessarily the same span). A span starts no earlier than its trace, so
# ``since`` prunes the scan. Unset, the subquery reads nothing (``span_filter`` = 0).
_SPAN_FILTER = """({since_ns:Nullable(Int64)} IS NULL OR Timestamp >= fromUnixTimestamp64Nano({since_ns:Nullable(Int64)}))
    GROUP BY TraceId
    HAVING ({span_name:Nullable(String)} IS NULL OR countIf(SpanName = {span_name:Nullable(String)}) > 0)
       AND ({span_service:Nullable(String)} IS NULL OR countIf(ServiceName = {span_service:Nullable(String)}) > 0)
       AND length(groupUniqArrayArray(arrayFilter(i -> SpanAttributes[{attr_keys:Array(String)}[i]] = {attr_values:Array(String)}[i]
                                                     OR ResourceAttributes[{attr_keys:Array(String)}[i]] = {attr_values:Array(String)}[i],
                                                  arrayEnumerate({attr_keys:Array(String)})))) = length({attr_keys:Array(String)})"""

# Filters are fixed SQL with typed parameters; an unset filter is a NULL parameter that
# turns its clause off, so there is one statement text whatever the user asks for.
_SUMMARY_FILTERS = """WHERE ({service:Nullable(String)} IS NULL OR RootService = {service:Nullable(String)})
  AND ({tenant:Nullable(String)} IS NULL OR Tenant = {tenant:Nullable(String)})
  AND ({name:Nullable(String)} IS NULL OR RootName = {name:Nullable(String)})
  AND ({error:Nullable(UInt8)} IS NULL OR HasError = {error:Nullable(UInt8)})
  AND ({min_duration_ns:Nullable(UInt64)} IS NULL OR DurationNs >= {min_duration_ns:Nullable(UInt64)})
  AND ({max_duration_ns:Nullable(UInt64)} IS NULL OR DurationNs <= {max_duration_ns:Nullable(UInt64)})
  AND ({since_ns:Nullable(Int64)} IS NULL OR StartNs >= {since_ns:Nullable(Int64)})
  AND ({until_ns:Nullable(Int64)} IS NULL OR StartNs <= {until_ns:Nullable(Int64)})
  AND ({span_filter:UInt8} = 0 OR TraceId IN (SELECT TraceId FROM %s WHERE {span_filter:UInt8} = 1 AND %s))""" % (SPANS_TABLE, _SPAN_FILTER)


# Kept traces from their summary rows, and traces that other writers (the OTel ClickHouse
# exporter, on a table it created) stored without one: those are summarised from their
# spans. tailsift's own spans always carry the rule that kept them (SampledBy), so the
# second part reads only others' rows.
SEARCH_TRACES = f"""
SELECT TraceId, RootService, RootName, StartNs, DurationNs, SpanCount, HasError, SampleRate, SampledBy FROM (
    SELECT TraceId, RootService, RootName, toUnixTimestamp64Nano(Start) AS StartNs, DurationNs, SpanCount,
           HasError, SampleRate, SampledBy
    FROM {TRACES_TABLE} FINAL
    {_SUMMARY_FILTERS}
    UNION ALL
    SELECT TraceId, RootService, RootName, StartNs, DurationNs, SpanCount, HasError, SampleRate, '' AS SampledBy FROM (
        SELECT TraceId, anyIf(ServiceName, ParentSpanId = '') AS RootService, anyIf(SpanName, ParentSpanId = '') AS RootName,
               min(toUnixTimestamp64Nano(Timestamp)) AS StartNs,
               toUInt64(greatest(0, max(toUnixTimestamp64Nano(Timestamp) + toInt64(Duration)) - StartNs)) AS DurationNs,
               toUInt32(uniqExact(SpanId)) AS SpanCount, toUInt8(countIf(StatusCode = 'Error') > 0) AS HasError,
               max(SampleRate) AS SampleRate, anyIf(ResourceAttributes['tailsift.tenant'], ParentSpanId = '') AS Tenant
        FROM {SPANS_TABLE}
        WHERE SampledBy = '' AND TraceId NOT IN (  -- built from others' trace ids only: empty when there are none
            SELECT TraceId FROM {TRACES_TABLE}
            WHERE TraceId IN (SELECT TraceId FROM {SPANS_TABLE} WHERE SampledBy = ''))
        GROUP BY TraceId
    )
    {_SUMMARY_FILTERS}
)
ORDER BY StartNs DESC
LIMIT {{limit:UInt32}}
"""

# Which of these spans are stored already: asked only for records replayed after a crash,
# which may have been inserted without their summary row (see collector.writer). The time
# bounds prune partitions; TraceId has a bloom filter index.
STORED_SPANS = f"""
SELECT TraceId, SpanId FROM {SPANS_TABLE}
WHERE TraceId IN {{trace_ids:Array(String)}}
  AND Timestamp >= fromUnixTimestamp64Nano({{start_ns:Int64}}) AND Timestamp <= fromUnixTimestamp64Nano({{end_ns:Int64}})
"""

# Kept traces decided recently, newest first: seeds the sampler's decision cache so late
# spans join their trace after a restart or a rebalance.
RECENT_KEPT = f"""
SELECT TraceId, toUnixTimestamp64Nano(Start), toUnixTimestamp64Nano(End), RootService, RootName,
       toUnixTimestamp64Nano(RootStart), toUnixTimestamp64Nano(RootEnd), SpanCount, HasError,
       SampleRate, SampledBy, SourcePartition, SourceOffset
FROM {TRACES_TABLE} FINAL
WHERE Decided >= now64(9) - toIntervalSecond({{window_seconds:UInt32}})
ORDER BY Decided DESC
LIMIT {{limit:UInt32}}
"""

# Columns added after the first release; a database created by an older version gets them
# at start (``ADD COLUMN IF NOT EXISTS`` is a no-op on a current one).
MIGRATIONS = [
    f"ALTER TABLE {SPANS_TABLE} ADD COLUMN IF NOT EXISTS SampleRate Float64 DEFAULT 1 CODEC(ZSTD(1))",
    f"ALTER TABLE {SPANS_TABLE} ADD COLUMN IF NOT EXISTS SampledBy LowCardinality(String) CODEC(ZSTD(1))",
    f"ALTER TABLE {SPANS_TABLE} ADD COLUMN IF NOT EXISTS CostUsd Float64 CODEC(ZSTD(1))",
    f"ALTER TABLE {SPANS_TABLE} ADD COLUMN IF NOT EXISTS SampleWeight UInt64 MATERIALIZED {SAMPLE_WEIGHT}",
    f"ALTER TABLE {SPANS_TABLE} ADD COLUMN IF NOT EXISTS SpanAttributeTypes Map(LowCardinality(String), LowCardinality(String)) CODEC(ZSTD(1))",
    f"ALTER TABLE {SPANS_TABLE} ADD COLUMN IF NOT EXISTS ResourceAttributeTypes Map(LowCardinality(String), LowCardinality(String)) CODEC(ZSTD(1))",
    f"ALTER TABLE {SPANS_TABLE} ADD COLUMN IF NOT EXISTS `Events.AttributeTypes` Array(Map(LowCardinality(String), LowCardinality(String)))",
    f"ALTER TABLE {TRACES_TABLE} ADD COLUMN IF NOT EXISTS Tenant LowCardinality(String)",
    f"ALTER TABLE {TRACES_TABLE} ADD COLUMN IF NOT EXISTS WouldKeep UInt8 DEFAULT 1",
]

def tokens(key: str) -> str:
    """A token count attribute as a number, read the way ``processors.genai.parse_count``
    reads it at ingest: not a number, not finite or negative is 0, and at most 10^12. A
    stored ``"inf"`` must not turn a whole group's total into infinity."""
    return f"least(greatest(ifNotFinite(toFloat64OrZero(SpanAttributes['{key}']), 0), 0), 1e12)"


# Tokens and cost per trace, for trace lists. Spans are deduplicated first (at-least-once).
TRACE_COSTS = f"""
SELECT TraceId, sum(CostUsd),
       sum({tokens('gen_ai.usage.input_tokens')}),
       sum({tokens('gen_ai.usage.output_tokens')})
FROM (SELECT TraceId, CostUsd, SpanAttributes FROM {SPANS_TABLE}
      WHERE TraceId IN {{trace_ids:Array(String)}} LIMIT 1 BY TraceId, SpanId)
GROUP BY TraceId
"""

# Unbiased statistics from sampled data: every span counts SampleRate times (1/keep of the
# rule that kept its trace), so keeping 100% of errors and 5% of the rest does not inflate
# the error rate. ``group_by`` is service, span_name, model, or any span attribute key.
# The last two columns are the variances of the count and error estimates (Horvitz-Thompson:
# each kept span with weight w adds w(w-1)), so a reader knows how far to trust them. An
# attribute ``group_by`` may have a ``fallback`` key read when it is empty (aliases).
STATS = f"""
SELECT multiIf({{group_by:String}} = 'service', ServiceName,
               {{group_by:String}} = 'span_name', SpanName,
               {{group_by:String}} = 'model', if(SpanAttributes['gen_ai.response.model'] != '',
                                                  SpanAttributes['gen_ai.response.model'],
                                                  SpanAttributes['gen_ai.request.model']),
               if(SpanAttributes[{{group_by:String}}] != '', SpanAttributes[{{group_by:String}}],
                  SpanAttributes[{{fallback:String}}])) AS Grp,
       sum(SampleRate) AS Weighted,
       sumIf(SampleRate, StatusCode = 'Error'),
       quantilesTDigestWeighted(0.5, 0.95, 0.99)(Duration, toUInt64(round(SampleRate * 100))),
       sum(SampleRate * {tokens('gen_ai.usage.input_tokens')}),
       sum(SampleRate * {tokens('gen_ai.usage.output_tokens')}),
       sum(SampleRate * {tokens('gen_ai.usage.cache_read.input_tokens')}),
       sum(SampleRate * CostUsd),
       count(),
       sum(SampleRate * (SampleRate - 1)),
       sumIf(SampleRate * (SampleRate - 1), StatusCode = 'Error')
FROM (
    SELECT * FROM {SPANS_TABLE}
    WHERE ({{service:Nullable(String)}} IS NULL OR ServiceName = {{service:Nullable(String)}})
      AND ({{tenant:Nullable(String)}} IS NULL OR ResourceAttributes['tailsift.tenant'] = {{tenant:Nullable(String)}})
      AND ({{since_ns:Nullable(Int64)}} IS NULL OR toUnixTimestamp64Nano(Timestamp) >= {{since_ns:Nullable(Int64)}})
      AND ({{until_ns:Nullable(Int64)}} IS NULL OR toUnixTimestamp64Nano(Timestamp) <= {{until_ns:Nullable(Int64)}})
      AND ({{root_only:UInt8}} = 0 OR ParentSpanId = '')
    LIMIT 1 BY TraceId, SpanId  -- copies from at-least-once delivery count once, on any table engine
)
GROUP BY Grp
ORDER BY Weighted DESC
LIMIT {{limit:UInt32}}
"""

PING = "SELECT 1"
