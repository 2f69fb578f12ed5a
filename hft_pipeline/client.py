"""Client of the ingest service's HTTP API: one keep-alive connection, JSON decoded by msgspec.

`hft smoke`, the Dagster resource and the API benchmark's load loop all talk to the API with it.
"""

from __future__ import annotations

import functools
import http.client
import select
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode, urlsplit

import msgspec

DEFAULT_URL = "http://127.0.0.1:8002"

# Characters a path (with its query) keeps as they are; anything else, `|` in a symbol say, is
# percent-encoded as a browser would.
_PATH_SAFE = "/?&=%:@!$'()*+,;~-._"
# A kept-alive connection the server closed meanwhile fails on its next request with one of
# these, before anything was answered: a GET is then sent again on a new connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)
_RESENDABLE = frozenset({"GET", "HEAD"})
_encode = msgspec.json.Encoder().encode


class ApiError(RuntimeError):
    """The ingest API did not answer (`status` None), or answered with an unexpected status."""

    def __init__(self, message: str, status: int | None = None, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


@dataclass(frozen=True, slots=True)
class Reply:
    """One answer: status, raw body and headers, as received."""

    status: int
    body: bytes
    headers: http.client.HTTPMessage

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")

    def json(self, type: Any = Any) -> Any:
        """The body decoded as JSON (as `type` when given); ApiError when it is not JSON."""
        try:
            return msgspec.json.decode(self.body, type=type)
        except msgspec.DecodeError as exc:  # ValidationError is a DecodeError
            raise ApiError(
                f"answer ({self.status}) is not the JSON expected: {exc}", self.status, self.text
            ) from None

    def header(self, name: str) -> str | None:
        return self.headers.get(name)


class IngestClient:
    """Requests to the ingest API on one kept-alive connection, reopened when the server closes it.

    Not thread-safe: one client per thread (the benchmark's load loop runs one per thread).
    """

    def __init__(
        self, base_url: str = DEFAULT_URL, *, token: str | None = None, timeout: float = 5.0
    ) -> None:
        parts = urlsplit(base_url.rstrip("/"))
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"ingest API URL must be http(s)://host[:port][/path], got {base_url!r}"
            )
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port
        self._prefix = parts.path
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._conn: http.client.HTTPConnection | None = None

    def __enter__(self) -> IngestClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection; the next request opens a new one."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        *,
        json: Any = None,
    ) -> Reply:
        """Send one request and return the answer, whatever its status; ApiError if none came."""
        target = self._prefix + _quoted(path)
        if params:
            target += ("&" if "?" in target else "?") + urlencode(params)
        headers = self._headers
        body = None
        if json is not None:
            body = _encode(json)
            headers = {**headers, "Content-Type": "application/json"}
        resendable = method in _RESENDABLE
        while True:
            conn = self._conn
            # A GET finds out by failing, and is sent again; a POST must not go out twice, so
            # it checks first (a poll of the socket, ~5 us, which the load loop's GETs skip).
            reused = conn is not None and (resendable or not _dropped(conn))
            if not reused:
                self.close()
                conn = self._conn = self._connect()
            try:
                conn.request(method, target, body=body, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if reused and resendable and isinstance(exc, _STALE):
                    continue
                raise ApiError(
                    f"{method} {self.base_url}{path} failed ({type(exc).__name__}: {exc}); "
                    "is the ingest service (`hft ingest`) running at that address?"
                ) from exc
            if response.will_close:
                self.close()
            return Reply(response.status, data, response.headers)

    def get(self, path: str, params: dict[str, Any] | None = None, *, expect: int = 200) -> Reply:
        """GET `path`; ApiError unless the status is `expect`."""
        return self._expect(self.request("GET", path, params), "GET", path, expect)

    def post(self, path: str, body: Any, *, expect: int = 200) -> Reply:
        """POST `body` as JSON to `path`; ApiError unless the status is `expect`."""
        return self._expect(self.request("POST", path, json=body), "POST", path, expect)

    def _expect(self, reply: Reply, method: str, path: str, expect: int) -> Reply:
        if reply.status == expect:
            return reply
        try:
            body: Any = msgspec.json.decode(reply.body)
        except msgspec.DecodeError:
            body = reply.text
        # The API's errors carry `detail` (docs/api.md); /health's 503 lists its `problems`.
        detail = (body.get("problems") or body.get("detail")) if isinstance(body, dict) else None
        shown = detail if detail is not None else str(body)[:200]
        raise ApiError(
            f"{method} {self.base_url}{path} answered {reply.status}: {shown}", reply.status, body
        )

    def _connect(self) -> http.client.HTTPConnection:
        kind = http.client.HTTPSConnection if self._https else http.client.HTTPConnection
        return kind(self._host, self._port, timeout=self.timeout)


@functools.lru_cache(maxsize=4096)
def _quoted(path: str) -> str:
    # Cached: the benchmark's load loop sends the same few thousand paths over and over.
    return quote(path, safe=_PATH_SAFE)


def _dropped(conn: http.client.HTTPConnection) -> bool:
    # An idle kept-alive socket that reads as ready has been closed by the server (EOF).
    sock = conn.sock
    return sock is None or bool(select.select([sock], [], [], 0)[0])


__all__ = ["DEFAULT_URL", "ApiError", "IngestClient", "Reply"]
