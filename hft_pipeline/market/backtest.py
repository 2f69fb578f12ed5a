"""Signal backtests on vectorbt: many symbols and parameter sets as columns of one simulation.

Fill timing, metric definitions and cold-start cost: docs/market.md#backtests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import vectorbt as vbt
from vectorbt._engine import is_rust_available

from hft_pipeline.market.frames import Wide

FILL_TIMINGS: tuple[str, ...] = ("next_open", "close")

#: "rust" when vectorbt-rust is installed and matches vectorbt's version, else "numba".
ENGINE: str = "rust" if is_rust_available() else "numba"

METRIC_COLUMNS: tuple[str, ...] = (
    "total_return",
    "cagr",
    "sharpe",
    "sortino",
    "calmar",
    "max_drawdown",
    "win_rate",
    "profit_factor",
    "expectancy",
    "n_trades",
    "avg_trade_duration",
    "exposure",
)

_SECONDS_PER_YEAR = 365 * 86_400


@dataclass(frozen=True, slots=True)
class BacktestConfig:
    """Costs, stops, sizing and fill timing of a backtest (long only)."""

    init_cash: float = 10_000.0
    fees: float = 0.001
    slippage: float = 0.0
    sl_stop: float | None = None
    tp_stop: float | None = None
    trailing_stop: float | None = None
    fill: str = "next_open"
    whole_units: bool = False
    periods_per_year: float | None = None

    def __post_init__(self) -> None:
        if self.fill not in FILL_TIMINGS:
            raise ValueError(f"fill={self.fill!r}: use one of {FILL_TIMINGS}")
        if self.sl_stop is not None and self.trailing_stop is not None:
            raise ValueError("set either sl_stop or trailing_stop, not both (one stop-loss slot)")
        if self.init_cash <= 0 or self.fees < 0 or self.slippage < 0:
            raise ValueError("init_cash must be > 0 and fees/slippage >= 0")


@dataclass(slots=True)
class BacktestResult:
    """One simulation: metrics per column, equity/drawdown series, closed and open trades."""

    portfolio: vbt.Portfolio
    metrics: pd.DataFrame
    equity: pd.DataFrame
    drawdown: pd.DataFrame
    trades: pd.DataFrame = field(repr=False)


def periods_per_year(index: pd.Index, config: BacktestConfig | None = None) -> float:
    """Bars per year: the configured value, else 365 days divided by the median bar spacing."""
    if config is not None and config.periods_per_year is not None:
        return float(config.periods_per_year)
    if not isinstance(index, pd.DatetimeIndex) or len(index) < 2:
        raise ValueError("cannot infer the bar frequency: set BacktestConfig.periods_per_year")
    step = float(np.median(np.diff(index.asi8))) / 1e9
    return _SECONDS_PER_YEAR / step


def _column_symbols(columns: pd.Index) -> pd.Index:
    if isinstance(columns, pd.MultiIndex):
        return columns.get_level_values("symbol")
    return columns


def simulate(
    wide: Wide, entries: pd.DataFrame, exits: pd.DataFrame, config: BacktestConfig
) -> vbt.Portfolio:
    """Run vectorbt's `Portfolio.from_signals`; columns of entries/exits name their symbol."""
    symbols = _column_symbols(entries.columns)
    pos = wide["close"].columns.get_indexer(symbols)
    if (pos < 0).any():
        raise ValueError(
            f"signals name symbols missing from the candles: {sorted(set(symbols[pos < 0]))}"
        )
    ohlc = {k: wide[k].to_numpy(dtype=np.float64)[:, pos] for k in ("open", "high", "low", "close")}
    present = ~np.isnan(ohlc["close"])
    if not present.all():
        # Absent bars are NaN: value positions at the last known price, never trade on them.
        ohlc = {k: pd.DataFrame(v).ffill().to_numpy() for k, v in ohlc.items()}
    ent = entries.to_numpy(dtype=bool) & present
    ex = exits.to_numpy(dtype=bool) & present
    if config.fill == "next_open":
        ent = np.vstack([np.zeros((1, ent.shape[1]), bool), ent[:-1]])
        ex = np.vstack([np.zeros((1, ex.shape[1]), bool), ex[:-1]])
        price = ohlc["open"]
    else:
        price = ohlc["close"]
    index = wide["close"].index
    if isinstance(index, pd.DatetimeIndex) and index.tz is not None:
        # vectorbt checks shapes via np.asarray(index), which boxes every tz-aware timestamp
        # into a Python object (seconds per call on 1M bars); naive UTC is a plain int64 array.
        index = index.tz_convert(None)
    wrap = {"index": index, "columns": entries.columns}
    close = pd.DataFrame(ohlc["close"], **wrap)
    stop = config.trailing_stop if config.trailing_stop is not None else config.sl_stop
    return vbt.Portfolio.from_signals(
        close,
        pd.DataFrame(ent, **wrap),
        pd.DataFrame(ex, **wrap),
        price=price,
        open=ohlc["open"],
        high=ohlc["high"],
        low=ohlc["low"],
        fees=config.fees,
        slippage=config.slippage,
        sl_stop=np.nan if stop is None else stop,
        sl_trail=config.trailing_stop is not None,
        tp_stop=np.nan if config.tp_stop is None else config.tp_stop,
        size=np.inf,
        size_granularity=1.0 if config.whole_units else np.nan,
        init_cash=config.init_cash,
        direction="longonly",
        freq=pd.Timedelta(seconds=_SECONDS_PER_YEAR / periods_per_year(index, config)),
        engine=ENGINE,
    )


def _metrics_from_arrays(
    value: np.ndarray,
    assets: np.ndarray,
    trades: np.ndarray,
    init_cash: float,
    ppy: float,
    bar_seconds: float,
) -> dict[str, np.ndarray]:
    n, m = value.shape
    prev = np.vstack([np.full((1, m), init_cash), value[:-1]])
    rets = value / prev - 1.0
    total_return = value[-1] / init_cash - 1.0
    years = n / ppy
    with np.errstate(invalid="ignore", divide="ignore"):
        cagr = np.power(1.0 + total_return, 1.0 / years) - 1.0
        mean = rets.mean(axis=0)
        std = rets.std(axis=0, ddof=1)
        sharpe = np.where(std > 0, mean / std * np.sqrt(ppy), np.nan)
        downside = np.sqrt(np.mean(np.minimum(rets, 0.0) ** 2, axis=0))
        sortino = np.where(downside > 0, mean / downside * np.sqrt(ppy), np.nan)
        max_dd = (value / np.maximum.accumulate(value, axis=0) - 1.0).min(axis=0)
        calmar = np.where(max_dd < 0, cagr / np.abs(max_dd), np.nan)
    closed = trades[trades["status"] == 1]
    col = closed["col"].astype(np.int64)
    pnl = closed["pnl"]
    n_trades = np.bincount(col, minlength=m).astype(float)
    wins = np.bincount(col, weights=(pnl > 0).astype(float), minlength=m)
    gross_win = np.bincount(col, weights=np.where(pnl > 0, pnl, 0.0), minlength=m)
    gross_loss = -np.bincount(col, weights=np.where(pnl < 0, pnl, 0.0), minlength=m)
    pnl_sum = np.bincount(col, weights=pnl, minlength=m)
    bars = np.bincount(
        col, weights=(closed["exit_idx"] - closed["entry_idx"]).astype(float), minlength=m
    )
    with np.errstate(invalid="ignore", divide="ignore"):
        has = n_trades > 0
        win_rate = np.where(has, wins / n_trades, np.nan)
        profit_factor = np.where(
            gross_loss > 0, gross_win / gross_loss, np.where(gross_win > 0, np.inf, np.nan)
        )
        expectancy = np.where(has, pnl_sum / n_trades, np.nan)
        avg_bars = np.where(has, bars / n_trades, np.nan)
    return {
        "total_return": total_return,
        "cagr": cagr,
        "sharpe": sharpe,
        "sortino": sortino,
        "calmar": calmar,
        "max_drawdown": max_dd,
        "win_rate": win_rate,
        "profit_factor": profit_factor,
        "expectancy": expectancy,
        "n_trades": n_trades.astype(np.int64),
        "avg_trade_duration": pd.to_timedelta(avg_bars * bar_seconds, unit="s"),
        "exposure": (assets != 0).mean(axis=0),
    }


def metrics(pf: vbt.Portfolio, config: BacktestConfig) -> pd.DataFrame:
    """Per-column performance metrics (rows = portfolio columns; docs/market.md#metrics)."""
    index = pf.wrapper.index
    ppy = periods_per_year(index, config)
    values = _metrics_from_arrays(
        pf.value().to_numpy(),
        pf.assets().to_numpy(),
        pf.exit_trades.values,
        config.init_cash,
        ppy,
        _SECONDS_PER_YEAR / ppy,
    )
    return pd.DataFrame(values, index=pf.wrapper.columns)[list(METRIC_COLUMNS)]


def trade_list(pf: vbt.Portfolio, index: pd.Index | None = None) -> pd.DataFrame:
    """Every trade (closed and still open) with entry/exit times, prices, size, PnL and return."""
    rec = pf.exit_trades.values
    index = pf.wrapper.index if index is None else index
    columns = pf.wrapper.columns
    frame = pd.DataFrame(
        {
            "entry_time": index[rec["entry_idx"]],
            "exit_time": index[rec["exit_idx"]],
            "size": rec["size"],
            "entry_price": rec["entry_price"],
            "exit_price": rec["exit_price"],
            "fees": rec["entry_fees"] + rec["exit_fees"],
            "pnl": rec["pnl"],
            "return": rec["return"],
            "status": np.where(rec["status"] == 1, "Closed", "Open"),
        }
    )
    col_index = columns[rec["col"]]
    if isinstance(columns, pd.MultiIndex):
        for level in columns.names:
            frame.insert(0, level, col_index.get_level_values(level))
    else:
        frame.insert(0, columns.name or "column", col_index)
    return frame


def run_backtest(
    wide: Wide, entries: pd.DataFrame, exits: pd.DataFrame, config: BacktestConfig | None = None
) -> BacktestResult:
    """Simulate and collect metrics, equity, drawdown and trades for every column."""
    config = config or BacktestConfig()
    pf = simulate(wide, entries, exits, config)
    index = wide["close"].index  # tz-aware again (simulate hands vectorbt naive UTC)
    equity = pd.DataFrame(pf.value().to_numpy(), index=index, columns=pf.wrapper.columns)
    drawdown = equity / equity.cummax() - 1.0
    return BacktestResult(pf, metrics(pf, config), equity, drawdown, trade_list(pf, index))


def chunk_columns(n_bars: int, n_columns: int, max_bytes: int, arrays_per_cell: int = 80) -> int:
    """Columns per simulation chunk so that the sweep's peak memory stays near max_bytes.

    80 float64 cells per (bar, column) is measured, not guessed: vectorbt's broadcast inputs,
    order/trade records, value/assets/cash and our metric temporaries (peak RSS growth of a
    150-symbol x 10,080-bar sweep was ~3.4x a 24-array estimate).
    """
    per_column = max(1, n_bars) * 8 * arrays_per_cell
    return int(max(1, min(n_columns, max_bytes // per_column)))


def run_metrics(
    wide: Wide, entries: pd.DataFrame, exits: pd.DataFrame, config: BacktestConfig
) -> pd.DataFrame:
    """Metrics only (no trade list, no equity kept): the lean path used by parameter sweeps."""
    return metrics(simulate(wide, entries, exits, config), config)


def sweep_labels(grid: Sequence[dict[str, float]], symbols: Sequence[str]) -> pd.MultiIndex:
    """Column labels (param..., symbol) for every parameter set x symbol, params outermost."""
    names = list(grid[0])
    tuples = [(*(p[k] for k in names), s) for p in grid for s in symbols]
    return pd.MultiIndex.from_tuples(tuples, names=[*names, "symbol"])


__all__ = [
    "ENGINE",
    "FILL_TIMINGS",
    "METRIC_COLUMNS",
    "BacktestConfig",
    "BacktestResult",
    "chunk_columns",
    "metrics",
    "periods_per_year",
    "run_backtest",
    "run_metrics",
    "simulate",
    "sweep_labels",
    "trade_list",
]
