"""Strategies: registry, signal values, and no look-ahead (hypothesis)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hft_pipeline.market.frames import to_wide
from hft_pipeline.market.strategies import STRATEGIES, crossed_above, get_strategy


def _candles(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.cumprod(1 + rng.normal(0, 0.01, n))
    open_ = np.r_[close[0], close[:-1]]
    idx = pd.date_range("2024-01-01", periods=n, freq="1h", tz="UTC", name="ts")
    return pd.DataFrame(
        {"open": open_, "high": np.maximum(open_, close) * 1.002,
         "low": np.minimum(open_, close) * 0.998, "close": close,
         "volume": rng.uniform(1, 5, n)},
        index=idx,
    )  # fmt: skip


def test_registry_has_four_strategies_with_grids() -> None:
    assert set(STRATEGIES) >= {
        "sma_crossover",
        "rsi_mean_reversion",
        "bollinger_breakout",
        "macd_signal_cross",
    }
    for s in STRATEGIES.values():
        assert len(s.grid) >= 10 and all(set(p) == set(s.defaults) for p in s.grid)
    with pytest.raises(KeyError, match="unknown strategy"):
        get_strategy("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        get_strategy("sma_crossover").signals(to_wide({"A": _candles(50, 0)}), {"fats": 3})


def test_crossed_above_matches_backtesting_py_definition() -> None:
    a = np.array([1.0, 2.0, 3.0, 3.0, 2.0, 4.0, np.nan, 5.0])
    b = np.array([2.0, 2.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0])
    # t=2: a was equal to b at t=1 (not strictly below) -> no cross; t=5: 2<3 then 4>3 -> cross.
    assert crossed_above(a, b).tolist() == [False, False, False, False, False, True, False, False]


def test_sma_crossover_signals_equal_pandas_reference() -> None:
    c = _candles(400, 1)
    entries, exits = get_strategy("sma_crossover").signals(
        to_wide({"A": c}), {"fast": 5, "slow": 20}
    )
    fast, slow = c["close"].rolling(5).mean(), c["close"].rolling(20).mean()
    up = (fast > slow) & (fast.shift() < slow.shift())
    down = (fast < slow) & (fast.shift() > slow.shift())
    assert entries["A"].tolist() == up.tolist() and exits["A"].tolist() == down.tolist()
    assert up.sum() > 3


def test_sweep_signals_stack_params_and_symbols_as_columns() -> None:
    wide = to_wide({"A": _candles(300, 2), "B": _candles(300, 3)})
    strat = get_strategy("bollinger_breakout")
    entries, exits = strat.sweep_signals(wide)
    assert entries.shape == (300, len(strat.grid) * 2)
    assert entries.columns.names == ["window", "k", "symbol"]
    one, _ = strat.signals(wide, {"window": 30, "k": 1.5})
    assert entries[(30, 1.5, "B")].tolist() == one["B"].tolist()


_FULL = _candles(260, 7)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    name=st.sampled_from(sorted(STRATEGIES)),
    cut=st.integers(min_value=60, max_value=250),
    seed=st.integers(min_value=0, max_value=2**31 - 1),
    truncate=st.booleans(),
)
def test_no_look_ahead_future_bars_do_not_change_past_signals(
    name: str, cut: int, seed: int, truncate: bool
) -> None:
    strat = get_strategy(name)
    base = to_wide({"A": _FULL})
    if truncate:
        altered = _FULL.iloc[:cut]
    else:  # shuffle every bar from `cut` on (rows permuted, timestamps kept)
        rng = np.random.default_rng(seed)
        future = _FULL.iloc[cut:].to_numpy()[rng.permutation(len(_FULL) - cut)]
        altered = _FULL.copy()
        altered.iloc[cut:] = future
    changed = to_wide({"A": altered})
    for params in strat.grid[:3]:
        e0, x0 = strat.signals(base, params)
        e1, x1 = strat.signals(changed, params)
        assert e0["A"].iloc[:cut].tolist() == e1["A"].iloc[:cut].tolist()
        assert x0["A"].iloc[:cut].tolist() == x1["A"].iloc[:cut].tolist()
