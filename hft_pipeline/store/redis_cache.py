"""The indicator cache's shared tier in Redis, and an indicator cache built on it.

Values cross the wire as Arrow IPC, not pickle: bytes from a shared server are not code. Each key
expires after a TTL, so a Redis without an eviction policy cannot fill up with stale results.
"""

from __future__ import annotations

import io
import json
from typing import Any

import pandas as pd
import pyarrow as pa
import redis

from hft_pipeline.market.indicator_cache import IndicatorCache, Value

__all__ = ["RedisTier", "build_indicator_cache"]


class RedisTier:
    """`market.indicator_cache.SharedTier` on a Redis server: set with TTL, get, delete by glob."""

    def __init__(self, url: str, ttl_s: int = 3600) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be > 0 (seconds a cached result is kept in Redis)")
        self.ttl_s = ttl_s
        self._client = redis.Redis.from_url(url)

    def get(self, key: str) -> Value | None:
        raw = self._client.get(key)
        return None if raw is None else decode(raw)

    def put(self, key: str, value: Value) -> None:
        self._client.set(key, encode(value), ex=self.ttl_s)

    def delete_matching(self, pattern: str) -> int:
        keys = list(self._client.scan_iter(match=pattern, count=1000))
        return int(self._client.delete(*keys)) if keys else 0


def build_indicator_cache(
    max_bytes: int | None = None, redis_url: str = "", ttl_s: int = 3600, **kwargs: Any
) -> IndicatorCache:
    """A cache of `max_bytes` (None: the cache's default), in Redis too when `redis_url` is set.

    The values are the settings' HFT_INDICATOR_CACHE_BYTES, HFT_REDIS_URL and
    HFT_INDICATOR_CACHE_TTL_S (docs/configuration.md); `kwargs` go to IndicatorCache.
    """
    if max_bytes is not None:
        kwargs.setdefault("max_bytes", max_bytes)
    if redis_url:
        kwargs.setdefault("shared", RedisTier(redis_url, ttl_s=ttl_s))
    return IndicatorCache(**kwargs)


def encode(value: Value) -> bytes:
    """A frame, series or {name: frame} as a JSON header (length-prefixed) + Arrow IPC streams."""
    parts = value if isinstance(value, dict) else {"": value}
    kind = "dict" if isinstance(value, dict) else type(value).__name__
    header: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, obj in parts.items():
        is_series = isinstance(obj, pd.Series)
        frame = obj.to_frame(name="__value__") if is_series else obj
        table = pa.Table.from_pandas(frame, preserve_index=True)
        sink = io.BytesIO()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        blob = sink.getvalue()
        header.append(
            {"name": name, "series": is_series, "series_name": obj.name if is_series else None,
             "size": len(blob)}
        )  # fmt: skip
        blobs.append(blob)
    head = json.dumps({"kind": kind, "parts": header}).encode()
    return len(head).to_bytes(4, "big") + head + b"".join(blobs)


def decode(raw: bytes) -> Value:
    """The value `encode` wrote."""
    n = int.from_bytes(raw[:4], "big")
    head = json.loads(raw[4 : 4 + n])
    pos = 4 + n
    out: dict[str, Any] = {}
    for part in head["parts"]:
        blob = raw[pos : pos + part["size"]]
        pos += part["size"]
        frame = pa.ipc.open_stream(blob).read_all().to_pandas()
        if part["series"]:
            out[part["name"]] = frame["__value__"].rename(part["series_name"])
        else:
            out[part["name"]] = frame
    return out if head["kind"] == "dict" else out[""]
