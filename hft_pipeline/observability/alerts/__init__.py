"""Alerts to Discord, Telegram and email, usable from the ingest service, scripts and Dagster.

`Alerter.from_env()` finds the configured channels; `Alerter.send(alert)` delivers to them all.
"""

from hft_pipeline.observability.alerts.alerter import Alerter, RetryPolicy
from hft_pipeline.observability.alerts.catalogue import (
    asset_check_failed,
    circuit_breaker_opened,
    high_win_rate,
    ingest_recovered,
    ingest_stalled,
    run_failed,
    trade_executed,
)
from hft_pipeline.observability.alerts.channel import Channel, DeliveryError
from hft_pipeline.observability.alerts.discord import DiscordChannel, discord_embed
from hft_pipeline.observability.alerts.email import EmailChannel, email_bodies
from hft_pipeline.observability.alerts.limits import ELLIPSIS, clip, clip_utf16, utf16_len
from hft_pipeline.observability.alerts.model import (
    LEVEL_COLOURS,
    LEVEL_ICONS,
    Alert,
    DeliveryResult,
    Level,
)
from hft_pipeline.observability.alerts.telegram import (
    DEFAULT_TELEGRAM_API_URL,
    TelegramChannel,
    escape_markdown_v2,
    telegram_text,
)

__all__ = [
    "DEFAULT_TELEGRAM_API_URL",
    "ELLIPSIS",
    "LEVEL_COLOURS",
    "LEVEL_ICONS",
    "Alert",
    "Alerter",
    "Channel",
    "DeliveryError",
    "DeliveryResult",
    "DiscordChannel",
    "EmailChannel",
    "Level",
    "RetryPolicy",
    "TelegramChannel",
    "asset_check_failed",
    "circuit_breaker_opened",
    "clip",
    "clip_utf16",
    "discord_embed",
    "email_bodies",
    "escape_markdown_v2",
    "high_win_rate",
    "ingest_recovered",
    "ingest_stalled",
    "run_failed",
    "telegram_text",
    "trade_executed",
    "utf16_len",
]
