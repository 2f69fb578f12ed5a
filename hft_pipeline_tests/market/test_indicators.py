"""Indicators against independent pandas computations where the definitions coincide."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from hft_pipeline.market import indicators as ind
from hft_pipeline.market.frames import from_wide, split_long, to_wide


def _candles(n: int, seed: int, start: str = "2024-01-01 20:00") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.cumprod(1 + rng.normal(0, 0.002, n))
    spread = rng.uniform(0.0005, 0.003, n) * close
    index = pd.date_range(start, periods=n, freq="1min", tz="UTC", name="ts")
    return pd.DataFrame(
        {
            "open": close + rng.normal(0, 0.1, n),
            "high": close + spread,
            "low": close - spread,
            "close": close,
            "volume": rng.uniform(0, 10, n).round(2),
        },
        index=index,
    )


def test_sma_and_bollinger_match_pandas_rolling() -> None:
    c = _candles(500, 1)
    out = ind.compute(c, ["sma_20", "bbands_20_2"])
    mean = c["close"].rolling(20).mean()
    std = c["close"].rolling(20).std(ddof=0)  # TA-Lib uses the population deviation
    np.testing.assert_allclose(out["sma_20"], mean, rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(out["bb_middle_20_2"], mean, rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(out["bb_upper_20_2"], mean + 2 * std, rtol=1e-9, equal_nan=True)
    np.testing.assert_allclose(out["bb_lower_20_2"], mean - 2 * std, rtol=1e-9, equal_nan=True)
    assert out["sma_20"].isna().sum() == 19 == ind.warmup_bars("sma_20")


def test_obv_matches_pandas_cumsum_of_signed_volume() -> None:
    c = _candles(400, 2)
    sign = np.sign(c["close"].diff()).fillna(0)
    expected = (sign * c["volume"]).cumsum() + c["volume"].iloc[
        0
    ]  # TA-Lib seeds with bar 0's volume
    out = ind.compute(c, ["obv"])
    np.testing.assert_allclose(out["obv"], expected, rtol=1e-12)


def test_vwap_rolling_and_session_match_pandas() -> None:
    c = _candles(600, 3)  # crosses midnight UTC at bar 240
    tp = (c["high"] + c["low"] + c["close"]) / 3
    pv = tp * c["volume"]
    rolling = pv.rolling(30).sum() / c["volume"].rolling(30).sum()
    day = c.index.floor("D")
    session = pv.groupby(day).cumsum() / c["volume"].groupby(day).cumsum()
    out = ind.compute(c, ["vwap_30", "vwap_session"])
    np.testing.assert_allclose(out["vwap_30"], rolling, rtol=1e-10, equal_nan=True)
    np.testing.assert_allclose(out["vwap_session"], session, rtol=1e-10, equal_nan=True)
    # The session resets at midnight: the first bar of the new day is its own typical price.
    first = np.flatnonzero(c.index == pd.Timestamp("2024-01-02", tz="UTC"))[0]
    if c["volume"].iloc[first] > 0:
        assert out["vwap_session"].iloc[first] == pytest.approx(tp.iloc[first])


def test_column_names_and_warmup_are_stable() -> None:
    c = _candles(300, 4)  # crosses midnight UTC at bar 240
    # Two volume-free stretches: 25 bars mid-day (the last 6 rolling 20-bar windows inside it
    # hold no volume) and the first 5 bars of the new day (the new session has none yet).
    c.iloc[100:125, c.columns.get_loc("volume")] = 0.0
    c.iloc[240:245, c.columns.get_loc("volume")] = 0.0
    out = ind.compute(c)
    assert list(out.columns) == [
        "sma_20", "ema_20", "rsi_14", "macd_12_26_9", "macd_signal_12_26_9", "macd_hist_12_26_9",
        "bb_upper_20_2", "bb_middle_20_2", "bb_lower_20_2", "atr_14", "stoch_k_14_3_3",
        "stoch_d_14_3_3", "adx_14", "obv", "vwap_20", "vwap_session",
    ]  # fmt: skip
    # After warm-up a VWAP is undefined exactly where its bars hold no volume (it divides by
    # their volume); everywhere else it is a volume-weighted mean of typical prices, so it lies
    # within their range.
    tp = (c["high"] + c["low"] + c["close"]) / 3
    day = c.index.floor("D")
    no_volume = {
        "vwap_20": c["volume"].rolling(20).sum() == 0,
        "vwap_session": c["volume"].groupby(day).cumsum() == 0,
    }
    tp_range = {
        "vwap_20": (tp.rolling(20).min(), tp.rolling(20).max()),
        "vwap_session": (tp.groupby(day).cummin(), tp.groupby(day).cummax()),
    }
    assert no_volume["vwap_20"].iloc[119:125].all() and no_volume["vwap_20"].sum() == 6
    assert no_volume["vwap_session"].iloc[240:245].all() and no_volume["vwap_session"].sum() == 5
    for name in ind.DEFAULT_INDICATORS:
        first_col = ind.indicator_columns(name)[0]
        w = ind.warmup_bars(name)
        assert out[first_col].iloc[:w].isna().all(), name
        after = out[first_col].iloc[w:]
        if name in no_volume:
            pd.testing.assert_series_equal(
                after.isna(), no_volume[name].iloc[w:], check_names=False, obj=name
            )
            low, high = (bound.iloc[w:][after.notna()] for bound in tp_range[name])
            defined = after.dropna()
            assert (defined >= low - 1e-9).all() and (defined <= high + 1e-9).all(), name
        else:
            assert after.notna().all(), name
    assert set(no_volume) == {n for n in ind.DEFAULT_INDICATORS if n.startswith("vwap")}
    assert ind.warmup_bars("adx_14") == 27 and ind.warmup_bars("macd_12_26_9") == 33
    assert out["rsi_14"].dropna().between(0, 100).all()


def test_wide_many_symbols_with_gaps_equals_per_symbol() -> None:
    a, b = _candles(300, 5), _candles(300, 6)
    b = b.drop(b.index[100:130])  # 30 bars absent for b
    wide = to_wide({"AAA": a, "B_2": b})
    assert wide["close"].shape == (300, 2) and wide["close"]["B_2"].isna().sum() == 30
    res = ind.compute_wide(wide, ["ema_10", "rsi_14", "atr_14"])
    alone = ind.compute(b, ["ema_10", "rsi_14", "atr_14"])
    # Gaps are skipped, not filled: the gapped symbol equals its own gap-free computation.
    for col in ("ema_10", "rsi_14", "atr_14"):
        np.testing.assert_array_equal(res[col]["B_2"].dropna(), alone[col].dropna())
        assert res[col]["B_2"].iloc[100:130].isna().all()
    back = from_wide(wide)
    pd.testing.assert_frame_equal(back["B_2"], b, check_freq=False, check_names=False)


def test_split_long_round_trip() -> None:
    a = _candles(50, 7)
    long = pd.concat([a.assign(symbol="X"), a.assign(symbol="Y")]).reset_index()
    frames = split_long(long)
    assert sorted(frames) == ["X", "Y"]
    pd.testing.assert_frame_equal(frames["X"], a, check_freq=False)


def test_unknown_indicator_names_are_rejected() -> None:
    with pytest.raises(ind.UnknownIndicatorError, match="unknown indicator"):
        ind.parse_indicator("foo_3")
    with pytest.raises(ind.UnknownIndicatorError, match="needs 3"):
        ind.parse_indicator("macd_12_26")
    assert ind.indicator_columns("bbands_20_2.5") == [
        "bb_upper_20_2.5",
        "bb_middle_20_2.5",
        "bb_lower_20_2.5",
    ]
