"""What storing a kept span costs the embedded engine, by insert size: the writer's own
rows (:class:`NativeRowBuilder`) through :meth:`ClickHouseStore.insert` into a fresh chDB
database, then the merges that follow, all in the process's CPU time:

    python -m benchmarks.storage                                  # 10k, 20k, 40k rows an insert
    python -m benchmarks.storage --batch 5000 15000 --repeat 5 --shape deep
    python -m benchmarks.storage --batch 10000 --format native rowbinary   # the spans insert's format

Each insert is a new part in three tables (spans, trace summaries, the trace-id lookup the
materialized view fills), and ClickHouse merges small parts soon after: both cost per part
as much as per row. The writer inserts every ``storage.clickhouse.flush_interval`` or
``batch_rows``, whichever comes first; this prints what that choice costs. Run it pinned
(``taskset -c 0``) for steadier figures.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pydantic import SecretStr

from collector.bench.shapes import SHAPES, build_set
from collector.config import ClickHouseSettings
from collector.otlp import decode_protobuf, split_by_trace
from collector.rows import NativeRowBuilder, TraceRows
from collector.storage import ClickHouseStore, Rows
from processors.sampling.sampler import Decision, TraceSummary

SETTLE_SECONDS = 15.0
"""Idle time after the last insert, for the merges it set off to run (and be counted)."""


def batches(shape: str, batch: int, total: int) -> list[list[TraceRows]]:
    """Rows of kept traces of ``shape``, about ``total`` span rows, cut into inserts of
    ``batch`` span rows (a trace is not cut)."""
    build, out, current, rows, in_current = NativeRowBuilder(), [], [], 0, 0
    templates = build_set(shape)
    while rows < total:
        for template in templates:
            for f in split_by_trace(decode_protobuf(template.fresh()), time.time_ns()).fragments:
                summary = TraceSummary(f.trace_id, f.span_count, f.start_ns, f.end_ns, f.has_error, f.root)
                current.append(build(Decision(summary, True, "probabilistic", 20.0, [f])))
                rows += f.span_count
                in_current += f.span_count
                if in_current >= batch:
                    out.append(current)
                    current, in_current = [], 0
    return out + [current] if current else out


def measure(shape: str, batch: int, total: int, fmt: str = "native") -> tuple[float, float]:
    """CPU µs per span row (the process's: chDB's threads too), while inserting, and with
    the merges until they settle. ``fmt``: the spans insert as one ``Native`` block (the
    writer's way) or as its ``RowBinary`` rows."""
    inserts = batches(shape, batch, total)
    rows = sum(len(i.spans) for part in inserts for i in part)
    with tempfile.TemporaryDirectory() as tmp:
        store = ClickHouseStore(ClickHouseSettings(dsn=SecretStr(f"chdb://{Path(tmp) / 'db'}")))
        store.connect()
        if fmt == "rowbinary":
            store._native = None
        try:
            start = time.process_time()
            for part in inserts:
                store.insert(Rows([r for i in part for r in i.spans], [r for i in part for r in i.traces]))
            inserting = time.process_time() - start
            time.sleep(SETTLE_SECONDS)
            return inserting / rows * 1e6, (time.process_time() - start) / rows * 1e6
        finally:
            store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, nargs="+", default=[10_000, 20_000, 40_000], help="span rows an insert")
    parser.add_argument("--rows", type=int, default=240_000, help="span rows in all, per run")
    parser.add_argument("--repeat", type=int, default=3, help="runs per batch size, alternating")
    parser.add_argument("--shape", choices=SHAPES, default="llm")
    parser.add_argument("--format", nargs="+", choices=["native", "rowbinary"], default=["native"],
                        help="how span rows are inserted (several: compared, alternating)")  # fmt: skip
    args = parser.parse_args()
    cases = [(batch, fmt) for batch in args.batch for fmt in args.format]
    results: dict[tuple[int, str], list[tuple[float, float]]] = {c: [] for c in cases}
    for run in range(args.repeat):
        for batch, fmt in cases if run % 2 == 0 else cases[::-1]:
            results[batch, fmt].append(measure(args.shape, batch, args.rows, fmt))
    print(f"{args.shape}, {args.rows:,} span rows a run, medians of {args.repeat} (CPU µs per span row)")
    for (batch, fmt), runs in results.items():
        inserting, settled = (statistics.median(r[i] for r in runs) for i in (0, 1))
        print(f"  {batch:>7,} rows an insert, {fmt:9s}: {inserting:5.1f} inserting, {settled:5.1f} with the merges after"
              f"  (runs: {', '.join(f'{r[1]:.1f}' for r in runs)})")


if __name__ == "__main__":
    main()
