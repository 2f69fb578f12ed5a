"""Thresholds from the settings: when an hour of candles is final, when ingest alerts."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hft_pipeline.settings import Settings


def _default(field: str) -> Any:
    # The defaults and their meaning live once, in the settings (docs/configuration.md).
    return Settings.model_fields[field].default


@dataclass(frozen=True, slots=True)
class WatermarkPolicy:
    """When a partition counts as complete, how much to request per tick, how often to refresh."""

    grace_s: float = _default("late_grace_s")
    max_requests: int = _default("sensor_max_requests")
    live_refresh_s: float = _default("live_refresh_s")

    @classmethod
    def from_settings(cls, settings: Settings) -> WatermarkPolicy:
        """HFT_LATE_GRACE_S, HFT_SENSOR_MAX_REQUESTS, HFT_LIVE_REFRESH_S."""
        return cls(
            grace_s=settings.late_grace_s,
            max_requests=max(1, settings.sensor_max_requests),
            live_refresh_s=settings.live_refresh_s,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WatermarkPolicy:
        """The policy of `Settings.from_env(env)`."""
        return cls.from_settings(Settings.from_env(env))


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Thresholds for the ingest health alerts."""

    max_pending_ticks: int = _default("alert_pending_ticks")
    max_lag_s: float = _default("alert_lag_s")
    critical_after_ticks: int = _default("alert_critical_ticks")
    critical_after_s: float = _default("alert_critical_s")

    @classmethod
    def from_settings(cls, settings: Settings) -> HealthPolicy:
        """HFT_ALERT_PENDING_TICKS, HFT_ALERT_LAG_S, HFT_ALERT_CRITICAL_TICKS, HFT_ALERT_CRITICAL_S."""
        return cls(
            max_pending_ticks=settings.alert_pending_ticks,
            max_lag_s=settings.alert_lag_s,
            critical_after_ticks=max(1, settings.alert_critical_ticks),
            critical_after_s=settings.alert_critical_s,
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HealthPolicy:
        """The policy of `Settings.from_env(env)`."""
        return cls.from_settings(Settings.from_env(env))


__all__ = ["HealthPolicy", "WatermarkPolicy"]
