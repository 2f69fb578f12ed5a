"""The indicator cache's Redis tier: shared between instances, TTL, invalidation, configuration."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import redis

from hft_pipeline.market import indicators as ind
from hft_pipeline.market.frames import to_wide
from hft_pipeline.market.indicator_cache import IndicatorCache, fingerprint
from hft_pipeline.settings import Settings
from hft_pipeline.store.redis_cache import build_indicator_cache, decode, encode
from hft_pipeline_tests.conftest import IN_CI

REDIS_URL = "redis://127.0.0.1:6379/0"


def cache_from(env: dict[str, str], **kwargs: object) -> IndicatorCache:
    """The cache orchestration builds from the settings of `env`."""
    s = Settings.from_env(env)
    return build_indicator_cache(
        s.indicator_cache_bytes, s.redis_url, s.indicator_cache_ttl_s, **kwargs
    )


def _candles(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 50 * np.cumprod(1 + rng.normal(0, 0.003, n))
    idx = pd.date_range("2024-03-01", periods=n, freq="1min", tz="UTC", name="ts")
    return pd.DataFrame(
        {"open": close, "high": close * 1.001, "low": close * 0.999, "close": close,
         "volume": rng.uniform(1, 2, n)},
        index=idx,
    )  # fmt: skip


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    """A key prefix of this test alone on the local Redis; its keys are deleted afterwards."""
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        if IN_CI:
            pytest.fail(f"CI=true requires Redis at {REDIS_URL}: {exc}")
        pytest.skip(f"Redis at {REDIS_URL} is unreachable: {exc}")
    prefix = f"hft-test:{uuid.uuid4().hex}:"
    yield prefix
    keys = list(client.scan_iter(match=prefix + "*"))
    if keys:
        client.delete(*keys)


def test_redis_round_trip_shared_between_instances_with_ttl(redis_prefix: str) -> None:
    env = {"HFT_REDIS_URL": REDIS_URL, "HFT_INDICATOR_CACHE_TTL_S": "120"}
    writer = cache_from(env, prefix=redis_prefix)
    reader = cache_from(env, prefix=redis_prefix)  # another process, empty memory
    wide = to_wide({"A": _candles(120, 3), "B": _candles(120, 4)})
    value = ind.compute_wide(wide, ["sma_10", "macd_12_26_9"])
    key = writer.key("set", {"n": 2}, ["A", "B"], fingerprint(wide))
    writer.put(key, value)
    series = wide["close"]["A"].rename("close_a")
    writer.put(writer.key("close", {}, "A", "x"), series)

    client = redis.Redis.from_url(REDIS_URL)
    assert 0 < client.ttl(key) <= 120
    got = reader.get(key)
    assert reader.stats.shared_hits == 1 and reader.stats.hits == 1
    assert sorted(got) == sorted(value)
    for name in value:
        pd.testing.assert_frame_equal(got[name], value[name], check_freq=False)
    pd.testing.assert_series_equal(
        reader.get(writer.key("close", {}, "A", "x")), series, check_freq=False
    )
    reader.get(key)  # now from memory
    assert reader.stats.shared_hits == 2 and reader.stats.hits == 3

    assert writer.invalidate(symbol="B") == 2  # memory entry + redis key
    assert client.exists(key) == 0
    assert cache_from(env, prefix=redis_prefix).get(key) is None


def test_values_cross_the_wire_as_arrow_not_pickle() -> None:
    frame = _candles(5, 1)
    series = frame["close"].rename("c")
    for value in (frame, series, {"x": frame, "y": frame * 2}):
        raw = encode(value)
        n = int.from_bytes(raw[:4], "big")
        head = json.loads(raw[4 : 4 + n])  # a JSON header, then Arrow IPC streams
        first = pa.ipc.open_stream(raw[4 + n : 4 + n + head["parts"][0]["size"]]).read_all()
        assert first.num_rows == 5
        back = decode(raw)
        if isinstance(value, dict):
            assert sorted(back) == ["x", "y"]
            pd.testing.assert_frame_equal(back["y"], value["y"], check_freq=False)
        elif isinstance(value, pd.Series):
            pd.testing.assert_series_equal(back, value, check_freq=False)
        else:
            pd.testing.assert_frame_equal(back, value, check_freq=False)


def test_without_a_redis_url_the_cache_is_memory_only_and_sized_from_env() -> None:
    cache = cache_from({"HFT_INDICATOR_CACHE_BYTES": "4096"})
    assert cache.shared is None and cache.max_bytes == 4096
    assert cache_from({}).max_bytes == 512 * 1024**2
