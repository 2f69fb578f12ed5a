"""Loopback receivers for alert tests: a Discord/Telegram HTTP server and an aiosmtpd SMTP server.

The HTTP server checks payloads the way the real APIs document them (Discord's embed limits,
Telegram's sendMessage fields and MarkdownV2 escaping) and answers 400 with the reason otherwise.
"""

from __future__ import annotations

import email
import email.policy
import json
import re
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from aiosmtpd.controller import Controller

DISCORD_PATH = re.compile(r"^/api/webhooks/(\d+)/([A-Za-z0-9_-]+)$")
TELEGRAM_PATH = re.compile(r"^/bot([^/]+)/sendMessage$")
TELEGRAM_RESERVED = set("_*[]()~`>#+-=|{}.!")


class MarkdownV2Error(ValueError):
    pass


def parse_markdown_v2(text: str) -> str:
    """Plain text of MarkdownV2 `text` using bold/italic only; raises on any unescaped reserved char.

    Follows https://core.telegram.org/bots/api#markdownv2-style: `\\` escapes any character
    with code 1..126; `*` and `_` open and close bold and italic; every other reserved
    character must be escaped, and every entity must be closed.
    """
    out: list[str] = []
    open_entities: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            if i + 1 >= len(text) or not 1 <= ord(text[i + 1]) <= 126:
                raise MarkdownV2Error(f"dangling backslash at {i}")
            out.append(text[i + 1])
            i += 2
            continue
        if c in "*_":
            if open_entities and open_entities[-1] == c:
                open_entities.pop()
            elif c in open_entities:
                raise MarkdownV2Error(f"entities {c!r} cross at {i}")
            else:
                open_entities.append(c)
            i += 1
            continue
        if c in TELEGRAM_RESERVED:
            raise MarkdownV2Error(f"character {c!r} is reserved and must be escaped (offset {i})")
        out.append(c)
        i += 1
    if open_entities:
        raise MarkdownV2Error(f"unclosed entities {open_entities}")
    return "".join(out)


def check_discord_payload(payload: Any) -> list[str]:
    """Every way `payload` breaks Discord's webhook rules (empty when it is valid)."""
    errors: list[str] = []
    if not isinstance(payload, dict):
        return ["payload is not a JSON object"]
    content = payload.get("content")
    embeds = payload.get("embeds", [])
    if not content and not embeds:
        errors.append("neither content nor embeds")
    if content is not None and (not isinstance(content, str) or len(content) > 2000):
        errors.append("content must be a string of <= 2000 characters")
    if not isinstance(embeds, list) or len(embeds) > 10:
        return [*errors, "embeds must be a list of <= 10"]
    total = 0
    for embed in embeds:
        if not isinstance(embed, dict):
            errors.append("embed is not an object")
            continue
        for key, limit in (("title", 256), ("description", 4096)):
            value = embed.get(key)
            if value is not None:
                if not isinstance(value, str) or len(value) > limit:
                    errors.append(f"embed {key} must be a string of <= {limit} characters")
                else:
                    total += len(value)
        colour = embed.get("color")
        if colour is not None and (not isinstance(colour, int) or not 0 <= colour <= 0xFFFFFF):
            errors.append("embed color must be an int in 0..0xFFFFFF")
        fields = embed.get("fields", [])
        if not isinstance(fields, list) or len(fields) > 25:
            errors.append("embed fields must be a list of <= 25")
            fields = []
        for f in fields:
            name, value = f.get("name"), f.get("value")
            if not isinstance(name, str) or not 1 <= len(name) <= 256:
                errors.append(f"field name must be 1..256 characters: {name!r:.40}")
            if not isinstance(value, str) or not 1 <= len(value) <= 1024:
                errors.append(f"field value must be 1..1024 characters: {value!r:.40}")
            if "inline" in f and not isinstance(f["inline"], bool):
                errors.append("field inline must be a boolean")
            total += len(name or "") + len(value or "")
        footer = embed.get("footer")
        if footer is not None:
            text = footer.get("text") if isinstance(footer, dict) else None
            if not isinstance(text, str) or len(text) > 2048:
                errors.append("footer text must be a string of <= 2048 characters")
            else:
                total += len(text)
        url = embed.get("url")
        if url is not None and not (
            isinstance(url, str) and url.startswith(("http://", "https://"))
        ):
            errors.append("embed url must be http(s)")
    if total > 6000:
        errors.append(f"embeds hold {total} characters, more than 6000")
    return errors


@dataclass
class Received:
    kind: str  # "discord" or "telegram"
    payload: dict
    at: float  # time.monotonic() on arrival


@dataclass
class WebhookReceiver:
    """Threaded HTTP server posing as Discord's webhook endpoint and Telegram's Bot API."""

    discord_token: str = "discord-secret-token_0123456789"
    telegram_token: str = "123456:telegram-secret-ABCdef_0123"
    chat_id: str = "-1001234567890"
    discord_429_first: bool = False
    telegram_429_first: bool = False
    received: list[Received] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)
    rate_limited: list[tuple[str, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass  # keep test output (and caplog) free of request lines

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                status, body, headers = receiver._handle(self.path, raw)
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), daemon=True
        )
        self._thread.start()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    @property
    def discord_url(self) -> str:
        return f"{self.base_url}/api/webhooks/112233445566778899/{self.discord_token}"

    def of_kind(self, kind: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.kind == kind]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _reject(self, reason: str) -> tuple[int, dict, dict]:
        with self._lock:
            self.rejected.append(reason)
        return 400, {"ok": False, "error_code": 400, "description": f"Bad Request: {reason}"}, {}

    def _handle(self, path: str, raw: bytes) -> tuple[int, dict, dict]:
        try:
            payload = json.loads(raw)
        except ValueError:
            return self._reject("body is not JSON")
        if m := DISCORD_PATH.match(path.split("?")[0]):
            if m.group(2) != self.discord_token:
                return 401, {"message": "Invalid Webhook Token", "code": 50027}, {}
            with self._lock:
                # Per channel: the channels send concurrently, so Telegram may be limited first.
                if self.discord_429_first and not any(k == "discord" for k, _ in self.rate_limited):
                    self.rate_limited.append(("discord", time.monotonic()))
                    body = {
                        "message": "You are being rate limited.",
                        "retry_after": 0.3,
                        "global": False,
                    }
                    return 429, body, {"Retry-After": "1"}
            errors = check_discord_payload(payload)
            if errors:
                return self._reject("; ".join(errors))
            with self._lock:
                self.received.append(Received("discord", payload, time.monotonic()))
            return 204, {}, {}
        if m := TELEGRAM_PATH.match(path):
            if m.group(1) != self.telegram_token:
                return 401, {"ok": False, "error_code": 401, "description": "Unauthorized"}, {}
            with self._lock:
                if self.telegram_429_first and not any(
                    k == "telegram" for k, _ in self.rate_limited
                ):
                    self.rate_limited.append(("telegram", time.monotonic()))
                    body = {
                        "ok": False,
                        "error_code": 429,
                        "description": "Too Many Requests: retry after 1",
                        "parameters": {"retry_after": 1},
                    }
                    return 429, body, {}
            if str(payload.get("chat_id")) != self.chat_id:
                return self._reject(f"chat not found: {payload.get('chat_id')!r}")
            if payload.get("parse_mode") != "MarkdownV2":
                return self._reject(
                    f"parse_mode must be MarkdownV2, got {payload.get('parse_mode')!r}"
                )
            text = payload.get("text")
            if not isinstance(text, str) or not text:
                return self._reject("message text is empty")
            try:
                plain = parse_markdown_v2(text)
            except MarkdownV2Error as exc:
                return self._reject(f"can't parse entities: {exc}")
            if len(plain.encode("utf-16-le")) // 2 > 4096:
                return self._reject("message is too long")
            with self._lock:
                self.received.append(Received("telegram", payload, time.monotonic()))
            return (
                200,
                {"ok": True, "result": {"message_id": len(self.received), "text": plain}},
                {},
            )
        return 404, {"message": "404: Not Found"}, {}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Collect:
    def __init__(self, sink: list[email.message.EmailMessage], envelopes: list[tuple]) -> None:
        self.sink, self.envelopes = sink, envelopes

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd's name
        message = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        self.sink.append(message)
        self.envelopes.append(
            (envelope.mail_from, list(envelope.rcpt_tos), bool(session.authenticated))
        )
        return "250 Message accepted for delivery"


class SmtpReceiver:
    """aiosmtpd server on loopback that keeps every received message (parsed)."""

    def __init__(self, **smtp_kwargs: Any) -> None:
        self.messages: list[email.message.EmailMessage] = []
        self.envelopes: list[tuple] = []
        self.port = free_port()
        self._controller = Controller(
            _Collect(self.messages, self.envelopes),
            hostname="127.0.0.1",
            port=self.port,
            **smtp_kwargs,
        )
        self._controller.start()

    def close(self) -> None:
        self._controller.stop()
