"""The ingest HTTP API (docs/api.md): subscriptions, ticks and candles, status, health, metrics.

Memory (ring buffers, live candles) is read on the event-loop thread that mutates it, so no
lock is needed; store queries run in worker threads and fill what memory does not hold.
"""

from __future__ import annotations

import asyncio
import math
import re
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import msgspec
import numpy as np
import pandas as pd
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import AfterValidator, BaseModel, Field, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from hft_pipeline import __version__
from hft_pipeline.ingest.admission import StoreGate, WatchDisconnect
from hft_pipeline.ingest.service import IngestService
from hft_pipeline.market.ticks import SYMBOL_PATTERN, SYMBOL_REGEX, validate_symbol
from hft_pipeline.market.timeframes import ALL_TIMEFRAMES, TIMEFRAMES, bucket_start, timeframe_ns
from hft_pipeline.store.base import StoreUnavailableError, TickStore

MAX_LIMIT = 100_000
RAW_FIELDS = ("ts", "seq", "price", "volume")
CANDLE_FIELDS = ("ts", "open", "high", "low", "close", "volume", "ticks")

Timeframe = Literal["raw", "1s", "5s", "15s", "1m", "5m", "15m", "1h"]
assert set(Timeframe.__args__) == set(ALL_TIMEFRAMES)  # type: ignore[attr-defined]


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


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    problems: list[str]
    pending_ticks: int
    time: str


#: The times /ticks accepts (docs/api.md, Times): the int64 nanoseconds since the epoch that
#: ticks carry (docs/architecture.md#ticks), from 0 up, as pandas and numpy can represent
#: every one of them.
MIN_TIME_NS, MAX_TIME_NS = 0, 2**63 - 1
TIME_RANGE = "1970-01-01T00:00:00Z..2262-04-11T23:47:16.854775807Z (0..9223372036854775807 ns)"
_TIME_TEXT = f"ns since the epoch or ISO-8601 (no offset: UTC) in {TIME_RANGE}; empty: none"
# What may be a time at all; parse_time refuses whatever these do not match, so the schema's
# pattern holds every accepted value (years 1969 and 2262 can be in range with an offset).
_NS_TEXT = r"[0-9]+"
_ISO_TEXT = (
    r"(?:19[6-9][0-9]|2[0-2][0-9]{2})-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"(?:[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:\.[0-9]{1,9})?)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3])(?::?[0-5][0-9])?)?)?"
)
#: start/end as an OpenAPI pattern: empty (unset), integer ns or ISO-8601.
TIME_REGEX = f"^(?:{_NS_TEXT}|{_ISO_TEXT})?$"
_NUMBER = re.compile(r"-?[0-9]+")
_NS = re.compile(_NS_TEXT)
_ISO = re.compile(_ISO_TEXT)
_ISO_SHAPE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}(?:[Tt ].*)?", re.DOTALL)  # for messages


def _invalid(name: str, value: str, message: str) -> RequestValidationError:
    """A 422 about query parameter `name`, shaped like FastAPI's own validation errors."""
    return RequestValidationError(
        [{"type": "value_error", "loc": ("query", name), "msg": message, "input": value}]
    )


def parse_time(value: str | None, name: str) -> int | None:
    """`value` as ns since the epoch: integer ns or ISO-8601 (no offset means UTC) in TIME_RANGE;
    None if empty. RequestValidationError (a 422 naming `name`) for anything else."""
    if value is None or value == "":
        return None
    shown = repr(value) if len(value) <= 64 else f"{value[:40]!r}... ({len(value)} characters)"
    if _NUMBER.fullmatch(value):
        digits = value.lstrip("-").lstrip("0")
        ns = int(value) if len(digits) <= 19 else None  # int() refuses over 4300 digits
    elif _ISO_SHAPE.fullmatch(value):
        ns = _iso_ns(value, shown, name)
    else:
        raise _invalid(
            name,
            value,
            f"{shown} is neither integer nanoseconds since the epoch nor an ISO-8601 time "
            "(e.g. 1767225600000000000 or 2026-01-01T00:00:00Z)",
        )
    if ns is None or not MIN_TIME_NS <= ns <= MAX_TIME_NS:
        raise _invalid(name, value, f"{shown} is outside the accepted times {TIME_RANGE}")
    if not (_NS.fullmatch(value) or _ISO.fullmatch(value)):  # what TIME_REGEX declares
        raise _invalid(
            name,
            value,
            f"{shown}: write integer nanoseconds as digits only, and ISO-8601 times as "
            "YYYY-MM-DD[Thh:mm[:ss[.fffffffff]][Z|+hh:mm|-hh:mm]]",
        )
    return ns


def _iso_ns(text: str, shown: str, name: str) -> int | None:
    """ns since the epoch of an ISO-8601 `text`; None when int64 ns cannot hold it."""
    try:
        # Upper case: pandas parses a lower-case "t"/"z" (RFC 3339 allows them) only to the µs.
        stamp = pd.Timestamp(text.upper())  # seconds or finer units: years 1..9999 parse
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return int(stamp.as_unit("ns").value)
    except (OverflowError, pd.errors.OutOfBoundsDatetime):
        return None
    except ValueError as exc:
        raise _invalid(name, text, f"{shown} is not a valid time: {exc}") from None


def parse_range(start: str | None, end: str | None) -> tuple[int | None, int | None]:
    """/ticks's `start` (inclusive) and `end` (exclusive) as ns; a 422 unless start < end."""
    start_ns, end_ns = parse_time(start, "start"), parse_time(end, "end")
    if start_ns is not None and end_ns is not None and start_ns >= end_ns:
        raise _invalid("end", end or "", f"start ({start}) must be before end ({end})")
    return start_ns, end_ns


class RawRow(msgspec.Struct, gc=False):
    """One raw tick of a /ticks response (fields in response order)."""

    time: str
    ts: int
    seq: int
    price: float
    volume: float


class CandleRow(msgspec.Struct, gc=False):
    """One candle of a /ticks response (fields in response order)."""

    time: str
    ts: int
    open: float
    high: float
    low: float
    close: float
    volume: float
    ticks: int
    closed: bool


class TicksBody(msgspec.Struct, gc=False):
    """The /ticks response."""

    symbol: str
    timeframe: str
    order: str
    count: int
    source: str
    data: msgspec.Raw  # the rows' JSON array, encoded by `_encode_rows`


def _iso(ts: np.ndarray) -> list[str]:
    """ISO-8601 UTC times to the microsecond (truncated), e.g. 2026-01-02T03:04:05.123456Z."""
    return np.datetime_as_string(ts.astype("datetime64[ns]"), unit="us", timezone="UTC").tolist()


def _rows(columns: dict[str, np.ndarray], row: type[RawRow] | type[CandleRow]) -> list:
    """`columns` as row structs: built by `map` in C, no per-row dict or Python frame."""
    fields = row.__struct_fields__[1:]
    values = [np.asarray(columns[f]).tolist() for f in fields]
    return list(map(row, _iso(columns["ts"]), *values))


def _concat(parts: list[dict[str, np.ndarray]], fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    parts = [p for p in parts if len(p["ts"])]
    if not parts:
        return {f: np.empty(0) for f in fields}
    return {f: np.concatenate([np.asarray(p[f]) for p in parts]) for f in fields}


def _encode_rows(
    columns: dict[str, np.ndarray], row: type[RawRow] | type[CandleRow]
) -> list[bytes]:
    """Each row's JSON object without its braces, in order: `_json_array` joins them."""
    if not len(columns["ts"]):
        return []
    # Rows hold numbers, booleans and ISO times only, so "},{" occurs only between rows.
    return msgspec.json.encode(_rows(columns, row))[2:-2].split(b"},{")


def _json_array(rows: list[bytes]) -> msgspec.Raw:
    return msgspec.Raw(b"[{" + b"},{".join(rows) + b"}]" if rows else b"[]")


class EncodedTicks:
    """The JSON rows of the last newest-first raw answer per symbol, reused for the next one.

    Consecutive /ticks answers of a symbol overlap in all but the ticks that arrived in between,
    and encoding is most of an answer's cost. A cached row is reused only where the new answer's
    columns equal the cached ones element by element, so late ticks merged into the ring (or any
    other change) just cost a fresh encoding.
    """

    #: Rows cached per symbol at most (an answer holds up to MAX_LIMIT).
    MAX_ROWS = 20_000

    def __init__(self) -> None:
        self._last: dict[str, tuple[dict[str, np.ndarray], list[bytes]]] = {}

    def rows(self, symbol: str, columns: dict[str, np.ndarray]) -> list[bytes]:
        """JSON rows of `columns` (raw ticks, newest first), as `_encode_rows` would give."""
        n = len(columns["ts"])
        rows = self._reuse(symbol, columns, n)
        if rows is None:
            rows = _encode_rows(columns, RawRow)
        if n <= self.MAX_ROWS:
            self._last[symbol] = (columns, rows)
        else:
            self._last.pop(symbol, None)
        return rows

    def _reuse(self, symbol: str, columns: dict[str, np.ndarray], n: int) -> list[bytes] | None:
        last = self._last.get(symbol)
        if last is None or n == 0 or not len(last[1]):
            return None
        old, old_rows = last
        ts, seq = columns["ts"], columns["seq"]
        at = np.flatnonzero((ts == old["ts"][0]) & (seq == old["seq"][0]))
        if not len(at):
            return None
        p = int(at[0])  # rows newer than the cached newest
        m = min(n - p, len(old_rows))
        # Bit for bit (0.0 and -0.0 compare equal but encode differently); every column is 8-byte.
        if not all(
            np.array_equal(columns[f][p : p + m].view(np.int64), old[f][:m].view(np.int64))
            for f in RAW_FIELDS
        ):
            return None
        newer = _encode_rows({f: columns[f][:p] for f in RAW_FIELDS}, RawRow)
        older = _encode_rows({f: columns[f][p + m :] for f in RAW_FIELDS}, RawRow)
        return newer + old_rows[:m] + older


def _frame_columns(frame: pd.DataFrame, fields: tuple[str, ...]) -> dict[str, np.ndarray]:
    return {f: frame[f].to_numpy() for f in fields}


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


@dataclass(slots=True)
class _StoredCandles:
    """A store answer for candles before `end`, and when it may be reused.

    `settle_offset`: the log end when the symbol's forming bucket of the finest timeframe had
    passed `end`; every tick accepted since with ts < `end` was counted late. Once the persister
    has stored the log up to there and no tick was late since, the store's candles before `end`
    are final (docs/architecture.md#candles: closed candles change only through late ticks)
    and their JSON rows (`encoded`, as `_encode_rows` gives them) are kept: encoding is most
    of an answer's cost.
    """

    settle_offset: int
    encoded: list[bytes] | None = None
    rows: int = 0


_MINUTE_NS = timeframe_ns("1m")
_NO_TICK = np.iinfo(np.int64).min


def _stored_candles(
    store: TickStore, symbol: str, tf: str, start: int | None, end: int | None, limit: int,
    descending: bool,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Stored candles as columns: 1m and coarser read from the stored 1m candles (an index read,
    docs/candles.md), finer ones aggregated from the stored ticks."""
    read = store.minute_candles if timeframe_ns(tf) >= _MINUTE_NS else store.candles
    return _frame_columns(read(symbol, tf, start, end, limit, descending), CANDLE_FIELDS)


class TickQueries:
    """Answers /ticks: memory serves what it holds completely, the store the rest.

    Every store query goes through `gate` (admission control, docs/candles.md): a bounded number
    run at once on their own threads, the rest wait briefly or get a 429, and an abandoned one is
    cancelled in the store, so API load never starves the persister.

    Stored candles older than what memory completes are cached once final (see _StoredCandles):
    encoding is most of an answer's cost. The cache assumes this process's persister is the
    only writer of its symbols' ticks (one ingest process per symbol,
    docs/architecture.md#scaling-out); any late tick empties it, as the live candles count
    late ticks over all symbols.
    """

    #: Bounds of the stored-candles cache (entries, candles over all entries): oldest go first.
    CACHE_ENTRIES = 2048
    CACHE_ROWS = 1_000_000
    #: Longest wait for the persister before a cache-filling read (see _await_persister).
    SETTLE_WAIT_S = 0.2

    def __init__(self, service: IngestService) -> None:
        self.service = service
        self._stored: dict[tuple, _StoredCandles] = {}
        self._stored_rows = 0
        self._late_seen = service.candles.late_total
        s = service.settings
        self.gate = StoreGate(
            max_running=s.api_store_queries,
            max_waiting=s.api_store_queue,
            max_wait_s=s.api_store_wait_ms / 1000,
            timeout_s=s.api_store_timeout_s,
        )

    async def _in_store(self, call: Callable[[TickStore], Any]) -> Any:
        """`call(store)` on a store-query thread, under admission control."""
        store = self.service.store
        return await self.gate.run(store, call, store)

    async def has_stored(self, symbol: str) -> bool:
        """Whether the store holds ticks of `symbol`."""
        return symbol in await self._in_store(lambda store: store.symbols())

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
        return await self._in_store(
            lambda store: _frame_columns(
                store.read_ticks(symbol, start, end, limit, descending), RAW_FIELDS
            )
        )

    async def candle_rows(
        self, symbol: str, tf: str, start: int | None, end: int | None, limit: int, descending: bool
    ) -> tuple[list[bytes], str]:
        """JSON rows (see `_encode_rows`) of the candles asked for, and where they came from."""
        live = self.service.candles
        complete_from = live.complete_from(symbol, tf)
        if complete_from is None:

            def only_stored(store: TickStore) -> list[bytes]:
                stored = _stored_candles(store, symbol, tf, start, end, limit, descending)
                # Closed as live candles are: once a later tick of the symbol exists.
                newest = store.read_ticks(symbol, None, None, 1, True)
                tf_ns = timeframe_ns(tf)
                forming = bucket_start(int(newest["ts"].iloc[0]), tf_ns) if len(newest) else 0
                stored["closed"] = stored["ts"] < forming
                return _encode_rows(stored, CandleRow)

            return await self._in_store(only_stored), "store"
        lo = complete_from if start is None else max(start, complete_from)
        frame = live.candles(symbol, tf, lo, end, limit, descending)
        memory = _frame_columns(frame, CANDLE_FIELDS)
        memory["closed"] = frame["closed"].to_numpy()
        memory_rows = _encode_rows(memory, CandleRow)
        if (start is not None and start >= complete_from) or (
            descending and len(memory_rows) >= limit
        ):
            return memory_rows, "memory"
        store_end = complete_from if end is None else min(end, complete_from)
        forming = self._forming(symbol, tf)
        fresh: list[bytes] = []
        if _NO_TICK < forming < store_end and (start is None or start <= forming):
            # The bucket of memory's first tick, which only the store completes, is still
            # forming (a service's first minute, hour): only it is read each time; the candles
            # before it are final and kept encoded.
            def forming_rows(store: TickStore) -> list[bytes]:
                stored = _stored_candles(store, symbol, tf, forming, store_end, None, descending)
                stored["closed"] = np.zeros(len(stored["ts"]), bool)
                return _encode_rows(stored, CandleRow)

            fresh = await self._in_store(forming_rows)
            store_end = forming
        stored_rows = await self._final_stored_rows(symbol, tf, start, store_end, limit, descending)
        if descending:
            rows = memory_rows + fresh + stored_rows
        else:
            rows = stored_rows + fresh + memory_rows
        return rows[:limit], "memory+store"

    async def _final_stored_rows(
        self, symbol: str, tf: str, start: int | None, end: int, limit: int, descending: bool
    ) -> list[bytes]:
        """JSON rows of the stored candles before `end` (which memory does not complete), all
        closed; kept once final (see _StoredCandles)."""
        service = self.service
        late = service.candles.late_total
        persister, log = service.persister, service.log
        if late != self._late_seen and log is not None:
            # A late tick may have changed any stored candle: each is final again once the
            # persister stored the log as it is now (forming buckets only move forward).
            for entry in self._stored.values():
                entry.settle_offset, entry.encoded, entry.rows = log.end_offset, None, 0
            self._stored_rows = 0
            self._late_seen = late
        key = (symbol, tf, start, end, limit, descending)
        entry = self._stored.get(key)
        if entry is not None and entry.encoded is not None:
            return entry.encoded
        if (
            entry is None
            and persister is not None
            and log is not None
            and self._finest_forming(symbol) >= end
        ):
            entry = self._remember(key, _StoredCandles(log.end_offset))
        if entry is not None and persister is not None:
            await self._await_persister(entry.settle_offset)
        settled = (
            entry is not None and persister is not None and persister.offset >= entry.settle_offset
        )
        # Closed once a later tick exists: memory's newest tick is in its finest forming bucket.
        # (The bucket memory does not complete can be the forming one, e.g. the first hour.)
        forming, tf_ns = self._finest_forming(symbol), timeframe_ns(tf)

        def closed_rows(store: TickStore) -> list[bytes]:
            stored = _stored_candles(store, symbol, tf, start, end, limit, descending)
            stored["closed"] = stored["ts"] + tf_ns <= forming
            return _encode_rows(stored, CandleRow)

        encoded = await self._in_store(closed_rows)
        if settled and service.candles.late_total == late and self._stored.get(key) is entry:
            entry.encoded, entry.rows = encoded, len(encoded)
            self._stored_rows += entry.rows
            while self._stored_rows > self.CACHE_ROWS and len(self._stored) > 1:
                self._evict_oldest()
        return encoded

    async def _await_persister(self, offset: int) -> None:
        """Wait (briefly) until the persister has stored the log up to `offset`.

        A new entry settles at the log end of its creation, which the persister reaches within
        a batch (50 ms): waiting for that makes the first read final and kept, instead of a
        read that cannot be kept followed by one that can (a cold cache read each candle twice).
        Not when the persister is behind: then the read goes ahead and is not kept.
        """
        service = self.service
        if service.pending_ticks > 2 * service.settings.persist_batch_size:
            return
        deadline = time.monotonic() + self.SETTLE_WAIT_S
        while service.persister.offset < offset and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _finest_forming(self, symbol: str) -> int:
        """Start of `symbol`'s forming bucket of the finest live timeframe (ticks before are late)."""
        return self._forming(symbol, next(iter(self.service.candles.timeframes)))

    def _forming(self, symbol: str, tf: str) -> int:
        """Start of `symbol`'s forming bucket of `tf` in memory (the newest tick's bucket)."""
        # An index read: LiveCandles.candles builds a DataFrame (~20 % of the event loop under
        # 1m load) and the ring buffer's stats flush its staged writes (~14 %).
        start = self.service.candles.forming_start(symbol, tf)
        return _NO_TICK if start is None else start

    def _remember(self, key: tuple, entry: _StoredCandles) -> _StoredCandles:
        while len(self._stored) >= self.CACHE_ENTRIES:
            self._evict_oldest()
        self._stored[key] = entry
        return entry

    def _evict_oldest(self) -> None:
        oldest = next(iter(self._stored))
        self._stored_rows -= self._stored.pop(oldest).rows


class TicksFastPath:
    """Answers well-formed `GET /ticks/{symbol}` before FastAPI's routing and validation.

    FastAPI resolves and validates the route's six parameters per request, which costs about as
    much as answering from memory. Requests this class fully validates itself, with the same
    rules, get the same body from the same function; anything else (bad or unusual input) goes on
    to the FastAPI route, which answers or explains it. An error of the answer (unknown symbol,
    store unavailable) is rendered by the app's own exception handler, `handlers`, as the route
    would: this middleware runs outside the app's exception middleware.
    """

    _PREFIX = "/ticks/"
    _PARAMS = frozenset(("timeframe", "limit", "start", "end", "order"))

    def __init__(
        self,
        app: ASGIApp,
        answer: Callable[..., Awaitable[bytes]],
        handlers: Mapping[type[Exception], Callable[[Request, Any], Awaitable[Response]]],
    ) -> None:
        self.app = app
        self.answer = answer
        self.handlers = handlers

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        params = self._params(scope)
        if params is not None:
            try:
                body = await self.answer(**params)
            except Exception as exc:
                handler = next(
                    (self.handlers[t] for t in type(exc).__mro__ if t in self.handlers), None
                )
                if handler is None:
                    raise
                response = await handler(Request(scope, receive), exc)
                await response(scope, receive, send)
                return
            else:
                headers = [
                    (b"content-length", str(len(body)).encode()),
                    (b"content-type", b"application/json"),
                ]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)

    def _params(self, scope: Scope) -> dict[str, Any] | None:
        """The route's arguments if the request is one this fast path answers, else None."""
        if scope["type"] != "http" or scope["method"] != "GET" or scope.get("root_path"):
            return None
        path: str = scope["path"]
        if not path.startswith(self._PREFIX):
            return None
        symbol = path[len(self._PREFIX) :]
        if not SYMBOL_PATTERN.fullmatch(symbol):
            return None
        pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs) or not query.keys() <= self._PARAMS:
            return None
        timeframe = query.get("timeframe", "raw")
        order = query.get("order", "desc")
        limit = query.get("limit", "1000")
        if timeframe not in ALL_TIMEFRAMES or order not in ("desc", "asc"):
            return None
        if not (
            limit.isascii() and limit.isdigit() and len(limit) <= 6 and 1 <= int(limit) <= MAX_LIMIT
        ):
            return None
        try:
            start, end = parse_range(query.get("start"), query.get("end"))
        except RequestValidationError:
            return None
        return {
            "symbol": symbol,
            "timeframe": timeframe,
            "limit": int(limit),
            "start_ns": start,
            "end_ns": end,
            "order": order,
        }


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

_RETRY_AFTER = {
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
        "headers": _RETRY_AFTER,
    },
    503: {"model": ErrorBody, "description": "The store is unavailable", "headers": _RETRY_AFTER},
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: ERROR_RESPONSES[code] for code in codes}


def _struct_schema(struct: type[msgspec.Struct]) -> dict[str, Any]:
    """`struct`'s JSON Schema, inline: its fields are scalars, so it needs no references."""
    return msgspec.json.schema(struct)["$defs"][struct.__name__]


def _ticks_schema() -> dict[str, Any]:
    """The JSON Schema of a /ticks body (TicksBody with its rows)."""
    schema = _struct_schema(TicksBody)
    schema["properties"]["data"] = {
        "description": "Raw ticks when timeframe=raw, else candles",
        "anyOf": [
            {"type": "array", "items": _struct_schema(RawRow)},
            {"type": "array", "items": _struct_schema(CandleRow)},
        ],
    }
    return schema


def create_app(service: IngestService) -> FastAPI:
    """The FastAPI application serving `service`."""
    app = FastAPI(
        title="hft_pipeline ingest API",
        version=__version__,
        description="Real-time ticks and candles with durable persistence.",
    )
    queries = TickQueries(service)
    encoded_ticks = EncodedTicks()
    app.state.service = service

    for exc_type, handler in EXCEPTION_HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
    # Depends(_bearer) only declares the scheme in OpenAPI, where it is required only when a
    # token is set; TokenFirstRoute checks the token.
    security = [Depends(_bearer)] if service.settings.api_token else []
    mutating = APIRouter(route_class=TokenFirstRoute, dependencies=security)

    unauthorized = (401,) if service.settings.api_token else ()

    @mutating.post("/subscribe", responses=_errors(400, *unauthorized, 422, 503))
    async def subscribe(request: SubscribeRequest) -> dict[str, Any]:
        """Subscribe a symbol; persisted and restored on restart."""
        created = service.subscribe(request.symbol, request.exchange)
        return {
            "status": "subscribed" if created else "already subscribed",
            "symbol": request.symbol,
            "exchange": request.exchange,
        }

    @mutating.post("/unsubscribe", responses=_errors(400, *unauthorized, 404, 422, 503))
    async def unsubscribe(request: UnsubscribeRequest) -> dict[str, Any]:
        """Stop receiving a symbol; its stored ticks stay."""
        if request.symbol not in service.exchanges:
            raise HTTPException(404, f"{request.symbol} is not subscribed")
        service.unsubscribe(request.symbol)
        return {"status": "unsubscribed", "symbol": request.symbol}

    @mutating.post("/log/acknowledge", responses=_errors(*unauthorized))
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

    async def answer_ticks(
        symbol: str,
        timeframe: str,
        limit: int,
        start_ns: int | None,
        end_ns: int | None,
        order: str,
    ) -> bytes:
        """The /ticks body for validated parameters (see `parse_range`); HTTPException for what
        they cannot answer."""
        known = symbol in service.exchanges or service.buffers.count(symbol) > 0
        if not known and not await queries.has_stored(symbol):
            raise HTTPException(404, f"no subscription and no stored ticks for {symbol}")
        descending = order == "desc"
        if timeframe == "raw":
            columns, source = await queries.raw(symbol, start_ns, end_ns, limit, descending)
            if descending and source == "memory":
                rows = encoded_ticks.rows(symbol, columns)
            else:
                rows = _encode_rows(columns, RawRow)
        else:
            rows, source = await queries.candle_rows(
                symbol, timeframe, start_ns, end_ns, limit, descending
            )
        body = TicksBody(symbol, timeframe, order, len(rows), source, _json_array(rows))
        return msgspec.json.encode(body)

    app.add_middleware(TicksFastPath, answer=answer_ticks, handlers=EXCEPTION_HANDLERS)
    app.add_middleware(WatchDisconnect)  # outside the fast path: its store queries see it

    @app.get(
        "/ticks/{symbol}",
        responses={
            200: {
                "description": "Ticks or candles",
                "content": {"application/json": {"schema": _ticks_schema()}},
            },
            **_errors(404, 422, 429, 503),
        },
    )
    async def ticks(
        symbol: Annotated[
            str,
            Path(
                description="Symbol name",
                examples=["PETR4", "R_100"],
                json_schema_extra={"pattern": SYMBOL_REGEX},
            ),
            AfterValidator(validate_symbol),
        ],
        timeframe: Annotated[Timeframe, Query(description="raw or a candle timeframe")] = "raw",
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description=f"1..{MAX_LIMIT}")] = 1000,
        start: Annotated[
            str,
            Query(
                description=f"Inclusive: {_TIME_TEXT}", json_schema_extra={"pattern": TIME_REGEX}
            ),
        ] = "",
        end: Annotated[
            str,
            Query(
                description=f"Exclusive: {_TIME_TEXT}", json_schema_extra={"pattern": TIME_REGEX}
            ),
        ] = "",
        order: Annotated[
            Literal["desc", "asc"], Query(description="desc: most recent first")
        ] = "desc",
    ) -> Response:
        """Raw ticks or candles of a symbol, most recent first unless order=asc."""
        start_ns, end_ns = parse_range(start, end)
        body = await answer_ticks(symbol, timeframe, limit, start_ns, end_ns, order)
        return Response(body, media_type="application/json")

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
                "headers": _RETRY_AFTER,
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

    return app
