"""Candles from ticks: vectorized, exact, and mergeable so batch and live candles share one code path.

Why volume is an exact sum and how it is kept: docs/market.md#exact-volume.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from hft_pipeline.market.timeframes import PANDAS_RULES, timeframe_ns

CANDLE_COLUMNS = ("ts", "open", "high", "low", "close", "volume", "ticks")


# --- exact summation -----------------------------------------------------------------------------


def _two_sum(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """s, e with s = fl(a + b) and s + e == a + b exactly (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def merge_exact_sums(
    s1: np.ndarray, c1: np.ndarray, d1: np.ndarray, s2: np.ndarray, c2: np.ndarray, d2: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(s, c, d) whose exact sum is the exact sum of both inputs (docs/market.md#exact-volume)."""
    s, e = _two_sum(s1, s2)
    c, f = _two_sum(c1, c2)
    c, g = _two_sum(c, e)
    d = d1 + d2 + f + g  # second-order errors: exact while they fit in 53 bits
    return s, c, d


def exact_volume(s: np.ndarray, c: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The correctly rounded value of s + c + d (Boldo & Melquiond, round-to-odd 3-sum)."""
    uh, ul = _two_sum(c, d)
    th, tl = _two_sum(s, uh)
    w, x = _two_sum(tl, ul)
    # Round w + x to odd: if x carries lost bits and w is even, step w towards x.
    even = (np.asarray(w).view(np.int64) & 1) == 0
    fix = (x != 0) & even
    if np.any(fix):
        w = np.where(fix, np.nextafter(w, np.where(x > 0, np.inf, -np.inf)), w)
    return th + w


def _segment_sums(
    s: np.ndarray, c: np.ndarray, d: np.ndarray, starts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact (s, c, d) sum of each contiguous segment beginning at `starts`, by a pairwise tree."""
    n = s.shape[0]
    groups = starts.shape[0]
    if n == groups:
        return s, c, d
    lengths = np.diff(np.append(starts, n))
    seg = np.repeat(np.arange(groups), lengths)
    pos = np.arange(n) - starts[seg]
    while s.shape[0] > groups:
        keep = np.flatnonzero((pos & 1) == 0)
        paired = pos[keep] + 1 < lengths[seg[keep]]
        left = keep[paired]
        s_new, c_new, d_new = s[keep], c[keep], d[keep]
        ms, mc, md = merge_exact_sums(
            s[left], c[left], d[left], s[left + 1], c[left + 1], d[left + 1]
        )
        s_new[paired], c_new[paired], d_new[paired] = ms, mc, md
        s, c, d = s_new, c_new, d_new
        seg = seg[keep]
        pos = pos[keep] >> 1
        lengths = (lengths + 1) >> 1
    return s, c, d


# --- partial candles -----------------------------------------------------------------------------


@dataclass(slots=True)
class PartialCandles:
    """Mergeable candle state per (group, bucket), sorted by (group, ts).

    Besides the candle it keeps the (ts, seq) of the first and last tick, so a later merge can
    decide open/close exactly, and the volume as an exact (vs, vc, vd) triple.
    """

    group: np.ndarray  # int64
    ts: np.ndarray  # int64 bucket start, ns
    open: np.ndarray
    high: np.ndarray
    low: np.ndarray
    close: np.ndarray
    vs: np.ndarray
    vc: np.ndarray
    vd: np.ndarray
    ticks: np.ndarray  # int64
    first_ts: np.ndarray
    first_seq: np.ndarray
    last_ts: np.ndarray
    last_seq: np.ndarray

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @property
    def volume(self) -> np.ndarray:
        return exact_volume(self.vs, self.vc, self.vd)

    def take(self, index: np.ndarray) -> PartialCandles:
        return PartialCandles(*(getattr(self, f.name)[index] for f in fields(self)))

    @classmethod
    def concat(cls, parts: list[PartialCandles]) -> PartialCandles:
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))


def run_starts(*keys: np.ndarray) -> np.ndarray:
    """Indices where any of the (sorted) key columns changes, starting with 0."""
    n = keys[0].shape[0]
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
        for key in keys:
            change[1:] |= key[1:] != key[:-1]
    return np.flatnonzero(change)


def partial_candles(
    ts: np.ndarray,
    seq: np.ndarray,
    price: np.ndarray,
    volume: np.ndarray,
    tf_ns: int,
    group: np.ndarray | None = None,
) -> PartialCandles:
    """Mergeable candles of the ticks per (group, tf bucket); input order does not matter."""
    ts = np.asarray(ts, dtype=np.int64)
    seq = np.asarray(seq, dtype=np.int64)
    price = np.asarray(price, dtype=np.float64)
    volume = np.asarray(volume, dtype=np.float64)
    n = ts.shape[0]
    group = np.zeros(n, np.int64) if group is None else np.asarray(group, dtype=np.int64)
    if n and not _is_sorted(group, ts, seq):
        order = np.lexsort((seq, ts, group))
        ts, seq, price, volume, group = (
            ts[order],
            seq[order],
            price[order],
            volume[order],
            group[order],
        )
    bucket = (ts // tf_ns) * tf_ns
    starts = run_starts(group, bucket)
    if n == 0:
        return _empty_partials()
    ends = np.append(starts[1:], n) - 1
    zeros = np.zeros(n)
    vs, vc, vd = _segment_sums(volume, zeros, zeros, starts)
    return PartialCandles(
        group=group[starts],
        ts=bucket[starts],
        open=price[starts],
        high=np.maximum.reduceat(price, starts),
        low=np.minimum.reduceat(price, starts),
        close=price[ends],
        vs=vs,
        vc=vc,
        vd=vd,
        ticks=np.diff(np.append(starts, n)).astype(np.int64),
        first_ts=ts[starts],
        first_seq=seq[starts],
        last_ts=ts[ends],
        last_seq=seq[ends],
    )


def _is_sorted(group: np.ndarray, ts: np.ndarray, seq: np.ndarray) -> bool:
    """Whether rows are already ordered by (group, ts, seq): skips the lexsort for ordered feeds."""
    dg = np.diff(group)
    if np.any(dg < 0):
        return False
    dt = np.diff(ts)
    same_g = dg == 0
    if np.any(same_g & (dt < 0)):
        return False
    return not np.any(same_g & (dt == 0) & (np.diff(seq) <= 0))


def _empty_partials() -> PartialCandles:
    i = np.empty(0, np.int64)
    f = np.empty(0, np.float64)
    return PartialCandles(i, i, f, f, f, f, f, f, f, i, i, i, i, i)


def rollup(parts: PartialCandles, tf_ns: int | np.ndarray) -> PartialCandles:
    """Merge partial candles into coarser buckets (`tf_ns` a multiple of theirs, scalar or per row).

    Rows must hold one partial per finer bucket, ordered by (group, ts) within each run of equal
    `group`, as `partial_candles` and `rollup` return them (open/close are taken from the first/last
    row, so overlapping partials of the same bucket must be merged by key first, as LiveCandles
    does); runs of different groups may come in any order.
    """
    n = len(parts)
    if n == 0:
        return _empty_partials()
    bucket = (parts.ts // tf_ns) * tf_ns
    starts = run_starts(parts.group, bucket)
    ends = np.append(starts[1:], n) - 1
    vs, vc, vd = _segment_sums(parts.vs, parts.vc, parts.vd, starts)
    return PartialCandles(
        group=parts.group[starts],
        ts=bucket[starts],
        open=parts.open[starts],
        high=np.maximum.reduceat(parts.high, starts),
        low=np.minimum.reduceat(parts.low, starts),
        close=parts.close[ends],
        vs=vs,
        vc=vc,
        vd=vd,
        ticks=np.add.reduceat(parts.ticks, starts),
        first_ts=parts.first_ts[starts],
        first_seq=parts.first_seq[starts],
        last_ts=parts.last_ts[ends],
        last_seq=parts.last_seq[ends],
    )


# --- public batch API ----------------------------------------------------------------------------


def aggregate(
    ts: np.ndarray,
    seq: np.ndarray,
    price: np.ndarray,
    volume: np.ndarray,
    tf_ns: int,
    group: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Candles of the ticks as columns group, ts, open, high, low, close, volume, ticks, sorted by (group, ts)."""
    parts = partial_candles(ts, seq, price, volume, tf_ns, group)
    return {
        "group": parts.group,
        "ts": parts.ts,
        "open": parts.open,
        "high": parts.high,
        "low": parts.low,
        "close": parts.close,
        "volume": parts.volume,
        "ticks": parts.ticks,
    }


def candles_frame(ticks: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """Candles of a tick frame (columns ts, seq, price, volume, optional symbol) for `timeframe`.

    Returns columns [symbol,] ts, open, high, low, close, volume, ticks sorted by ([symbol,] ts).
    """
    tf = timeframe_ns(timeframe)
    has_symbol = "symbol" in ticks.columns
    if has_symbol:
        codes, names = pd.factorize(ticks["symbol"], sort=True)
        group = codes.astype(np.int64)
    else:
        group, names = None, None
    cols = aggregate(
        ticks["ts"].to_numpy(np.int64),
        ticks["seq"].to_numpy(np.int64),
        ticks["price"].to_numpy(np.float64),
        ticks["volume"].to_numpy(np.float64),
        tf,
        group,
    )
    frame = pd.DataFrame({c: cols[c] for c in CANDLE_COLUMNS})
    if has_symbol:
        frame.insert(0, "symbol", np.asarray(names, dtype=object)[cols["group"]])
    return frame


def resample_reference(ticks: pd.DataFrame, timeframe: str) -> pd.DataFrame:
    """The pandas reference: `resample(rule, closed="left", label="left")` of ticks sorted by (ts, seq).

    Same columns and order as `candles_frame`. Volume is `math.fsum` per bucket (the exact sum; see
    docs/market.md#exact-volume for why not pandas' Kahan `sum`). Slow: for tests and
    benchmarks only.
    """
    rule = PANDAS_RULES[timeframe]
    has_symbol = "symbol" in ticks.columns
    out = []
    groups = ticks.groupby("symbol", sort=True) if has_symbol else [(None, ticks)]
    for name, frame in groups:
        frame = frame.sort_values(["ts", "seq"], kind="stable")
        index = pd.to_datetime(frame["ts"].to_numpy(np.int64), unit="ns", utc=True)
        price = pd.Series(frame["price"].to_numpy(np.float64), index=index)
        volume = pd.Series(frame["volume"].to_numpy(np.float64), index=index)
        p = price.resample(rule, closed="left", label="left")
        res = pd.DataFrame(
            {
                "open": p.first(),
                "high": p.max(),
                "low": p.min(),
                "close": p.last(),
                "ticks": p.count(),
            }
        )
        res = res[res["ticks"] > 0]  # resample emits empty bins; a candle needs a tick
        # fsum over resample's own non-empty bins: the sorted ticks split by the bin counts
        # (agg(math.fsum) would also call Python for every empty bin).
        bounds = np.cumsum(res["ticks"].to_numpy())[:-1]
        res["volume"] = [math.fsum(v) for v in np.split(volume.to_numpy(), bounds)]
        res = res[["open", "high", "low", "close", "volume", "ticks"]]
        res.insert(0, "ts", res.index.as_unit("ns").asi8)
        if has_symbol:
            res.insert(0, "symbol", name)
        out.append(res.reset_index(drop=True))
    columns = (["symbol"] if has_symbol else []) + list(CANDLE_COLUMNS)
    if not out:
        return pd.DataFrame({c: [] for c in columns})
    frame = pd.concat(out, ignore_index=True)[columns]
    frame["ticks"] = frame["ticks"].astype(np.int64)
    return frame
