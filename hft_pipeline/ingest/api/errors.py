"""How the API answers errors (docs/api.md, Errors): the bodies, handlers and OpenAPI declarations."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from hft_pipeline.ingest.service import IngestService
from hft_pipeline.store.base import StoreUnavailableError


class ErrorBody(BaseModel):
    """Every error answer (docs/api.md, Errors): what was wrong and what to do, in words."""

    detail: str


class ValidationIssue(BaseModel):
    loc: list[str | int] = Field(description="Where: path, query or body, then the field")
    msg: str
    type: str


class ValidationErrorBody(ErrorBody):
    """A 422: `detail` joins the issues as `field: message; ...`."""

    errors: list[ValidationIssue]


_LOCATIONS = frozenset(("path", "query", "header", "cookie", "body"))


def _issue_text(err: Mapping[str, Any]) -> str:
    """One validation error as `field: message`, the field named as the client sent it."""
    loc = list(err.get("loc", ()))
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "json_invalid":  # loc is ("body", position)
        reason = err.get("ctx", {}).get("error")
        return f"body: {msg}" + (f" ({reason} at position {loc[-1]})" if reason else "")
    where = loc[1:] if loc[:1] and loc[0] in _LOCATIONS else loc
    return f"{'.'.join(str(p) for p in where) or (loc[0] if loc else 'request')}: {msg}"


async def _on_invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [
        {
            "loc": [p if isinstance(p, int) else str(p) for p in err.get("loc", ())],
            "msg": str(err.get("msg", "")),
            "type": str(err.get("type", "value_error")),
        }
        for err in exc.errors()
    ]
    detail = "; ".join(_issue_text(err) for err in exc.errors()) or "invalid request"
    return JSONResponse({"detail": detail, "errors": errors}, 422)


async def _on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    body: dict[str, Any] = {"detail": str(exc.detail)}
    if exc.status_code == 422:  # the declared 422 shape holds whoever raised it
        body["errors"] = [{"loc": [], "msg": body["detail"], "type": "value_error"}]
    return JSONResponse(body, exc.status_code, headers=exc.headers)


def retry_after_s(service: IngestService) -> int:
    """Seconds a client should wait after a 503: the persister's longest retry backoff."""
    return max(1, math.ceil(service.settings.persist_retry_max_s))


async def _on_store_unavailable(request: Request, exc: StoreUnavailableError) -> JSONResponse:
    retry = retry_after_s(request.app.state.service)
    return JSONResponse(
        {"detail": f"the store is unavailable ({exc}); retry in {retry} s"},
        503,
        headers={"Retry-After": str(retry)},
    )


#: The app's exception handlers; TicksFastPath renders its errors with them too.
EXCEPTION_HANDLERS: dict[type[Exception], Callable[[Request, Any], Awaitable[Response]]] = {
    RequestValidationError: _on_invalid_request,
    StarletteHTTPException: _on_http_error,
    StoreUnavailableError: _on_store_unavailable,
}

RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before trying again",
        "required": True,
        "schema": {"type": "integer", "minimum": 1},
    }
}
#: OpenAPI declarations of every error status the API answers (docs/api.md, Errors).
ERROR_RESPONSES: dict[int, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body is not UTF-8 text"},
    401: {
        "model": ErrorBody,
        "description": "HFT_API_TOKEN is set and the request does not carry it as a bearer token",
        "headers": {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    },
    404: {"model": ErrorBody, "description": "No such symbol or subscription"},
    422: {
        "model": ValidationErrorBody,
        "description": "A parameter or the body is invalid: `detail` says which and why",
    },
    429: {
        "model": ErrorBody,
        "description": "Too many store queries at once",
        "headers": RETRY_AFTER,
    },
    503: {"model": ErrorBody, "description": "The store is unavailable", "headers": RETRY_AFTER},
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: ERROR_RESPONSES[code] for code in codes}
