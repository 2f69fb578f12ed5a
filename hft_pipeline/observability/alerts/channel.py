"""What a channel promises (one delivery attempt that raises DeliveryError) and the JSON POST
with secret-free errors that the Discord and Telegram channels share."""

from __future__ import annotations

from typing import Any, Protocol

import requests

from hft_pipeline.observability.alerts.model import Alert
from hft_pipeline.observability.redaction import redact


class Channel(Protocol):
    name: str

    def deliver(self, alert: Alert) -> None:
        """One attempt; raises DeliveryError on failure."""

    def close(self) -> None: ...


class DeliveryError(Exception):
    """One failed attempt. `retryable` says whether another attempt can help."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(redact(message))
        self.retryable = retryable
        self.retry_after = retry_after


def http_error(
    channel: str, response: requests.Response, retry_after: float | None
) -> DeliveryError:
    """The failed answer as a DeliveryError: retryable for 429, 408 and 5xx, body redacted."""
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


def post_json(
    channel: str, session: requests.Session, url: str, payload: dict, timeout_s: float
) -> requests.Response:
    """POST `payload` as JSON; a retryable DeliveryError, free of the URL, when nothing answers."""
    try:
        return session.post(url, json=payload, timeout=timeout_s)
    except requests.RequestException as exc:
        # Exception text from requests/urllib3 quotes the URL, which holds the secret.
        raise DeliveryError(f"{channel}: {type(exc).__name__}: {exc}", retryable=True) from None


def retry_after_s(value: Any) -> float | None:
    """A server's retry-after value as seconds (never negative); None when it is no number."""
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None
