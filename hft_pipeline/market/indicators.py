"""Technical indicators over candles: TA-Lib for the classics, numpy for VWAP.

Names, warm-up bars and the no-look-ahead rule: docs/market.md#indicators.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import talib
from talib import abstract

from hft_pipeline.market.frames import Wide, to_wide

DEFAULT_INDICATORS: tuple[str, ...] = (
    "sma_20",
    "ema_20",
    "rsi_14",
    "macd_12_26_9",
    "bbands_20_2",
    "atr_14",
    "stoch_14_3_3",
    "adx_14",
    "obv",
    "vwap_20",
    "vwap_session",
)


class UnknownIndicatorError(ValueError):
    """An indicator name this module cannot compute."""


@dataclass(frozen=True, slots=True)
class IndicatorSpec:
    """A parsed indicator name: kind plus positional parameters."""

    kind: str
    params: tuple[float, ...]

    @property
    def name(self) -> str:
        return "_".join([self.kind, *(_fmt(p) for p in self.params)])


def _fmt(p: float) -> str:
    return str(int(p)) if float(p).is_integer() else repr(float(p))


# kind -> (number of params, output column prefixes, needed fields)
_KINDS: dict[str, tuple[int, tuple[str, ...], tuple[str, ...]]] = {
    "sma": (1, ("sma",), ("close",)),
    "ema": (1, ("ema",), ("close",)),
    "rsi": (1, ("rsi",), ("close",)),
    "macd": (3, ("macd", "macd_signal", "macd_hist"), ("close",)),
    "bbands": (2, ("bb_upper", "bb_middle", "bb_lower"), ("close",)),
    "atr": (1, ("atr",), ("high", "low", "close")),
    "stoch": (3, ("stoch_k", "stoch_d"), ("high", "low", "close")),
    "adx": (1, ("adx",), ("high", "low", "close")),
    "obv": (0, ("obv",), ("close", "volume")),
    "vwap": (1, ("vwap",), ("high", "low", "close", "volume")),
}


def parse_indicator(name: str) -> IndicatorSpec:
    """Parse `sma_20`-style names; raise UnknownIndicatorError saying what is accepted."""
    parts = name.strip().lower().split("_")
    kind, raw = parts[0], parts[1:]
    if kind == "vwap" and raw == ["session"]:
        return IndicatorSpec("vwap_session", ())
    if kind not in _KINDS:
        raise UnknownIndicatorError(
            f"unknown indicator {name!r}: kinds are {', '.join(sorted(_KINDS))}, vwap_session"
        )
    n_params = _KINDS[kind][0]
    if len(raw) != n_params:
        raise UnknownIndicatorError(f"indicator {name!r} needs {n_params} parameter(s)")
    try:
        params = tuple(float(p) for p in raw)
    except ValueError:
        raise UnknownIndicatorError(f"indicator {name!r}: parameters must be numbers") from None
    if any(p <= 0 for p in params):
        raise UnknownIndicatorError(f"indicator {name!r}: parameters must be > 0")
    return IndicatorSpec(kind, params)


def indicator_columns(name: str) -> list[str]:
    """Output column names of indicator `name`, in order."""
    spec = parse_indicator(name)
    if spec.kind == "vwap_session":
        return ["vwap_session"]
    suffix = "".join("_" + _fmt(p) for p in spec.params)
    return [prefix + suffix for prefix in _KINDS[spec.kind][1]]


def required_fields(name: str) -> tuple[str, ...]:
    """Candle fields indicator `name` reads."""
    spec = parse_indicator(name)
    if spec.kind == "vwap_session":
        return ("high", "low", "close", "volume")
    return _KINDS[spec.kind][2]


def warmup_bars(name: str) -> int:
    """Number of leading NaN values of indicator `name` on a gap-free series."""
    spec = parse_indicator(name)
    p = [int(x) for x in spec.params]
    if spec.kind == "vwap_session":
        return 0
    if spec.kind == "vwap":
        return int(p[0]) - 1
    if spec.kind == "bbands":
        return abstract.Function(
            "BBANDS",
            timeperiod=int(p[0]),
            nbdevup=float(spec.params[1]),
            nbdevdn=float(spec.params[1]),
        ).lookback
    if spec.kind == "macd":
        return abstract.Function(
            "MACD", fastperiod=p[0], slowperiod=p[1], signalperiod=p[2]
        ).lookback
    if spec.kind == "stoch":
        return abstract.Function(
            "STOCH", fastk_period=p[0], slowk_period=p[1], slowd_period=p[2]
        ).lookback
    if spec.kind == "obv":
        return 0
    return abstract.Function(spec.kind.upper(), timeperiod=int(p[0])).lookback


# --- kernels: 1-D float64 arrays of one symbol (no gaps) -> tuple of outputs -----------------

_Kernel = Callable[[Mapping[str, np.ndarray], tuple[float, ...]], tuple[np.ndarray, ...]]


def _talib_kernels() -> dict[str, _Kernel]:
    return {
        "sma": lambda f, p: (talib.SMA(f["close"], timeperiod=int(p[0])),),
        "ema": lambda f, p: (talib.EMA(f["close"], timeperiod=int(p[0])),),
        "rsi": lambda f, p: (talib.RSI(f["close"], timeperiod=int(p[0])),),
        "macd": lambda f, p: talib.MACD(
            f["close"], fastperiod=int(p[0]), slowperiod=int(p[1]), signalperiod=int(p[2])
        ),
        # TA-Lib's BBANDS uses the population standard deviation (ddof=0) and an SMA middle.
        "bbands": lambda f, p: talib.BBANDS(
            f["close"], timeperiod=int(p[0]), nbdevup=p[1], nbdevdn=p[1], matype=0
        ),
        "atr": lambda f, p: (talib.ATR(f["high"], f["low"], f["close"], timeperiod=int(p[0])),),
        "stoch": lambda f, p: talib.STOCH(
            f["high"],
            f["low"],
            f["close"],
            fastk_period=int(p[0]),
            slowk_period=int(p[1]),
            slowk_matype=0,
            slowd_period=int(p[2]),
            slowd_matype=0,
        ),
        "adx": lambda f, p: (talib.ADX(f["high"], f["low"], f["close"], timeperiod=int(p[0])),),
        "obv": lambda f, p: (talib.OBV(f["close"], f["volume"]),),
    }


_KERNELS = _talib_kernels()


# --- VWAP: TA-Lib has none, so numpy over the whole (time x symbol) block ---------------------


def rolling_vwap(
    high: np.ndarray, low: np.ndarray, close: np.ndarray, volume: np.ndarray, window: int
) -> np.ndarray:
    """Volume-weighted typical price (h+l+c)/3 over the last `window` bars (axis 0); NaN if no volume."""
    tp = (high + low + close) / 3.0
    pv = tp * volume
    n = pv.shape[0]
    out = np.full(pv.shape, np.nan)
    if n < window:
        return out
    # Windowed sums rather than cumsum differences: no cancellation error on long series.
    pv_sum = np.lib.stride_tricks.sliding_window_view(pv, window, axis=0).sum(axis=-1)
    v_sum = np.lib.stride_tricks.sliding_window_view(volume, window, axis=0).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[window - 1 :] = np.where(v_sum > 0, pv_sum / v_sum, np.nan)
    return out


def session_vwap(
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    session: np.ndarray,
) -> np.ndarray:
    """VWAP accumulated since the start of each session (`session` = non-decreasing label per row)."""
    tp = (high + low + close) / 3.0
    pv = tp * volume
    new = np.ones(len(session), dtype=bool)
    new[1:] = session[1:] != session[:-1]
    starts = np.flatnonzero(new)
    lengths = np.diff(np.append(starts, len(session)))
    # Per-session cumulative sums: reduceat-free trick = cumsum minus the cumsum before the session.
    cpv = np.cumsum(pv, axis=0)
    cv = np.cumsum(volume, axis=0)
    base_pv = np.repeat(
        np.vstack([np.zeros((1,) + pv.shape[1:]), cpv[starts[1:] - 1]]), lengths, axis=0
    )
    base_v = np.repeat(
        np.vstack([np.zeros((1,) + pv.shape[1:]), cv[starts[1:] - 1]]), lengths, axis=0
    )
    spv = cpv - base_pv
    sv = cv - base_v
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sv > 0, spv / np.where(sv > 0, sv, 1.0), np.nan)


def _vwap_block(
    spec: IndicatorSpec, cols: Mapping[str, np.ndarray], index: pd.DatetimeIndex
) -> np.ndarray:
    h, lo, c, v = (cols[k] for k in ("high", "low", "close", "volume"))
    if spec.kind == "vwap":
        return rolling_vwap(h, lo, c, v, int(spec.params[0]))
    # Session = UTC calendar day: markets here trade around the clock, the day is the natural reset.
    days = index.asi8 // (86_400 * 10**9)
    return session_vwap(h, lo, c, v, days)


# --- entry points ------------------------------------------------------------------------------


def compute_wide(wide: Wide, names: Sequence[str] = DEFAULT_INDICATORS) -> dict[str, pd.DataFrame]:
    """Indicators for every symbol of a wide candles form: `{column name: DataFrame[ts x symbol]}`."""
    specs = [parse_indicator(n) for n in names]
    close = wide["close"]
    index, columns = close.index, close.columns
    arrays = {k: np.ascontiguousarray(v.to_numpy(dtype=np.float64)) for k, v in wide.items()}
    present = ~np.isnan(arrays["close"])
    out: dict[str, pd.DataFrame] = {}
    for spec in specs:
        col_names = indicator_columns(spec.name)
        fields = required_fields(spec.name)
        blocks = [np.full(close.shape, np.nan) for _ in col_names]
        for j in range(close.shape[1]):
            # A loop over symbols (not ticks): TA-Lib takes 1-D arrays; each call is C over all bars.
            rows = present[:, j]
            full = bool(rows.all())
            f = {k: (arrays[k][:, j] if full else arrays[k][rows, j]) for k in fields}
            f = {k: np.ascontiguousarray(a) for k, a in f.items()}
            if spec.kind in ("vwap", "vwap_session"):
                res: tuple[np.ndarray, ...] = (
                    _vwap_block(spec, {k: a[:, None] for k, a in f.items()}, index[rows])[:, 0],
                )
            else:
                res = tuple(_KERNELS[spec.kind](f, spec.params))
            for block, values in zip(blocks, res, strict=True):
                if full:
                    block[:, j] = values
                else:
                    block[rows, j] = values
        for name, block in zip(col_names, blocks, strict=True):
            out[name] = pd.DataFrame(block, index=index, columns=columns)
    return out


def compute(candles: pd.DataFrame, names: Sequence[str] = DEFAULT_INDICATORS) -> pd.DataFrame:
    """Indicators for one symbol's candles frame: one column per output, same index."""
    wide = to_wide(
        {"_": candles},
        fields=tuple(f for f in ("open", "high", "low", "close", "volume") if f in candles.columns),
    )
    res = compute_wide(wide, names)
    return pd.DataFrame(
        {name: frame["_"].to_numpy() for name, frame in res.items()}, index=candles.index
    )


__all__ = [
    "DEFAULT_INDICATORS",
    "IndicatorSpec",
    "UnknownIndicatorError",
    "compute",
    "compute_wide",
    "indicator_columns",
    "parse_indicator",
    "required_fields",
    "rolling_vwap",
    "session_vwap",
    "warmup_bars",
]
