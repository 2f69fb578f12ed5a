"""The API's routes: subscriptions, ticks and candles, status, health, metrics (docs/api.md)."""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, Literal

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, field_validator

from hft_pipeline import __version__
from hft_pipeline.ingest.api.encoding import ticks_schema
from hft_pipeline.ingest.api.errors import RETRY_AFTER, error_responses, retry_after_s
from hft_pipeline.ingest.api.params import (
    DEFAULT_LIMIT,
    DEFAULT_ORDER,
    DEFAULT_TIMEFRAME,
    EndQuery,
    LimitQuery,
    OrderQuery,
    StartQuery,
    SymbolPath,
    TicksParams,
    TimeframeQuery,
)
from hft_pipeline.ingest.api.reads import TickQueries
from hft_pipeline.ingest.service import IngestService
from hft_pipeline.market.ticks import SYMBOL_REGEX, validate_symbol
from hft_pipeline.market.timeframes import ALL_TIMEFRAMES, TIMEFRAMES


class SubscribeRequest(BaseModel):
    symbol: str = Field(
        description="Instrument name, e.g. PETR4, R_100, frxEURUSD",
        json_schema_extra={"pattern": SYMBOL_REGEX},
    )
    exchange: str = Field(default="SIM", max_length=32, description="Exchange or feed name")

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, value: str) -> str:
        return validate_symbol(value)


class UnsubscribeRequest(BaseModel):
    symbol: str = Field(json_schema_extra={"pattern": SYMBOL_REGEX})

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, value: str) -> str:
        return validate_symbol(value)


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    problems: list[str]
    pending_ticks: int
    time: str


_bearer = HTTPBearer(
    auto_error=False, description="HFT_API_TOKEN; mutating endpoints need it when it is set"
)


async def require_token(request: Request) -> None:
    """Reject the request (401) unless it carries the bearer token, when HFT_API_TOKEN is set."""
    token = request.app.state.service.settings.api_token
    if not token:
        return
    credentials = await _bearer(request)
    # Bytes: compare_digest refuses str with non-ASCII characters (header values are latin-1).
    if credentials is None or not secrets.compare_digest(
        credentials.credentials.encode("latin-1"), token.get_secret_value().encode()
    ):
        raise HTTPException(
            401,
            "missing or wrong bearer token: send 'Authorization: Bearer <HFT_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


class TokenFirstRoute(APIRoute):
    """A route that checks the bearer token before FastAPI reads and validates the body.

    FastAPI parses the body before it runs dependencies, so with `Depends(require_token)` a
    malformed body without a token was a 422 where it must be a 401.
    """

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        handler = super().get_route_handler()

        async def token_first(request: Request) -> Response:
            await require_token(request)
            return await handler(request)

        return token_first


def add_routes(app: FastAPI, service: IngestService, queries: TickQueries) -> None:
    """The API's routes on `app`, serving `service` (/ticks through `queries`)."""
    # Depends(_bearer) only declares the scheme in OpenAPI, where it is required only when a
    # token is set; TokenFirstRoute checks the token.
    security = [Depends(_bearer)] if service.settings.api_token else []
    mutating = APIRouter(route_class=TokenFirstRoute, dependencies=security)

    unauthorized = (401,) if service.settings.api_token else ()

    @mutating.post("/subscribe", responses=error_responses(400, *unauthorized, 422, 503))
    async def subscribe(request: SubscribeRequest) -> dict[str, Any]:
        """Subscribe a symbol; persisted and restored on restart."""
        created = service.subscribe(request.symbol, request.exchange)
        return {
            "status": "subscribed" if created else "already subscribed",
            "symbol": request.symbol,
            "exchange": request.exchange,
        }

    @mutating.post("/unsubscribe", responses=error_responses(400, *unauthorized, 404, 422, 503))
    async def unsubscribe(request: UnsubscribeRequest) -> dict[str, Any]:
        """Stop receiving a symbol; its stored ticks stay."""
        if request.symbol not in service.exchanges:
            raise HTTPException(404, f"{request.symbol} is not subscribed")
        service.unsubscribe(request.symbol)
        return {"status": "unsubscribed", "symbol": request.symbol}

    @mutating.post("/log/acknowledge", responses=error_responses(*unauthorized))
    async def acknowledge_log_damage() -> dict[str, Any]:
        """Acknowledge the damaged spans of the tick log found on start (docs/durability.md):
        /health stops reporting them; /status keeps listing them while their segment exists."""
        acknowledged = service.acknowledge_log_damage()  # one small fsynced file
        report = service.status()["log"]["damage"]
        return {"acknowledged": acknowledged, **report}

    app.include_router(mutating)

    @app.get("/subscriptions")
    async def subscriptions() -> dict[str, Any]:
        """Subscribed symbols with per-symbol stats."""
        items = [
            {"symbol": s, "exchange": e, **service.symbol_stats(s)}
            for s, e in sorted(service.exchanges.items())
        ]
        return {"count": len(items), "subscriptions": items}

    @app.get(
        "/ticks/{symbol}",
        responses={
            200: {
                "description": "Ticks or candles",
                "content": {"application/json": {"schema": ticks_schema()}},
            },
            **error_responses(404, 422, 429, 503),
        },
    )
    async def ticks(
        symbol: SymbolPath,
        timeframe: TimeframeQuery = DEFAULT_TIMEFRAME,
        limit: LimitQuery = DEFAULT_LIMIT,
        start: StartQuery = "",
        end: EndQuery = "",
        order: OrderQuery = DEFAULT_ORDER,
    ) -> Response:
        """Raw ticks or candles of a symbol, most recent first unless order=asc."""
        params = TicksParams.of_route(symbol, timeframe, limit, start, end, order)
        return Response(await queries.body(params), media_type="application/json")

    @app.get("/status")
    async def status() -> dict[str, Any]:
        """Counts, gaps, persistence lag and backlog, log and buffer sizes, store-query admission."""
        return {**service.status(), "api": {"store_queries": queries.gate.status()}}

    @app.get(
        "/health",
        responses={
            200: {"model": Health},
            503: {
                "model": Health,
                "description": "The feed failed or the store is unavailable",
                "headers": RETRY_AFTER,
            },
        },
    )
    async def health() -> JSONResponse:
        """200 when the feed runs and the store accepts writes, 503 otherwise."""
        problems = service.health_problems()
        body = {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "pending_ticks": service.pending_ticks,
            "time": datetime.now(UTC).isoformat(),
        }
        if problems:
            headers = {"Retry-After": str(retry_after_s(service))}
            return JSONResponse(body, status_code=503, headers=headers)
        return JSONResponse(body)

    @app.get("/test")
    async def test() -> dict[str, Any]:
        """Connectivity check."""
        return {
            "message": "hft_pipeline ingest API is working",
            "version": __version__,
            "timeframes": list(ALL_TIMEFRAMES),
            "candle_timeframes": list(TIMEFRAMES),
        }

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text exposition."""
        service.refresh_gauges()
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)
