"""Thresholds read from the environment: when an hour of candles is final, when ingest alerts."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def _env_number(env: Mapping[str, str], name: str, default: float, kind: type = float) -> Any:
    raw = env.get(name, "")
    if raw == "":
        return default
    try:
        value = kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r}: expected a number") from None
    if value < 0:
        raise ValueError(f"{name}={raw!r}: must be >= 0")
    return value


@dataclass(frozen=True, slots=True)
class WatermarkPolicy:
    """When a partition counts as complete, how much to request per tick, how often to refresh."""

    grace_s: float = 60.0  # late ticks still land in a closed hour for this long
    max_requests: int = 48  # final partitions requested per tick; the cursor continues next tick
    live_refresh_s: float = 300.0  # refresh the open partition this often; 0 turns it off

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WatermarkPolicy:
        """HFT_LATE_GRACE_S, HFT_SENSOR_MAX_REQUESTS, HFT_LIVE_REFRESH_S (defaults above)."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            grace_s=_env_number(env, "HFT_LATE_GRACE_S", d.grace_s),
            max_requests=max(1, _env_number(env, "HFT_SENSOR_MAX_REQUESTS", d.max_requests, int)),
            live_refresh_s=_env_number(env, "HFT_LIVE_REFRESH_S", d.live_refresh_s),
        )


@dataclass(frozen=True, slots=True)
class HealthPolicy:
    """Thresholds for the ingest health alerts."""

    max_pending_ticks: int = 100_000  # ticks in the log but not yet in the store
    max_lag_s: float = 60.0  # how long persistence may stand still while ticks are pending
    critical_after_ticks: int = 3  # consecutive bad sensor ticks before CRITICAL
    critical_after_s: float = 300.0  # or this long bad, whichever comes first

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> HealthPolicy:
        """HFT_ALERT_PENDING_TICKS, HFT_ALERT_LAG_S, HFT_ALERT_CRITICAL_TICKS, HFT_ALERT_CRITICAL_S."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            max_pending_ticks=_env_number(env, "HFT_ALERT_PENDING_TICKS", d.max_pending_ticks, int),
            max_lag_s=_env_number(env, "HFT_ALERT_LAG_S", d.max_lag_s),
            critical_after_ticks=max(
                1, _env_number(env, "HFT_ALERT_CRITICAL_TICKS", d.critical_after_ticks, int)
            ),
            critical_after_s=_env_number(env, "HFT_ALERT_CRITICAL_S", d.critical_after_s),
        )


__all__ = ["HealthPolicy", "WatermarkPolicy"]
