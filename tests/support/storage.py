"""Read what is physically stored, duplicates included, bypassing the query API (which
hides them): the way to prove that replays did not store a span twice."""

from __future__ import annotations

import json
import subprocess
import sys

import clickhouse_connect

ROWS_PER_TRACE = "SELECT TraceId, count(), uniqExact(SpanId) FROM otel_traces GROUP BY TraceId"
_SCRIPT = f"""
import json, sys, clickhouse_connect
client = clickhouse_connect.get_client(dsn=sys.argv[1])
print(json.dumps([list(r) for r in client.query({ROWS_PER_TRACE!r}).result_rows]))
"""


def span_rows(dsn: str) -> dict[str, tuple[int, int]]:
    """trace id → (rows stored, distinct span ids). chDB paths are read in a subprocess,
    since a process can open only one chDB path and the collector must be stopped first."""
    if dsn.startswith("chdb://"):
        out = subprocess.run([sys.executable, "-c", _SCRIPT, dsn], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        rows = json.loads(out.stdout)
    else:
        rows = clickhouse_connect.get_client(dsn=dsn).query(ROWS_PER_TRACE).result_rows
    return {trace: (int(count), int(distinct)) for trace, count, distinct in rows}
