"""One settings object read from `HFT_*` environment variables, shared by ingest and Dagster."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from hft_pipeline.market.ticks import InvalidSymbolError, validate_symbol
from hft_pipeline.observability.redaction import redact_url

FSYNC_POLICIES = ("always", "interval", "off")


class SettingsError(ValueError):
    """An environment variable or option with a value we cannot use."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Every tunable of the system. Field `x` reads `HFT_X` from the environment."""

    home: Path = Path(".hft")
    store_url: str = ""  # empty: sqlite:///<home>/hft.sqlite3
    api_host: str = "127.0.0.1"
    api_port: int = 8002
    api_token: str = ""
    # API store queries (docs/candles.md): at most this many at once, this many more waiting
    # (each up to api_store_wait_ms, else 429), each cancelled after api_store_timeout_s (503).
    api_store_queries: int = 2
    api_store_queue: int = 32
    api_store_wait_ms: int = 1000
    api_store_timeout_s: float = 5.0
    # Ring buffers: per-symbol capacity, bounded globally by a memory budget.
    buffer_capacity: int = 5_000_000
    buffer_max_bytes: int = 2 * 1024**3
    # Live candles: closed candles kept in memory per symbol and timeframe.
    candle_history: int = 10_000
    # Tick log.
    log_fsync: str = "interval"  # always | interval | off
    log_fsync_interval_ms: int = 50
    log_segment_bytes: int = 64 * 1024**2
    # Persister.
    persist_batch_size: int = 2000
    persist_batch_timeout_ms: int = 50
    # Largest single transaction while the log holds a backlog (after an outage or restart).
    persist_max_batch: int = 50_000
    persist_retry_initial_s: float = 0.1
    persist_retry_max_s: float = 5.0
    pool_size: int = 20
    # Validation and gap detection.
    max_future_skew_s: float = 5.0
    gap_silence_multiple: float = 10.0
    # Feeds.
    feed: str = "simulator"
    symbols: tuple[str, ...] = ()
    seed: int = 42
    rate: float = 1000.0
    # Simulator: a symbol that has no stored ticks starts this far in the past and emits the
    # ticks since then at full speed (deterministic, like a restart's backlog); 0: starts now.
    sim_history_s: float = 0.0
    replay_file: str = ""
    replay_speed: float = 0.0  # 0: as fast as possible; 1: real time; 10: ten times faster
    shutdown_deadline_s: float = 10.0

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.home / 'hft.sqlite3').resolve()}"

    @property
    def log_dir(self) -> Path:
        return self.home / "ticklog"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `env` (default os.environ), then `overrides` (None values ignored)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f"HFT_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.check()
        return settings

    def with_(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def check(self) -> None:
        """Raise SettingsError naming the first value that cannot work."""
        if self.log_fsync not in FSYNC_POLICIES:
            raise SettingsError(f"HFT_LOG_FSYNC={self.log_fsync!r}: use one of {FSYNC_POLICIES}")
        positive = (
            "buffer_capacity",
            "buffer_max_bytes",
            "persist_batch_size",
            "pool_size",
            "log_segment_bytes",
            "candle_history",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"HFT_{name.upper()} must be > 0, got {getattr(self, name)}")
        if self.persist_max_batch < self.persist_batch_size:
            raise SettingsError(
                f"HFT_PERSIST_MAX_BATCH ({self.persist_max_batch}) must be >= "
                f"HFT_PERSIST_BATCH_SIZE ({self.persist_batch_size})"
            )
        if not 0 < self.api_port < 65536:
            raise SettingsError(f"HFT_API_PORT must be 1-65535, got {self.api_port}")
        if self.rate <= 0:
            raise SettingsError(f"HFT_RATE must be > 0 ticks/s, got {self.rate}")
        if not 0 <= self.sim_history_s <= 30 * 86400:
            raise SettingsError(
                f"HFT_SIM_HISTORY_S must be between 0 and 2592000 (30 days), got {self.sim_history_s}"
            )
        for symbol in self.symbols:
            try:
                validate_symbol(symbol)
            except InvalidSymbolError as exc:
                raise SettingsError(f"HFT_SYMBOLS: {exc}") from None
        if not (
            self.store_url == ""
            or self.store_url.startswith(("sqlite://", "postgresql://", "postgres://"))
        ):
            raise SettingsError(
                f"HFT_STORE_URL={redact_url(self.store_url)!r}: use sqlite:///PATH or "
                "postgresql://user@host/db"
            )


_field_types = {"Path": Path, "int": int, "float": float, "str": str}


def _parse(name: str, type_name: Any, raw: str) -> Any:
    type_name = str(type_name)
    try:
        if type_name.startswith("tuple"):
            return tuple(s.strip() for s in raw.split(",") if s.strip())
        return _field_types[type_name](raw)
    except (ValueError, KeyError) as exc:
        raise SettingsError(f"HFT_{name.upper()}={raw!r}: expected {type_name}") from exc


__all__ = ["FSYNC_POLICIES", "Settings", "SettingsError"]
