"""The ranked comparison of a stored backtest run's best runs, with their equity curves.

The stored sweep is reused: only each (strategy, symbol)'s best parameter sets are simulated
again, for their curves, and the stored ranking is written under the run's key.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd

from hft_pipeline.analytics.backtests import best_runs, param_set_key, run_params
from hft_pipeline.analytics.candles import wide_candles
from hft_pipeline.market.backtest import BacktestConfig
from hft_pipeline.market.comparison import ComparisonResult, compare_strategies
from hft_pipeline.market.strategies import get_strategy
from hft_pipeline.store import BacktestRun, TickStore


def backtest_config_of(run: BacktestRun) -> BacktestConfig:
    """The costs and cash a stored run was simulated with (defaults for keys it lacks)."""
    return BacktestConfig(
        init_cash=run.config.get("init_cash", 10_000.0),
        fees=run.config.get("fees", 0.001),
        slippage=run.config.get("slippage", 0.0),
    )


def best_grids(
    metrics: pd.DataFrame, names: Sequence[str], rank_by: str = "sharpe"
) -> dict[str, list[dict[str, float]]]:
    """Per strategy, the parameter sets that are some symbol's best run, in grid order.

    Sweeping only these finds the same best runs: the best of a subset that holds every
    argmax is the argmax.
    """
    best = best_runs(metrics, rank_by)
    grids = {}
    for name in names:
        chosen = {param_set_key(p) for p in run_params(best[best["strategy"] == name])}
        ordered: dict[str, dict[str, float]] = {}
        for params in run_params(metrics[metrics["strategy"] == name]):
            ordered.setdefault(param_set_key(params), params)
        grids[name] = [params for key, params in ordered.items() if key in chosen]
    return grids


@dataclass(slots=True)
class ComparisonReport:
    """The comparison of the stored run `run_key`."""

    run_key: str
    result: ComparisonResult


def compare_latest_backtests(store: TickStore) -> ComparisonReport:
    """Rank the newest stored backtest run's best run per (strategy, symbol), keep their equity
    and drawdown curves and the whole grid (for heatmaps), and store the ranking."""
    runs = store.backtest_runs()
    if not runs:
        raise ValueError("no backtest run stored: materialize `backtests` first")
    run = runs[0]
    metrics = store.backtest_metrics(run.run_key)
    wide = wide_candles(store.stored_candles(run.timeframe, run.start_ns, run.end_ns))
    names = list(run.config.get("strategies") or sorted(metrics["strategy"].unique()))
    result = compare_strategies(wide, names, best_grids(metrics, names), backtest_config_of(run))
    for name in names:  # heatmaps over the whole stored grid, not the re-simulated subset
        table = metrics[metrics["strategy"] == name].reset_index(drop=True)
        columns = list(get_strategy(name).defaults)
        params = pd.DataFrame(run_params(table), columns=columns)
        result.runs[name] = pd.concat([params, table], axis=1)
    store.write_comparison(run.run_key, result.best)
    return ComparisonReport(run.run_key, result)


__all__ = ["ComparisonReport", "backtest_config_of", "best_grids", "compare_latest_backtests"]
