"""Ring buffers: ordered by (ts, seq) under any arrival order, wrap-around, memory budget, reads."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hft_pipeline.ingest.buffers import BYTES_PER_TICK, SymbolStats, TickBuffers, UnknownSymbolError
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline_tests.market.test_candles import tick_frames

NS = 1_000_000_000
T0 = 1_780_000_000 * NS


def feed(buffers: TickBuffers, ticks: pd.DataFrame, cuts: list[int]) -> None:
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(ticks)), len(ticks)]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b > a:
            buffers.append(TickBatch.from_frame(ticks.iloc[a:b]))


def held(ticks: pd.DataFrame, symbol: str, capacity: int) -> pd.DataFrame:
    """Reference: the newest `capacity` ticks of `symbol` by (ts, seq), oldest first."""
    mine = ticks[ticks["symbol"] == symbol].sort_values(["ts", "seq"])
    return mine.tail(capacity).reset_index(drop=True)


def assert_rows(got: dict[str, np.ndarray], expected: pd.DataFrame) -> None:
    for col in ("ts", "seq", "price", "volume"):
        np.testing.assert_array_equal(got[col], expected[col].to_numpy(), err_msg=col)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ticks=tick_frames(),
    cuts=st.lists(st.integers(0, 80), max_size=15),
    capacity=st.integers(1, 40),
    window=st.tuples(st.integers(0, 80), st.integers(0, 80)),
    limit=st.one_of(st.none(), st.integers(0, 10)),
    descending=st.booleans(),
)
def test_buffers_hold_newest_ticks_in_order_and_serve_ranges_like_pandas(
    ticks: pd.DataFrame,
    cuts: list[int],
    capacity: int,
    window: tuple[int, int],
    limit: int | None,
    descending: bool,
) -> None:
    buffers = TickBuffers(capacity_per_symbol=capacity)
    feed(buffers, ticks, cuts)
    for symbol in ticks["symbol"].unique():
        expected = held(ticks, symbol, capacity)
        assert_rows(buffers.range(symbol), expected)
        assert buffers.count(symbol) == len(expected)
        assert buffers.oldest_ts(symbol) == expected["ts"].iloc[0]
        assert buffers.stats(symbol) == SymbolStats(
            len(expected),
            int(expected["ts"].iloc[0]),
            int(expected["ts"].iloc[-1]),
            float(expected["price"].iloc[-1]),
        )
        # Range bounds taken from the data itself hit equal timestamps and edges.
        all_ts = np.sort(ticks["ts"].to_numpy())
        start, end = (all_ts[min(i, len(all_ts) - 1)] for i in window)
        got = buffers.range(symbol, start, end, limit=limit, descending=descending)
        ref = expected[(expected["ts"] >= start) & (expected["ts"] < end)]
        if descending:
            ref = ref.iloc[::-1]
        assert_rows(got, ref if limit is None else ref.head(limit))
        n = limit if limit is not None else 3
        assert_rows(buffers.last(symbol, n), expected.iloc[::-1].head(n))
        assert_rows(
            buffers.last(symbol, n, descending=False), expected.tail(n) if n else expected.head(0)
        )


def ordered_batch(symbol: str, start: int, n: int) -> TickBatch:
    k = np.arange(start, start + n)
    return TickBatch.from_columns(symbol, T0 + k * 1000, k, k * 0.5, np.ones(n))


def test_wrap_around_keeps_the_newest_capacity_ticks() -> None:
    buffers = TickBuffers(capacity_per_symbol=1000)
    start = 0
    for n in (700, 700, 999, 1, 2500, 30):  # grows, fills, wraps several times, oversized batch
        buffers.append(ordered_batch("R_100", start, n))
        start += n
    got = buffers.range("R_100")
    np.testing.assert_array_equal(got["seq"], np.arange(start - 1000, start))
    np.testing.assert_array_equal(got["ts"], T0 + np.arange(start - 1000, start) * 1000)
    assert buffers.nbytes == 1000 * BYTES_PER_TICK  # full: exactly 32 bytes per held tick
    # Out-of-order ticks merge into place inside a wrapped buffer; the oldest tick falls out.
    late = TickBatch.from_columns("R_100", [T0 + (start - 500) * 1000 + 1], [10**9], [1.0], [2.0])
    buffers.append(late)
    got = buffers.range("R_100")
    assert len(got["ts"]) == 1000 and got["seq"][0] == start - 999
    assert np.all(np.diff(got["ts"]) >= 0)
    assert got["seq"][500] == 10**9 and got["volume"][500] == 2.0  # right after seq start-500
    # A tick older than everything held in a full buffer is itself the oldest: it falls out.
    buffers.append(TickBatch.from_columns("R_100", [T0 - 1], [-1], [1.0], [1.0]))
    assert buffers.oldest_ts("R_100") == T0 + (start - 999) * 1000
    assert buffers.count("R_100") == 1000


def test_storage_grows_geometrically_before_wrapping() -> None:
    buffers = TickBuffers(capacity_per_symbol=100_000)
    buffers.append(ordered_batch("PETR4", 0, 10))
    small = buffers.nbytes
    assert small <= 1024 * BYTES_PER_TICK
    buffers.append(ordered_batch("PETR4", 10, 5000))
    assert 5010 * BYTES_PER_TICK <= buffers.nbytes <= 2 * 5010 * BYTES_PER_TICK
    assert buffers.count("PETR4") == 5010


def test_memory_budget_splits_capacity_between_symbols() -> None:
    budget = 1000 * BYTES_PER_TICK
    buffers = TickBuffers(capacity_per_symbol=10_000, max_bytes=budget)
    buffers.append(ordered_batch("A", 0, 5000))
    assert buffers.capacity == 1000 and buffers.count("A") == 1000
    frame = pd.concat(
        [ordered_batch(s, 0, 600).to_frame() for s in ("B", "C", "D")], ignore_index=True
    )
    buffers.append(TickBatch.from_frame(frame))
    assert buffers.capacity == 250
    assert buffers.symbols() == ["A", "B", "C", "D"]
    for symbol in buffers.symbols():
        assert buffers.count(symbol) == 250
    # A shrank and kept its newest ticks.
    np.testing.assert_array_equal(buffers.range("A")["seq"], np.arange(4750, 5000))
    assert buffers.nbytes <= budget


def test_bytes_per_tick_is_32() -> None:
    buffers = TickBuffers(capacity_per_symbol=4096)
    buffers.append(ordered_batch("R_50", 0, 4096))
    assert buffers.nbytes / buffers.count("R_50") == 32


def test_multi_symbol_batch_out_of_order_within_and_across_batches() -> None:
    ticks = pd.DataFrame(
        {
            "symbol": ["A", "B", "A", "A", "B", "A"],
            "ts": [5, 1, 3, 3, 2, 9],
            "seq": [1, 1, 3, 2, 2, 4],
            "price": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "volume": [1.0] * 6,
        }
    )
    buffers = TickBuffers()
    buffers.append(TickBatch.from_frame(ticks.iloc[:3]))
    buffers.append(TickBatch.from_frame(ticks.iloc[3:]))
    assert buffers.range("A")["seq"].tolist() == [2, 3, 1, 4]
    assert buffers.range("A")["price"].tolist() == [4.0, 3.0, 1.0, 6.0]
    assert buffers.range("B")["ts"].tolist() == [1, 2]
    assert buffers.stats("A").last_price == 6.0
    assert buffers.all_stats()["B"] == SymbolStats(2, 1, 2, 5.0)


def test_unknown_symbol() -> None:
    buffers = TickBuffers()
    assert buffers.count("X") == 0 and buffers.oldest_ts("X") is None
    assert buffers.stats("X") == SymbolStats(0, None, None, None)
    assert "X" not in buffers
    with pytest.raises(UnknownSymbolError, match="X"):
        buffers.range("X")
    with pytest.raises(ValueError, match="capacity"):
        TickBuffers(capacity_per_symbol=0)
