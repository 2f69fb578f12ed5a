"""Trading strategies: entry/exit signals computed at bar close from indicators, no look-ahead.

Signal timing, parameter sweeps and crossovers: docs/market.md#strategies.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hft_pipeline.market.frames import Wide
from hft_pipeline.market.indicators import compute_wide

Params = dict[str, float]
Signals = tuple[pd.DataFrame, pd.DataFrame]
_Memo = dict[str, dict[str, pd.DataFrame]]


class UnknownStrategyError(KeyError):
    """A strategy name that is not in STRATEGIES."""


def crossed_above(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a[t] > b[t] and a[t-1] < b[t-1] along axis 0; False where either is NaN."""
    with np.errstate(invalid="ignore"):
        now = a > b
        before = np.zeros_like(now)
        before[1:] = a[:-1] < b[:-1]
    return now & before


def _ind(wide: Wide, name: str, memo: _Memo) -> dict[str, pd.DataFrame]:
    # Sweeps reuse the same indicator across parameter sets (sma_50 for every fast window).
    if name not in memo:
        memo[name] = compute_wide(wide, [name])
    return memo[name]


def _frame(wide: Wide, values: np.ndarray) -> pd.DataFrame:
    close = wide["close"]
    return pd.DataFrame(values, index=close.index, columns=close.columns)


def _sma_crossover(wide: Wide, p: Params, memo: _Memo) -> Signals:
    fast = _ind(wide, f"sma_{int(p['fast'])}", memo)[f"sma_{int(p['fast'])}"].to_numpy()
    slow = _ind(wide, f"sma_{int(p['slow'])}", memo)[f"sma_{int(p['slow'])}"].to_numpy()
    return _frame(wide, crossed_above(fast, slow)), _frame(wide, crossed_above(slow, fast))


def _rsi_mean_reversion(wide: Wide, p: Params, memo: _Memo) -> Signals:
    name = f"rsi_{int(p['window'])}"
    rsi = _ind(wide, name, memo)[name].to_numpy()
    with np.errstate(invalid="ignore"):
        return _frame(wide, rsi < p["lower"]), _frame(wide, rsi > p["upper"])


def _bollinger_breakout(wide: Wide, p: Params, memo: _Memo) -> Signals:
    w, k = int(p["window"]), float(p["k"])
    suffix = f"{w}_{int(k) if k.is_integer() else k!r}"
    bands = _ind(wide, f"bbands_{suffix}", memo)
    close = wide["close"].to_numpy()
    upper = bands[f"bb_upper_{suffix}"].to_numpy()
    middle = bands[f"bb_middle_{suffix}"].to_numpy()
    return _frame(wide, crossed_above(close, upper)), _frame(wide, crossed_above(middle, close))


def _macd_signal_cross(wide: Wide, p: Params, memo: _Memo) -> Signals:
    suffix = f"{int(p['fast'])}_{int(p['slow'])}_{int(p['signal'])}"
    res = _ind(wide, f"macd_{suffix}", memo)
    line = res[f"macd_{suffix}"].to_numpy()
    signal = res[f"macd_signal_{suffix}"].to_numpy()
    return _frame(wide, crossed_above(line, signal)), _frame(wide, crossed_above(signal, line))


@dataclass(frozen=True, slots=True)
class Strategy:
    """A named signal rule with default parameters and a default sweep grid."""

    name: str
    description: str
    defaults: Mapping[str, float]
    grid: tuple[Mapping[str, float], ...]
    rule: Callable[[Wide, Params, _Memo], Signals]

    def signals(self, wide: Wide, params: Mapping[str, float] | None = None) -> Signals:
        """Boolean (entries, exits) frames [ts x symbol] for one parameter set."""
        p = {**self.defaults, **(params or {})}
        unknown = set(p) - set(self.defaults)
        if unknown:
            raise ValueError(f"{self.name}: unknown parameter(s) {sorted(unknown)}")
        return self.rule(wide, p, {})

    def sweep_signals(
        self, wide: Wide, grid: Sequence[Mapping[str, float]] | None = None
    ) -> Signals:
        """(entries, exits) for every parameter set, columns (param..., symbol)."""
        grid = list(grid if grid is not None else self.grid)
        memo: _Memo = {}
        ent, ex = [], []
        for params in grid:
            e, x = self.rule(wide, {**self.defaults, **params}, memo)
            ent.append(e.to_numpy())
            ex.append(x.to_numpy())
        symbols = list(wide["close"].columns)
        names = list(self.defaults)
        full = [{**self.defaults, **p} for p in grid]
        columns = pd.MultiIndex.from_tuples(
            [(*(p[k] for k in names), s) for p in full for s in symbols], names=[*names, "symbol"]
        )
        index = wide["close"].index
        return (
            pd.DataFrame(np.hstack(ent), index=index, columns=columns),
            pd.DataFrame(np.hstack(ex), index=index, columns=columns),
        )


def _grid(**axes: Sequence[float]) -> tuple[dict[str, float], ...]:
    names = list(axes)
    return tuple(
        dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes.values())
    )


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "sma_crossover",
            "Long when the fast SMA crosses above the slow SMA; flat when it crosses below.",
            {"fast": 10, "slow": 20},
            _grid(fast=(5, 10, 15, 20, 30), slow=(50, 100)),
            _sma_crossover,
        ),
        Strategy(
            "rsi_mean_reversion",
            "Long when RSI drops below `lower` (oversold); flat when it rises above `upper`.",
            {"window": 14, "lower": 30, "upper": 70},
            _grid(window=(7, 14, 21, 28, 42), lower=(25, 30), upper=(70,)),
            _rsi_mean_reversion,
        ),
        Strategy(
            "bollinger_breakout",
            "Long when close breaks above the upper band; flat when it falls below the middle.",
            {"window": 20, "k": 2.0},
            _grid(window=(10, 20, 30, 40, 50), k=(1.5, 2.0)),
            _bollinger_breakout,
        ),
        Strategy(
            "macd_signal_cross",
            "Long when the MACD line crosses above its signal line; flat when it crosses below.",
            {"fast": 12, "slow": 26, "signal": 9},
            _grid(fast=(5, 8, 12, 16, 20), slow=(26, 40), signal=(9,)),
            _macd_signal_cross,
        ),
    )
}


def get_strategy(name: str) -> Strategy:
    """The registered strategy called `name`."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise UnknownStrategyError(
            f"unknown strategy {name!r}: use one of {', '.join(STRATEGIES)}"
        ) from None


__all__ = [
    "STRATEGIES",
    "Params",
    "Signals",
    "Strategy",
    "UnknownStrategyError",
    "crossed_above",
    "get_strategy",
]
