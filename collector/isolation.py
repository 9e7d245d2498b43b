"""Inserting a batch so that what ClickHouse refuses costs only itself (the writer's
isolation, see :mod:`collector.writer`), and the two things a batch may need besides: the
lookup of spans a replayed trace has stored already, and the dead-letter table.

Every function here runs on the storage thread, with the store it is given.
"""

from __future__ import annotations

import logging

from clickhouse_connect.driver.exceptions import OperationalError

from collector.rows import Rejected, TraceRows, raw_span
from collector.storage import ClickHouseStore, Rows

log = logging.getLogger("tailsift.storage")


def drop_stored(store: ClickHouseStore, items: list[TraceRows]) -> int:
    """Remove the span rows of replayed traces that are stored already; their summary
    rows stay (a summary is what was missing)."""
    if not items:
        return 0
    try:
        stored = store.stored_spans(sorted({i.decision.summary.trace_id.hex() for i in items}),
                                    min(i.decision.summary.start_ns for i in items),
                                    max(i.decision.summary.end_ns for i in items))  # fmt: skip
    except OperationalError:
        raise
    except Exception as exc:  # noqa: BLE001 - a duplicate row is better than a stalled writer
        log.warning("replay: could not look up stored spans (%s); inserting them again", exc)
        return 0
    if not stored:
        return 0
    try:  # their lookup rows may be what a crash left out (see sql.LOOKUP_REFILL)
        store.refill_lookup(sorted({trace for trace, _ in stored}))
    except OperationalError:
        raise
    except Exception as exc:  # noqa: BLE001 - the spans are stored; only Grafana's by-id lookup may miss them
        log.warning("replay: could not refill the trace-id lookup (%s)", exc)
    dropped = 0
    for item in items:
        before = len(item.spans)
        item.spans[:] = [row for row in item.spans if (row[1], row[2]) not in stored]
        item.keys = None  # made again for the spans left
        dropped += before - len(item.spans)
    if dropped:
        log.info("replay: %d span rows were stored before the restart; not inserted again", dropped)
    return dropped


def insert_isolated(store: ClickHouseStore, items: list[TraceRows], rejected: list[Rejected]) -> None:
    """Insert the items; if ClickHouse refuses them for their data, insert halves, down to
    one trace and then one span row, and add what it refuses even alone to ``rejected``.
    An unreachable database (OperationalError) is raised: the writer keeps the batch."""
    if not items:
        return
    try:
        # New lists each time: ClickHouseStore.insert clears what it is given.
        keys = None if any(i.keys is None for i in items) else "".join([i.keys for i in items if i.keys])
        store.insert(Rows([r for i in items for r in i.spans], [r for i in items for r in i.traces], keys))
        return
    except OperationalError:
        raise
    except Exception as exc:  # noqa: BLE001 - a refusal of the data: find the rows that cause it
        if len(items) > 1:
            middle = len(items) // 2
            insert_isolated(store, items[:middle], rejected)
            insert_isolated(store, items[middle:], rejected)
            return
        item = items[0]
        if len(item.spans) > 1:
            insert_isolated(store, list(item.halves()), rejected)
            return
        reason = str(exc).split("\n")[0][:2000]
        trace_id = item.decision.summary.trace_id.hex()
        for span in item.spans:
            rejected.append(Rejected(trace_id, span[2], reason, raw_span(item.decision, span[2])))
        if item.traces and not item.spans:
            log.error("trace summary of %s refused: %s", trace_id, reason)
        elif item.traces:
            try:
                store.insert(Rows([], list(item.traces)))
            except OperationalError:
                raise
            except Exception:  # noqa: BLE001 - spans are in the dead-letter table, with their reason
                log.exception("trace summary of %s refused", trace_id)


def dead_letter(store: ClickHouseStore, rejected: list[Rejected]) -> None:
    """Store refused rows in ``tailsift_rejected``; if even that fails for their payloads,
    store them without (the reason says why), so the count and the reason are never lost."""
    log.error("%d span rows refused by ClickHouse, stored in tailsift_rejected: %s",
              len(rejected), rejected[0].reason)  # fmt: skip
    try:
        store.insert_rejected(rejected)
    except OperationalError:
        raise
    except Exception as exc:  # noqa: BLE001 - keep the reason even if the payload cannot be kept
        for r in rejected:
            r.reason, r.payload = f"{r.reason} (payload not kept: {exc})"[:2000], b""
        store.insert_rejected(rejected)
