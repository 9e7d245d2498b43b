"""The spans insert's ``Native`` block (``processors._wire.NativeEncoder``,
native/src/block.rs), held to ClickHouse itself: for rows the writer builds, the block is
byte for byte what the engine writes for the same rows, and inserting it stores exactly
what inserting the ``RowBinary`` rows stores. Malformed rows are a ValueError, not a crash."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from collector import sql
from collector.bench.shapes import SHAPES, build_set
from collector.config import ClickHouseSettings
from collector.otlp import decode_protobuf, split_by_trace
from collector.rows import NativeRowBuilder
from collector import storage
from collector.storage import ClickHouseStore, Rows, insert_pieces
from processors._wire import NativeEncoder
from processors.sampling.sampler import Decision, TraceSummary
from tests.test_rows_contract import decisions

SPAN_ORDER = f"SELECT * FROM {sql.SPANS_TABLE} ORDER BY TraceId, SpanId, Timestamp"


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Any:
    dsn = SecretStr(f"chdb://{tmp_path_factory.mktemp('native') / 'db'}")
    s = ClickHouseStore(ClickHouseSettings(dsn=dsn, ttl_days=0))
    s.connect()
    assert s._native is not None, "the spans table's columns should all have a Native encoding"
    yield s
    s.close()


def _span_rows(kept: list[Decision]) -> list[Any]:
    build = NativeRowBuilder()
    return [row for d in kept for row in build(d, 7).spans]


def _shape_rows() -> list[Any]:
    kept = []
    for shape in SHAPES:
        for f in split_by_trace(decode_protobuf(build_set(shape)[0].fresh())).fragments[:30]:
            summary = TraceSummary(f.trace_id, f.span_count, f.start_ns, f.end_ns, f.has_error, f.root)
            kept.append(Decision(summary, True, "errors", 1.0, [f]))
    return _span_rows(kept)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])  # fmt: skip
@given(st.lists(decisions(), min_size=1, max_size=4))
def test_the_block_is_what_clickhouse_writes_for_the_same_rows(store: Any, kept: list[Decision]) -> None:
    """Every value kind, events, links, empty maps and arrays: the engine reads the rows
    as ``RowBinary`` into a table of the block's declared types and writes them back as
    ``Native``; that must be the encoder's block, byte for byte."""
    rows = _span_rows(kept)
    data = b"".join(r[0] for r in rows)
    declared = store._native.declared()
    client = store._client
    client.command("DROP TABLE IF EXISTS native_check")
    client.command("CREATE TABLE native_check (" + ", ".join(f"`{n}` {t}" for n, t in declared) + ") ENGINE = Memory")
    client.raw_insert("native_check", [n for n, _ in declared], data, fmt="RowBinary")
    assert store._native.encode([r[0] for r in rows]) == client.raw_query("SELECT * FROM native_check", fmt="Native")


@pytest.mark.parametrize("piece_bytes", [storage.INSERT_CHUNK_BYTES, 4096])
def test_inserting_the_block_stores_what_the_rows_store(
        store: Any, piece_bytes: int, monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The bench's shapes, inserted once as the ``RowBinary`` rows and once as the block
    (through ``ClickHouseStore.insert``, its token and settings): the same table contents,
    in one part, also when the insert is sent in many pieces; and the same rows sent again
    (the writer's retry after a lost answer) are not stored twice."""
    monkeypatch.setattr(storage, "INSERT_CHUNK_BYTES", piece_bytes)
    rows = _shape_rows()
    assert len(rows) > 100
    encoder, stored = store._native, []
    parts = f"SELECT count() FROM system.parts WHERE active AND table = '{sql.SPANS_TABLE}' AND database = currentDatabase()"
    try:
        for native in (None, encoder):
            store._client.command(f"TRUNCATE TABLE {sql.SPANS_TABLE}")
            store._native = native
            store.insert(Rows(list(rows), []))
            assert store._client.command(parts) == 1
            stored.append(store._client.query(SPAN_ORDER).result_rows)
            store.insert(Rows(list(rows), []))  # again: the same pieces, the same token
            assert store._client.command(f"SELECT count() FROM {sql.SPANS_TABLE}") == len(rows)
    finally:
        store._native = encoder
    assert len(stored[0]) == len(rows)
    assert stored[1] == stored[0]


def test_an_insert_is_encoded_in_pieces_each_dropped_once_sent(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pieces of about INSERT_CHUNK_BYTES, in order, all encoded before the first is sent
    (an encoder's error comes before the upload starts), none kept once handed over."""
    monkeypatch.setattr(storage, "INSERT_CHUNK_BYTES", 10)
    parts = [bytes([i]) * n for i, n in enumerate([4, 4, 4, 30, 1, 1])]
    encoded: list[int] = []

    def encode(run: list[bytes]) -> bytes:
        encoded.append(len(run))
        return b"".join(run)

    pieces = insert_pieces(parts, encode)
    assert encoded == [3, 1, 2]  # 12 bytes, then the 30-byte part alone, then the rest
    assert b"".join(pieces) == b"".join(parts)
    assert list(insert_pieces([], encode)) == []

    class Piece:
        """Counts the pieces still held by anyone."""
        alive = 0

        def __init__(self, run: list[bytes]) -> None:
            self.data = b"".join(run)
            Piece.alive += 1

        def __del__(self) -> None:
            Piece.alive -= 1

    held = insert_pieces(parts, Piece)  # type: ignore[arg-type]
    sent = []
    for left in (2, 1, 0):
        sent.append(next(held).data)  # type: ignore[attr-defined]
        assert Piece.alive == left  # the one just handed over is gone once the client is done with it
    assert b"".join(sent) == b"".join(parts)

    def refuse(run: list[bytes]) -> bytes:
        raise ValueError("row 0: end inside a value")

    with pytest.raises(ValueError, match="end inside"):
        insert_pieces(parts, refuse)  # raised on the call, not when the client reads


class _Unreadable:
    """An encoder whose block no database reads, as an older server may refuse ours."""

    def encode(self, rows: list[bytes]) -> bytes:
        return b"\x01" + rows[0][:40]


def test_rows_a_database_refuses_as_a_block_go_as_rowbinary_from_then_on(
        store: Any, caplog: pytest.LogCaptureFixture) -> None:  # fmt: skip
    rows, encoder = _shape_rows()[:50], store._native
    store._client.command(f"TRUNCATE TABLE {sql.SPANS_TABLE}")
    try:
        store._native = _Unreadable()
        store.insert(Rows(list(rows), []))
        assert store._native is None
        assert "took them as RowBinary" in caplog.text
        assert len(store._client.query(SPAN_ORDER).result_rows) == len(rows)
        store.insert(Rows(list(rows), []))  # again, RowBinary: the same token, stored once
        assert store._client.command(f"SELECT count() FROM {sql.SPANS_TABLE}") == len(rows)
    finally:
        store._native = encoder


def test_malformed_rows_are_a_value_error() -> None:
    encoder = NativeEncoder([("s", "String"), ("a", "Array(Map(LowCardinality(String), String))"), ("n", "UInt32")])
    row = b"\x02ab" + b"\x01\x01\x01k\x01v" + b"\x07\x00\x00\x00"
    counts = b"".join(n.to_bytes(8, "little") for n in (1, 2, 3))  # running totals, one per row
    assert encoder.encode([row] * 3) == (
        b"\x03\x03"  # columns, rows; then each column: name, type, every row's value
        + b"\x01s\x06String" + b"\x02ab" * 3
        + b"\x01a\x1aArray(Map(String, String))" + counts + counts + b"\x01k" * 3 + b"\x01v" * 3
        + b"\x01n\x06UInt32" + b"\x07\x00\x00\x00" * 3
    )
    for rows, why in [
        ([row[:-1]], "end inside a value"),
        ([row, row * 2], "bytes left after the values of row 1"),
        ([row, b""], "end inside a length"),
        ([b"\x02a"], "end inside a value"),
        ([b"\xff" * 11], "more than 64 bits"),
        ([b"\x00" + b"\xff\xff\xff\xff\x0f"], "end inside"),  # an array of 2**32 - 1 maps, and no bytes for them
    ]:
        with pytest.raises(ValueError, match=why):
            encoder.encode(rows)


@pytest.mark.parametrize("kind", ["Nullable(String)", "Tuple(String, UInt8)", "Decimal(10, 2)", "Map(String)", "FixedString(4)"])
def test_a_type_without_a_native_encoding_is_refused_up_front(kind: str) -> None:
    with pytest.raises(ValueError):
        NativeEncoder([("x", kind)])
