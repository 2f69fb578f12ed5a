"""The comparison of a stored backtest run: its best runs, ranked, with their curves."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from hft_pipeline.analytics.backtests import BacktestSpec, best_runs, run_backtests
from hft_pipeline.analytics.candles import HOUR_NS
from hft_pipeline.analytics.comparison import (
    backtest_config_of,
    best_grids,
    compare_latest_backtests,
)
from hft_pipeline.market.strategies import STRATEGIES
from hft_pipeline.store import BacktestRun, TickStore
from hft_pipeline_tests.analytics.conftest import CANDLE_STORE_HOURS, SYMBOLS, T0


def test_best_grids_keep_every_symbols_best_parameters_in_grid_order() -> None:
    metrics = pd.DataFrame(
        {"strategy": ["sma_crossover"] * 6,
         "symbol": ["A", "B", "A", "B", "A", "B"],
         "params": ["fast=5, slow=50", "fast=5, slow=50", "fast=10, slow=50",
                    "fast=10, slow=50", "fast=30, slow=100", "fast=30, slow=100"],
         "sharpe": [0.1, 0.9, 0.2, 0.3, 0.8, float("nan")]}
    )  # fmt: skip
    # A's best is fast=30, B's fast=5; fast=10 is nobody's best and is not simulated again.
    assert best_grids(metrics, ["sma_crossover"]) == {
        "sma_crossover": [{"fast": 5.0, "slow": 50.0}, {"fast": 30.0, "slow": 100.0}]
    }


def test_a_stored_run_is_simulated_with_its_own_costs() -> None:
    run = BacktestRun("k", 0, 0, 1, "1m", {"fees": 0.002, "init_cash": 50.0})
    config = backtest_config_of(run)
    assert (config.fees, config.slippage, config.init_cash) == (0.002, 0.0, 50.0)


def test_the_comparison_ranks_the_stored_best_runs_and_stores_the_ranking(
    candle_store: TickStore,
) -> None:
    end = datetime.fromtimestamp((T0 + CANDLE_STORE_HOURS * HOUR_NS) // 10**9, UTC).isoformat()
    backtest = run_backtests(candle_store, BacktestSpec(lookback_days=0.5, end=end))

    report = compare_latest_backtests(candle_store)

    ranked = report.result.best
    assert report.run_key == backtest.run.run_key
    assert len(ranked) == len(STRATEGIES) * len(SYMBOLS)
    assert ranked["rank"].tolist() == list(range(1, len(ranked) + 1))
    scores = ranked["sharpe"].dropna().to_numpy()
    assert (np.diff(scores) <= 0).all()
    # Same runs and same metrics as the stored sweep's best runs.
    best = best_runs(backtest.metrics)
    merged = ranked.merge(best, on=["strategy", "symbol"], suffixes=("", "_sweep"))
    assert len(merged) == len(ranked)
    assert (merged["params"] == merged["params_sweep"]).all()
    np.testing.assert_allclose(merged["sharpe"], merged["sharpe_sweep"], rtol=1e-12)
    # The kept curves are the best runs': the last equity value gives the same total return.
    for _, row in ranked.iterrows():
        equity = report.result.equity[(row["strategy"], row["symbol"])]
        assert equity.iloc[-1] / 10_000 - 1 == pytest.approx(row["total_return"], rel=1e-12)
    # Heatmaps see the whole stored grid, not the re-simulated subset.
    for name, table in report.result.runs.items():
        assert len(table) == len(backtest.metrics[backtest.metrics["strategy"] == name])
    stored_key, stored = candle_store.results.latest_comparison()
    assert stored_key == report.run_key
    assert stored[["strategy", "symbol", "params"]].values.tolist() == (
        ranked[["strategy", "symbol", "params"]].values.tolist()
    )


def test_no_stored_run_says_what_to_materialize(sqlite_store: TickStore) -> None:
    with pytest.raises(ValueError, match="materialize `backtests` first"):
        compare_latest_backtests(sqlite_store)
