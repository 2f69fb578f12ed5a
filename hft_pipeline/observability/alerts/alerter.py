"""The Alerter: which channels are configured, and delivery to all of them in parallel, each
retried with backoff (honouring HTTP 429 `retry_after`), never raising, never logging a secret."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import stamina

from hft_pipeline.observability.alerts.channel import Channel, DeliveryError
from hft_pipeline.observability.alerts.discord import DiscordChannel
from hft_pipeline.observability.alerts.email import EmailChannel
from hft_pipeline.observability.alerts.model import Alert, DeliveryResult, Level
from hft_pipeline.observability.alerts.telegram import DEFAULT_TELEGRAM_API_URL, TelegramChannel
from hft_pipeline.observability.redaction import install as _install_redactor
from hft_pipeline.observability.redaction import redact
from hft_pipeline.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries per channel: at most `attempts` tries within `timeout_s` seconds."""

    attempts: int = 4
    timeout_s: float = 30.0
    wait_initial_s: float = 0.5
    wait_max_s: float = 8.0
    wait_jitter_s: float = 0.25


class Alerter:
    """Sends alerts at or above `min_level` to every channel; see the module docstring."""

    def __init__(
        self,
        channels: Iterable[Channel],
        *,
        min_level: Level = Level.WARNING,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.channels = list(channels)
        self.min_level = min_level
        self.retry = retry or RetryPolicy()
        _install_redactor()

    @classmethod
    def from_env(
        cls, env: Mapping[str, str] | None = None, *, retry: RetryPolicy | None = None
    ) -> Alerter:
        """Channels from the alert variables (docs/configuration.md); a channel whose settings
        are missing is disabled."""
        s = Settings.from_env(env)
        channels: list[Channel] = []
        if s.discord_webhook_url.get_secret_value().strip():
            channels.append(DiscordChannel(s.discord_webhook_url.get_secret_value().strip()))
        bot_token = s.telegram_bot_token.get_secret_value().strip()
        if bot_token and s.telegram_chat_id.strip():
            channels.append(
                TelegramChannel(
                    bot_token,
                    s.telegram_chat_id.strip(),
                    api_url=s.telegram_api_url.strip() or DEFAULT_TELEGRAM_API_URL,
                )
            )
        recipients = [a.strip() for a in s.email_to.split(",") if a.strip()]
        sender = s.email_from.strip() or s.smtp_username.strip()
        if s.smtp_server.strip() and recipients and sender:
            channels.append(
                EmailChannel(
                    s.smtp_server.strip(),
                    s.smtp_port,
                    sender,
                    recipients,
                    username=s.smtp_username.strip() or None,
                    password=s.smtp_password.get_secret_value() or None,
                )
            )
        min_level = Level.parse(s.alert_min_level.strip() or "WARNING")
        return cls(channels, min_level=min_level, retry=retry)

    @property
    def channel_names(self) -> list[str]:
        return [c.name for c in self.channels]

    def send(self, alert: Alert) -> dict[str, DeliveryResult]:
        """Deliver to all channels in parallel; {} when below min level or no channel. Never raises."""
        try:
            if alert.level < self.min_level or not self.channels:
                return {}
            with ThreadPoolExecutor(len(self.channels), thread_name_prefix="alert") as pool:
                futures = {c.name: pool.submit(self._deliver, c, alert) for c in self.channels}
            return {name: f.result() for name, f in futures.items()}
        except Exception as exc:  # noqa: BLE001 - alerting must never take its caller down
            log.error("alert %r not sent: %s", alert.title, redact(f"{type(exc).__name__}: {exc}"))
            return {}

    def _deliver(self, channel: Channel, alert: Alert) -> DeliveryResult:
        policy = self.retry
        start = time.monotonic()
        attempts = 0

        def should_retry(exc: Exception) -> bool | float:
            if not isinstance(exc, DeliveryError) or not exc.retryable:
                return False
            if exc.retry_after is not None:
                # Honour the server's wait, unless it runs past our deadline.
                remaining = policy.timeout_s - (time.monotonic() - start)
                return exc.retry_after if exc.retry_after < remaining else False
            return True

        try:
            for attempt in stamina.retry_context(
                on=should_retry,
                attempts=policy.attempts,
                timeout=policy.timeout_s,
                wait_initial=policy.wait_initial_s,
                wait_max=policy.wait_max_s,
                wait_jitter=policy.wait_jitter_s,
            ):
                with attempt:
                    attempts += 1
                    channel.deliver(alert)
        except Exception as exc:  # noqa: BLE001 - reported in the result, never raised
            error = redact(
                str(exc) if isinstance(exc, DeliveryError) else f"{type(exc).__name__}: {exc}"
            )
            result = DeliveryResult(channel.name, False, attempts, time.monotonic() - start, error)
            log.warning(
                "alert %r not delivered to %s after %d attempts: %s",
                alert.title,
                channel.name,
                attempts,
                error,
            )
            return result
        elapsed = time.monotonic() - start
        log.info("alert %r delivered to %s (attempts=%d)", alert.title, channel.name, attempts)
        return DeliveryResult(channel.name, True, attempts, elapsed)

    def close(self) -> None:
        for channel in self.channels:
            channel.close()
