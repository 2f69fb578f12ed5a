"""Indicator cache: results keyed by indicator, parameters, symbols and a fingerprint of the input.

Fingerprint, shared tier and key format: docs/market.md#indicator-cache.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
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


class SharedTier(Protocol):
    """A second cache level other processes can read (e.g. `store.redis_cache.RedisTier`).

    Keys are the cache's own keys, prefix included; `delete_matching` takes an fnmatch glob.
    """

    def get(self, key: str) -> Value | None: ...

    def put(self, key: str, value: Value) -> None: ...

    def delete_matching(self, pattern: str) -> int: ...


@dataclass(slots=True)
class CacheStats:
    """Counters of one cache instance."""

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    shared_hits: int = 0  # hits served by the shared tier (also counted in `hits`)
    entries: int = 0
    bytes: int = 0

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class IndicatorCache:
    """Byte-bounded in-memory LRU, optionally backed by a shared tier other processes read."""

    def __init__(
        self,
        max_bytes: int = 512 * 1024**2,
        shared: SharedTier | None = None,
        prefix: str = "hft:ind:",
    ) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be > 0")
        self.max_bytes = max_bytes
        self.shared = shared
        self.prefix = prefix
        self._entries: OrderedDict[str, tuple[Value, int]] = OrderedDict()
        self._lock = threading.Lock()
        self._stats = CacheStats()

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
                s.hits, s.misses, s.evictions, s.shared_hits, len(self._entries), s.bytes
            )

    def get(self, key: str) -> Value | None:
        """A private copy of the cached value, or None (counted as a miss)."""
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None:
                self._entries.move_to_end(key)
                self._stats.hits += 1
                return _copy(entry[0])
        if self.shared is not None:
            value = self.shared.get(key)
            if value is not None:
                self._remember(key, value)
                with self._lock:
                    self._stats.hits += 1
                    self._stats.shared_hits += 1
                return _copy(value)
        with self._lock:
            self._stats.misses += 1
        return None

    def put(self, key: str, value: Value) -> None:
        """Store a private copy of `value` (in memory, and in the shared tier when there is one)."""
        stored = _copy(value)
        self._remember(key, stored)
        if self.shared is not None:
            self.shared.put(key, stored)

    def _remember(self, key: str, value: Value) -> None:
        size = _nbytes(value)
        with self._lock:
            old = self._entries.pop(key, None)
            if old is not None:
                self._stats.bytes -= old[1]
            if size > self.max_bytes:
                return  # larger than the whole budget: the shared tier may keep it, memory cannot
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
        if self.shared is not None:
            removed += self.shared.delete_matching(pattern)
        return removed

    def clear(self) -> None:
        """Drop every entry (in memory and this prefix's in the shared tier); keep the counters."""
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


__all__ = ["CacheStats", "IndicatorCache", "SharedTier", "Value", "cached_indicator", "fingerprint"]
