"""Indicators of a window of stored candles, warmed up on earlier candles, written back.

A window's values must equal a whole-history computation: recursive indicators read earlier bars
first (warm-up), and cumulative ones (OBV) continue from the value stored before the window.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hft_pipeline.analytics.candles import DAY_NS, wide_candles
from hft_pipeline.market.frames import Wide
from hft_pipeline.market.indicator_cache import IndicatorCache, fingerprint
from hft_pipeline.market.indicators import DEFAULT_INDICATORS, compute_wide, indicator_columns
from hft_pipeline.market.timeframes import TIMEFRAMES
from hft_pipeline.store import TickStore

#: Timeframes whose indicators are stored. 1m is what the backtests trade on; coarser
#: timeframes are cheap to add here but nothing reads them yet.
INDICATOR_TIMEFRAMES: tuple[str, ...] = ("1m",)
#: Earlier bars read before a window so recursive indicators (EMA, RSI, MACD, ATR, ADX) forget
#: where they started: measured, their values agree with a whole-history computation to the
#: last bit after ~600 bars of look-back (and to 1e-9 after 300); finite windows need 33.
INDICATOR_LOOKBACK_BARS = 720


def long_from_wide(results: dict[str, pd.DataFrame], wide: Wide) -> pd.DataFrame:
    """symbol, ts, one column per indicator output, for the bars each symbol has (by symbol, ts)."""
    close = wide["close"]
    present = ~np.isnan(close.to_numpy().T)  # symbol x ts
    sym_idx, ts_idx = np.nonzero(present)
    frame = pd.DataFrame(
        {
            "symbol": np.asarray(close.columns, dtype=object)[sym_idx],
            "ts": close.index.asi8[ts_idx],
        }
    )
    for name in sorted(results):
        frame[name] = results[name].to_numpy().T[present]
    return frame


def lookback_start(timeframe: str, start_ns: int, lookback_bars: int) -> int:
    """Where a window's warm-up starts: `lookback_bars` bars back, and at least the UTC day start
    (session VWAP resets there)."""
    return min(start_ns - lookback_bars * TIMEFRAMES[timeframe], (start_ns // DAY_NS) * DAY_NS)


def indicators_window(
    store: TickStore,
    timeframe: str,
    start_ns: int,
    end_ns: int,
    names: Sequence[str] = DEFAULT_INDICATORS,
    lookback_bars: int = INDICATOR_LOOKBACK_BARS,
    *,
    cache: IndicatorCache,
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Indicator values of the bars in [start_ns, end_ns), computed with warm-up from earlier bars,
    and counts (candles_read, warmup_bars, obv_anchored_symbols when anchoring happened).

    OBV, cumulative since the first bar ever, is anchored: shifted to continue from the OBV
    stored for the last bar before the window (see `anchor_cumulative`).
    """
    warmup_from = lookback_start(timeframe, start_ns, lookback_bars)
    stored = store.stored_candles(timeframe, warmup_from, end_ns)
    # Per-symbol bar counts would be noisy: count distinct bar times before the window.
    stats = {
        "candles_read": len(stored),
        "warmup_bars": int(stored["ts"][stored["ts"] < start_ns].nunique()),
    }
    if stored.empty or not (stored["ts"] >= start_ns).any():
        empty = pd.DataFrame({"symbol": pd.Series(dtype=object), "ts": pd.Series(dtype=np.int64)})
        return empty, stats
    wide = wide_candles(stored)
    key = cache.key(
        "indicators", {"names": list(names), "timeframe": timeframe}, list(wide["close"].columns),
        fingerprint(wide),
    )  # fmt: skip
    results = cache.get_or_compute(key, lambda: compute_wide(wide, names))
    values = long_from_wide(results, wide)
    # OBV sums over every bar ever, which no finite look-back reaches.
    obv_columns = [c for n in names if n == "obv" for c in indicator_columns(n)]
    if obv_columns and stats["warmup_bars"]:
        before = store.stored_indicators(timeframe, warmup_from, start_ns)
        stats["obv_anchored_symbols"] = anchor_cumulative(values, before, obv_columns, start_ns)
    return values[values["ts"] >= start_ns].reset_index(drop=True), stats


def anchor_cumulative(
    values: pd.DataFrame, before: pd.DataFrame, columns: Sequence[str], start_ns: int
) -> int:
    """Shift `columns` of `values` (in place) so they continue from `before`, the values stored
    for bars before `start_ns`; returns the symbols shifted.

    A symbol is shifted when its last bar before the window is both stored and recomputed: the
    difference there is the history before the look-back, which the recomputation never saw.
    """
    if before.empty:
        return 0
    anchored = 0
    for column in columns:
        if column not in before:
            continue
        last = before.dropna(subset=[column]).groupby("symbol").tail(1).set_index("symbol")
        mine = values[values["ts"] < start_ns].groupby("symbol").tail(1).set_index("symbol")
        for sym, row in last.iterrows():
            if sym in mine.index and mine.at[sym, "ts"] == row["ts"]:
                rows = values["symbol"] == sym
                values.loc[rows, column] += row[column] - mine.at[sym, column]
                anchored += 1
    return anchored


@dataclass(slots=True)
class IndicatorsReport:
    """Per timeframe: the window's counts (see `indicators_window`) plus bars, values, symbols."""

    timeframes: dict[str, dict[str, int]] = field(default_factory=dict)
    cache_hits: int = 0


def rebuild_indicators(
    store: TickStore,
    start_ns: int,
    end_ns: int,
    lookback_bars: int = INDICATOR_LOOKBACK_BARS,
    timeframes: Sequence[str] = INDICATOR_TIMEFRAMES,
    *,
    cache: IndicatorCache,
) -> IndicatorsReport:
    """Compute the window's indicators of every timeframe and replace the stored ones.

    `cache` holds computed indicators between calls (orchestration passes the process's one,
    built from the settings: `orchestration.resources.indicator_cache`).
    """
    hits_before = cache.stats.hits
    report = IndicatorsReport()
    for tf in timeframes:
        values, stats = indicators_window(
            store, tf, start_ns, end_ns, lookback_bars=lookback_bars, cache=cache
        )
        written = store.replace_indicators(tf, values, start_ns, end_ns)
        report.timeframes[tf] = {
            **stats,
            "bars": len(values),
            "values_written": written,
            "symbols": int(values["symbol"].nunique()) if len(values) else 0,
        }
    report.cache_hits = cache.stats.hits - hits_before
    return report


__all__ = [
    "INDICATOR_LOOKBACK_BARS",
    "INDICATOR_TIMEFRAMES",
    "IndicatorsReport",
    "anchor_cumulative",
    "indicators_window",
    "lookback_start",
    "long_from_wide",
    "rebuild_indicators",
]
