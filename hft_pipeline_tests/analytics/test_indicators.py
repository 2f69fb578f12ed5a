"""Indicators of a window equal a whole-history computation: warm-up and cumulative anchoring."""

from __future__ import annotations

import numpy as np
import pandas as pd

from hft_pipeline.analytics.candles import DAY_NS, HOUR_NS, rebuild_candles
from hft_pipeline.analytics.indicators import (
    INDICATOR_LOOKBACK_BARS,
    anchor_cumulative,
    indicators_window,
    lookback_start,
    rebuild_indicators,
)
from hft_pipeline.market.frames import to_wide
from hft_pipeline.market.indicator_cache import IndicatorCache
from hft_pipeline.market.indicators import DEFAULT_INDICATORS, compute_wide, indicator_columns
from hft_pipeline.store import TickStore
from hft_pipeline_tests.analytics.conftest import (
    SYMBOLS,
    T0,
    StoreCase,
    simulator_ticks,
    write_ticks,
)

MINUTE_NS = 60 * 1_000_000_000


def test_lookback_starts_bars_back_or_at_the_day_start_whichever_is_earlier() -> None:
    day = 20_000 * DAY_NS
    # 01:00: 720 bars back is the day before, earlier than the day start.
    assert lookback_start("1m", day + HOUR_NS, 720) == day + HOUR_NS - 720 * MINUTE_NS
    # 20:00: 720 bars back is 08:00, so the day start (session VWAP) is earlier.
    assert lookback_start("1m", day + 20 * HOUR_NS, 720) == day
    assert lookback_start("1h", day, 2) == day - 2 * HOUR_NS


def test_anchoring_shifts_each_symbol_by_its_stored_history() -> None:
    # Recomputed from a cut look-back: OBV restarted at the window's warm-up.
    values = pd.DataFrame(
        {"symbol": ["A", "A", "A", "B", "B"], "ts": [1, 2, 3, 2, 3],
         "obv": [0.0, 5.0, 7.0, 1.0, 4.0], "rsi": [50.0, 51.0, 52.0, 40.0, 41.0]}
    )  # fmt: skip
    # Stored before the window (start 3): A's bar 2 carries 100 of older history; B's last
    # stored bar is not one the recomputation has, so B cannot be anchored.
    before = pd.DataFrame({"symbol": ["A", "A", "B"], "ts": [1, 2, 1], "obv": [95.0, 105.0, 9.0]})
    assert anchor_cumulative(values, before, ["obv", "missing"], start_ns=3) == 1
    assert values["obv"].tolist() == [100.0, 105.0, 107.0, 1.0, 4.0]
    assert values["rsi"].tolist() == [50.0, 51.0, 52.0, 40.0, 41.0]  # other columns untouched
    assert anchor_cumulative(values, before.iloc[:0], ["obv"], start_ns=3) == 0


def test_an_empty_window_computes_nothing(sqlite_store: TickStore) -> None:
    values, stats = indicators_window(sqlite_store, "1m", T0, T0 + HOUR_NS, cache=IndicatorCache())
    assert values.empty and list(values.columns) == ["symbol", "ts"]
    assert stats == {"candles_read": 0, "warmup_bars": 0}
    report = rebuild_indicators(sqlite_store, T0, T0 + HOUR_NS, cache=IndicatorCache())
    assert report.timeframes == {
        "1m": {"candles_read": 0, "warmup_bars": 0, "bars": 0, "values_written": 0, "symbols": 0}
    }


def test_window_values_equal_a_whole_history_computation(store_case: StoreCase) -> None:
    store = store_case.store
    hours = 14  # 18:00 to 08:00 the next day
    write_ticks(store, simulator_ticks(hours))
    rebuild_candles(store, T0, T0 + hours * HOUR_NS, grace_s=60)
    cache = IndicatorCache()

    # 06:00 reads back to the first candle; 07:00's look-back (720 bars, or the day start)
    # starts at 19:00, so its warm-up is cut and OBV continues from the stored 06:00 values.
    lo, hi = T0 + (hours - 1) * HOUR_NS, T0 + hours * HOUR_NS
    rebuild_indicators(store, lo - HOUR_NS, lo, cache=cache)
    report = rebuild_indicators(store, lo, hi, cache=cache)
    counts = report.timeframes["1m"]
    assert counts["warmup_bars"] == INDICATOR_LOOKBACK_BARS
    assert counts["obv_anchored_symbols"] == len(SYMBOLS)
    assert counts["symbols"] == len(SYMBOLS)

    all_1m = store.stored_candles("1m")
    assert len(all_1m) > counts["candles_read"]  # the history really was cut
    long = all_1m.assign(ts=pd.to_datetime(all_1m["ts"], unit="ns", utc=True))
    full = compute_wide(to_wide(long))
    stored = store.stored_indicators("1m", lo, hi)
    assert len(stored) == counts["bars"] == int(((all_1m["ts"] >= lo) & (all_1m["ts"] < hi)).sum())
    assert counts["values_written"] == counts["bars"] * (len(stored.columns) - 2)
    assert sorted(stored.columns[2:]) == sorted(full)
    for name, wide in full.items():
        ref = wide.stack(future_stack=True).rename("ref").reset_index()
        ref["ts"] = ref["ts"].astype("int64")
        merged = stored[["symbol", "ts", name]].merge(ref, on=["symbol", "ts"])
        assert len(merged) == len(stored)
        np.testing.assert_allclose(
            merged[name].to_numpy(), merged["ref"].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=name
        )
        assert merged[name].notna().all(), name  # warmed up: no NaN at the window start

    # The same window again is served by the cache, and writes the same values.
    again = rebuild_indicators(store, lo, hi, cache=cache)
    assert again.cache_hits == 1 and report.cache_hits == 0
    pd.testing.assert_frame_equal(store.stored_indicators("1m", lo, hi), stored)


def test_the_default_indicators_are_what_is_stored(sqlite_store: TickStore) -> None:
    write_ticks(sqlite_store, simulator_ticks(1))
    rebuild_candles(sqlite_store, T0, T0 + HOUR_NS, grace_s=60)
    values, _ = indicators_window(sqlite_store, "1m", T0, T0 + HOUR_NS, cache=IndicatorCache())
    expected = sorted(c for n in DEFAULT_INDICATORS for c in indicator_columns(n))
    assert sorted(values.columns[2:]) == expected
