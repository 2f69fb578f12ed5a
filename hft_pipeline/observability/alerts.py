"""Alerts to Discord, Telegram and email, usable from the ingest service, scripts and Dagster.

`Alerter.from_env()` reads the channel settings of DESIGN §5; `Alerter.send(alert)` delivers to
every configured channel in parallel, retries each with backoff (honouring HTTP 429
`retry_after`), never raises and never logs a webhook URL, bot token or password.
"""

from __future__ import annotations

import datetime as dt
import enum
import html
import logging
import os
import smtplib
import ssl
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Any, Protocol

import requests
import stamina

from hft_pipeline.observability.redaction import install as _install_redactor
from hft_pipeline.observability.redaction import redact
from hft_pipeline.observability.redaction import register as _register_secrets

log = logging.getLogger(__name__)

ELLIPSIS = "…"
DEFAULT_TELEGRAM_API_URL = "https://api.telegram.org"


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


# --------------------------------------------------------------------------- delivery errors


class DeliveryError(Exception):
    """One failed attempt. `retryable` says whether another attempt can help."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(redact(message))
        self.retryable = retryable
        self.retry_after = retry_after


def _http_error(
    channel: str, response: requests.Response, retry_after: float | None
) -> DeliveryError:
    status = response.status_code
    body = redact(response.text[:300])
    if status == 429:
        return DeliveryError(
            f"{channel}: rate limited (HTTP 429), retry after {retry_after} s",
            retryable=True,
            retry_after=retry_after,
        )
    return DeliveryError(
        f"{channel}: HTTP {status}: {body}", retryable=status >= 500 or status == 408
    )


def _post_json(channel: str, session: requests.Session, url: str, payload: dict, timeout_s: float):
    try:
        return session.post(url, json=payload, timeout=timeout_s)
    except requests.RequestException as exc:
        # Exception text from requests/urllib3 quotes the URL, which holds the secret.
        raise DeliveryError(f"{channel}: {type(exc).__name__}: {exc}", retryable=True) from None


def _float_or_none(value: Any) -> float | None:
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- text limits


def clip(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, ending in an ellipsis when cut."""
    if len(text) <= limit:
        return text
    return text[: max(0, limit - 1)] + ELLIPSIS if limit > 0 else ""


def utf16_len(text: str) -> int:
    """Length in UTF-16 code units, the unit Telegram counts message length in."""
    return len(text.encode("utf-16-le")) // 2


def clip_utf16(text: str, limit: int) -> str:
    """`text` cut to at most `limit` UTF-16 code units, ending in an ellipsis when cut."""
    if utf16_len(text) <= limit:
        return text
    out, used = [], 1  # the ellipsis is one unit
    for char in text:
        units = 2 if ord(char) > 0xFFFF else 1
        if used + units > limit:
            break
        out.append(char)
        used += units
    return "".join(out) + ELLIPSIS


# --------------------------------------------------------------------------- channels


class Channel(Protocol):
    name: str

    def deliver(self, alert: Alert) -> None:
        """One attempt; raises DeliveryError on failure."""

    def close(self) -> None: ...


DISCORD_COLOURS = {
    Level.INFO: 0x3498DB,
    Level.WARNING: 0xF1C40F,
    Level.ERROR: 0xE74C3C,
    Level.CRITICAL: 0x8B0000,
}
LEVEL_ICONS = {Level.INFO: "ℹ️", Level.WARNING: "⚠️", Level.ERROR: "🔴", Level.CRITICAL: "🚨"}

# https://discord.com/developers/docs/resources/message#embed-object-embed-limits
DISCORD_TITLE_MAX = 256
DISCORD_DESCRIPTION_MAX = 4096
DISCORD_FIELDS_MAX = 25
DISCORD_FIELD_NAME_MAX = 256
DISCORD_FIELD_VALUE_MAX = 1024
DISCORD_FOOTER_MAX = 2048
DISCORD_EMBED_TOTAL_MAX = 6000


def discord_embed(alert: Alert) -> dict[str, Any]:
    """The alert as one Discord embed that fits every embed limit."""
    title = clip(f"{LEVEL_ICONS[alert.level]} {alert.level.name}: {alert.title}", DISCORD_TITLE_MAX)
    footer = clip(alert.source, DISCORD_FOOTER_MAX)
    budget = DISCORD_EMBED_TOTAL_MAX - len(title) - len(footer)
    message = alert.message or "(no details)"
    # Fields (job, run id, partition...) are short and scannable; they get up to half of the
    # budget when the message is long, everything the message leaves otherwise.
    field_budget = max(budget // 2, budget - min(len(message), DISCORD_DESCRIPTION_MAX))
    fields, used = [], 0
    items = [(str(k), str(v)) for k, v in alert.fields.items()]
    omitted = 0
    for i, (name, value) in enumerate(items):
        name = clip(name.strip() or "-", DISCORD_FIELD_NAME_MAX)
        value = clip(value.strip() or "-", DISCORD_FIELD_VALUE_MAX)
        if len(fields) == DISCORD_FIELDS_MAX or used + len(name) + len(value) > field_budget:
            omitted = len(items) - i
            break
        fields.append({"name": name, "value": value, "inline": len(value) <= 40})
        used += len(name) + len(value)
    note = f"\n({omitted} more fields omitted)" if omitted else ""
    room = min(DISCORD_DESCRIPTION_MAX, budget - used) - len(note)
    description = clip(message, room) + note
    embed: dict[str, Any] = {
        "title": title,
        "description": description,
        "color": DISCORD_COLOURS[alert.level],
        "fields": fields,
        "footer": {"text": footer},
        "timestamp": alert.created_at.isoformat(),
    }
    if alert.url and alert.url.startswith(("http://", "https://")):
        embed["url"] = alert.url
    return embed


class DiscordChannel:
    """Discord webhook: one embed per alert, coloured by level, mentions disabled."""

    name = "discord"

    def __init__(self, webhook_url: str, *, timeout_s: float = 10.0) -> None:
        self.webhook_url = webhook_url
        self.timeout_s = timeout_s
        # The path's last part is the webhook token; quoted on its own it is still a secret.
        _register_secrets([webhook_url, webhook_url.rstrip("/").rsplit("/", 1)[-1]])
        self._session = requests.Session()

    def deliver(self, alert: Alert) -> None:
        payload = {
            "username": clip(alert.source, 80),
            "embeds": [discord_embed(alert)],
            "allowed_mentions": {"parse": []},
        }
        response = _post_json(self.name, self._session, self.webhook_url, payload, self.timeout_s)
        if response.status_code < 300:
            return
        retry_after = None
        if response.status_code == 429:
            try:
                retry_after = _float_or_none(response.json().get("retry_after"))
            except ValueError:
                retry_after = None
            if retry_after is None:
                retry_after = _float_or_none(response.headers.get("Retry-After"))
        raise _http_error(self.name, response, retry_after)

    def close(self) -> None:
        self._session.close()


# https://core.telegram.org/bots/api#markdownv2-style
TELEGRAM_RESERVED = set("_*[]()~`>#+-=|{}.!\\")
TELEGRAM_TEXT_MAX = 4096


def escape_markdown_v2(text: str) -> str:
    """`text` with every MarkdownV2 reserved character (and backslash) escaped."""
    return "".join("\\" + c if c in TELEGRAM_RESERVED else c for c in text)


def _escape_clipped(text: str, room: int) -> str:
    """`text` escaped for MarkdownV2 in at most `room` UTF-16 units; cut between escapes."""
    escaped = escape_markdown_v2(text)
    if utf16_len(escaped) <= room:
        return escaped
    out, used = [], 1  # the ellipsis
    for char in text:
        piece = escape_markdown_v2(char)
        units = utf16_len(piece)
        if used + units > room:
            break
        out.append(piece)
        used += units
    return "".join(out) + ELLIPSIS if room > 0 else ""


def telegram_text(alert: Alert) -> str:
    """The alert as MarkdownV2 text of at most 4096 UTF-16 units, every value escaped."""
    esc = escape_markdown_v2
    head = (
        f"{LEVEL_ICONS[alert.level]} *{esc(alert.level.name)}: {_escape_clipped(alert.title, 512)}*"
    )
    tail = "\n".join(
        [esc(clip(alert.source, 256))] + ([_escape_clipped(alert.url, 1024)] if alert.url else [])
    )
    # Facts take at most half of the message, the details get the rest.
    lines, used = [], 0
    items = list(alert.fields.items())
    for i, (name, value) in enumerate(items):
        line = f"*{_escape_clipped(str(name), 128)}:* {_escape_clipped(str(value), 512)}"
        if used + utf16_len(line) + 1 > TELEGRAM_TEXT_MAX // 2:
            lines.append(esc(f"({len(items) - i} more fields omitted)"))
            break
        lines.append(line)
        used += utf16_len(line) + 1
    facts = "\n".join(lines)
    fixed = utf16_len(head) + utf16_len(facts) + utf16_len(tail) + 5  # the separating newlines
    body = _escape_clipped(alert.message or "(no details)", TELEGRAM_TEXT_MAX - fixed)
    return "\n\n".join(block for block in [f"{head}\n{body}", facts, tail] if block)


class TelegramChannel:
    """Telegram Bot API `sendMessage` with MarkdownV2 formatting."""

    name = "telegram"

    def __init__(
        self,
        bot_token: str,
        chat_id: str,
        *,
        api_url: str = DEFAULT_TELEGRAM_API_URL,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = f"{api_url.rstrip('/')}/bot{bot_token}/sendMessage"
        self.chat_id = chat_id
        self.timeout_s = timeout_s
        _register_secrets([bot_token, self.url])
        self._session = requests.Session()

    def deliver(self, alert: Alert) -> None:
        payload = {
            "chat_id": self.chat_id,
            "text": telegram_text(alert),
            "parse_mode": "MarkdownV2",
            "link_preview_options": {"is_disabled": True},
        }
        response = _post_json(self.name, self._session, self.url, payload, self.timeout_s)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code < 300 and body.get("ok", True):
            return
        retry_after = None
        if response.status_code == 429:
            retry_after = _float_or_none((body.get("parameters") or {}).get("retry_after"))
            if retry_after is None:
                retry_after = _float_or_none(response.headers.get("Retry-After"))
        raise _http_error(self.name, response, retry_after)

    def close(self) -> None:
        self._session.close()


def email_bodies(alert: Alert) -> tuple[str, str]:
    """(plain text, HTML) bodies of the alert email; every value HTML-escaped in the HTML."""
    facts = "\n".join(f"{k}: {v}" for k, v in alert.fields.items())
    plain = f"{alert.level.name}: {alert.title}\n\n{alert.message}\n"
    plain += f"\n{facts}\n" if facts else ""
    plain += f"\n{alert.url}\n" if alert.url else ""
    plain += f"\n-- {alert.source}, {alert.created_at.isoformat()}\n"
    e = html.escape
    colour = f"#{DISCORD_COLOURS[alert.level]:06x}"
    rows = "".join(
        f"<tr><th align='left'>{e(k)}</th><td>{e(v)}</td></tr>" for k, v in alert.fields.items()
    )
    link = f'<p><a href="{e(alert.url)}">{e(alert.url)}</a></p>' if alert.url else ""
    html_body = (
        f"<html><body>"
        f"<h2 style='color:{colour}'>{e(alert.level.name)}: {e(alert.title)}</h2>"
        f"<pre style='white-space:pre-wrap'>{e(alert.message)}</pre>"
        f"<table>{rows}</table>{link}"
        f"<p style='color:#888'>{e(alert.source)}, {e(alert.created_at.isoformat())}</p>"
        f"</body></html>"
    )
    return plain, html_body


class EmailChannel:
    """SMTP email (plain text + HTML): implicit TLS on port 465, else STARTTLS when offered."""

    name = "email"

    def __init__(
        self,
        server: str,
        port: int,
        sender: str,
        recipients: list[str],
        *,
        username: str | None = None,
        password: str | None = None,
        implicit_tls: bool | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout_s: float = 10.0,
    ) -> None:
        self.server, self.port = server, port
        self.sender, self.recipients = sender, recipients
        self.username, self.password = username, password
        self.implicit_tls = port == 465 if implicit_tls is None else implicit_tls
        self.ssl_context = ssl_context or ssl.create_default_context()
        self.timeout_s = timeout_s
        _register_secrets([password])

    def message(self, alert: Alert) -> EmailMessage:
        plain, html_body = email_bodies(alert)
        msg = EmailMessage()
        # Header values must not carry line breaks (header injection).
        msg["Subject"] = " ".join(f"[{alert.level.name}] {alert.title}".split())[:200]
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        msg.set_content(plain)
        msg.add_alternative(html_body, subtype="html")
        return msg

    def deliver(self, alert: Alert) -> None:
        msg = self.message(alert)
        try:
            if self.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.server, self.port, timeout=self.timeout_s, context=self.ssl_context
                )
            else:
                smtp = smtplib.SMTP(self.server, self.port, timeout=self.timeout_s)
            with smtp:
                smtp.ehlo()
                if not self.implicit_tls and smtp.has_extn("starttls"):
                    smtp.starttls(context=self.ssl_context)
                    smtp.ehlo()
                if self.username:
                    smtp.login(self.username, self.password or "")
                smtp.send_message(msg, self.sender, self.recipients)
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"email: login refused ({exc.smtp_code})", retryable=False
            ) from None
        except smtplib.SMTPResponseException as exc:
            text = (
                exc.smtp_error.decode(errors="replace")
                if isinstance(exc.smtp_error, bytes)
                else str(exc.smtp_error)
            )
            raise DeliveryError(
                f"email: SMTP {exc.smtp_code}: {text}", retryable=400 <= exc.smtp_code < 500
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise DeliveryError(
                f"email: recipients refused: {list(exc.recipients)}", retryable=False
            ) from None
        except (smtplib.SMTPException, OSError) as exc:
            raise DeliveryError(f"email: {type(exc).__name__}: {exc}", retryable=True) from None

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------- dispatcher


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
        """Channels from DESIGN §5's variables; a channel whose settings are missing is disabled."""
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


# --------------------------------------------------------------------------- ready-made alerts


def run_failed(
    job: str, run_id: str, error: str, url: str | None = None, *, step: str | None = None
) -> Alert:
    """A Dagster run (or one of its steps) failed."""
    fields = {"job": job, "run id": run_id}
    if step:
        fields["step"] = step
    what = f"step {step} of {job}" if step else f"run of {job}"
    return Alert(Level.ERROR, f"Failed: {what}", error, fields, "dagster", url)


def asset_check_failed(
    asset: str, check: str, partition: str | None, description: str, *, level: Level = Level.ERROR
) -> Alert:
    """An asset check did not pass."""
    fields = {"asset": asset, "check": check, "partition": partition or "(unpartitioned)"}
    return Alert(level, f"Asset check failed: {asset} / {check}", description, fields, "dagster")


def ingest_stalled(
    lag_s: float, pending: int, detail: str, *, level: Level = Level.WARNING
) -> Alert:
    """The ingest service is unhealthy or persistence lags (WARNING, escalated to CRITICAL)."""
    fields = {"persistence lag": f"{lag_s:.1f} s", "pending ticks": f"{pending:,}"}
    return Alert(level, "Ingest stalled", detail, fields, "ingest")


def ingest_recovered(
    lag_s: float, pending: int, detail: str = "", *, down_for_s: float | None = None
) -> Alert:
    """The ingest service is healthy again."""
    fields = {"persistence lag": f"{lag_s:.1f} s", "pending ticks": f"{pending:,}"}
    if down_for_s is not None:
        fields["unhealthy for"] = f"{down_for_s:.0f} s"
    return Alert(
        Level.INFO, "Ingest recovered", detail or "Ingest is healthy again.", fields, "ingest"
    )


def circuit_breaker_opened(name: str, failures: int, cooldown_s: float) -> Alert:
    """A circuit breaker opened after repeated failures; calls pause for the cool-down."""
    fields = {
        "breaker": name,
        "consecutive failures": str(failures),
        "cool-down": f"{cooldown_s:g} s",
    }
    message = f"{name} failed {failures} times in a row; calls are paused for {cooldown_s:g} s."
    return Alert(Level.ERROR, f"Circuit breaker open: {name}", message, fields, "ingest")


def trade_executed(symbol: str, side: str, price: float, size: float, strategy: str) -> Alert:
    """A strategy executed a trade."""
    fields = {
        "symbol": symbol,
        "side": side.upper(),
        "price": f"{price:.10g}",
        "size": f"{size:.10g}",
        "strategy": strategy,
    }
    message = f"{strategy}: {side.upper()} {size:.10g} {symbol} @ {price:.10g}"
    return Alert(Level.INFO, f"Trade: {side.upper()} {symbol}", message, fields, "strategy")


def high_win_rate(strategy: str, symbol: str, win_rate: float, trades: int) -> Alert:
    """A strategy's win rate (a fraction, 0..1) stands out over enough trades."""
    fields = {
        "strategy": strategy,
        "symbol": symbol,
        "win rate": f"{win_rate:.1%}",
        "trades": str(trades),
    }
    message = f"{strategy} on {symbol} won {win_rate:.1%} of {trades} trades."
    return Alert(Level.INFO, f"High win rate: {strategy} on {symbol}", message, fields, "backtests")
