"""Indicator cache in memory: keys, LRU by bytes, stats, copies, invalidation (Redis: store/)."""

from __future__ import annotations

import fnmatch

import numpy as np
import pandas as pd
import pytest

from hft_pipeline.market import indicators as ind
from hft_pipeline.market.frames import to_wide
from hft_pipeline.market.indicator_cache import IndicatorCache, cached_indicator, fingerprint


def _candles(n: int = 200, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 50 * np.cumprod(1 + rng.normal(0, 0.003, n))
    idx = pd.date_range("2024-03-01", periods=n, freq="1min", tz="UTC", name="ts")
    return pd.DataFrame(
        {"open": close, "high": close * 1.001, "low": close * 0.999, "close": close,
         "volume": rng.uniform(1, 2, n)},
        index=idx,
    )  # fmt: skip


def test_fingerprint_tracks_values_index_and_columns() -> None:
    a = _candles()
    assert fingerprint(a) == fingerprint(a.copy())
    b = a.copy()
    b.iloc[-1, 3] += 1e-9
    assert fingerprint(a) != fingerprint(b)
    c = a.copy()
    c.index = c.index + pd.Timedelta("1min")
    assert fingerprint(a) != fingerprint(c)
    assert fingerprint(a) != fingerprint(a.rename(columns={"close": "last"}))
    assert fingerprint({"close": a}) != fingerprint({"open": a})


def test_hits_misses_and_returned_values_are_private_copies() -> None:
    cache = IndicatorCache(max_bytes=10 * 1024**2)
    calls = []

    @cached_indicator(cache, "sma")
    def sma(data: pd.DataFrame, window: int) -> pd.Series:
        calls.append(window)
        return data["close"].rolling(window).mean()

    c = _candles()
    first = sma(c, window=5)
    first.iloc[10] = -1.0  # a caller mutating its result must not corrupt the cache
    second = sma(c, window=5)
    assert calls == [5]
    assert second.iloc[10] == pytest.approx(c["close"].iloc[6:11].mean())
    sma(c, window=6)
    other = c.copy()
    other.iloc[0, 3] = 1.0
    sma(other, window=5)  # different data, same params: a miss
    s = cache.stats
    assert (s.hits, s.misses, s.entries) == (1, 3, 3)
    assert s.hit_rate == pytest.approx(0.25)
    assert calls == [5, 6, 5]


def test_lru_is_bounded_by_bytes_and_counts_evictions() -> None:
    frame = pd.DataFrame(np.ones((1000, 4)))  # 32,000 bytes of values + index
    size = int(frame.memory_usage(index=True).sum())
    cache = IndicatorCache(max_bytes=3 * size)
    for i in range(5):
        cache.put(f"k{i}", frame * i)
    cache.get("k2")  # k2 becomes most recent: k3 is evicted next, not k2
    cache.put("k5", frame)
    s = cache.stats
    assert s.evictions == 3 and s.entries == 3 and s.bytes == 3 * size <= cache.max_bytes
    assert cache.get("k2") is not None and cache.get("k3") is None and cache.get("k4") is not None


def test_invalidate_by_symbol_and_indicator_pattern() -> None:
    cache = IndicatorCache()
    v = pd.Series([1.0])
    cache.put(cache.key("rsi_14", {}, "R_10", "f1"), v)
    cache.put(cache.key("rsi_14", {}, "R_100", "f1"), v)
    cache.put(cache.key("sma_20", {}, ["R_10", "R_50"], "f1"), v)
    cache.put(cache.key("sma_50", {}, "R_100", "f1"), v)
    assert cache.invalidate(symbol="R_10") == 2  # not R_100: symbols are delimited exactly
    assert cache.stats.entries == 2
    assert cache.invalidate(indicator="sma_*") == 1
    assert cache.get(cache.key("rsi_14", {}, "R_100", "f1")) is not None


def test_full_indicator_set_through_cache_equals_direct() -> None:
    cache = IndicatorCache()
    wide = to_wide({"A": _candles(300, 1), "B": _candles(300, 2)})
    compute = cached_indicator(cache, "default_set")(ind.compute_wide)
    direct = ind.compute_wide(wide)
    got1 = compute(wide)
    got2 = compute(wide)
    assert cache.stats.hits == 1 and cache.stats.misses == 1
    for name, frame in direct.items():
        pd.testing.assert_frame_equal(got1[name], frame)
        pd.testing.assert_frame_equal(got2[name], frame)


class DictTier:
    """A shared tier in a dict: what another process would find (store/redis_cache is Redis)."""

    def __init__(self) -> None:
        self.values: dict[str, object] = {}

    def get(self, key: str):
        return self.values.get(key)

    def put(self, key: str, value) -> None:
        self.values[key] = value

    def delete_matching(self, pattern: str) -> int:
        keys = [k for k in self.values if fnmatch.fnmatchcase(k, pattern)]
        for k in keys:
            del self.values[k]
        return len(keys)


def test_a_shared_tier_serves_a_second_cache_and_is_invalidated_with_it() -> None:
    tier = DictTier()
    writer, reader = IndicatorCache(shared=tier), IndicatorCache(shared=tier)
    key = writer.key("sma_5", {}, ["A", "B"], "f")
    writer.put(key, pd.Series([1.0, 2.0]))
    got = reader.get(key)
    assert got.tolist() == [1.0, 2.0]
    assert (reader.stats.hits, reader.stats.shared_hits, reader.stats.entries) == (1, 1, 1)
    reader.get(key)  # now from its own memory
    assert (reader.stats.hits, reader.stats.shared_hits) == (2, 1)
    assert writer.invalidate(symbol="B") == 2  # its memory entry + the tier's
    assert tier.values == {} and IndicatorCache(shared=tier).get(key) is None
