"""Backtest and comparison frames <-> rows of the results tables, checked before any write.

The frames have fixed columns (docs/results.md#frames): a column the tables do not hold is an
error, never dropped silently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from numbers import Integral, Real
from typing import Any

import numpy as np
import pandas as pd

from hft_pipeline.store.results.bulk import dense_lookup
from hft_pipeline.store.results.tables import METRIC_TYPES, METRICS

KEY_COLUMNS = ("strategy", "symbol", "params")
#: Columns of the frames `write_backtest` takes and `backtest_metrics` returns, in read order.
METRICS_FRAME_COLUMNS = (*KEY_COLUMNS, "param_values", *METRICS)
TRADE_TIME_COLUMNS = ("entry_time", "exit_time")
TRADE_FLOAT_COLUMNS = ("size", "entry_price", "exit_price", "fees", "pnl", "return")
TRADES_FRAME_COLUMNS = (
    *KEY_COLUMNS, "param_values", *TRADE_TIME_COLUMNS, *TRADE_FLOAT_COLUMNS, "status",
)  # fmt: skip
COMPARISON_FRAME_COLUMNS = ("rank", *KEY_COLUMNS, *METRICS)

_NAT = np.iinfo(np.int64).min


def _check_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if frame.columns.duplicated().any():
        raise ValueError(f"{what}: duplicate column names {list(frame.columns)}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks columns {missing}; it has {list(frame.columns)}")
    extra = [c for c in frame.columns if c not in columns]
    if extra:
        raise ValueError(
            f"{what}: columns {extra} have no place in the results tables; the frame holds "
            f"exactly {list(columns)} (parameters go in param_values)"
        )


def _text(frame: pd.DataFrame, name: str, what: str) -> list[str]:
    values = frame[name].tolist()
    if not all(isinstance(v, str) for v in values):
        raise ValueError(f"{what}: column {name!r} must hold str values only")
    return values


def _floats(frame: pd.DataFrame, name: str, what: str) -> list[float]:
    column = frame[name]
    if not (pd.api.types.is_float_dtype(column) or pd.api.types.is_integer_dtype(column)):
        raise ValueError(f"{what}: column {name!r} must be numeric, not {column.dtype}")
    return column.to_numpy(dtype=np.float64).tolist()


def _ints(frame: pd.DataFrame, name: str, what: str) -> list[int]:
    column = frame[name]
    if not pd.api.types.is_integer_dtype(column):
        raise ValueError(f"{what}: column {name!r} must be int64, not {column.dtype}")
    return column.to_numpy(dtype=np.int64).tolist()


def _durations_ns(frame: pd.DataFrame, name: str, what: str) -> list[int | None]:
    column = frame[name]
    if column.dtype.kind != "m":
        raise ValueError(f"{what}: column {name!r} must be a timedelta, not {column.dtype}")
    ns = column.to_numpy().astype("m8[ns]").view(np.int64)
    return [None if v == _NAT else v for v in ns.tolist()]


def _times_ns(frame: pd.DataFrame, name: str, what: str) -> list[int]:
    column = frame[name]
    if column.dtype.kind == "M" or isinstance(column.dtype, pd.DatetimeTZDtype):
        return pd.DatetimeIndex(column).as_unit("ns").asi8.tolist()
    if pd.api.types.is_integer_dtype(column):
        return column.to_numpy(dtype=np.int64).tolist()
    raise ValueError(f"{what}: column {name!r} must be datetime64 or int64 ns, not {column.dtype}")


def exact_params(value: Any, what: str) -> dict[str, int | float | bool | str]:
    """A parameter set as plain JSON values ({name: number}), unchanged in value."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{what}: param_values must be a mapping {{name: value}}, not {value!r}")
    out: dict[str, int | float | bool | str] = {}
    for key, v in value.items():
        if isinstance(v, bool | np.bool_ | str):
            out[str(key)] = v if isinstance(v, str) else bool(v)
        elif isinstance(v, Integral):
            out[str(key)] = int(v)
        elif isinstance(v, Real) and math.isfinite(float(v)):
            out[str(key)] = float(v)
        else:
            raise ValueError(f"{what}: parameter {key!r} = {v!r} is not a finite number or str")
    return out


def metric_values(frame: pd.DataFrame, what: str) -> dict[str, list[Any]]:
    """The METRICS columns of `frame` as lists of storable values."""
    out: dict[str, list[Any]] = {}
    for name, kind in METRIC_TYPES.items():
        if name == "avg_trade_duration":
            out[name] = _durations_ns(frame, name, what)
        elif kind.python_type is int:
            out[name] = _ints(frame, name, what)
        else:
            out[name] = _floats(frame, name, what)
    return out


def _records(run_key: str, columns: dict[str, list[Any]], n: int) -> list[dict[str, Any]]:
    names = list(columns)
    return [
        {"run_key": run_key, "row_no": i, **dict(zip(names, values, strict=True))}
        for i, values in enumerate(zip(*columns.values(), strict=True))
    ] if names else [{"run_key": run_key, "row_no": i} for i in range(n)]  # fmt: skip


def metrics_rows(run_key: str, metrics: pd.DataFrame) -> list[dict[str, Any]]:
    """backtest_metrics rows of a metrics frame (ValueError if a column cannot be stored)."""
    what = "write_backtest metrics"
    _check_columns(metrics, METRICS_FRAME_COLUMNS, what)
    columns: dict[str, list[Any]] = {k: _text(metrics, k, what) for k in KEY_COLUMNS}
    columns["param_values"] = [exact_params(p, what) for p in metrics["param_values"]]
    columns.update(metric_values(metrics, what))
    return _records(run_key, columns, len(metrics))


def trades_rows(run_key: str, trades: pd.DataFrame) -> list[dict[str, Any]]:
    """backtest_trades rows of a trades frame (an empty frame may lack columns)."""
    what = "write_backtest trades"
    if trades.empty:
        return []
    _check_columns(trades, TRADES_FRAME_COLUMNS, what)
    columns: dict[str, list[Any]] = {k: _text(trades, k, what) for k in (*KEY_COLUMNS, "status")}
    columns["param_values"] = [exact_params(p, what) for p in trades["param_values"]]
    columns["entry_ns"] = _times_ns(trades, "entry_time", what)
    columns["exit_ns"] = _times_ns(trades, "exit_time", what)
    columns.update({c: _floats(trades, c, what) for c in TRADE_FLOAT_COLUMNS})
    return _records(run_key, columns, len(trades))


def comparison_rows(run_key: str, ranked: pd.DataFrame) -> list[dict[str, Any]]:
    """comparison_rows rows of a ranked comparison table."""
    what = "write_comparison"
    _check_columns(ranked, COMPARISON_FRAME_COLUMNS, what)
    columns: dict[str, list[Any]] = {"rank": _ints(ranked, "rank", what)}
    columns.update({k: _text(ranked, k, what) for k in KEY_COLUMNS})
    columns.update(metric_values(ranked, what))
    return _records(run_key, columns, len(ranked))


# -- rows -> frames ----------------------------------------------------------------------------


def indicators_wide(
    rows: np.ndarray, symbols_by_id: Mapping[int, str], names_by_id: Mapping[int, str]
) -> pd.DataFrame:
    """Long indicator rows (symbol_id, ts, name_id, value; any order) -> symbol, ts, one float64
    column per name (sorted by name), rows sorted by (symbol, ts)."""
    if not len(rows):
        return pd.DataFrame(
            {"symbol": np.empty(0, object), "ts": np.empty(0, np.int64)}, columns=["symbol", "ts"]
        )
    symbol, sym_rank = dense_lookup(symbols_by_id, rows["symbol_id"])
    name, name_rank = dense_lookup(names_by_id, rows["name_id"])
    present, name_col = np.unique(name_rank, return_inverse=True)
    ts = rows["ts"]
    order = np.lexsort((name_col, ts, sym_rank))
    sym_rank, ts, name_col = sym_rank[order], ts[order], name_col[order]
    new_row = np.r_[True, (sym_rank[1:] != sym_rank[:-1]) | (ts[1:] != ts[:-1])]
    row = np.cumsum(new_row) - 1
    matrix = np.full((int(row[-1]) + 1, len(present)), np.nan)
    matrix[row, name_col] = rows["value"][order]
    labels = name[order][np.unique(name_col, return_index=True)[1]]
    data: dict[str, Any] = {"symbol": symbol[order][new_row], "ts": ts[new_row]}
    data.update({str(n): matrix[:, j] for j, n in enumerate(labels)})
    return pd.DataFrame(data)


def _float_array(values: Sequence[Any]) -> np.ndarray:
    # SQLite hands a stored NaN back as NULL (None): NaN again.
    return np.array([np.nan if v is None else v for v in values], dtype=np.float64)


def _duration_array(values: Sequence[Any]) -> np.ndarray:
    ns = np.array([_NAT if v is None else v for v in values], dtype=np.int64)
    return ns.view("m8[ns]")


def _metric_frame_columns(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for name, kind in METRIC_TYPES.items():
        values = [r[name] for r in rows]
        if name == "avg_trade_duration":
            data[name] = _duration_array(values)
        elif kind.python_type is int:
            data[name] = np.array(values, dtype=np.int64)
        else:
            data[name] = _float_array(values)
    return data


def _texts(rows: Sequence[Mapping[str, Any]], name: str) -> np.ndarray:
    return np.array([r[name] for r in rows], dtype=object)


def metrics_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The metrics frame of backtest_metrics rows ordered by row_no."""
    data: dict[str, Any] = {k: _texts(rows, k) for k in (*KEY_COLUMNS, "param_values")}
    data.update(_metric_frame_columns(rows))
    return pd.DataFrame(data, columns=list(METRICS_FRAME_COLUMNS))


def trades_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The trades frame of backtest_trades rows ordered by row_no (times tz-aware UTC)."""
    data: dict[str, Any] = {k: _texts(rows, k) for k in (*KEY_COLUMNS, "param_values")}
    for column, stored in (("entry_time", "entry_ns"), ("exit_time", "exit_ns")):
        ns = np.array([r[stored] for r in rows], dtype=np.int64)
        data[column] = pd.DatetimeIndex(ns.view("M8[ns]")).tz_localize("UTC")
    data.update({c: _float_array([r[c] for r in rows]) for c in TRADE_FLOAT_COLUMNS})
    data["status"] = _texts(rows, "status")
    return pd.DataFrame(data, columns=list(TRADES_FRAME_COLUMNS))


def comparison_frame(rows: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The ranked comparison table of comparison_rows rows ordered by row_no."""
    data: dict[str, Any] = {"rank": np.array([r["rank"] for r in rows], dtype=np.int64)}
    data.update({k: _texts(rows, k) for k in KEY_COLUMNS})
    data.update(_metric_frame_columns(rows))
    return pd.DataFrame(data, columns=list(COMPARISON_FRAME_COLUMNS))
