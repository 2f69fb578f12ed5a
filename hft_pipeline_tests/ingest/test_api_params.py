"""/ticks's fast path and its FastAPI route accept and refuse the same parameters, with the same
answer: both follow the one definition in ingest/api/params.py."""

from __future__ import annotations

import http.client
import time
from datetime import UTC, datetime

import numpy as np
import pytest

from hft_pipeline.ingest.api import TicksFastPath
from hft_pipeline.ingest.api.params import (
    DEFAULT_LIMIT,
    DEFAULT_ORDER,
    DEFAULT_TIMEFRAME,
    MAX_LIMIT,
    MIN_LIMIT,
    ORDERS,
    QUERY_NAMES,
    TIMEFRAMES,
    TicksParams,
)
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.settings import Settings
from hft_pipeline_tests.ingest.harness import ScriptedFeed, running_service

START_S = time.time_ns() // 10**9 - 600
START_ISO = datetime.fromtimestamp(START_S, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
START_NS, MID_NS = START_S * 10**9, (START_S + 100) * 10**9

# What the fast path answers itself: plainly written, valid parameters.
FAST = [
    "",
    "limit=5",
    f"limit={MAX_LIMIT}",
    "limit=0005",
    "order=asc&limit=3",
    "timeframe=1m&limit=3",
    "timeframe=1s&order=asc&limit=10",
    "timeframe=raw&limit=1&order=desc",
    f"start={START_NS}&end={MID_NS}&limit=4",
    f"start={START_ISO}&limit=2&order=asc",
    f"start={START_ISO.lower()}&timeframe=5s",
    "start=&end=",
    "end=1970-01-01T00:00:01Z",
    f"start=000{START_NS}&limit=2",
    f"start={START_NS}&end={START_NS + 1}",
]
# Left to the route: unusual spellings, unknown or repeated names, and every invalid value.
ROUTE = [
    "limit=%2B5",
    "limit=%205",
    "limit=5&limit=6",
    "LIMIT=5",
    "foo=bar",
    "limit=0",
    f"limit={MAX_LIMIT + 1}",
    "limit=1000000",
    "limit=-1",
    "limit=abc",
    "limit=",
    "limit=1.5",
    "limit=%EF%BC%95",  # a full-width 5: a digit to str.isdigit, not to the route
    "timeframe=2m",
    "timeframe=RAW",
    "timeframe=",
    "order=up",
    "order=",
    "start=abc",
    "start=-1",
    f"start={START_NS}&end={START_NS}",
    f"start={MID_NS}&end={START_NS}",
    "start=2262-04-12T00:00:00Z",
    "start=9223372036854775808",
    "start=2026-13-01",
    "start=2026-02-30T00:00:00Z",
    "start=%C3%A9",
    "end=2026-01-01T00:00:00%2B0100x",
]


def ticks(symbol: str, n: int) -> TickBatch:
    ts = START_NS + np.arange(n) * 250_000_000  # 4 ticks/s
    price = np.round(50 + np.sin(np.arange(n) / 7), 2)
    return TickBatch.from_columns(symbol, ts, np.arange(n), price, np.full(n, 100.0))


@pytest.fixture(scope="module")
def svc(tmp_path_factory):
    settings = Settings(home=tmp_path_factory.mktemp("home"), symbols=("PETR4",))
    with running_service(settings, feed=ScriptedFeed([ticks("PETR4", 2000)])) as running:
        running.wait(
            lambda: running.service.counters.accepted == 2000 and running.service.pending_ticks == 0
        )
        yield running


def get(svc, target: str) -> tuple[int, bytes]:
    """`target` sent byte for byte as the request line's target (no client re-quoting)."""
    host, port = svc.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", target)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def through_both(svc, target: str) -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    """The answer with the fast path on, and forced through the route."""
    fast = get(svc, target)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(TicksFastPath, "params", lambda self, scope: None)
        routed = get(svc, target)
    return fast, routed


@pytest.mark.parametrize("query", FAST + ROUTE)
def test_fast_path_and_route_give_the_same_answer(svc, query: str) -> None:
    target = f"/ticks/PETR4?{query}" if query else "/ticks/PETR4"
    fast, routed = through_both(svc, target)
    assert fast == routed
    assert fast[0] in (200, 422), fast
    taken = TicksParams.of_request("PETR4", query.encode("latin-1")) is not None
    assert taken == (query in FAST)
    if taken:  # what the fast path takes, the route takes too
        assert fast[0] == 200, fast


@pytest.mark.parametrize(
    ("symbol", "status"),
    [("PETR4", 200), ("NOPE9", 404), ("bad%7Csym", 422), ("PETR4%0A", 422), ("A" * 33, 422)],
)
def test_fast_path_and_route_treat_symbols_alike(svc, symbol: str, status: int) -> None:
    fast, routed = through_both(svc, f"/ticks/{symbol}?limit=2")
    assert fast == routed
    assert fast[0] == status, fast


def test_the_route_declares_the_shared_definition(svc) -> None:
    """OpenAPI shows the names, defaults and bounds the fast path checks."""
    schema = svc.get("/openapi.json").json()
    declared = schema["paths"]["/ticks/{symbol}"]["get"]["parameters"]
    query = {p["name"]: p["schema"] for p in declared if p["in"] == "query"}
    assert set(query) == QUERY_NAMES
    assert query["timeframe"]["default"] == DEFAULT_TIMEFRAME
    assert set(query["timeframe"]["enum"]) == TIMEFRAMES
    assert query["order"]["default"] == DEFAULT_ORDER
    assert set(query["order"]["enum"]) == ORDERS
    limit = query["limit"]
    assert (limit["default"], limit["minimum"], limit["maximum"]) == (
        DEFAULT_LIMIT,
        MIN_LIMIT,
        MAX_LIMIT,
    )
    assert TicksParams.of_request("PETR4", b"") == TicksParams("PETR4")
