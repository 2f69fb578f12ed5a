"""Secrets never leave the process: one redactor for URLs, free text and log records.

Every surface that shows a store URL, an error message or a log line (`/status`, `/health`,
`last_error`, start-up lines, start errors, alert delivery errors) passes through here.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

__all__ = [
    "MASK",
    "SENSITIVE_PARAMETERS",
    "install",
    "redact",
    "redact_url",
    "register",
    "register_url",
    "secrets_of_url",
]

MASK = "***"

#: Connection parameters whose value is a secret: libpq reads `password` and `sslpassword`
#: from a URL's query string as well as from its user-info.
SENSITIVE_PARAMETERS = frozenset({"password", "sslpassword", "token", "api_key", "apikey"})

# `password=secret` in a libpq keyword/value string or anywhere in free text.
_KEYWORD_VALUE = re.compile(
    r"(?P<key>\b(?:" + "|".join(sorted(SENSITIVE_PARAMETERS)) + r"))\s*=\s*"
    r"(?P<value>'(?:[^'\\]|\\.)*'|[^\s&'\"]+)",
    re.IGNORECASE,
)
# scheme://user:password@host in free text.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^\s:/@]*:)(?P<secret>[^\s@/]+)@")


def redact_url(url: str) -> str:
    """`url` with the user-info password and sensitive query parameters replaced by `***`."""
    if "://" not in url:
        return _KEYWORD_VALUE.sub(lambda m: f"{m['key']}={MASK}", url)
    try:
        parts = urlsplit(url)
    except ValueError:
        return _scrub(url)
    # Rebuilt by replacing the parts in the original text: urlunsplit would normalize
    # `sqlite:////abs/path` to another URL.
    out = url
    if parts.password is not None:
        userinfo, host = parts.netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        out = out.replace(parts.netloc, f"{user}:{MASK}@{host}", 1)
    if parts.query:
        pairs = parse_qsl(parts.query, keep_blank_values=True)
        if any(k.lower() in SENSITIVE_PARAMETERS for k, _ in pairs):
            query = urlencode(
                [(k, MASK if k.lower() in SENSITIVE_PARAMETERS else v) for k, v in pairs],
                safe="*",
                quote_via=quote,
            )
            head, _, _ = out.partition("?")
            fragment = f"#{parts.fragment}" if parts.fragment else ""
            out = f"{head}?{query}{fragment}"
    return out


def secrets_of_url(url: str) -> list[str]:
    """The secret values a URL carries (user-info password, sensitive query parameters)."""
    found: list[str] = []
    try:
        parts = urlsplit(url) if "://" in url else None
    except ValueError:
        parts = None
    if parts is not None:
        if parts.password:
            found += [parts.password, unquote(parts.password)]
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key.lower() in SENSITIVE_PARAMETERS and value:
                found += [value, quote(value, safe="")]
    for match in _KEYWORD_VALUE.finditer(url):
        found.append(match["value"].strip("'"))
    return [s for s in dict.fromkeys(found) if s]


class _SecretRedactor(logging.Filter):
    """Replaces registered secrets (and credentials shaped like them) with `***`.

    urllib3 logs request paths at DEBUG level, and those paths carry the Telegram bot token and
    the Discord webhook token, so the filter sits on the root handlers as well as on urllib3's
    loggers.
    """

    def __init__(self) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secrets: Iterable[str | None]) -> None:
        with self._lock:
            # Very short strings would redact ordinary text; real tokens are long. Passwords
            # are also caught by shape (user-info, password=...), whatever their length.
            self._secrets.update(s for s in secrets if s and len(s) >= 6)

    def redact(self, text: str) -> str:
        with self._lock:
            secrets = sorted(self._secrets, key=len, reverse=True)
        for secret in secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return _scrub(text)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's problem, not ours
            return True
        redacted = self.redact(message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_info, record.exc_text = None, self.redact(text)
        return True


def _scrub(text: str) -> str:
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _KEYWORD_VALUE.sub(lambda m: f"{m['key']}={MASK}", text)


_redactor = _SecretRedactor()
_installed_on: set[int] = set()


def register(secrets: Iterable[str | None]) -> None:
    """Remember `secrets`: from now on `redact` and every log line replace them by `***`."""
    _redactor.add(secrets)


def register_url(url: str) -> str:
    """Register the secrets of `url` and return its redacted form."""
    register(secrets_of_url(url))
    return redact_url(url)


def redact(text: str) -> str:
    """`text` with every registered secret and every credential-shaped substring masked."""
    return _redactor.redact(text)


def install() -> None:
    """Filter every log record of this process: root handlers, our loggers, urllib3, stamina."""
    targets: list[logging.Filterer] = list(logging.getLogger().handlers)
    targets += [logging.getLogger(name) for name in ("hft_pipeline", "stamina", "urllib3")]
    targets += [
        logging.getLogger(name)
        for name in logging.root.manager.loggerDict
        if name.startswith("urllib3")
    ]
    for target in targets:
        if id(target) not in _installed_on:
            target.addFilter(_redactor)
            _installed_on.add(id(target))
