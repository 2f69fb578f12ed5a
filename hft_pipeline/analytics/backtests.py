"""Backtests of every strategy's parameter grid over a window of stored candles, stored as one run.

`best_runs` is the one rule that picks a (strategy, symbol)'s best parameter set: the stored
trade lists, the comparison and the metadata all use it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd

from hft_pipeline.analytics.candles import DAY_NS, wide_candles
from hft_pipeline.market.backtest import (
    METRIC_COLUMNS,
    BacktestConfig,
    chunk_columns,
    simulate,
    trade_list,
)
from hft_pipeline.market.comparison import sweep
from hft_pipeline.market.frames import Wide
from hft_pipeline.market.strategies import STRATEGIES, get_strategy
from hft_pipeline.market.timeframes import TIMEFRAMES
from hft_pipeline.store import BacktestRun, TickStore

#: Memory budget of one re-simulation chunk of best runs.
BEST_RUNS_MAX_BYTES = 256 * 1024**2


@dataclass(frozen=True, slots=True)
class BacktestSpec:
    """What to backtest: the window, the strategies (empty: all registered) and the costs."""

    lookback_days: float = 7.0
    timeframe: str = "1m"
    strategies: tuple[str, ...] = ()
    fees: float = 0.001
    slippage: float = 0.0
    init_cash: float = 10_000.0
    #: ISO end of the window (exclusive); None: the newest stored tick's bar.
    end: str | None = None

    def __post_init__(self) -> None:
        if self.timeframe not in TIMEFRAMES:
            raise ValueError(f"timeframe {self.timeframe!r}: use one of {list(TIMEFRAMES)}")
        for name in self.strategies:
            get_strategy(name)  # unknown names fail before any work, with the valid list

    def strategy_names(self) -> list[str]:
        """The strategies to run, in order."""
        return list(self.strategies or STRATEGIES)

    def backtest_config(self) -> BacktestConfig:
        """The simulation's costs and cash."""
        return BacktestConfig(init_cash=self.init_cash, fees=self.fees, slippage=self.slippage)


def backtest_window(store: TickStore, spec: BacktestSpec) -> tuple[int, int]:
    """[start_ns, end_ns) of the candles to backtest: `lookback_days` up to the newest bar."""
    tf_ns = TIMEFRAMES[spec.timeframe]
    if spec.end:
        moment = datetime.fromisoformat(spec.end)
        moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
        end_ns = int(moment.timestamp()) * 1_000_000_000
    else:
        newest = store.watermark().max_ts
        if newest is None:
            raise ValueError("the store holds no ticks yet: nothing to backtest")
        end_ns = (newest // tf_ns) * tf_ns  # the newest bar may still be forming: exclude it
    return end_ns - int(spec.lookback_days * DAY_NS), end_ns


def _score(frame: pd.DataFrame, rank_by: str) -> pd.Series:
    # A run without a score (no trade, flat equity) ranks below every run with one.
    return frame[rank_by].astype(float).fillna(-np.inf)


def best_runs(metrics: pd.DataFrame, rank_by: str = "sharpe") -> pd.DataFrame:
    """The best run per (strategy, symbol) by `rank_by`, sorted by (strategy, symbol).

    NaN ranks last; of equal scores the first run in `metrics` wins.
    """
    score = _score(metrics, rank_by)
    return metrics.loc[score.groupby([metrics["strategy"], metrics["symbol"]]).idxmax()]


def top_run(metrics: pd.DataFrame, rank_by: str = "sharpe") -> pd.Series | None:
    """The single best run by `rank_by` (the first of equals), None when no run has a score."""
    if not metrics[rank_by].notna().any():
        return None
    return metrics.loc[metrics[rank_by].astype(float).idxmax()]


def params_of(strategy: str, label: str) -> dict[str, float]:
    """The parameters of `strategy` a `params` label names (e.g. `fast=10, slow=50`).

    For reading a label typed by hand: a label shows 6 significant digits, so the pipeline
    reads a run's exact parameters from its `param_values` instead.
    """
    params = dict(part.split("=") for part in label.split(", "))
    return {k: float(params[k]) for k in get_strategy(strategy).defaults}


def param_set_key(params: Mapping[str, Any]) -> str:
    """A parameter set as an exact, order-independent key (labels may round two sets alike)."""
    return json.dumps({k: params[k] for k in sorted(params)}, default=float)


def run_params(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Each row's exact parameters: its `param_values` (a frame without them, written by
    hand, has its labels read)."""
    if "param_values" in runs.columns:
        return [dict(p) for p in runs["param_values"]]
    return [params_of(s, label) for s, label in zip(runs["strategy"], runs["params"], strict=True)]


def best_run_trades(wide: Wide, best: pd.DataFrame, config: BacktestConfig) -> pd.DataFrame:
    """Trade lists of the runs in `best` (rows of `best_runs`), simulated again in memory-bounded
    chunks: the trades frame of docs/results.md#frames."""
    frames = []
    values = pd.Series(run_params(best), index=best.index, dtype=object)
    keys = values.map(param_set_key)
    for (strategy, key), rows in best.groupby([best["strategy"], keys], sort=False):
        strat = get_strategy(strategy)
        params = values[keys == key].iloc[0]
        symbols = list(rows["symbol"])
        per_chunk = chunk_columns(len(wide["close"]), len(symbols), BEST_RUNS_MAX_BYTES)
        for s0 in range(0, len(symbols), per_chunk):
            sub = {k: v[symbols[s0 : s0 + per_chunk]] for k, v in wide.items()}
            entries, exits = strat.signals(sub, params)
            pf = simulate(sub, entries, exits, config)
            trades = trade_list(pf, sub["close"].index).rename(columns={"column": "symbol"})
            trades.insert(0, "strategy", strategy)
            trades.insert(2, "params", rows["params"].iloc[0])
            trades.insert(3, "param_values", [params] * len(trades))
            frames.append(trades)
    if not frames:
        return pd.DataFrame(columns=["strategy", "symbol", "params"])
    return pd.concat(frames, ignore_index=True)


def sweep_metrics(wide: Wide, names: Sequence[str], config: BacktestConfig) -> pd.DataFrame:
    """Metrics of every strategy x parameter set x symbol: strategy, symbol, params (the label),
    param_values ({name: value} exactly as simulated), metrics."""
    frames = []
    for name in names:
        table = sweep(wide, name, config=config)
        values = table[list(get_strategy(name).defaults)].to_dict("records")
        table.insert(table.columns.get_loc("params") + 1, "param_values", values)
        frames.append(table[["strategy", "symbol", "params", "param_values", *METRIC_COLUMNS]])
    return pd.concat(frames, ignore_index=True)


@dataclass(slots=True)
class BacktestReport:
    """A stored backtest run: what it covered, every run's metrics, the best runs' trades."""

    run: BacktestRun
    metrics: pd.DataFrame
    trades: pd.DataFrame
    bars: int

    @property
    def symbols(self) -> int:
        return int(self.metrics["symbol"].nunique())


def run_backtests(
    store: TickStore, spec: BacktestSpec, created_ns: int | None = None
) -> BacktestReport:
    """Sweep every strategy's grid over the window's stored candles and store the run: metrics
    of every run, trades of each (strategy, symbol)'s best run, under a run key of its minute."""
    start_ns, end_ns = backtest_window(store, spec)
    stored = store.stored_candles(spec.timeframe, start_ns, end_ns)
    if stored.empty:
        raise ValueError(
            f"no {spec.timeframe} candles stored in the look-back window: materialize "
            "`candles` partitions first"
        )
    wide = wide_candles(stored)
    config = spec.backtest_config()
    names = spec.strategy_names()
    metrics = sweep_metrics(wide, names, config)
    trades = best_run_trades(wide, best_runs(metrics), config)
    created_ns = time.time_ns() if created_ns is None else created_ns
    run = BacktestRun(
        run_key=datetime.fromtimestamp(created_ns / 1e9, UTC).strftime("%Y-%m-%dT%H:%M"),
        created_ns=created_ns,
        start_ns=start_ns,
        end_ns=end_ns,
        timeframe=spec.timeframe,
        config={
            "strategies": names,
            "grids": {n: [dict(p) for p in get_strategy(n).grid] for n in names},
            "fees": spec.fees,
            "slippage": spec.slippage,
            "init_cash": spec.init_cash,
            "lookback_days": spec.lookback_days,
        },
    )
    store.write_backtest(run, metrics, trades)
    return BacktestReport(run, metrics, trades, bars=len(wide["close"]))


__all__ = [
    "BEST_RUNS_MAX_BYTES",
    "BacktestReport",
    "BacktestSpec",
    "backtest_window",
    "best_run_trades",
    "best_runs",
    "param_set_key",
    "params_of",
    "run_backtests",
    "run_params",
    "sweep_metrics",
    "top_run",
]
