"""Candle timeframes: names, lengths in nanoseconds, epoch-aligned buckets."""

from __future__ import annotations

import numpy as np

NS_PER_SECOND = 1_000_000_000

#: Candle timeframes, shortest first, with their length in nanoseconds.
TIMEFRAMES: dict[str, int] = {
    "1s": 1 * NS_PER_SECOND,
    "5s": 5 * NS_PER_SECOND,
    "15s": 15 * NS_PER_SECOND,
    "1m": 60 * NS_PER_SECOND,
    "5m": 300 * NS_PER_SECOND,
    "15m": 900 * NS_PER_SECOND,
    "1h": 3600 * NS_PER_SECOND,
}

#: Every value the API accepts for `timeframe`: raw ticks plus the candle timeframes.
ALL_TIMEFRAMES: tuple[str, ...] = ("raw", *TIMEFRAMES)

#: pandas offset aliases for `resample`, the independent reference for candles.
PANDAS_RULES: dict[str, str] = {
    "1s": "1s",
    "5s": "5s",
    "15s": "15s",
    "1m": "1min",
    "5m": "5min",
    "15m": "15min",
    "1h": "1h",
}

#: PostgreSQL interval literals for `date_bin`.
PG_INTERVALS: dict[str, str] = {
    "1s": "1 second",
    "5s": "5 seconds",
    "15s": "15 seconds",
    "1m": "1 minute",
    "5m": "5 minutes",
    "15m": "15 minutes",
    "1h": "1 hour",
}


class UnknownTimeframeError(ValueError):
    """A timeframe name outside ALL_TIMEFRAMES."""


def timeframe_ns(name: str) -> int:
    """Length of candle timeframe `name` in nanoseconds."""
    try:
        return TIMEFRAMES[name]
    except KeyError:
        raise UnknownTimeframeError(
            f"unknown timeframe {name!r}: use one of {', '.join(ALL_TIMEFRAMES)}"
        ) from None


def bucket_start(ts: np.ndarray | int, tf_ns: int) -> np.ndarray | int:
    """Start of the epoch-aligned bucket holding `ts` (floor division, correct before 1970 too)."""
    return (ts // tf_ns) * tf_ns
