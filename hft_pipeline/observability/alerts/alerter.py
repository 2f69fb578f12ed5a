"""The Alerter: which channels are configured, and delivery to all of them in parallel, each
retried with backoff (honouring HTTP 429 `retry_after`), never raising, never logging a secret."""

from __future__ import annotations

import logging
import os
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

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries per channel: at most `attempts` tries within `timeout_s` seconds."""

    attempts: int = 4
    timeout_s: float = 30.0
    wait_initial_s: float = 0.5
    wait_max_s: float = 8.0
    wait_jitter_s: float = 0.25


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer port number, got {raw!r}") from None


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
        env = os.environ if env is None else env
        get = lambda name: (env.get(name) or "").strip()  # noqa: E731
        channels: list[Channel] = []
        if get("DISCORD_WEBHOOK_URL"):
            channels.append(DiscordChannel(get("DISCORD_WEBHOOK_URL")))
        if get("TELEGRAM_BOT_TOKEN") and get("TELEGRAM_CHAT_ID"):
            channels.append(
                TelegramChannel(
                    get("TELEGRAM_BOT_TOKEN"),
                    get("TELEGRAM_CHAT_ID"),
                    api_url=get("TELEGRAM_API_URL") or DEFAULT_TELEGRAM_API_URL,
                )
            )
        recipients = [a.strip() for a in get("EMAIL_TO").split(",") if a.strip()]
        sender = get("EMAIL_FROM") or get("SMTP_USERNAME")
        if get("SMTP_SERVER") and recipients and sender:
            channels.append(
                EmailChannel(
                    get("SMTP_SERVER"),
                    _env_int(env, "SMTP_PORT", 587),
                    sender,
                    recipients,
                    username=get("SMTP_USERNAME") or None,
                    password=env.get("SMTP_PASSWORD") or None,
                )
            )
        min_level = Level.parse(get("ALERT_MIN_LEVEL") or "WARNING")
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
