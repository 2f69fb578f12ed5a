"""The ingest HTTP API (DESIGN §4): subscriptions, ticks and candles, status, health, metrics.

Memory (ring buffers, live candles) is read on the event-loop thread that mutates it, so no
lock is needed; store queries run in worker threads and fill what memory does not hold.
"""

from __future__ import annotations

import asyncio
import secrets
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import msgspec
import numpy as np
import pandas as pd
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field, field_validator

from hft_pipeline import __version__
from hft_pipeline.ingest.service import IngestService
from hft_pipeline.market.ticks import SYMBOL_PATTERN, validate_symbol
from hft_pipeline.market.timeframes import ALL_TIMEFRAMES, TIMEFRAMES

MAX_LIMIT = 100_000
RAW_FIELDS = ("ts", "seq", "price", "volume")
CANDLE_FIELDS = ("ts", "open", "high", "low", "close", "volume", "ticks")

Timeframe = Literal["raw", "1s", "5s", "15s", "1m", "5m", "15m", "1h"]
assert set(Timeframe.__args__) == set(ALL_TIMEFRAMES)  # type: ignore[attr-defined]


class SubscribeRequest(BaseModel):
    symbol: str = Field(description="Instrument name, e.g. PETR4, R_100, frxEURUSD")
    exchange: str = Field(default="SIM", max_length=32, description="Exchange or feed name")

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, value: str) -> str:
        return validate_symbol(value)


class UnsubscribeRequest(BaseModel):
    symbol: str

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, value: str) -> str:
        return validate_symbol(value)


def parse_time(value: str | None, name: str) -> int | None:
    """`value` as ns since the epoch: an integer (ns) or an ISO-8601 time (naive means UTC)."""
    if value is None or value == "":
        return None
    text = value.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        stamp = pd.Timestamp(text)
    except (ValueError, TypeError):
        raise HTTPException(
            422, f"{name}={value!r} is neither integer nanoseconds nor an ISO-8601 time"
        ) from None
    if stamp is pd.NaT:
        raise HTTPException(422, f"{name}={value!r} is not a time")
    stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
    return int(stamp.value)


def _iso(ts: np.ndarray) -> list[str]:
    return [s + "Z" for s in np.datetime_as_string(ts.astype("datetime64[ns]"), unit="us")]


def _rows(columns: dict[str, np.ndarray], fields: tuple[str, ...]) -> list[dict[str, Any]]:
    names = ("time", *fields)
    values = [_iso(columns["ts"]), *(np.asarray(columns[f]).tolist() for f in fields)]
    return [dict(zip(names, row, strict=True)) for row in zip(*values, strict=True)]


def _concat(parts: list[dict[str, np.ndarray]], fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    parts = [p for p in parts if len(p["ts"])]
    if not parts:
        return {f: np.empty(0) for f in fields}
    return {f: np.concatenate([np.asarray(p[f]) for p in parts]) for f in fields}


def _frame_columns(frame: pd.DataFrame, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {f: frame[f].to_numpy() for f in fields}


_bearer = HTTPBearer(auto_error=False)


def require_token(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Reject the request unless it carries the bearer token (when HFT_API_TOKEN is set)."""
    token = request.app.state.service.settings.api_token
    if not token:
        return
    if credentials is None or not secrets.compare_digest(credentials.credentials, token):
        raise HTTPException(
            401,
            "missing or wrong bearer token: send 'Authorization: Bearer <HFT_API_TOKEN>'",
            headers={"WWW-Authenticate": "Bearer"},
        )


class TickQueries:
    """Answers /ticks: memory serves what it holds completely, the store the rest."""

    def __init__(self, service: IngestService) -> None:
        self.service = service

    async def raw(
        self, symbol: str, start: int | None, end: int | None, limit: int, descending: bool
    ) -> tuple[dict[str, np.ndarray], str]:
        buffers = self.service.buffers
        oldest = buffers.oldest_ts(symbol) if buffers.count(symbol) else None
        if oldest is None:
            return await self._stored_raw(symbol, start, end, limit, descending), "store"
        cut = oldest + 1  # ticks sharing the oldest ts may have been overwritten in the ring
        lo = cut if start is None else max(start, cut)
        memory = buffers.range(symbol, lo, end, limit, descending)
        if (start is not None and start >= cut) or (descending and len(memory["ts"]) >= limit):
            return {f: memory[f] for f in RAW_FIELDS}, "memory"
        store_end = cut if end is None else min(end, cut)
        stored = await self._stored_raw(symbol, start, store_end, limit, descending)
        parts = [memory, stored] if descending else [stored, memory]
        merged = _concat(parts, RAW_FIELDS)
        return {f: v[:limit] for f, v in merged.items()}, "memory+store"

    async def _stored_raw(self, symbol, start, end, limit, descending) -> dict[str, np.ndarray]:
        frame = await asyncio.to_thread(
            self.service.store.read_ticks, symbol, start, end, limit, descending
        )
        return _frame_columns(frame, RAW_FIELDS)

    async def candles(
        self, symbol: str, tf: str, start: int | None, end: int | None, limit: int, descending: bool
    ) -> tuple[dict[str, np.ndarray], str]:
        live = self.service.candles
        complete_from = live.complete_from(symbol, tf)
        if complete_from is None:
            return await self._stored_candles(symbol, tf, start, end, limit, descending), "store"
        lo = complete_from if start is None else max(start, complete_from)
        frame = live.candles(symbol, tf, lo, end, limit, descending)
        memory = _frame_columns(frame, CANDLE_FIELDS)
        memory["closed"] = frame["closed"].to_numpy()
        if (start is not None and start >= complete_from) or (
            descending and len(memory["ts"]) >= limit
        ):
            return memory, "memory"
        store_end = complete_from if end is None else min(end, complete_from)
        stored = await self._stored_candles(symbol, tf, start, store_end, limit, descending)
        stored["closed"] = np.ones(len(stored["ts"]), bool)
        parts = [memory, stored] if descending else [stored, memory]
        merged = _concat(parts, (*CANDLE_FIELDS, "closed"))
        return {f: v[:limit] for f, v in merged.items()}, "memory+store"

    async def _stored_candles(self, symbol, tf, start, end, limit, descending):
        frame = await asyncio.to_thread(
            self.service.store.candles, symbol, tf, start, end, limit, descending
        )
        return _frame_columns(frame, CANDLE_FIELDS)


def create_app(service: IngestService) -> FastAPI:
    """The FastAPI application serving `service`."""
    app = FastAPI(
        title="hft_pipeline ingest API",
        version=__version__,
        description="Real-time ticks and candles with durable persistence.",
    )
    queries = TickQueries(service)
    app.state.service = service
    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"loc": list(err.get("loc", ())), "msg": str(err.get("msg")), "type": err.get("type")}
            for err in exc.errors()
        ]
        detail = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}"
            for e in errors
        )
        return JSONResponse(status_code=422, content={"detail": detail, "errors": errors})

    @app.post("/subscribe", dependencies=[Depends(require_token)])
    async def subscribe(request: SubscribeRequest) -> dict[str, Any]:
        """Subscribe a symbol; persisted and restored on restart."""
        created = service.subscribe(request.symbol, request.exchange)
        return {
            "status": "subscribed" if created else "already subscribed",
            "symbol": request.symbol,
            "exchange": request.exchange,
        }

    @app.post("/unsubscribe", dependencies=[Depends(require_token)])
    async def unsubscribe(request: UnsubscribeRequest) -> dict[str, Any]:
        """Stop receiving a symbol; its stored ticks stay."""
        if request.symbol not in service.exchanges:
            raise HTTPException(404, f"{request.symbol} is not subscribed")
        service.unsubscribe(request.symbol)
        return {"status": "unsubscribed", "symbol": request.symbol}

    @app.get("/subscriptions")
    async def subscriptions() -> dict[str, Any]:
        """Subscribed symbols with per-symbol stats."""
        items = [
            {"symbol": s, "exchange": e, **service.symbol_stats(s)}
            for s, e in sorted(service.exchanges.items())
        ]
        return {"count": len(items), "subscriptions": items}

    @app.get("/ticks/{symbol}")
    async def ticks(
        symbol: Annotated[str, Path(pattern=SYMBOL_PATTERN.pattern, description="Symbol name")],
        timeframe: Annotated[Timeframe, Query(description="raw or a candle timeframe")] = "raw",
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"1..{MAX_LIMIT}")] = 1000,
        start: Annotated[
            str | None, Query(description="ns since epoch or ISO-8601, inclusive")
        ] = None,
        end: Annotated[
            str | None, Query(description="ns since epoch or ISO-8601, exclusive")
        ] = None,
        order: Annotated[
            Literal["desc", "asc"], Query(description="desc: most recent first")
        ] = "desc",
    ) -> Response:
        """Raw ticks or candles of a symbol, most recent first unless order=asc."""
        start_ns, end_ns = parse_time(start, "start"), parse_time(end, "end")
        if start_ns is not None and end_ns is not None and start_ns >= end_ns:
            raise HTTPException(422, f"start ({start}) must be before end ({end})")
        known = symbol in service.exchanges or service.buffers.count(symbol) > 0
        if not known and symbol not in await asyncio.to_thread(service.store.symbols):
            raise HTTPException(404, f"no subscription and no stored ticks for {symbol}")
        descending = order == "desc"
        if timeframe == "raw":
            columns, source = await queries.raw(symbol, start_ns, end_ns, limit, descending)
            rows = _rows(columns, RAW_FIELDS)
        else:
            columns, source = await queries.candles(
                symbol, timeframe, start_ns, end_ns, limit, descending
            )
            rows = _rows(columns, (*CANDLE_FIELDS, "closed"))
        body = {
            "symbol": symbol,
            "timeframe": timeframe,
            "order": order,
            "count": len(rows),
            "source": source,
            "data": rows,
        }
        return Response(msgspec.json.encode(body), media_type="application/json")

    @app.get("/status")
    async def status() -> dict[str, Any]:
        """Counts, gaps, persistence lag and backlog, log and buffer sizes."""
        return service.status()

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 when the feed runs and the store accepts writes, 503 otherwise."""
        problems = []
        if service.feed_error:
            problems.append(f"feed failed: {service.feed_error}")
        if service.persister is not None and not service.persister.store_up:
            problems.append(f"store unavailable: {service.persister.last_error}")
        body = {
            "status": "degraded" if problems else "ok",
            "problems": problems,
            "pending_ticks": service.pending_ticks,
            "time": datetime.now(UTC).isoformat(),
        }
        return JSONResponse(body, status_code=503 if problems else 200)

    @app.get("/test")
    async def test() -> dict[str, Any]:
        """Connectivity check."""
        return {
            "message": "hft_pipeline ingest API is working",
            "version": __version__,
            "timeframes": list(ALL_TIMEFRAMES),
            "candle_timeframes": list(TIMEFRAMES),
        }

    @app.get("/metrics")
    async def metrics() -> Response:
        """Prometheus text exposition."""
        service.refresh_gauges()
        return Response(service.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app
