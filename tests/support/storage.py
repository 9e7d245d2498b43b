"""Read what is physically stored, duplicates included, bypassing the query API (which
hides them): the way to prove that replays did not store a span twice."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import clickhouse_connect

ROWS_PER_TRACE = "SELECT TraceId, count(), uniqExact(SpanId) FROM otel_traces GROUP BY TraceId"
_SCRIPT = """
import json, sys, clickhouse_connect
client = clickhouse_connect.get_client(dsn=sys.argv[1])
print(json.dumps([list(r) for r in client.query(sys.argv[2]).result_rows]))
"""


def query_rows(dsn: str, query: str) -> list[list[Any]]:
    """A query's rows. chDB paths are read in a subprocess, since a process can open only
    one chDB path and the collector must be stopped first."""
    if dsn.startswith("chdb://"):
        out = subprocess.run([sys.executable, "-c", _SCRIPT, dsn, query], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        rows: list[list[Any]] = json.loads(out.stdout)
        return rows
    return [list(r) for r in clickhouse_connect.get_client(dsn=dsn).query(query).result_rows]


def span_rows(dsn: str) -> dict[str, tuple[int, int]]:
    """trace id → (rows stored, distinct span ids)."""
    return {trace: (int(count), int(distinct)) for trace, count, distinct in query_rows(dsn, ROWS_PER_TRACE)}


_DUMP = """
import sys, clickhouse_connect
client = clickhouse_connect.get_client(dsn=sys.argv[1])
names = [r[0] for r in client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows]
for name in names:
    sys.stdout.buffer.write(client.raw_query(f"SELECT * FROM {name} FORMAT TabSeparatedRaw"))
"""


def dump_tables(dsn: str) -> bytes:
    """Every row of every table, as text: to prove a value is stored nowhere. (chDB: the
    collector must be stopped first, and it is read in a subprocess, as above.)"""
    out = subprocess.run([sys.executable, "-c", _DUMP, dsn], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    return out.stdout
