"""Telegram Bot API channel: the alert as escaped MarkdownV2 within Telegram's length limit."""

from __future__ import annotations

import requests

from hft_pipeline.observability.alerts.channel import http_error, post_json, retry_after_s
from hft_pipeline.observability.alerts.limits import ELLIPSIS, clip, utf16_len
from hft_pipeline.observability.alerts.model import LEVEL_ICONS, Alert
from hft_pipeline.observability.redaction import register as _register_secrets

DEFAULT_TELEGRAM_API_URL = "https://api.telegram.org"

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
        response = post_json(self.name, self._session, self.url, payload, self.timeout_s)
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code < 300 and body.get("ok", True):
            return
        retry_after = None
        if response.status_code == 429:
            retry_after = retry_after_s((body.get("parameters") or {}).get("retry_after"))
            if retry_after is None:
                retry_after = retry_after_s(response.headers.get("Retry-After"))
        raise http_error(self.name, response, retry_after)

    def close(self) -> None:
        self._session.close()
