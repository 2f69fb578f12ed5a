"""Dagster resources: the tick store (SQLite or PostgreSQL), the ingest service's HTTP API, and
the process's indicator cache."""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
from dagster import ConfigurableResource
from pydantic import Field

from hft_pipeline.client import ApiError as IngestApiError
from hft_pipeline.client import IngestClient
from hft_pipeline.market.candles import CANDLE_COLUMNS
from hft_pipeline.market.indicator_cache import IndicatorCache
from hft_pipeline.settings import Settings
from hft_pipeline.store import TickStore, open_store


class StoreResource(ConfigurableResource):
    """The tick store assets read ticks from and write candles, indicators and results to."""

    store_url: str = Field(
        default="",
        description="sqlite:///PATH or postgresql://...; empty: HFT_STORE_URL, else the "
        "embedded SQLite file under HFT_HOME (Settings.resolved_store_url).",
    )
    pool_size: int = Field(default=4, description="PostgreSQL connections per step.")

    @property
    def url(self) -> str:
        """The store URL this resource opens."""
        return self.store_url or Settings.from_env().resolved_store_url

    @contextmanager
    def open(self) -> Iterator[TickStore]:
        """A migrated store, closed when the block ends."""
        store = open_store(self.url, pool_size=self.pool_size)
        try:
            yield store
        finally:
            store.close()


class IngestApiResource(ConfigurableResource):
    """Client of the ingest service's HTTP API (docs/api.md)."""

    base_url: str = Field(default="http://127.0.0.1:8002", description="Ingest API root URL.")
    token: str | None = Field(default=None, description="Bearer token (HFT_API_TOKEN), if set.")
    timeout: float = Field(default=5.0, description="Seconds per request.")

    def _get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        with IngestClient(self.base_url, token=self.token, timeout=self.timeout) as client:
            body = client.get(path, params).json()
        if not isinstance(body, dict):
            raise IngestApiError(f"GET {path} answered 200 without a JSON object", 200, body)
        return body

    def health(self) -> dict[str, Any]:
        """`/health` body when healthy; IngestApiError (status 503 and the body) when degraded."""
        return self._get("/health")

    def status(self) -> dict[str, Any]:
        """`/status` body: counts, persistence lag, pending ticks, log and buffer sizes."""
        return self._get("/status")

    def candles(
        self, symbol: str, timeframe: str, start_ns: int, end_ns: int, limit: int = 10_000
    ) -> dict[str, Any]:
        """`/ticks/{symbol}` candles in [start_ns, end_ns), oldest first (keys: source, data)."""
        return self._get(
            f"/ticks/{symbol}",
            {
                "timeframe": timeframe,
                "start": str(start_ns),
                "end": str(end_ns),
                "limit": str(limit),
                "order": "asc",
            },
        )

    def live_candles(
        self, symbols: Sequence[str], start_ns: int, end_ns: int
    ) -> pd.DataFrame | None:
        """Closed 1m candles the service serves from memory (its live candles) for `symbols` in
        [start_ns, end_ns): symbol and CANDLE_COLUMNS; None when it is unreachable or has none."""
        try:
            self.health()
        except IngestApiError:
            return None
        frames = []
        for symbol in symbols:
            try:
                body = self.candles(symbol, "1m", start_ns, end_ns)
            except IngestApiError:
                continue
            if body.get("source") == "store" or not body.get("data"):
                continue  # served from the store, not from live candles: nothing to compare
            frame = pd.DataFrame(body["data"])
            if "closed" in frame:  # a still forming candle is no correction
                frame = frame[frame["closed"].astype(bool)]
            frames.append(frame.assign(symbol=symbol)[["symbol", *CANDLE_COLUMNS]])
        if not frames:
            return None
        return pd.concat(frames, ignore_index=True)


@functools.cache
def indicator_cache() -> IndicatorCache:
    """The process's indicator cache, built from the settings on first use.

    One per process: a retried or re-run window finds its indicators here (and in Redis when
    HFT_REDIS_URL is set, which other run processes share).
    """
    # Imported here: the Redis tier loads redis and pyarrow, which definition loading does not need.
    from hft_pipeline.store.redis_cache import build_indicator_cache

    settings = Settings.from_env()
    return build_indicator_cache(
        settings.indicator_cache_bytes, settings.redis_url, settings.indicator_cache_ttl_s
    )


__all__ = ["IngestApiError", "IngestApiResource", "StoreResource", "indicator_cache"]
