"""Data checks: candle recount, OHLC invariants, duplicate buckets, gaps, backtest sanity.

Each check takes plain frames and returns `(passed, metadata)`, so tests can run it on
deliberately corrupted data; orchestration turns outcomes into Dagster check results.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from hft_pipeline.analytics.candles import hours
from hft_pipeline.market.timeframes import TIMEFRAMES
from hft_pipeline.store import TickStore

CheckOutcome = tuple[bool, dict[str, Any]]

#: Metrics that must be finite for a run that closed at least one trade (calmar, sortino and
#: profit_factor may legitimately be NaN/inf: no drawdown, no losing bar, no losing trade).
REQUIRED_METRICS: tuple[str, ...] = (
    "total_return",
    "sharpe",
    "max_drawdown",
    "win_rate",
    "expectancy",
    "exposure",
)
_SAMPLE = 10

#: What `candle_checks` reports, by name. gap_report is informational (gaps are market reality).
CANDLE_CHECKS: dict[str, str] = {
    "candles_match_ticks": "Per timeframe and symbol, stored candle tick counts sum to the "
    "stored ticks.",
    "ohlc_invariants": "low <= open, close <= high; volume >= 0; ticks >= 1.",
    "no_duplicate_buckets": "One candle per timeframe, symbol and aligned bucket.",
    "gap_report": "Empty 1m buckets inside each symbol's active span (warning).",
}


def combine(outcomes: Sequence[CheckOutcome]) -> CheckOutcome:
    """One outcome from several (e.g. the hours of a ranged run): counts add up, examples join."""
    metadata: dict[str, Any] = {}
    for _, meta in outcomes:
        for key, value in meta.items():
            old = metadata.get(key)
            if isinstance(value, str):
                parts = [p for p in (old, value) if p and p != "none"]
                metadata[key] = "; ".join(parts)[:2000] or "none"
            else:
                metadata[key] = value if old is None else old + value
    return all(passed for passed, _ in outcomes), metadata


def candles_recount(
    tick_counts: Mapping[str, int], candles: Mapping[str, pd.DataFrame]
) -> CheckOutcome:
    """Per timeframe and symbol, the stored candles' `ticks` sum to the stored tick count."""
    expected = pd.Series(dict(tick_counts), dtype=np.int64)
    mismatches: list[str] = []
    for tf, frame in candles.items():
        got = frame.groupby("symbol")["ticks"].sum().astype(np.int64)
        both = pd.concat([expected.rename("ticks"), got.rename("candles")], axis=1).fillna(0)
        bad = both[both["ticks"] != both["candles"]]
        mismatches += [
            f"{tf} {sym}: {int(r.candles)} in candles vs {int(r.ticks)} ticks"
            for sym, r in bad.iterrows()
        ]
    return not mismatches, {
        "ticks": int(expected.sum()),
        "mismatches": len(mismatches),
        "examples": "; ".join(mismatches[:_SAMPLE]) or "none",
    }


def ohlc_invariants(candles: Mapping[str, pd.DataFrame]) -> CheckOutcome:
    """low <= open, close <= high; volume >= 0; ticks >= 1; prices finite and > 0."""
    bad_rows: list[str] = []
    total = 0
    for tf, f in candles.items():
        lo, hi, op, cl = (f[c].to_numpy(np.float64) for c in ("low", "high", "open", "close"))
        with np.errstate(invalid="ignore"):
            ok = (
                (lo <= op)
                & (lo <= cl)
                & (op <= hi)
                & (cl <= hi)
                & (lo > 0)
                & np.isfinite(hi)
                & (f["volume"].to_numpy(np.float64) >= 0)
                & (f["ticks"].to_numpy() >= 1)
            )
        bad = f[~ok]
        total += len(bad)
        bad_rows += [f"{tf} {r.symbol}@{r.ts}" for r in bad.head(_SAMPLE).itertuples()]
    return total == 0, {"violations": total, "examples": "; ".join(bad_rows[:_SAMPLE]) or "none"}


def no_duplicate_buckets(candles: Mapping[str, pd.DataFrame]) -> CheckOutcome:
    """At most one candle per (timeframe, symbol, bucket), every bucket aligned to its timeframe."""
    duplicates = misaligned = 0
    examples: list[str] = []
    for tf, f in candles.items():
        dup = f[f.duplicated(["symbol", "ts"], keep=False)]
        off = f[f["ts"].to_numpy(np.int64) % TIMEFRAMES[tf] != 0]
        duplicates += int(f.duplicated(["symbol", "ts"]).sum())
        misaligned += len(off)
        examples += [
            f"{tf} {r.symbol}@{r.ts}" for r in pd.concat([dup, off]).head(_SAMPLE).itertuples()
        ]
    return duplicates == 0 and misaligned == 0, {
        "duplicates": duplicates,
        "misaligned": misaligned,
        "examples": "; ".join(examples[:_SAMPLE]) or "none",
    }


def gap_report(candles_1m: pd.DataFrame) -> CheckOutcome:
    """Empty 1m buckets between each symbol's first and last 1m candle (a warning, not an error)."""
    step = TIMEFRAMES["1m"]
    per_symbol: dict[str, int] = {}
    for sym, f in candles_1m.groupby("symbol", sort=True):
        ts = f["ts"].to_numpy(np.int64)
        missing = int((ts.max() - ts.min()) // step + 1 - np.unique(ts).size)
        if missing:
            per_symbol[str(sym)] = missing
    worst = sorted(per_symbol.items(), key=lambda kv: -kv[1])[:_SAMPLE]
    return not per_symbol, {
        "empty_1m_buckets": int(sum(per_symbol.values())),
        "symbols_with_gaps": len(per_symbol),
        "worst": ", ".join(f"{s}: {n}" for s, n in worst) or "none",
    }


def backtest_sanity(metrics: pd.DataFrame, trades: pd.DataFrame) -> CheckOutcome:
    """No NaN required metric where trades closed; `n_trades` equals the closed trades listed.

    `trades` holds the trade lists of some runs (the best per strategy and symbol); every run it
    covers must agree with its metrics row.
    """
    closed = metrics[metrics["n_trades"] > 0]
    nan_cells = closed[list(REQUIRED_METRICS)].isna()
    nan_runs = closed[nan_cells.any(axis=1)]
    keys = ["strategy", "symbol", "params"]
    listed = trades[trades["status"] == "Closed"].groupby(keys).size().rename("listed")
    covered = trades.groupby(keys).size().index
    joined = metrics.set_index(keys).loc[lambda m: m.index.isin(covered), "n_trades"]
    both = pd.concat([joined, listed], axis=1).fillna(0)
    inconsistent = both[both["n_trades"] != both["listed"]]
    examples = [
        f"NaN metric: {r.strategy} {r.symbol} ({r.params})" for r in nan_runs.head(5).itertuples()
    ]
    examples += [
        f"{k[0]} {k[1]} ({k[2]}): n_trades {int(r.n_trades)} vs {int(r.listed)} listed"
        for k, r in inconsistent.head(5).iterrows()
    ]
    return nan_runs.empty and inconsistent.empty, {
        "runs": len(metrics),
        "runs_with_trades": len(closed),
        "nan_metric_runs": len(nan_runs),
        "runs_checked_against_trades": len(both),
        "trade_count_mismatches": len(inconsistent),
        "examples": "; ".join(examples) or "none",
    }


def candle_checks(
    store: TickStore,
    start_ns: int,
    end_ns: int,
    open_hour_counts: Mapping[int, Mapping[str, int]] | None = None,
) -> dict[str, CheckOutcome]:
    """The candle checks on what the store holds for [start_ns, end_ns), hour by hour, combined.

    `open_hour_counts`: hour start -> ticks per symbol the candles were computed from, for hours
    still open (`CandlesReport.open_hour_counts`). Those hours are recounted from these counts,
    since the store keeps receiving their ticks; a closed hour is recounted from the store.
    """
    open_hour_counts = open_hour_counts or {}
    hourly: dict[str, list[CheckOutcome]] = {name: [] for name in CANDLE_CHECKS}
    for lo, hi in hours(start_ns, end_ns):
        stored = {tf: store.stored_candles(tf, lo, hi) for tf in TIMEFRAMES}
        is_open = lo in open_hour_counts
        counts = open_hour_counts[lo] if is_open else store.tick_counts(lo, hi)
        passed, metadata = candles_recount(counts, stored)
        # Hours recounted from the ticks read rather than the store (they were still open).
        hourly["candles_match_ticks"].append((passed, {**metadata, "open_hours": int(is_open)}))
        hourly["ohlc_invariants"].append(ohlc_invariants(stored))
        hourly["no_duplicate_buckets"].append(no_duplicate_buckets(stored))
        hourly["gap_report"].append(gap_report(stored["1m"]))
    return {name: combine(outcomes) for name, outcomes in hourly.items()}


__all__ = [
    "CANDLE_CHECKS",
    "REQUIRED_METRICS",
    "CheckOutcome",
    "backtest_sanity",
    "candle_checks",
    "candles_recount",
    "combine",
    "gap_report",
    "no_duplicate_buckets",
    "ohlc_invariants",
]
