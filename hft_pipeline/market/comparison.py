"""Strategy comparison: strategies x symbols x parameters in chunked vectorized sweeps, ranked.

`sweep` runs one strategy's grid over every symbol as the columns of vectorbt simulations, split
into chunks so memory is bounded by `max_bytes`, not by the grid size. `compare_strategies`
ranks the best parameter set per (strategy, symbol) and keeps their equity and drawdown curves
(figures of them are drawn where they are shown).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hft_pipeline.market.backtest import (
    METRIC_COLUMNS,
    BacktestConfig,
    chunk_columns,
    run_metrics,
    simulate,
)
from hft_pipeline.market.frames import Wide
from hft_pipeline.market.strategies import STRATEGIES, Strategy, get_strategy

DEFAULT_MAX_BYTES = 512 * 1024**2


def _subset(wide: Wide, symbols: Sequence[str]) -> Wide:
    return {k: v[list(symbols)] for k, v in wide.items()}


def params_label(params: Mapping[str, float]) -> str:
    """Readable parameter label, e.g. `fast=10, slow=50`."""
    return ", ".join(f"{k}={v:g}" for k, v in params.items())


def sweep(
    wide: Wide,
    strategy: Strategy | str,
    grid: Sequence[Mapping[str, float]] | None = None,
    config: BacktestConfig | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> pd.DataFrame:
    """Metrics for every parameter set x symbol, one row each (param columns, symbol, metrics)."""
    strat = get_strategy(strategy) if isinstance(strategy, str) else strategy
    config = config or BacktestConfig()
    grid = [{**strat.defaults, **p} for p in (grid if grid is not None else strat.grid)]
    symbols = [str(s) for s in wide["close"].columns]
    n_bars = len(wide["close"])
    per_chunk = chunk_columns(n_bars, len(grid) * len(symbols), max_bytes)
    sym_block = min(len(symbols), per_chunk)
    param_block = max(1, per_chunk // sym_block)
    parts, order = [], []
    for s0 in range(0, len(symbols), sym_block):
        sub_symbols = np.arange(s0, min(s0 + sym_block, len(symbols)))
        sub = _subset(wide, [symbols[i] for i in sub_symbols])
        for p0 in range(0, len(grid), param_block):
            p_idx = np.arange(p0, min(p0 + param_block, len(grid)))
            entries, exits = strat.sweep_signals(sub, grid[p0 : p0 + param_block])
            parts.append(run_metrics(sub, entries, exits, config))
            order.append((p_idx[:, None] * len(symbols) + sub_symbols[None, :]).ravel())
    # Same row order whatever the chunking: grid order outermost, then symbols.
    table = pd.concat(parts).iloc[np.argsort(np.concatenate(order))].reset_index()
    table.insert(0, "strategy", strat.name)
    table.insert(2 + len(strat.defaults), "params", [
        params_label({k: row[k] for k in strat.defaults}) for _, row in table.iterrows()
    ])  # fmt: skip
    return table


@dataclass(slots=True)
class ComparisonResult:
    """Every run, the ranked best run per (strategy, symbol), and the best runs' curves."""

    runs: dict[str, pd.DataFrame]
    best: pd.DataFrame
    equity: pd.DataFrame
    drawdown: pd.DataFrame
    rank_by: str
    init_cash: float


def _best_rows(table: pd.DataFrame, rank_by: str) -> pd.DataFrame:
    score = table[rank_by].astype(float).fillna(-np.inf)
    idx = score.groupby(table["symbol"], sort=False).idxmax()
    return table.loc[idx.to_numpy()]


def _best_curves(
    wide: Wide, strat: Strategy, best: pd.DataFrame, config: BacktestConfig, max_bytes: int
) -> pd.DataFrame:
    # Symbols sharing a best parameter set are simulated together, in memory-bounded chunks.
    per_chunk = chunk_columns(len(wide["close"]), len(best), max_bytes)
    curves = []
    for _, rows in best.groupby("params", sort=False):
        params = {k: rows[k].iloc[0] for k in strat.defaults}
        symbols = list(rows["symbol"])
        for s0 in range(0, len(symbols), per_chunk):
            sub = _subset(wide, symbols[s0 : s0 + per_chunk])
            e, x = strat.signals(sub, params)
            curves.append(simulate(sub, e, x, config).value().to_numpy())
    order = [s for _, rows in best.groupby("params", sort=False) for s in rows["symbol"]]
    columns = pd.MultiIndex.from_arrays(
        [[strat.name] * len(order), order], names=["strategy", "symbol"]
    )
    equity = pd.DataFrame(np.hstack(curves), index=wide["close"].index, columns=columns)
    return equity[[(strat.name, s) for s in best["symbol"]]]


def compare_strategies(
    wide: Wide,
    strategies: Sequence[str] | None = None,
    grids: Mapping[str, Sequence[Mapping[str, float]]] | None = None,
    config: BacktestConfig | None = None,
    rank_by: str = "sharpe",
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> ComparisonResult:
    """Sweep each strategy's grid over all symbols; rank the best parameters per strategy and symbol."""
    config = config or BacktestConfig()
    names = list(strategies or STRATEGIES)
    runs: dict[str, pd.DataFrame] = {}
    bests, curves = [], []
    for name in names:
        strat = get_strategy(name)
        table = sweep(wide, strat, (grids or {}).get(name), config, max_bytes)
        runs[name] = table
        best = _best_rows(table, rank_by)
        bests.append(best[["strategy", "symbol", "params", *METRIC_COLUMNS]])
        curves.append(_best_curves(wide, strat, best, config, max_bytes))
    ranked = pd.concat(bests, ignore_index=True)
    ranked = ranked.sort_values(rank_by, ascending=False, na_position="last", kind="stable")
    ranked.insert(0, "rank", np.arange(1, len(ranked) + 1))
    equity = pd.concat(curves, axis=1)
    drawdown = equity / equity.cummax() - 1.0
    return ComparisonResult(
        runs, ranked.reset_index(drop=True), equity, drawdown, rank_by, config.init_cash
    )


__all__ = [
    "DEFAULT_MAX_BYTES",
    "ComparisonResult",
    "compare_strategies",
    "params_label",
    "sweep",
]
