"""Discord webhook channel: the alert as one embed that fits Discord's embed limits."""

from __future__ import annotations

from typing import Any

import requests

from hft_pipeline.observability.alerts.channel import http_error, post_json, retry_after_s
from hft_pipeline.observability.alerts.limits import clip
from hft_pipeline.observability.alerts.model import LEVEL_COLOURS, LEVEL_ICONS, Alert
from hft_pipeline.observability.redaction import register as _register_secrets

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
        "color": LEVEL_COLOURS[alert.level],
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
        response = post_json(self.name, self._session, self.webhook_url, payload, self.timeout_s)
        if response.status_code < 300:
            return
        retry_after = None
        if response.status_code == 429:
            try:
                retry_after = retry_after_s(response.json().get("retry_after"))
            except ValueError:
                retry_after = None
            if retry_after is None:
                retry_after = retry_after_s(response.headers.get("Retry-After"))
        raise http_error(self.name, response, retry_after)

    def close(self) -> None:
        self._session.close()
