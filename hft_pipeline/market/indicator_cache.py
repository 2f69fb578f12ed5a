"""Indicator cache: results keyed by indicator, parameters, symbols and a fingerprint of the input.

The fingerprint hashes the raw numpy buffers (index, column labels and values) with xxh3-128,
never a pickled frame. Entries live in an in-memory LRU bounded by bytes and, when a Redis URL is
given (`HFT_REDIS_URL`), also in Redis with a TTL, so another process (a Dagster step) can reuse
them. Values are copied in and out: a caller mutating what it got cannot corrupt the cache.

Keys read `<prefix><indicator>|,<sym>,<sym>,|<params json>|<fingerprint>`; symbols never contain
`|` or `,` (see `ticks.validate_symbol`), so invalidation by symbol or indicator glob is exact.
"""

from __future__ import annotations

import fnmatch
import functools
import io
import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import xxhash

Value = pd.DataFrame | pd.Series | dict[str, pd.DataFrame]
F = TypeVar("F", bound=Callable[..., Any])


def _hash_array(h: xxhash.xxh3_128, a: np.ndarray) -> None:
    a = np.ascontiguousarray(a)
    h.update(f"{a.dtype.str}{a.shape}".encode())
    if a.dtype == object:
        h.update("\x1f".join(map(str, a.ravel())).encode())
    else:
        h.update(memoryview(a).cast("B"))


def _hash_pandas(h: xxhash.xxh3_128, obj: pd.DataFrame | pd.Series) -> None:
    index = obj.index
    _hash_array(h, index.asi8 if isinstance(index, pd.DatetimeIndex) else index.to_numpy())
    if isinstance(obj, pd.Series):
        h.update(f"S{obj.name}".encode())
        _hash_array(h, obj.to_numpy())
        return
    h.update("\x1f".join(map(str, obj.columns)).encode())
    for _, col in obj.items():  # per column: no consolidated copy of mixed-dtype frames
        _hash_array(h, col.to_numpy())


def fingerprint(data: Any) -> str:
    """128-bit hex fingerprint of a frame, series, array or mapping of them (e.g. a wide form)."""
    h = xxhash.xxh3_128()
    items = sorted(data.items()) if isinstance(data, Mapping) else [("", data)]
    for name, obj in items:
        h.update(f"\x1e{name}".encode())
        if isinstance(obj, pd.DataFrame | pd.Series):
            _hash_pandas(h, obj)
        else:
            _hash_array(h, np.asarray(obj))
    return h.hexdigest()


def _nbytes(value: Value) -> int:
    # Shallow size from dtypes (object columns count their pointers); DataFrame.memory_usage
    # builds a Series per column and costs more than the copy it sizes.
    if isinstance(value, dict):
        return sum(_nbytes(v) for v in value.values())
    if isinstance(value, pd.Series):
        return int(value.index.nbytes + value.nbytes)
    return int(value.index.nbytes + len(value) * sum(dt.itemsize for dt in value.dtypes))


def _copy(value: Value) -> Value:
    if isinstance(value, dict):
        return {k: v.copy(deep=True) for k, v in value.items()}
    return value.copy(deep=True)


# --- Redis serialization: Arrow IPC, not pickle (bytes from a shared server are not code) ------


def _encode(value: Value) -> bytes:
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


def _decode(raw: bytes) -> Value:
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


@dataclass(slots=True)
class CacheStats:
    """Counters of one cache instance."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    redis_hits: int = 0
    entries: int = 0
    bytes: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class IndicatorCache:
    """Byte-bounded in-memory LRU, optionally backed by Redis with a TTL."""

    def __init__(
        self,
        max_bytes: int = 512 * 1024**2,
        redis_url: str | None = None,
        ttl_s: int = 3600,
        prefix: str = "hft:ind:",
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.prefix = prefix
        self._entries: OrderedDict[str, tuple[Value, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = CacheStats()
        self._redis = None
        if redis_url:
            import redis  # only when configured: the in-memory cache needs no server

            self._redis = redis.Redis.from_url(redis_url)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> IndicatorCache:
        """Cache configured from `HFT_REDIS_URL`, `HFT_INDICATOR_CACHE_BYTES`, `HFT_INDICATOR_CACHE_TTL_S`."""
        env = os.environ if env is None else env
        if env.get("HFT_INDICATOR_CACHE_BYTES"):
            kwargs.setdefault("max_bytes", int(env["HFT_INDICATOR_CACHE_BYTES"]))
        if env.get("HFT_INDICATOR_CACHE_TTL_S"):
            kwargs.setdefault("ttl_s", int(env["HFT_INDICATOR_CACHE_TTL_S"]))
        return cls(redis_url=env.get("HFT_REDIS_URL") or None, **kwargs)

    # -- keys -------------------------------------------------------------------------------

    def key(
        self, indicator: str, params: Mapping[str, Any], symbols: Iterable[str] | str, fp: str
    ) -> str:
        """Cache key for `indicator(params)` over `symbols` whose input has fingerprint `fp`."""
        syms = [symbols] if isinstance(symbols, str) else list(symbols)
        p = json.dumps(dict(params), sort_keys=True, default=str, separators=(",", ":"))
        return f"{self.prefix}{indicator}|,{','.join(map(str, syms))},|{p}|{fp}"

    # -- get / put --------------------------------------------------------------------------

    @property
    def stats(self) -> CacheStats:
        with self._lock:
            s = self._stats
            return CacheStats(
                s.hits, s.misses, s.evictions, s.redis_hits, len(self._entries), s.bytes
            )

    def get(self, key: str) -> Value | None:
        """A private copy of the cached value, or None (counted as a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._stats.hits += 1
                return _copy(entry[0])
        if self._redis is not None:
            raw = self._redis.get(key)
            if raw is not None:
                value = _decode(raw)
                self._remember(key, value)
                with self._lock:
                    self._stats.hits += 1
                    self._stats.redis_hits += 1
                return _copy(value)
        with self._lock:
            self._stats.misses += 1
        return None

    def put(self, key: str, value: Value) -> None:
        """Store a private copy of `value` (memory, and Redis with TTL when configured)."""
        stored = _copy(value)
        self._remember(key, stored)
        if self._redis is not None:
            self._redis.set(key, _encode(stored), ex=self.ttl_s)

    def _remember(self, key: str, value: Value) -> None:
        size = _nbytes(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._stats.bytes -= old[1]
            if size > self.max_bytes:
                return  # larger than the whole budget: Redis may keep it, memory cannot
            self._entries[key] = (value, size)
            self._stats.bytes += size
            while self._stats.bytes > self.max_bytes:
                _, (_, evicted) = self._entries.popitem(last=False)
                self._stats.bytes -= evicted
                self._stats.evictions += 1

    def get_or_compute(self, key: str, compute: Callable[[], Value]) -> Value:
        """Cached value for `key`, computing and storing it on a miss."""
        value = self.get(key)
        if value is None:
            value = compute()
            self.put(key, value)
        return value

    # -- invalidation -----------------------------------------------------------------------

    def invalidate(self, symbol: str | None = None, indicator: str | None = None) -> int:
        """Drop entries whose indicator matches glob `indicator` and that cover `symbol`."""
        pattern = f"{self.prefix}{indicator or '*'}|*,{symbol},*|*" if symbol else (
            f"{self.prefix}{indicator or '*'}|*"
        )  # fmt: skip
        removed = 0
        with self._lock:
            for key in [k for k in self._entries if fnmatch.fnmatchcase(k, pattern)]:
                _, size = self._entries.pop(key)
                self._stats.bytes -= size
                removed += 1
        if self._redis is not None:
            keys = list(self._redis.scan_iter(match=pattern, count=1000))
            if keys:
                removed += int(self._redis.delete(*keys))
        return removed

    def clear(self) -> None:
        """Drop every entry of this cache (memory and this prefix in Redis); keep the counters."""
        self.invalidate()


def cached_indicator(cache: IndicatorCache, name: str | None = None) -> Callable[[F], F]:
    """Decorate `fn(data, **params)` so results are cached by name, params, symbols and data."""

    def decorate(fn: F) -> F:
        indicator = name or fn.__name__

        @functools.wraps(fn)
        def wrapper(data: Any, **params: Any) -> Any:
            symbols = _symbols_of(data)
            key = cache.key(indicator, params, symbols, fingerprint(data))
            return cache.get_or_compute(key, lambda: fn(data, **params))

        return wrapper  # type: ignore[return-value]

    return decorate


def _symbols_of(data: Any) -> list[str]:
    if isinstance(data, Mapping):  # wide form: {field: frame[ts x symbol]}
        first = next(iter(data.values()))
        return [str(c) for c in first.columns]
    if isinstance(data, pd.DataFrame | pd.Series) and "symbol" in data.attrs:
        return [str(data.attrs["symbol"])]
    return ["_"]


__all__ = ["CacheStats", "IndicatorCache", "cached_indicator", "fingerprint"]
