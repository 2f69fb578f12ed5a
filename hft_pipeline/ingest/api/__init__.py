"""The ingest HTTP API (docs/api.md): `create_app` assembles the routes, the /ticks read path,
its fast path and the store-query gate."""

from __future__ import annotations

from fastapi import FastAPI

from hft_pipeline import __version__
from hft_pipeline.ingest.admission import StoreGate, WatchDisconnect
from hft_pipeline.ingest.api.encoding import (
    CANDLE_FIELDS,
    RAW_FIELDS,
    CandleRow,
    EncodedTicks,
    RawRow,
    TicksBody,
    encode_rows,
    json_array,
)
from hft_pipeline.ingest.api.errors import ERROR_RESPONSES, EXCEPTION_HANDLERS, retry_after_s
from hft_pipeline.ingest.api.fastpath import TicksFastPath
from hft_pipeline.ingest.api.params import (
    MAX_LIMIT,
    TIME_RANGE,
    TIME_REGEX,
    TicksParams,
    Timeframe,
    parse_range,
    parse_time,
)
from hft_pipeline.ingest.api.reads import TickQueries
from hft_pipeline.ingest.api.routes import TokenFirstRoute, add_routes, require_token
from hft_pipeline.ingest.service import IngestService

# The names the single module had: tests still import these two.
_encode_rows, _json_array = encode_rows, json_array

__all__ = [
    "CANDLE_FIELDS",
    "ERROR_RESPONSES",
    "EXCEPTION_HANDLERS",
    "MAX_LIMIT",
    "RAW_FIELDS",
    "TIME_RANGE",
    "TIME_REGEX",
    "CandleRow",
    "EncodedTicks",
    "RawRow",
    "StoreGate",
    "TickQueries",
    "TicksBody",
    "TicksFastPath",
    "TicksParams",
    "Timeframe",
    "TokenFirstRoute",
    "create_app",
    "encode_rows",
    "json_array",
    "parse_range",
    "parse_time",
    "require_token",
    "retry_after_s",
]


def create_app(service: IngestService) -> FastAPI:
    """The FastAPI application serving `service`."""
    app = FastAPI(
        title="hft_pipeline ingest API",
        version=__version__,
        description="Real-time ticks and candles with durable persistence.",
    )
    app.state.service = service
    s = service.settings
    gate = StoreGate(
        max_running=s.api_store_queries,
        max_waiting=s.api_store_queue,
        max_wait_s=s.api_store_wait_ms / 1000,
        timeout_s=s.api_store_timeout_s,
    )
    queries = TickQueries(service, gate)
    for exc_type, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
    add_routes(app, service, queries)
    app.add_middleware(TicksFastPath, answer=queries.body, handlers=EXCEPTION_HANDLERS)
    app.add_middleware(WatchDisconnect)  # outside the fast path: its store queries see it
    return app
