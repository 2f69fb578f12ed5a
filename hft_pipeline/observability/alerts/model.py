"""What an alert is: its level, its content, and how one channel fared delivering it."""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Mapping
from dataclasses import dataclass, field


class Level(enum.IntEnum):
    """Alert severity; channels send alerts at or above the configured minimum."""

    INFO = 20
    WARNING = 30
    ERROR = 40
    CRITICAL = 50

    @classmethod
    def parse(cls, value: str | int | Level) -> Level:
        """`"warning"`, `"WARNING"`, `30` or `Level.WARNING` -> `Level.WARNING`."""
        if isinstance(value, Level):
            return value
        if isinstance(value, int):
            return cls(value)
        try:
            return cls[value.strip().upper()]
        except KeyError:
            names = ", ".join(level.name for level in cls)
            raise ValueError(f"unknown alert level {value!r}; use one of {names}") from None


@dataclass(frozen=True)
class Alert:
    """One message for humans: what happened (title), details (message) and key facts (fields)."""

    level: Level
    title: str
    message: str
    fields: Mapping[str, str] = field(default_factory=dict)
    source: str = "hft_pipeline"
    url: str | None = None
    created_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.UTC))


@dataclass(frozen=True)
class DeliveryResult:
    """How one channel fared with one alert. `error` is already free of secrets."""

    channel: str
    ok: bool
    attempts: int
    elapsed_s: float
    error: str | None = None


# Every channel shows the level the same way: Discord's embed colour, the email heading's colour,
# the icon in front of Discord's and Telegram's titles.
LEVEL_COLOURS = {
    Level.INFO: 0x3498DB,
    Level.WARNING: 0xF1C40F,
    Level.ERROR: 0xE74C3C,
    Level.CRITICAL: 0x8B0000,
}
LEVEL_ICONS = {Level.INFO: "ℹ️", Level.WARNING: "⚠️", Level.ERROR: "🔴", Level.CRITICAL: "🚨"}
