"""Live candles: every candle (closed and forming) equals the pandas reference of the same ticks."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hft_pipeline.ingest import live_candles
from hft_pipeline.ingest.live_candles import LiveCandles, UpdateStats
from hft_pipeline.market.candles import candles_frame, resample_reference
from hft_pipeline.market.ticks import TickBatch, concat_batches
from hft_pipeline.market.timeframes import NS_PER_SECOND, TIMEFRAMES, UnknownTimeframeError
from hft_pipeline_tests.market.test_candles import tick_frames

NS = NS_PER_SECOND
T0 = 1_780_000_000 * NS  # 2026


def feed(live: LiveCandles, ticks: pd.DataFrame, cuts: list[int]) -> list[UpdateStats]:
    """Feed `ticks` in arrival order, cut into batches at `cuts`."""
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(ticks)), len(ticks)]
    return [
        live.update(TickBatch.from_frame(ticks.iloc[a:b]))
        for a, b in zip(bounds[:-1], bounds[1:], strict=True)
        if b > a
    ]


def reference(ticks: pd.DataFrame, symbol: str, timeframe: str) -> pd.DataFrame:
    ref = resample_reference(ticks, timeframe)
    return ref[ref["symbol"] == symbol].drop(columns="symbol").reset_index(drop=True)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ticks=tick_frames(), cuts=st.lists(st.integers(0, 80), max_size=12))
def test_live_candles_equal_pandas_resample_for_all_timeframes(
    ticks: pd.DataFrame, cuts: list[int]
) -> None:
    live = LiveCandles()
    stats = feed(live, ticks, cuts)
    assert sum(s.ticks for s in stats) == len(ticks)
    assert sum(s.late_dropped_from_memory for s in stats) == 0  # 2 hours fit in history
    for symbol in ticks["symbol"].unique():
        forming = live.forming(symbol).set_index("timeframe")
        for timeframe in TIMEFRAMES:
            got = live.candles(symbol, timeframe, descending=False)
            expected = reference(ticks, symbol, timeframe)
            pd.testing.assert_frame_equal(got.drop(columns="closed"), expected, check_exact=True)
            # Only the newest bucket is forming; it is what forming() reports.
            assert got["closed"].tolist() == [True] * (len(got) - 1) + [False]
            row = forming.loc[timeframe]
            assert row["ts"] == got["ts"].iloc[-1] and row["volume"] == got["volume"].iloc[-1]
            assert row["closed"] == np.False_


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ticks=tick_frames(),
    cuts_a=st.lists(st.integers(0, 80), max_size=12),
    cuts_b=st.lists(st.integers(0, 80), max_size=12),
)
def test_any_batching_gives_identical_candles(
    ticks: pd.DataFrame, cuts_a: list[int], cuts_b: list[int]
) -> None:
    a, b = LiveCandles(), LiveCandles()
    stats_a, stats_b = feed(a, ticks, cuts_a), feed(b, ticks, cuts_b)
    assert sum(s.ticks for s in stats_a) == sum(s.ticks for s in stats_b) == len(ticks)
    for symbol in ticks["symbol"].unique():
        for timeframe in TIMEFRAMES:
            pd.testing.assert_frame_equal(
                a.candles(symbol, timeframe), b.candles(symbol, timeframe), check_exact=True
            )


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ticks=tick_frames(),
    cuts=st.lists(st.integers(0, 80), max_size=12),
    history=st.integers(1, 30),
)
def test_buckets_from_complete_from_on_equal_reference_with_short_history(
    ticks: pd.DataFrame, cuts: list[int], history: int
) -> None:
    """What memory claims complete is exact; older buckets are left to the store."""
    live = LiveCandles(history=history)
    stats = feed(live, ticks, cuts)
    dropped = sum(s.late_dropped_from_memory for s in stats)
    assert dropped == live.late_dropped_total
    for symbol in ticks["symbol"].unique():
        for timeframe, tf in TIMEFRAMES.items():
            start = live.complete_from(symbol, timeframe)
            got = live.candles(symbol, timeframe, descending=False)
            assert len(got) <= history + 1
            newest = got["ts"].iloc[-1]
            assert start is not None and start >= newest - history * tf
            expected = reference(ticks, symbol, timeframe)
            expected = expected[expected["ts"] >= start].reset_index(drop=True)
            served = got[got["ts"] >= start].drop(columns="closed").reset_index(drop=True)
            pd.testing.assert_frame_equal(served, expected, check_exact=True)
            first_ts = ticks.loc[ticks["symbol"] == symbol, "ts"].iloc[0]
            assert start > (first_ts // tf) * tf


def batch(
    symbol: str, ts_s: list[float], seq: list[int], price: list[float], volume=None
) -> TickBatch:
    volume = volume if volume is not None else [1.0] * len(ts_s)
    return TickBatch.from_columns(symbol, [T0 + int(t * NS) for t in ts_s], seq, price, volume)


def test_late_and_dropped_ticks_are_counted_and_applied_exactly() -> None:
    live = LiveCandles(timeframes={"1s": NS, "5s": 5 * NS}, history=2)
    s1 = live.update(
        batch("R_100", [10.2, 10.5, 11.1, 12.0, 13.4], [1, 2, 3, 4, 5], [5, 6, 7, 8, 9])
    )
    # 1s buckets 10, 11, 12 closed within the batch (10 aged out of memory: not a drop, it was
    # not late); 5s bucket 10 still forming.
    assert s1 == UpdateStats(ticks=5, late=0, late_dropped_from_memory=0, closed=3)
    # Window of 1s is now buckets 11..13: bucket 10 is gone, 11 takes a late tick that opens it.
    s2 = live.update(batch("R_100", [10.9, 11.0], [6, 7], [1.5, 2.5], [0.25, 0.5]))
    assert s2 == UpdateStats(ticks=2, late=2, late_dropped_from_memory=1, closed=0)
    c = live.candles("R_100", "1s", descending=False)
    assert c["ts"].tolist() == [T0 + 11 * NS, T0 + 12 * NS, T0 + 13 * NS]
    assert c.iloc[0][["open", "high", "low", "close", "volume", "ticks"]].tolist() == [
        2.5,
        7,
        2.5,
        7,
        1.5,
        2,
    ]
    assert c["closed"].tolist() == [True, True, False]
    # The 5s bucket [10, 15) kept both late ticks: 7 ticks, open is the tick at 10.2.
    f5 = live.candles("R_100", "5s").iloc[0]
    assert (f5["ts"], f5["open"], f5["low"], f5["close"], f5["ticks"]) == (
        T0 + 10 * NS,
        5,
        1.5,
        9,
        7,
    )
    assert live.complete_from("R_100", "1s") == T0 + 11 * NS
    assert live.complete_from("R_100", "5s") == T0 + 15 * NS  # bucket of the first tick excluded
    s3 = live.update(batch("R_100", [15.0], [8], [10]))
    assert s3.closed == 2  # forming 1s bucket 13 and 5s bucket 10 closed
    assert live.late_total == 2 and live.late_dropped_total == 1 and live.closed_total == 5


def test_equal_timestamps_are_ordered_by_seq() -> None:
    live = LiveCandles(timeframes={"1s": NS})
    live.update(batch("PETR4", [1.0, 1.0, 1.0], [30, 10, 20], [3.0, 1.0, 2.0]))
    c = live.candles("PETR4", "1s").iloc[0]
    assert (c["open"], c["close"]) == (1.0, 3.0)
    live.update(batch("PETR4", [1.0], [5], [0.5]))  # later arrival, smaller seq: the new open
    assert live.candles("PETR4", "1s").iloc[0]["open"] == 0.5


def test_reads_filter_limit_and_order() -> None:
    live = LiveCandles()
    live.update(
        batch(
            "frxEURUSD",
            [float(t) for t in range(10)],
            list(range(10)),
            [float(t) for t in range(10)],
        )
    )
    c = live.candles("frxEURUSD", "1s", start_ns=T0 + 3 * NS, end_ns=T0 + 8 * NS, limit=2)
    assert c["ts"].tolist() == [T0 + 7 * NS, T0 + 6 * NS]
    c = live.candles("frxEURUSD", "1s", start_ns=T0 + 3 * NS, limit=2, descending=False)
    assert c["ts"].tolist() == [T0 + 3 * NS, T0 + 4 * NS]
    assert live.candles("frxEURUSD", "1s", limit=0).empty
    assert live.candles("unknown", "1m").empty
    assert live.complete_from("unknown", "1m") is None
    assert live.forming("unknown").empty
    assert list(live.candles("frxEURUSD", "1h").columns) == [
        "ts", "open", "high", "low", "close", "volume", "ticks", "closed"
    ]  # fmt: skip
    with pytest.raises(UnknownTimeframeError, match="2m"):
        live.candles("frxEURUSD", "2m")
    assert live.symbols() == ["frxEURUSD"]


def test_many_symbols_grow_storage() -> None:
    live = LiveCandles(history=5)
    names = [f"S{i}" for i in range(40)]
    frame = pd.DataFrame(
        {
            "symbol": np.repeat(names, 3),
            "ts": T0 + np.tile([0, NS, 2 * NS], 40),
            "seq": np.arange(120),
            "price": np.arange(120, dtype=float) + 1,
            "volume": np.ones(120),
        }
    )
    live.update(TickBatch.from_frame(frame))
    assert live.symbols() == sorted(names)
    for i, name in enumerate(names):
        assert live.candles(name, "1m")["open"].tolist() == [3.0 * i + 1]
        assert live.candles(name, "1s")["ticks"].tolist() == [1, 1, 1]


def test_timeframes_must_tile_the_finest() -> None:
    with pytest.raises(ValueError, match="multiple"):
        LiveCandles(timeframes={"2s": 2 * NS, "3s": 3 * NS})
    with pytest.raises(ValueError, match="history"):
        LiveCandles(history=0)


def expected_stats(
    ticks: pd.DataFrame, cuts: list[int], history: int, timeframes: dict[str, int]
) -> list[UpdateStats]:
    """UpdateStats by their definition, batch by batch, from pandas.

    late: the tick's finest bucket is older than its symbol's forming bucket before the batch;
    dropped: late and older than the finest window after the batch (forming bucket - history);
    closed: per (symbol, timeframe), the pre-batch forming bucket if a newer one formed, plus every
    distinct bucket of the batch between the pre- and post-batch forming buckets.
    """
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(ticks)), len(ticks)]
    tfs = sorted(timeframes.values())
    newest: dict[tuple[str, int], int] = {}  # (symbol, tf) -> forming bucket start
    out = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        if b <= a:
            continue
        part = ticks.iloc[a:b]
        late = dropped = closed = 0
        before = dict(newest)
        for symbol, rows in part.groupby("symbol"):
            for tf in tfs:
                buckets = rows["ts"].to_numpy() // tf * tf
                old = before.get((symbol, tf))
                new = int(buckets.max()) if old is None else max(old, int(buckets.max()))
                newest[(symbol, tf)] = new
                between = np.unique(buckets[(buckets < new) & (old is None or buckets > old)])
                closed += len(between) + (old is not None and new > old)
                if tf == tfs[0] and old is not None:
                    is_late = buckets < old
                    late += int(is_late.sum())
                    dropped += int((is_late & (buckets <= new - (history + 1) * tf)).sum())
        out.append(UpdateStats(b - a, late, dropped, closed))
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ticks=tick_frames(),
    cuts=st.lists(st.integers(0, 80), max_size=12),
    history=st.integers(1, 30),
)
def test_update_stats_follow_their_definition(
    ticks: pd.DataFrame, cuts: list[int], history: int
) -> None:
    """Counts are what the docstrings say, including disorder within a batch wider than memory."""
    live = LiveCandles(history=history)
    got = feed(live, ticks, cuts)
    assert got == expected_stats(ticks, cuts, history, TIMEFRAMES)
    assert live.late_total == sum(s.late for s in got)
    assert live.closed_total == sum(s.closed for s in got)


@pytest.mark.parametrize(
    "seconds",
    [
        [10.5, 13.0],  # in order: bucket 10 formed, then closed by 13
        [13.0, 10.5],  # 10 never reaches memory (older than the window), still closed once
        [10.5, 13.0, 10.7],  # 10 applied, aged out, then a tick skipped: counted once, not twice
        [13.0, 10.5, 10.7, 11.2],  # 10 skipped twice (once), 11 kept and born closed
    ],
)
def test_a_bucket_closed_within_a_batch_counts_once_whatever_the_tick_order(
    seconds: list[float],
) -> None:
    live = LiveCandles(timeframes={"1s": NS}, history=2)
    stats = live.update(batch("R_100", seconds, list(range(len(seconds))), [1.0] * len(seconds)))
    closed_buckets = {int(t) for t in seconds if int(t) < 13}
    assert stats == UpdateStats(len(seconds), 0, 0, len(closed_buckets))
    c = live.candles("R_100", "1s", descending=False)
    in_window = sorted(b for b in {int(t) for t in seconds} if b > 10)
    assert c["ts"].tolist() == [T0 + b * NS for b in in_window]
    assert c["ticks"].tolist() == [sum(int(t) == b for t in seconds) for b in in_window]


def test_many_ticks_per_bucket_over_150_symbols_equal_batch_candles() -> None:
    """Large and small batches of a disordered stream give the batch candles, exact volume included."""
    rng = np.random.default_rng(7)
    n = 30_000
    ts = T0 + np.cumsum(rng.exponential(0.2 * NS, n)).astype(np.int64)  # ~100 minutes
    late = rng.random(n) < 0.01
    ts[late] -= rng.integers(0, 120 * NS, int(late.sum()))
    frame = pd.DataFrame(
        {
            "symbol": np.asarray([f"SYM{i:03d}" for i in range(150)])[rng.integers(0, 150, n)],
            "ts": ts,
            "seq": np.arange(n, dtype=np.int64),
            "price": 100 + np.round(rng.standard_normal(n), 2),
            # Volumes whose float sums depend on order: only an exact sum matches.
            "volume": rng.choice([0.1, 0.2, 0.3, 1e-8, 1e8, 7.77], n),
        }
    )
    big, small = LiveCandles(), LiveCandles()
    feed(big, frame, list(range(10_000, n, 10_000)))
    feed(small, frame, list(range(50, n, 50)))
    for timeframe in TIMEFRAMES:
        expected = candles_frame(frame, timeframe)
        for live in (big, small):
            got = pd.concat(
                [
                    live.candles(s, timeframe, descending=False).assign(symbol=s)
                    for s in sorted(live.symbols())
                ],
                ignore_index=True,
            )
            got = got[["symbol", *expected.columns[1:]]]
            pd.testing.assert_frame_equal(got, expected, check_exact=True)


def test_compiled_kernel_is_loaded_from_the_disk_cache_in_a_fresh_process() -> None:
    """The JIT cost is paid once per machine and code version, not per process."""
    code = (
        "from hft_pipeline.ingest import live_candles as lc\n"
        "lc.LiveCandles()\n"
        "s = lc._apply_ticks.stats\n"
        "print(sum(s.cache_hits.values()), sum(s.cache_misses.values()))\n"
    )
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
        ).stdout.split()
        for _ in range(2)
    ]
    assert runs[1] == ["1", "0"]  # the second process compiled nothing
    assert live_candles._apply_ticks.stats.cache_path  # cached on disk, not just in memory


@pytest.mark.parametrize("order", [[0, 1, 2], [2, 1, 0], [1, 0, 2], [0, 2, 1]])
@pytest.mark.parametrize("split", [False, True])
def test_volume_is_the_correctly_rounded_exact_sum_for_any_order(
    order: list[int], split: bool
) -> None:
    """2**53 + 1 + 2**-60 rounds to 2**53 + 2; dropping any error term gives 2**53 (tie to even)."""
    volumes = [2.0**53, 1.0, 2.0**-60]
    assert math.fsum(volumes) == 2.0**53 + 2
    live = LiveCandles(timeframes={"1s": NS, "1m": 60 * NS})
    ticks = [batch("R_100", [1.0 + 0.1 * i], [i], [1.0], [volumes[i]]) for i in order]
    if not split:
        ticks = [concat_batches(ticks)]
    for b in ticks:
        live.update(b)
    for timeframe in ("1s", "1m"):
        assert live.candles("R_100", timeframe)["volume"].tolist() == [2.0**53 + 2]
