"""Candles of every timeframe for a window, rebuilt from the stored ticks hour by hour.

Hour by hour, so a ranged backfill run holds one hour of ticks in memory at a time. Each hour's
candles replace the stored ones in one transaction and are compared with what they replace
(late ticks) and, when given, with the ingest service's live candles.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hft_pipeline.market.candles import CANDLE_COLUMNS, PartialCandles, partial_candles, rollup
from hft_pipeline.market.frames import Wide, to_wide
from hft_pipeline.market.timeframes import TIMEFRAMES
from hft_pipeline.store import TickStore

HOUR_NS = TIMEFRAMES["1h"]
DAY_NS = 24 * HOUR_NS

#: 1m candles another source holds for (symbols, start_ns, end_ns): columns symbol and
#: CANDLE_COLUMNS, closed candles only; None when that source cannot answer.
LiveCandles = Callable[[Sequence[str], int, int], pd.DataFrame | None]


def hours(start_ns: int, end_ns: int) -> Iterator[tuple[int, int]]:
    """The hourly [start, end) windows covering [start_ns, end_ns)."""
    for lo in range(start_ns, end_ns, HOUR_NS):
        yield lo, min(lo + HOUR_NS, end_ns)


def _frame(parts: PartialCandles, names: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(
        {
            "ts": parts.ts,
            "open": parts.open,
            "high": parts.high,
            "low": parts.low,
            "close": parts.close,
            "volume": parts.volume,
            "ticks": parts.ticks,
        }
    )
    frame.insert(0, "symbol", names[parts.group])
    return frame


def candles_all_timeframes(ticks_frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Candles of every timeframe (symbol, ts, OHLCV, ticks), each sorted by (symbol, ts).

    Same code as the live service: exact partial candles at 1s, rolled up to the coarser
    timeframes (every timeframe divides the next), so ticks are sorted and summed once.
    """
    codes, names = pd.factorize(ticks_frame["symbol"], sort=True)
    names = np.asarray(names, dtype=object)
    parts = partial_candles(
        ticks_frame["ts"].to_numpy(np.int64),
        ticks_frame["seq"].to_numpy(np.int64),
        ticks_frame["price"].to_numpy(np.float64),
        ticks_frame["volume"].to_numpy(np.float64),
        TIMEFRAMES["1s"],
        codes.astype(np.int64),
    )
    out: dict[str, pd.DataFrame] = {}
    for tf, tf_ns in TIMEFRAMES.items():
        parts = rollup(parts, tf_ns) if tf != "1s" else parts
        out[tf] = _frame(parts, names)
    return out


@dataclass(frozen=True, slots=True)
class Corrections:
    """How candles differ from another version of the same buckets."""

    compared: int = 0  # buckets in both
    changed: int = 0  # of those, with any field different
    added: int = 0  # buckets only in the new version
    removed: int = 0  # buckets only in the old version

    def __add__(self, other: Corrections) -> Corrections:
        return Corrections(
            self.compared + other.compared,
            self.changed + other.changed,
            self.added + other.added,
            self.removed + other.removed,
        )


def candle_corrections(before: pd.DataFrame, after: pd.DataFrame) -> Corrections:
    """Buckets compared, changed, added and removed from `before` to `after` (by symbol, ts)."""
    keys = ["symbol", "ts"]
    merged = before.merge(after, on=keys, how="outer", suffixes=("_old", ""), indicator=True)
    both = merged[merged["_merge"] == "both"]
    changed = np.zeros(len(both), dtype=bool)
    for column in CANDLE_COLUMNS[1:]:
        changed |= both[f"{column}_old"].to_numpy() != both[column].to_numpy()
    return Corrections(
        compared=len(both),
        changed=int(changed.sum()),
        added=int((merged["_merge"] == "right_only").sum()),
        removed=int((merged["_merge"] == "left_only").sum()),
    )


def hour_is_open(store: TickStore, end_ns: int, grace_s: float) -> bool:
    """Whether ticks may still arrive for an hour ending at `end_ns`: the newest stored tick is
    not yet a grace period past its end.

    Event time, not the wall clock: while the persister works off a backlog (a restart, an
    outage, the simulator's history) hours long past by the clock are still being filled.
    """
    newest = store.watermark().max_ts
    return newest is None or newest < end_ns + int(grace_s * 1e9)


@dataclass(slots=True)
class CandlesReport:
    """What one rebuild read, wrote and found."""

    ticks_read: int = 0
    symbols: set[str] = field(default_factory=set)
    candles: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TIMEFRAMES, 0))
    #: 1m candles against the ones they replaced (a re-run after late ticks).
    vs_stored: Corrections = Corrections()
    #: 1m candles against the live candles, on the buckets both hold.
    vs_live: Corrections = Corrections()
    #: Hour start -> ticks per symbol read, for hours still open: their recount must use these,
    #: since the store keeps receiving ticks for them while the run goes on.
    open_hour_counts: dict[int, dict[str, int]] = field(default_factory=dict)


def rebuild_candles(
    store: TickStore,
    start_ns: int,
    end_ns: int,
    grace_s: float,
    live: LiveCandles | None = None,
) -> CandlesReport:
    """Recompute every timeframe's candles in [start_ns, end_ns) from the stored ticks and
    replace the stored ones, one transaction per hour."""
    report = CandlesReport()
    for lo, hi in hours(start_ns, end_ns):
        open_hour = hour_is_open(store, hi, grace_s)
        tick_frame = store.read_tick_range(lo, hi)
        if open_hour:
            report.open_hour_counts[lo] = tick_frame["symbol"].value_counts().to_dict()
        frames = candles_all_timeframes(tick_frame)
        previous = store.stored_candles("1m", lo, hi)
        store.replace_candles(
            pd.concat([f.assign(timeframe=tf) for tf, f in frames.items()], ignore_index=True),
            lo,
            hi,
            list(TIMEFRAMES),
        )
        one_minute = frames["1m"]
        report.ticks_read += len(tick_frame)
        report.symbols.update(one_minute["symbol"])
        for tf, f in frames.items():
            report.candles[tf] += len(f)
        if len(previous):
            report.vs_stored += candle_corrections(previous, one_minute)
        served = live(sorted(set(one_minute["symbol"])), lo, hi) if live is not None else None
        if served is not None:
            common = one_minute.merge(served[["symbol", "ts"]], on=["symbol", "ts"])
            report.vs_live += candle_corrections(served, common)
    return report


def wide_candles(stored: pd.DataFrame) -> Wide:
    """Stored candles (symbol, ts in int64 ns, OHLCV, ...) as wide fields on a UTC index."""
    stored = stored.assign(ts=pd.to_datetime(stored["ts"].to_numpy(np.int64), unit="ns", utc=True))
    return to_wide(stored)


__all__ = [
    "DAY_NS",
    "HOUR_NS",
    "CandlesReport",
    "Corrections",
    "LiveCandles",
    "candle_corrections",
    "candles_all_timeframes",
    "hour_is_open",
    "hours",
    "rebuild_candles",
    "wide_candles",
]
