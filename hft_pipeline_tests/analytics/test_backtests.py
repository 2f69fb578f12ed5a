"""Backtest runs on stored candles, and the one best-run rule, without Dagster."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd
import pytest

from hft_pipeline.analytics.backtests import (
    BacktestSpec,
    backtest_window,
    best_run_trades,
    best_runs,
    params_of,
    run_backtests,
    top_run,
)
from hft_pipeline.analytics.candles import HOUR_NS, wide_candles
from hft_pipeline.analytics.checks import backtest_sanity
from hft_pipeline.market.backtest import BacktestConfig, run_backtest
from hft_pipeline.market.strategies import STRATEGIES, UnknownStrategyError, get_strategy
from hft_pipeline.store import TickStore
from hft_pipeline_tests.analytics.conftest import CANDLE_STORE_HOURS, SYMBOLS, T0

NAN = float("nan")
END = datetime.fromtimestamp((T0 + CANDLE_STORE_HOURS * HOUR_NS) // 10**9, UTC).isoformat()


def metrics_frame(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["strategy", "symbol", "params", "sharpe"])


def test_best_run_per_strategy_and_symbol_ranks_nan_last_and_keeps_the_first_of_equals() -> None:
    metrics = metrics_frame(
        [
            ("b", "X", "p=1", 0.5),
            ("a", "X", "p=1", NAN),
            ("a", "X", "p=2", -3.0),  # a bad score still beats no score
            ("a", "Y", "p=1", 1.0),
            ("a", "Y", "p=2", 1.0),  # equal: the first row wins
            ("b", "X", "p=2", 0.7),
            ("b", "Y", "p=1", NAN),  # nothing but NaN: that run is still the best there is
        ]
    )
    best = best_runs(metrics)
    assert best[["strategy", "symbol", "params"]].values.tolist() == [
        ["a", "X", "p=2"],
        ["a", "Y", "p=1"],
        ["b", "X", "p=2"],
        ["b", "Y", "p=1"],
    ]
    assert top_run(metrics)["params"] == "p=1" and top_run(metrics)["symbol"] == "Y"
    assert top_run(metrics.assign(sharpe=NAN)) is None
    by_return = best_runs(metrics.assign(total_return=[0, 0, 0, 1, 2, 0, 0]), "total_return")
    assert by_return.loc[by_return["symbol"] == "Y", "params"].tolist() == ["p=2", "p=1"]


def test_params_of_reads_a_label_back_into_the_strategy_parameters() -> None:
    assert params_of("sma_crossover", "fast=10, slow=50") == {"fast": 10.0, "slow": 50.0}
    assert params_of("sma_crossover", "slow=100, fast=5") == {"fast": 5.0, "slow": 100.0}


def test_a_spec_rejects_unknown_strategies_and_timeframes_before_any_work() -> None:
    assert BacktestSpec().strategy_names() == list(STRATEGIES)
    assert BacktestSpec(strategies=("sma_crossover",)).strategy_names() == ["sma_crossover"]
    with pytest.raises(UnknownStrategyError, match="sma_crossover"):
        BacktestSpec(strategies=("no_such_strategy",))
    with pytest.raises(ValueError, match="timeframe '2m'"):
        BacktestSpec(timeframe="2m")
    config = BacktestSpec(fees=0.002, slippage=0.001, init_cash=500.0).backtest_config()
    assert (config.fees, config.slippage, config.init_cash) == (0.002, 0.001, 500.0)


def test_the_window_ends_at_the_given_time_or_before_the_newest_bar(
    candle_store: TickStore, sqlite_store: TickStore
) -> None:
    end_ns = T0 + CANDLE_STORE_HOURS * HOUR_NS
    assert backtest_window(candle_store, BacktestSpec(lookback_days=0.5, end=END)) == (
        end_ns - 12 * HOUR_NS,
        end_ns,
    )
    naive = END.replace("+00:00", "")  # a time without zone is UTC
    assert backtest_window(candle_store, BacktestSpec(lookback_days=0.5, end=naive))[1] == end_ns
    newest = candle_store.watermark().max_ts
    minute = 60 * 10**9
    newest_bar = newest // minute * minute
    assert backtest_window(candle_store, BacktestSpec(lookback_days=1))[1] == newest_bar
    with pytest.raises(ValueError, match="no ticks yet"):
        backtest_window(sqlite_store, BacktestSpec())


def test_run_backtests_stores_every_run_and_the_best_runs_trades(candle_store: TickStore) -> None:
    spec = BacktestSpec(lookback_days=0.5, end=END)
    created_ns = int(datetime(2026, 1, 5, 9, 30, 59, tzinfo=UTC).timestamp()) * 10**9

    report = run_backtests(candle_store, spec, created_ns=created_ns)

    assert report.run.run_key == "2026-01-05T09:30"
    assert report.bars == 720 and report.symbols == len(SYMBOLS)
    grid_sizes = {name: len(get_strategy(name).grid) for name in STRATEGIES}
    assert len(report.metrics) == sum(grid_sizes.values()) * len(SYMBOLS) == 4 * 10 * 3
    stored_run = candle_store.backtest_runs()[0]
    assert stored_run == report.run
    assert stored_run.config["grids"]["sma_crossover"][0] == {"fast": 5.0, "slow": 50.0}
    stored = candle_store.backtest_metrics(report.run.run_key)
    assert len(stored) == len(report.metrics)
    np.testing.assert_allclose(
        stored.sort_values(["strategy", "symbol", "params"])["sharpe"],
        report.metrics.sort_values(["strategy", "symbol", "params"])["sharpe"],
        rtol=0,
    )
    assert len(candle_store.results.backtest_trades(report.run.run_key)) == len(report.trades) > 0
    assert backtest_sanity(report.metrics, report.trades)[0]

    # The trades stored are those of each (strategy, symbol)'s best run, and only those.
    best = best_runs(report.metrics)
    listed = report.trades[["strategy", "symbol", "params"]].drop_duplicates()
    assert set(map(tuple, listed.values)) <= set(map(tuple, best[listed.columns].values))


def test_best_run_trades_equal_a_backtest_of_that_run_alone(candle_store: TickStore) -> None:
    start_ns, end_ns = T0 + HOUR_NS, T0 + CANDLE_STORE_HOURS * HOUR_NS
    wide = wide_candles(candle_store.stored_candles("1m", start_ns, end_ns))
    config = BacktestConfig()
    best = pd.DataFrame(
        {"strategy": ["sma_crossover", "sma_crossover", "rsi_mean_reversion"],
         "symbol": ["PETR4", "VALE3", "PETR4"],
         "params": ["fast=5, slow=50", "fast=5, slow=50", "window=14, lower=30, upper=70"]}
    )  # fmt: skip

    trades = best_run_trades(wide, best, config)

    for _, run in best.iterrows():
        strat = get_strategy(run["strategy"])
        sub = {k: v[[run["symbol"]]] for k, v in wide.items()}
        entries, exits = strat.signals(sub, params_of(run["strategy"], run["params"]))
        alone = run_backtest(sub, entries, exits, config).trades
        mine = trades[(trades["strategy"] == run["strategy"]) & (trades["symbol"] == run["symbol"])]
        assert (mine["params"] == run["params"]).all()
        assert len(mine) == len(alone) > 0
        np.testing.assert_allclose(mine["pnl"].to_numpy(), alone["pnl"].to_numpy(), rtol=1e-12)
        assert (mine["entry_time"].to_numpy() == alone["entry_time"].to_numpy()).all()
    assert best_run_trades(wide, best.iloc[:0], config).columns.tolist() == [
        "strategy",
        "symbol",
        "params",
    ]


def test_no_candles_in_the_window_says_what_to_materialize(sqlite_store: TickStore) -> None:
    with pytest.raises(ValueError, match="materialize `candles` partitions first"):
        run_backtests(sqlite_store, BacktestSpec(end=END))
