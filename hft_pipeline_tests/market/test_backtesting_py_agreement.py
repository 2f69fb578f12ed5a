"""This project's vectorbt backtest reproduces backtesting.py on its bundled market data.

Setup on both sides: SMA(10, 20) crossover, long only, 0.1% commission per side, fills at the
next bar's open, whole units, 10,000 cash. Sharpe is not compared: backtesting.py annualizes a
geometric return over daily-resampled volatility, we use the arithmetic per-bar Sharpe (see
`market/backtest.py`).
"""

from __future__ import annotations

import warnings

import pandas as pd
import pytest
from backtesting import Backtest
from backtesting import Strategy as BtStrategy
from backtesting.lib import crossover
from backtesting.test import EURUSD, GOOG, SMA

from hft_pipeline.market.backtest import BacktestConfig, run_backtest
from hft_pipeline.market.frames import to_wide
from hft_pipeline.market.strategies import get_strategy


class SmaCross(BtStrategy):
    def init(self) -> None:
        self.fast = self.I(SMA, self.data.Close, 10)
        self.slow = self.I(SMA, self.data.Close, 20)

    def next(self) -> None:
        if crossover(self.fast, self.slow):
            self.buy()
        elif crossover(self.slow, self.fast):
            self.position.close()


def _candles(data: pd.DataFrame) -> pd.DataFrame:
    frame = data.rename(columns=str.lower)[["open", "high", "low", "close", "volume"]].astype(float)
    frame.index = frame.index.tz_localize("UTC").rename("ts")
    return frame


@pytest.mark.parametrize(("symbol", "data"), [("GOOG", GOOG), ("EURUSD", EURUSD)])
def test_sma_crossover_matches_backtesting_py(symbol: str, data: pd.DataFrame) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "some trades remain open" is expected and compared below
        stats = Backtest(data, SmaCross, cash=10_000, commission=0.001).run()
    wide = to_wide({symbol: _candles(data)})
    entries, exits = get_strategy("sma_crossover").signals(wide, {"fast": 10, "slow": 20})
    config = BacktestConfig(init_cash=10_000, fees=0.001, fill="next_open", whole_units=True)
    result = run_backtest(wide, entries, exits, config)
    m = result.metrics.loc[symbol]

    assert m["total_return"] * 100 == pytest.approx(stats["Return [%]"], rel=1e-6)
    assert m["max_drawdown"] * 100 == pytest.approx(stats["Max. Drawdown [%]"], rel=1e-6)
    assert m["n_trades"] == stats["# Trades"] > 20
    assert m["win_rate"] * 100 == pytest.approx(stats["Win Rate [%]"], rel=1e-9)

    theirs = stats["_trades"]
    ours = result.trades[result.trades["status"] == "Closed"].reset_index(drop=True)
    assert list(ours["size"].astype(int)) == list(theirs["Size"])
    assert list(ours["entry_time"].dt.tz_localize(None)) == list(theirs["EntryTime"])
    assert list(ours["exit_time"].dt.tz_localize(None)) == list(theirs["ExitTime"])
    pd.testing.assert_series_equal(
        ours["pnl"], theirs["PnL"].astype(float), check_names=False, rtol=1e-9
    )
