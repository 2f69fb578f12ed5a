"""TicksFastPath: plain `GET /ticks/{symbol}` answered before FastAPI's routing and validation."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Request
from fastapi.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from hft_pipeline.ingest.api.params import TicksParams


class TicksFastPath:
    """Answers well-formed `GET /ticks/{symbol}` before FastAPI's routing and validation.

    FastAPI resolves and validates the route's six parameters per request, which costs about as
    much as answering from memory. Requests whose parameters `TicksParams.of_request` accepts
    (the route's own rules) get the same body from the same function; anything else (bad or
    unusual input) goes on to the FastAPI route, which answers or explains it. An error of the
    answer (unknown symbol, store unavailable) is rendered by the app's own exception handler,
    `handlers`, as the route would: this middleware runs outside the app's exception middleware.
    """

    _PREFIX = "/ticks/"

    def __init__(
        self,
        app: ASGIApp,
        answer: Callable[[TicksParams], Awaitable[bytes]],
        handlers: Mapping[type[Exception], Callable[[Request, Any], Awaitable[Response]]],
    ) -> None:
        self.app = app
        self.answer = answer
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = self.params(scope)
        if params is None:
            await self.app(scope, receive, send)
            return
        try:
            body = await self.answer(params)
        except Exception as exc:
            handler = next(
                (self.handlers[t] for t in type(exc).__mro__ if t in self.handlers), None
            )
            if handler is None:
                raise
            response = await handler(Request(scope, receive), exc)
            await response(scope, receive, send)
            return
        headers = [
            (b"content-length", str(len(body)).encode()),
            (b"content-type", b"application/json"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def params(self, scope: Scope) -> TicksParams | None:
        """The parameters if the request is one this fast path answers, else None."""
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if not path.startswith(self._PREFIX):
            return None
        return TicksParams.of_request(path[len(self._PREFIX) :], scope["query_string"])
