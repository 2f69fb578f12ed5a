"""Strategy comparison: chunked sweeps equal one-shot sweeps, ranking."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hft_pipeline.market.backtest import BacktestConfig, run_backtest
from hft_pipeline.market.comparison import compare_strategies, sweep
from hft_pipeline.market.frames import to_wide
from hft_pipeline.market.strategies import get_strategy


def _wide(n_symbols: int = 3, n_bars: int = 1500) -> dict:
    rng = np.random.default_rng(11)
    idx = pd.date_range("2024-01-01", periods=n_bars, freq="1min", tz="UTC", name="ts")
    frames = {}
    for i in range(n_symbols):
        c = 100 * np.cumprod(1 + rng.normal(0, 0.002, n_bars))
        o = np.r_[c[0], c[:-1]]
        frames[f"S{i}"] = pd.DataFrame(
            {"open": o, "high": np.maximum(o, c) * 1.001, "low": np.minimum(o, c) * 0.999,
             "close": c, "volume": 1.0},
            index=idx,
        )  # fmt: skip
    return to_wide(frames)


def test_chunked_sweep_equals_single_call_and_single_runs() -> None:
    wide = _wide()
    cfg = BacktestConfig()
    whole = sweep(wide, "sma_crossover", config=cfg, max_bytes=10**10)
    tiny = sweep(wide, "sma_crossover", config=cfg, max_bytes=1)  # one column per chunk
    assert len(whole) == 10 * 3
    pd.testing.assert_frame_equal(whole, tiny)
    row = whole[(whole["fast"] == 15) & (whole["slow"] == 50) & (whole["symbol"] == "S1")].iloc[0]
    e, x = get_strategy("sma_crossover").signals(wide, {"fast": 15, "slow": 50})
    alone = run_backtest(wide, e, x, cfg).metrics.loc["S1"]
    assert row["total_return"] == pytest.approx(alone["total_return"], rel=1e-12)
    assert row["n_trades"] == alone["n_trades"] and row["params"] == "fast=15, slow=50"


def test_compare_ranks_best_params_per_strategy_and_symbol() -> None:
    wide = _wide()
    res = compare_strategies(wide, max_bytes=2 * 1024**2)
    assert len(res.best) == 4 * 3
    assert list(res.best["rank"]) == list(range(1, 13))
    sharpe = res.best["sharpe"].to_numpy()
    assert np.all(np.diff(sharpe[~np.isnan(sharpe)]) <= 0)
    for _, b in res.best.iterrows():
        runs = res.runs[b["strategy"]]
        assert b["sharpe"] == runs[runs["symbol"] == b["symbol"]]["sharpe"].max()
        # The kept equity curve is the best run's: its last value gives the same total return.
        eq = res.equity[(b["strategy"], b["symbol"])]
        assert eq.iloc[-1] / 10_000 - 1 == pytest.approx(b["total_return"], rel=1e-12)
    assert (res.drawdown <= 0).all().all()
