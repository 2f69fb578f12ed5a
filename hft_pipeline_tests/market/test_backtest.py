"""Backtests: fill timing, costs, stops, sizing, metric formulas checked by hand."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hft_pipeline.market.backtest import ENGINE, BacktestConfig, periods_per_year, run_backtest
from hft_pipeline.market.frames import to_wide


def _wide(close: list[float], open_: list[float] | None = None, freq: str = "1h") -> dict:
    c = np.asarray(close, float)
    o = np.asarray(open_ if open_ is not None else close, float)
    idx = pd.date_range("2024-01-01", periods=len(c), freq=freq, tz="UTC", name="ts")
    frame = pd.DataFrame(
        {"open": o, "high": np.maximum(o, c), "low": np.minimum(o, c), "close": c, "volume": 1.0},
        index=idx,
    )
    return to_wide({"A": frame})


def _signals(
    wide: dict, entry_bars: list[int], exit_bars: list[int]
) -> tuple[pd.DataFrame, pd.DataFrame]:
    e = pd.DataFrame(False, index=wide["close"].index, columns=wide["close"].columns)
    x = e.copy()
    e.iloc[entry_bars, 0] = True
    x.iloc[exit_bars, 0] = True
    return e, x


def test_rust_engine_is_used() -> None:
    assert ENGINE == "rust"


def test_next_open_fill_fees_and_metrics_by_hand() -> None:
    close = [10, 10, 11, 12, 11.5, 13, 12, 12]
    opens = [10, 10, 10.5, 11.5, 12, 12.5, 12.5, 12]
    wide = _wide(close, opens)
    e, x = _signals(wide, [1], [4])
    cfg = BacktestConfig(init_cash=1000, fees=0.01, fill="next_open", periods_per_year=8760)
    r = run_backtest(wide, e, x, cfg)
    # Entry at bar 2's open 10.5 with 1% fee; exit at bar 5's open 12.5 with 1% fee.
    size = 1000 / (10.5 * 1.01)
    final = size * 12.5 * 0.99
    m = r.metrics.loc["A"]
    assert m["total_return"] == pytest.approx(final / 1000 - 1, rel=1e-12)
    t = r.trades.iloc[0]
    assert (t["entry_price"], t["exit_price"], t["status"]) == (10.5, 12.5, "Closed")
    assert t["entry_time"] == wide["close"].index[2] and t["exit_time"] == wide["close"].index[5]
    assert m["n_trades"] == 1 and m["win_rate"] == 1.0 and np.isinf(m["profit_factor"])
    assert m["avg_trade_duration"] == pd.Timedelta(hours=3)
    assert m["exposure"] == pytest.approx(3 / 8)
    eq = r.equity["A"].to_numpy()
    rets = np.diff(np.r_[1000.0, eq]) / np.r_[1000.0, eq[:-1]]
    assert m["sharpe"] == pytest.approx(rets.mean() / rets.std(ddof=1) * np.sqrt(8760), rel=1e-9)
    downside = np.sqrt(np.mean(np.minimum(rets, 0) ** 2))
    assert m["sortino"] == pytest.approx(rets.mean() / downside * np.sqrt(8760), rel=1e-9)
    dd = eq / np.maximum.accumulate(eq) - 1
    assert m["max_drawdown"] == pytest.approx(dd.min()) and m["max_drawdown"] < 0
    assert r.drawdown["A"].min() == pytest.approx(dd.min())
    cagr = (1 + m["total_return"]) ** (8760 / 8) - 1
    assert m["cagr"] == pytest.approx(cagr, rel=1e-9)
    assert m["calmar"] == pytest.approx(cagr / abs(dd.min()), rel=1e-9)


def test_close_fill_and_whole_units_and_slippage() -> None:
    wide = _wide([10, 10, 11, 12, 12, 13], [10, 10, 10.5, 11.5, 12, 12.5])
    e, x = _signals(wide, [1], [4])
    cfg = BacktestConfig(init_cash=1000, fees=0.0, slippage=0.01, fill="close", whole_units=True)
    t = run_backtest(wide, e, x, cfg).trades.iloc[0]
    assert t["entry_price"] == pytest.approx(10 * 1.01) and t["exit_price"] == pytest.approx(
        12 * 0.99
    )
    assert t["size"] == 99.0  # floor(1000 / 10.1)
    assert t["entry_time"] == wide["close"].index[1]


def test_stop_loss_take_profit_and_trailing_stop() -> None:
    close = [100, 100, 100, 95, 89, 90, 120, 130, 110]
    wide = _wide(close)
    e, x = _signals(wide, [0], [])
    sl = run_backtest(wide, e, x, BacktestConfig(fees=0, sl_stop=0.10)).trades.iloc[0]
    assert sl["exit_price"] == pytest.approx(
        89.0
    )  # gapped through the stop: fills at the open and sl["exit_time"] == wide["close"].index[4]
    tp = run_backtest(wide, e, x, BacktestConfig(fees=0, tp_stop=0.15)).trades.iloc[0]
    assert tp["exit_price"] == pytest.approx(
        120.0
    )  # opened above the 115 target: fills at the open
    # Trailing 10% below the running high: peak 130 -> stop 117, hit inside bar 6 (low 116).
    close = [100, 100, 110, 120, 130, 125, 116, 110]
    wide = _wide(close, [100, *close[:-1]])
    e, x = _signals(wide, [0], [])
    t = run_backtest(wide, e, x, BacktestConfig(fees=0, trailing_stop=0.10)).trades.iloc[-1]
    assert t["exit_price"] == pytest.approx(117.0) and t["exit_time"] == wide["close"].index[6]
    fixed = run_backtest(wide, e, x, BacktestConfig(fees=0, sl_stop=0.10)).trades.iloc[-1]
    assert fixed["status"] == "Open"  # a fixed 10% stop (90) is never touched on this path


def test_open_trade_is_listed_but_not_counted() -> None:
    wide = _wide([10, 11, 12, 13])
    e, x = _signals(wide, [0], [])
    r = run_backtest(wide, e, x, BacktestConfig(fees=0))
    assert list(r.trades["status"]) == ["Open"]
    assert r.metrics.loc["A", "n_trades"] == 0 and np.isnan(r.metrics.loc["A", "win_rate"])


def test_invalid_config_and_frequency_inference() -> None:
    with pytest.raises(ValueError, match="fill="):
        BacktestConfig(fill="tomorrow")
    with pytest.raises(ValueError, match="either sl_stop or trailing_stop"):
        BacktestConfig(sl_stop=0.1, trailing_stop=0.1)
    idx = pd.date_range("2024", periods=10, freq="1min", tz="UTC")
    assert periods_per_year(idx) == pytest.approx(365 * 24 * 60)
    assert periods_per_year(idx, BacktestConfig(periods_per_year=252)) == 252
