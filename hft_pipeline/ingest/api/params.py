"""/ticks's parameters, defined once: the route's annotations and the fast path's check."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Literal, get_args
from urllib.parse import parse_qsl

import pandas as pd
from fastapi import Path, Query
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator

from hft_pipeline.market.ticks import SYMBOL_PATTERN, SYMBOL_REGEX, validate_symbol
from hft_pipeline.market.timeframes import ALL_TIMEFRAMES

MIN_LIMIT, MAX_LIMIT = 1, 100_000
DEFAULT_TIMEFRAME, DEFAULT_LIMIT, DEFAULT_ORDER = "raw", 1000, "desc"
#: The query parameters /ticks accepts (the route's signature names the same ones).
QUERY_NAMES = frozenset(("timeframe", "limit", "start", "end", "order"))

Timeframe = Literal["raw", "1s", "5s", "15s", "1m", "5m", "15m", "1h"]
Order = Literal["desc", "asc"]
TIMEFRAMES, ORDERS = frozenset(get_args(Timeframe)), frozenset(get_args(Order))
assert set(TIMEFRAMES) == set(ALL_TIMEFRAMES)

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

# The route's annotations: FastAPI validates and documents (OpenAPI) these.
SymbolPath = Annotated[
    str,
    Path(
        description="Symbol name",
        examples=["PETR4", "R_100"],
        json_schema_extra={"pattern": SYMBOL_REGEX},
    ),
    AfterValidator(validate_symbol),
]
TimeframeQuery = Annotated[Timeframe, Query(description="raw or a candle timeframe")]
LimitQuery = Annotated[
    int, Query(ge=MIN_LIMIT, le=MAX_LIMIT, description=f"{MIN_LIMIT}..{MAX_LIMIT}")
]
StartQuery = Annotated[
    str, Query(description=f"Inclusive: {_TIME_TEXT}", json_schema_extra={"pattern": TIME_REGEX})
]
EndQuery = Annotated[
    str, Query(description=f"Exclusive: {_TIME_TEXT}", json_schema_extra={"pattern": TIME_REGEX})
]
OrderQuery = Annotated[Order, Query(description="desc: most recent first")]


@dataclass(frozen=True, slots=True)
class TicksParams:
    """Valid /ticks parameters, times as ns since the epoch."""

    symbol: str
    timeframe: str = DEFAULT_TIMEFRAME
    limit: int = DEFAULT_LIMIT
    start_ns: int | None = None
    end_ns: int | None = None
    order: str = DEFAULT_ORDER

    @property
    def descending(self) -> bool:
        return self.order == "desc"

    @classmethod
    def of_route(
        cls, symbol: str, timeframe: str, limit: int, start: str, end: str, order: str
    ) -> TicksParams:
        """The route's arguments, which FastAPI validated but for the times (a 422 if bad)."""
        start_ns, end_ns = parse_range(start, end)
        return cls(symbol, timeframe, limit, start_ns, end_ns, order)

    @classmethod
    def of_request(cls, symbol: str, query_string: bytes) -> TicksParams | None:
        """The parameters if every one passes the route's rules as plainly written, else None:
        the route then answers or explains whatever is unusual or wrong."""
        if not SYMBOL_PATTERN.fullmatch(symbol):
            return None
        pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
        query = dict(pairs)
        if len(query) != len(pairs) or not query.keys() <= QUERY_NAMES:
            return None
        timeframe = query.get("timeframe", DEFAULT_TIMEFRAME)
        order = query.get("order", DEFAULT_ORDER)
        limit = query.get("limit", str(DEFAULT_LIMIT))
        if timeframe not in TIMEFRAMES or order not in ORDERS:
            return None
        # Digits only: pydantic's own int parsing takes signs, spaces and more, which the route
        # handles.
        if not (
            limit.isascii()
            and limit.isdigit()
            and len(limit) <= len(str(MAX_LIMIT))
            and MIN_LIMIT <= int(limit) <= MAX_LIMIT
        ):
            return None
        try:
            start, end = parse_range(query.get("start"), query.get("end"))
        except RequestValidationError:
            return None
        return cls(symbol, timeframe, int(limit), start, end, order)


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
