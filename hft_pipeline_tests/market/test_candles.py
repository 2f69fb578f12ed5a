"""Batch candles: `aggregate`/`candles_frame` equal the pandas resample reference exactly."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hft_pipeline.market.candles import (
    aggregate,
    candles_frame,
    exact_volume,
    merge_exact_sums,
    partial_candles,
    resample_reference,
    rollup,
)
from hft_pipeline.market.timeframes import NS_PER_SECOND, PANDAS_RULES, TIMEFRAMES

NS = NS_PER_SECOND
#: 2026-05-28, the epoch itself, and 1938: bucket arithmetic must floor correctly on both sides.
BASES = (1_780_000_000 * NS, 0, -1_000_000_003 * NS)
SYMBOLS = ("R_100", "frxEURUSD", "PETR4")

#: Volumes a feed can send: zero, lots with decimals, and arbitrary doubles from 1e-8 to 1e6.
volumes = st.one_of(
    st.just(0.0),
    st.integers(0, 10**8).map(lambda v: v / 100),
    st.floats(1e-8, 1e6, allow_nan=False, allow_infinity=False),
)


@st.composite
def tick_frames(draw: st.DrawFn, max_ticks: int = 80) -> pd.DataFrame:
    """Multi-symbol ticks in arrival order: out of order, late, on and next to bucket edges."""
    n = draw(st.integers(1, max_ticks))
    base = draw(st.sampled_from(BASES))
    edge = st.sampled_from([-1, 0, 1])
    offsets = draw(
        st.lists(
            st.one_of(
                st.integers(0, 2 * 3600 * NS),
                st.builds(lambda k, d: k * NS + d, st.integers(0, 7200), edge),
                st.builds(lambda k, d: k * 60 * NS + d, st.integers(0, 120), edge),
                st.builds(lambda k, d: k * 3600 * NS + d, st.integers(0, 2), edge),
            ),
            min_size=n,
            max_size=n,
        )
    )
    frame = pd.DataFrame(
        {
            "symbol": draw(st.lists(st.sampled_from(SYMBOLS), min_size=n, max_size=n)),
            "ts": base + np.asarray(offsets, dtype=np.int64),
            # Unique overall, hence unique per symbol; unrelated to ts so ties on ts test seq order.
            "seq": np.asarray(draw(st.permutations(range(n))), dtype=np.int64),
            "price": draw(st.lists(st.floats(0.01, 1e5), min_size=n, max_size=n)),
            "volume": draw(st.lists(volumes, min_size=n, max_size=n)),
        }
    )
    if draw(st.booleans()):  # an in-order feed: the fast path
        frame = frame.sort_values(["ts", "seq"], kind="stable").reset_index(drop=True)
    return frame


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ticks=tick_frames())
def test_candles_frame_equals_pandas_resample_for_every_timeframe(ticks: pd.DataFrame) -> None:
    for timeframe in TIMEFRAMES:
        got = candles_frame(ticks, timeframe)
        pd.testing.assert_frame_equal(got, resample_reference(ticks, timeframe), check_exact=True)


@settings(max_examples=40, deadline=None)
@given(ticks=tick_frames())
def test_rollup_of_finest_partials_equals_direct_aggregate(ticks: pd.DataFrame) -> None:
    """Coarser candles rolled up from 1s partials equal candles made from the ticks: the live path."""
    group = pd.factorize(ticks["symbol"], sort=True)[0].astype(np.int64)
    cols = [ticks[c].to_numpy() for c in ("ts", "seq", "price", "volume")]
    finest = partial_candles(*cols, NS, group)
    for name, tf in TIMEFRAMES.items():
        whole = aggregate(*cols, tf, group)
        rolled = rollup(finest, tf)
        for col in ("group", "ts", "open", "high", "low", "close", "volume", "ticks"):
            np.testing.assert_array_equal(getattr(rolled, col), whole[col], err_msg=f"{name} {col}")


def test_aggregate_known_values_and_order() -> None:
    ts = np.array([5 * NS + 1, 2 * NS, 2 * NS, 3 * NS - 1, -1], dtype=np.int64)
    seq = np.array([4, 9, 3, 1, 0], dtype=np.int64)
    price = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    volume = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    group = np.array([1, 0, 0, 0, 0])
    out = aggregate(ts, seq, price, volume, 5 * NS, group)
    np.testing.assert_array_equal(out["group"], [0, 0, 1])
    np.testing.assert_array_equal(out["ts"], [-5 * NS, 0, 5 * NS])  # floor before the epoch
    # bucket [0, 5s) of group 0: (2s, seq 3) is first, (3s-1, seq 1) last.
    np.testing.assert_array_equal(out["open"], [50.0, 30.0, 10.0])
    np.testing.assert_array_equal(out["close"], [50.0, 40.0, 10.0])
    np.testing.assert_array_equal(out["high"], [50.0, 40.0, 10.0])
    np.testing.assert_array_equal(out["low"], [50.0, 20.0, 10.0])
    np.testing.assert_array_equal(out["volume"], [5.0, 9.0, 1.0])
    np.testing.assert_array_equal(out["ticks"], [1, 3, 1])


def test_empty_input_gives_no_candles() -> None:
    empty = np.empty(0)
    out = aggregate(empty.astype(np.int64), empty.astype(np.int64), empty, empty, NS)
    assert all(len(v) == 0 for v in out.values())
    frame = pd.DataFrame({"ts": [], "seq": [], "price": [], "volume": []})
    assert candles_frame(frame, "1m").empty


@settings(max_examples=300, deadline=None)
@given(st.lists(volumes, min_size=1, max_size=200), st.randoms(use_true_random=False))
def test_exact_volume_is_fsum_in_any_order(values: list[float], rnd) -> None:
    v = np.asarray(values)
    zeros = np.zeros_like(v)
    whole = partial_candles(np.zeros(len(v), np.int64), np.arange(len(v)), v, v, NS)
    assert whole.volume[0] == math.fsum(values)
    # Folding one value at a time in a shuffled order lands on the same bits.
    order = list(range(len(v)))
    rnd.shuffle(order)
    s, c, d = np.zeros(1), np.zeros(1), np.zeros(1)
    for i in order:
        s, c, d = merge_exact_sums(s, c, d, v[i : i + 1], zeros[:1], zeros[:1])
    assert exact_volume(s, c, d)[0] == math.fsum(values)


def test_exact_volume_rounds_ties_with_sticky_bits() -> None:
    # 2**53 + 1 is a tie; the tiny third term decides it upwards. Naive and Kahan sums round down.
    values = [2.0**53, 1.0, 1e-300]
    got = aggregate(np.zeros(3, np.int64), np.arange(3), np.ones(3), np.array(values), NS)
    assert got["volume"][0] == math.fsum(values) == 2.0**53 + 2


def test_pandas_kahan_sum_differs_in_last_bits_and_we_match_fsum() -> None:
    """Why the reference uses fsum: pandas' `resample().sum()` is not the exact sum."""
    rng = np.random.default_rng(7)
    n = 20_000
    ts = np.sort(rng.integers(0, 200 * NS, n))
    ticks = pd.DataFrame(
        {
            "ts": ts,
            "seq": np.arange(n),
            "price": rng.random(n) + 1,
            "volume": np.round(rng.random(n) * 100, 2),
        }
    )
    ours = candles_frame(ticks, "1s")
    series = pd.Series(ticks["volume"].to_numpy(), index=pd.to_datetime(ts, unit="ns"))
    kahan = series.resample(PANDAS_RULES["1s"], closed="left", label="left").sum()
    kahan = kahan[series.resample("1s").count() > 0].to_numpy()
    exact = resample_reference(ticks, "1s")["volume"].to_numpy()
    np.testing.assert_array_equal(ours["volume"].to_numpy(), exact)
    assert np.count_nonzero(kahan != exact) > 0  # pandas' sum is off in the last bit sometimes
    np.testing.assert_allclose(kahan, exact, rtol=4 * np.finfo(float).eps, atol=0)


def test_candles_frame_rejects_unknown_timeframe() -> None:
    frame = pd.DataFrame({"ts": [0], "seq": [0], "price": [1.0], "volume": [1.0]})
    with pytest.raises(ValueError, match="unknown timeframe '2m'"):
        candles_frame(frame, "2m")
