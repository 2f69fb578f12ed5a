"""The ingest API on a real loopback server: endpoints, bad input, auth, subscriptions."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import msgspec
import numpy as np
import pytest

from hft_pipeline.ingest.api import (
    CANDLE_FIELDS,
    RAW_FIELDS,
    CandleRow,
    EncodedTicks,
    RawRow,
    _encode_rows,
    _json_array,
)
from hft_pipeline.market.candles import resample_reference
from hft_pipeline.market.ticks import TickBatch, concat_batches
from hft_pipeline.settings import Settings
from hft_pipeline.store import open_store
from hft_pipeline_tests.ingest.harness import ScriptedFeed, running_service

NOW_S = time.time_ns() // 10**9


def ticks(symbol: str, n: int, start_s: int = NOW_S - 600, seq0: int = 0) -> TickBatch:
    ts = start_s * 10**9 + np.arange(n) * 250_000_000  # 4 ticks/s
    price = np.round(50 + np.sin(np.arange(n) / 7), 2)
    return TickBatch.from_columns(symbol, ts, np.arange(seq0, seq0 + n), price, np.full(n, 100.0))


@pytest.fixture
def svc(tmp_path):
    feed = ScriptedFeed([ticks("PETR4", 2000), ticks("VALE3", 500)])
    settings = Settings(home=tmp_path / "home", symbols=("PETR4", "VALE3"), api_token="s3cret")
    with running_service(settings, feed=feed) as running:
        running.http.headers["Authorization"] = "Bearer s3cret"
        # Persisted too: answers reaching past memory's oldest tick read the store.
        running.wait(
            lambda: running.service.counters.accepted == 2500 and running.service.pending_ticks == 0
        )
        yield running


def test_raw_ticks_most_recent_first_with_limit(svc):
    body = svc.get("/ticks/PETR4", limit=5).json()
    assert body["count"] == 5 and body["timeframe"] == "raw"
    assert [r["seq"] for r in body["data"]] == [1999, 1998, 1997, 1996, 1995]
    assert body["data"][0]["time"].endswith("Z")
    asc = svc.get("/ticks/PETR4", limit=3, order="asc").json()
    assert [r["seq"] for r in asc["data"]] == [0, 1, 2]


def test_time_range_accepts_ns_and_iso(svc):
    start_ns = (NOW_S - 600) * 10**9
    by_ns = svc.get(
        "/ticks/PETR4", start=str(start_ns), end=str(start_ns + 10**9), order="asc"
    ).json()
    assert [r["seq"] for r in by_ns["data"]] == [0, 1, 2, 3]
    iso = np.datetime_as_string(np.datetime64(start_ns, "ns"), unit="s") + "Z"
    by_iso = svc.get("/ticks/PETR4", start=iso, limit=2, order="asc").json()
    assert [r["seq"] for r in by_iso["data"]] == [0, 1]


def test_candles_equal_pandas_resample(svc):
    frame = ticks("PETR4", 2000).to_frame()
    for tf in ("1s", "15s", "1m"):
        body = svc.get("/ticks/PETR4", timeframe=tf, limit=100_000, order="asc").json()
        want = resample_reference(frame, tf)
        got = [
            (r["ts"], r["open"], r["high"], r["low"], r["close"], r["volume"], r["ticks"])
            for r in body["data"]
        ]
        exp = (
            list(
                zip(
                    want["ts"].astype("int64"),
                    want["open"],
                    want["high"],
                    want["low"],
                    want["close"],
                    want["volume"],
                    want["ticks"],
                    strict=True,
                )
            )
            if "ts" in want
            else None
        )
        assert exp is not None
        assert got == exp
        assert body["data"][-1]["closed"] is False and all(r["closed"] for r in body["data"][:-1])


@pytest.mark.parametrize(
    ("path", "params", "status", "needle"),
    [
        ("/ticks/bad|sym", {}, 422, "symbol"),
        ("/ticks/PETR4", {"timeframe": "2m"}, 422, "timeframe"),
        ("/ticks/PETR4", {"limit": 0}, 422, "limit"),
        ("/ticks/PETR4", {"limit": 100_001}, 422, "limit"),
        ("/ticks/PETR4", {"limit": "many"}, 422, "limit"),
        ("/ticks/PETR4", {"start": "yesterday-ish"}, 422, "start"),
        ("/ticks/PETR4", {"start": "2026-01-02", "end": "2026-01-01"}, 422, "before"),
        ("/ticks/NOPE", {}, 404, "NOPE"),
        ("/ticks/PETR4", {"order": "sideways"}, 422, "order"),
    ],
)
def test_bad_query_gets_4xx_with_a_message(svc, path, params, status, needle):
    r = svc.get(path, **params)
    assert r.status_code == status, r.text
    assert needle in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"symbol": "a b"}, "invalid symbol"),
        ({"symbol": "A,B"}, "invalid symbol"),
        ({"symbol": "x" * 40}, "invalid symbol"),
        ({}, "symbol"),
        ({"symbol": 5}, "symbol"),
        ([1, 2], "body"),
    ],
)
def test_bad_subscribe_body_gets_422(svc, body, needle):
    r = svc.post("/subscribe", body)
    assert r.status_code == 422, r.text
    assert needle in r.json()["detail"]


def test_malformed_json_gets_422(svc):
    r = svc.http.post(
        svc.url + "/subscribe", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and "JSON" in r.json()["detail"]


def test_mutating_endpoints_need_the_token(svc):
    r = svc.http.post(
        svc.url + "/subscribe", json={"symbol": "ITUB4"}, headers={"Authorization": "Bearer nope"}
    )
    assert r.status_code == 401 and "bearer token" in r.json()["detail"]
    del svc.http.headers["Authorization"]
    assert svc.post("/unsubscribe", {"symbol": "PETR4"}).status_code == 401
    assert svc.get("/status").status_code == 200  # reads stay open


def test_subscribe_unsubscribe_and_list(svc):
    r = svc.post("/subscribe", {"symbol": "ITUB4", "exchange": "B3"})
    assert r.status_code == 200 and r.json()["status"] == "subscribed"
    assert (
        svc.post("/subscribe", {"symbol": "ITUB4", "exchange": "B3"}).json()["status"]
        == "already subscribed"
    )
    subs = {s["symbol"]: s for s in svc.get("/subscriptions").json()["subscriptions"]}
    assert set(subs) == {"PETR4", "VALE3", "ITUB4"}
    assert subs["PETR4"]["ticks_processed"] == 2000 and subs["PETR4"]["last_seq"] == 1999
    assert subs["ITUB4"]["exchange"] == "B3" and subs["ITUB4"]["ticks_processed"] == 0
    assert "ITUB4" in svc.service.feed.subscribed
    assert svc.post("/unsubscribe", {"symbol": "ITUB4"}).json()["status"] == "unsubscribed"
    assert svc.post("/unsubscribe", {"symbol": "ITUB4"}).status_code == 404
    assert [s.symbol for s in svc.service.store.subscriptions()] == ["PETR4", "VALE3"]


def test_status_health_metrics_test(svc):
    status = svc.get("/status").json()
    assert status["ticks"]["accepted"] == 2500 and status["persistence"]["store_up"] is True
    assert svc.get("/health").json()["status"] == "ok"
    text = svc.get("/metrics").text
    assert 'hft_ticks_processed_total{symbol="PETR4"} 2000.0' in text
    assert "hft_ticks_received_total 2500.0" in text
    assert 'hft_ticks_rejected_total{reason="bad_symbol"} 0.0' in text
    assert (
        "hft_tick_processing_seconds_bucket" in text
        and "hft_persist_batch_duration_seconds" in text
    )
    assert svc.get("/test").json()["message"]
    assert svc.get("/docs").status_code == 200
    assert "/ticks/{symbol}" in svc.get("/openapi.json").json()["paths"]


def test_malformed_feed_records_are_rejected_and_counted(svc):
    bad = TickBatch.from_columns(
        ["PETR4", "PETR4", "bad sym", "PETR4"],
        [(NOW_S - 1) * 10**9] * 3 + [(NOW_S + 3600) * 10**9],
        [5000, 5001, 0, 5002],
        [np.nan, -1.0, 1.0, 1.0],
        [1.0, 1.0, 1.0, 1.0],
    )
    svc.service.feed.push(bad)
    svc.wait(lambda: svc.service.counters.received == 2504)
    rejected = svc.get("/status").json()["ticks"]["rejected"]
    assert rejected["non_finite_price"] == 1 and rejected["non_positive_price"] == 1
    assert rejected["bad_symbol"] == 1 and rejected["future_timestamp"] == 1
    assert svc.get("/health").status_code == 200


def test_subscriptions_are_restored_on_restart(tmp_path):
    settings = Settings(home=tmp_path / "home", symbols=("PETR4",))
    with running_service(settings, feed=ScriptedFeed()) as svc:
        svc.post("/subscribe", {"symbol": "frxEURUSD", "exchange": "FX"})
    with running_service(settings.with_(symbols=()), feed=ScriptedFeed()) as svc:
        subs = {
            s["symbol"]: s["exchange"] for s in svc.get("/subscriptions").json()["subscriptions"]
        }
        assert subs == {"PETR4": "SIM", "frxEURUSD": "FX"}
        assert set(svc.service.feed.subscribed) == {"PETR4", "frxEURUSD"}


def _reference_json(columns: dict[str, np.ndarray], fields: tuple[str, ...]) -> bytes:
    """One dict per row with the time formatted by the standard library: what /ticks returned."""
    epoch = datetime(1970, 1, 1)
    rows = [
        {
            "time": (epoch + timedelta(microseconds=int(ts) // 1000)).strftime(
                "%Y-%m-%dT%H:%M:%S.%fZ"
            ),
            **{f: np.asarray(columns[f])[i].item() for f in fields},
        }
        for i, ts in enumerate(columns["ts"])
    ]
    return msgspec.json.encode(rows)


def _random_raw(rng: np.random.Generator, n: int, t0: int = NOW_S * 10**9) -> dict:
    return {
        "ts": t0 + np.cumsum(rng.integers(0, 3 * 10**9, n)),
        "seq": np.arange(n, dtype=np.int64) + 10**12,
        "price": np.round(rng.random(n) * 1e4, 3),
        "volume": rng.random(n) * [1e-9, 1.0, 1e17][n % 3],
    }


def test_rows_encode_exactly_like_one_dict_per_row():
    rng = np.random.default_rng(7)
    for n in (0, 1, 999):
        raw = _random_raw(rng, n)
        assert bytes(_json_array(_encode_rows(raw, RawRow))) == _reference_json(raw, RAW_FIELDS)
        candles = {
            "ts": np.sort(rng.integers(0, 2**62, n)) // 60 * 60,
            "open": rng.random(n),
            "high": rng.random(n) * 1e300,
            "low": rng.random(n) * 1e-300,
            "close": rng.random(n),
            "volume": rng.random(n),
            "ticks": rng.integers(1, 10**9, n),
            "closed": rng.random(n) > 0.5,
        }
        fields = (*CANDLE_FIELDS, "closed")
        got = bytes(_json_array(_encode_rows(candles, CandleRow)))
        assert got == _reference_json(candles, fields)
        assert [r["closed"] for r in msgspec.json.decode(got)] == candles["closed"].tolist()


def test_encoded_ticks_reuse_only_identical_rows():
    """Answers of a growing, then disordered tick series encode as if nothing were cached."""
    rng = np.random.default_rng(11)
    series = _random_raw(rng, 5000)
    encoded = EncodedTicks()

    def newest(cols: dict, hi: int, limit: int) -> dict:
        return {f: cols[f][max(0, hi - limit) : hi][::-1].copy() for f in RAW_FIELDS}

    answers = [(3000, 1000), (3000, 1000), (3050, 1000), (3051, 10), (3400, 1000), (3400, 2500)]
    for hi, limit in answers:
        cols = newest(series, hi, limit)
        assert encoded.rows("X", cols) == _encode_rows(cols, RawRow)
    # A late tick lands in the middle of what was cached; a price is corrected.
    late = {f: np.insert(series[f], 3300, series[f][3299]) for f in RAW_FIELDS}
    late["seq"][3300] += 1
    late["seq"][3301:] += 1
    late["price"][3300] = 1.5
    for hi, limit in ((3401, 1000), (3402, 1000)):
        cols = newest(late, hi, limit)
        assert encoded.rows("X", cols) == _encode_rows(cols, RawRow)
    cols = newest(late, 3402, 1000)
    cols["price"] = cols["price"].copy()
    cols["price"][500] += 0.25
    assert encoded.rows("X", cols) == _encode_rows(cols, RawRow)
    cols = newest(late, 3402, 1000)
    cols["volume"] = np.where(cols["volume"] == cols["volume"][700], -0.0, cols["volume"])
    encoded.rows("X", {f: np.where(cols[f] == -0.0, 0.0, cols[f]) for f in RAW_FIELDS})
    assert encoded.rows("X", cols) == _encode_rows(cols, RawRow)
    assert b'"volume":-0.0' in b"".join(encoded.rows("X", cols))
    assert encoded.rows("X", newest(late, 3402, 0)) == []


def test_stored_candles_are_reused_once_final_and_refreshed_by_a_late_tick(tmp_path):
    """Memory completes 1m candles only after its first minute, so that one comes from the
    store: asked once when final, asked again after a late tick changed it."""
    first = ticks("PETR4", 2000)
    feed = ScriptedFeed([first])
    settings = Settings(home=tmp_path / "home", symbols=("PETR4",))
    with running_service(settings, feed=feed) as svc:
        service = svc.service
        svc.wait(lambda: service.counters.accepted == 2000 and service.pending_ticks == 0)
        store_calls = []

        def counted(read):
            def call(*args):
                store_calls.append(args)
                return read(*args)

            return call

        # Stored candles come from either: aggregated ticks, or the stored 1m candles.
        for name in ("candles", "minute_candles"):
            if hasattr(service.store, name):
                setattr(service.store, name, counted(getattr(service.store, name)))

        def answer() -> list[tuple]:
            body = svc.get("/ticks/PETR4", timeframe="1m", limit=1000, order="asc").json()
            assert body["source"] == "memory+store"
            return [
                (r["ts"], r["open"], r["high"], r["low"], r["close"], r["volume"], r["ticks"])
                for r in body["data"]
            ]

        def expected(frame) -> list[tuple]:
            want = resample_reference(frame, "1m")
            cols = ("open", "high", "low", "close", "volume", "ticks")
            return list(zip(want["ts"].astype("int64"), *(want[c] for c in cols), strict=True))

        assert answer() == expected(first.to_frame())
        assert answer() == answer() == expected(first.to_frame())
        assert len(store_calls) == 1  # final at the first answer: the store is asked once

        late = TickBatch.from_columns(
            "PETR4", [int(first.ts[0]) + 1], [2000], [99.0], [7.0]
        )  # into the first minute, which only the store completes
        feed.push(late)
        svc.wait(lambda: service.counters.accepted == 2001 and service.pending_ticks == 0)
        assert service.candles.late_total == 1
        both = TickBatch.from_columns(
            "PETR4",
            np.append(first.ts, late.ts),
            np.append(first.seq, late.seq),
            np.append(first.price, late.price),
            np.append(first.volume, late.volume),
        )
        got = answer()
        assert got == expected(both.to_frame()) and got[0][2] == 99.0
        assert answer() == got
        assert len(store_calls) == 2


def test_a_symbol_only_the_store_holds_gets_its_candles_closed_like_live_ones(tmp_path):
    """No tick of ITUB4 reaches memory: its candles come from the store, closed where a later
    tick exists (as live candles are), so the newest one is still forming."""
    settings = Settings(home=tmp_path / "home", symbols=("PETR4",))
    past = ticks("ITUB4", 400)  # 100 s of ticks ending 500 s ago
    newest = TickBatch.from_columns("ITUB4", [time.time_ns()], [400], [51.0], [3.0])
    stored = concat_batches([past, newest])
    store = open_store(settings.resolved_store_url)
    store.migrate()
    store.write_ticks(stored, 2, stream="test-history")
    feed = ScriptedFeed([ticks("PETR4", 10)])
    with running_service(settings, feed=feed, store=store) as svc:
        svc.wait(lambda: svc.service.counters.accepted == 10)
        body = svc.get("/ticks/ITUB4", timeframe="1m", order="asc").json()
    assert body["source"] == "store"
    want = resample_reference(stored.to_frame(), "1m")
    assert [r["ts"] for r in body["data"]] == want["ts"].astype("int64").tolist()
    assert [r["ticks"] for r in body["data"]] == want["ticks"].tolist()
    assert [r["closed"] for r in body["data"]] == [True] * (len(want) - 1) + [False]


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"limit": 7, "order": "asc"},
        {"timeframe": "1m", "limit": 3},
        {"timeframe": "15s", "order": "asc", "start": str((NOW_S - 590) * 10**9)},
        {"start": "", "end": "", "limit": "100000"},
    ],
)
def test_fast_path_answers_like_the_fastapi_route(svc, params):
    """An unknown query parameter sends the request through FastAPI's route: same answer."""
    fast = svc.get("/ticks/PETR4", **params)
    routed = svc.get("/ticks/PETR4", **params, via="fastapi")
    assert fast.status_code == routed.status_code == 200
    assert fast.content == routed.content and len(fast.json()["data"]) == fast.json()["count"]
    assert fast.headers["content-type"] == routed.headers["content-type"] == "application/json"
    assert fast.headers["content-length"] == routed.headers["content-length"]


def test_fast_path_leaves_bad_input_to_fastapi(svc):
    for path, params in [
        ("/ticks/PETR4", {"limit": "010"}),  # FastAPI's int parsing decides
        ("/ticks/PETR4", {"limit": ["5", "6"]}),
        ("/ticks/PETR4/", {}),
    ]:
        fast = svc.get(path, **params)
        routed = svc.get(path, **params, via="fastapi")
        assert (fast.status_code, fast.content) == (routed.status_code, routed.content)
    assert svc.get("/ticks/PETR4", limit="010").json()["count"] == 10


# Times outside 1970-01-01T00:00:00Z..2262-04-11T23:47:16.854775807Z (int64 ns), or not
# integer ns / ISO-8601 at all: each is a 422 naming the parameter, on both paths.
BAD_TIMES = [
    ("end", "-" + "1" + "0" * 30),
    ("start", str(-(2**63) - 1)),
    ("start", "9999-12-31"),
    ("start", "1500-01-01"),
    ("start", "-1"),
    ("end", str(2**63)),
    ("end", "9" * 5000),  # more digits than int() converts
    ("start", "2262-04-12"),
    ("start", "2262-04-11T23:47:16.854775807-01:00"),
    ("end", "1969-12-31T23:59:59.999999999Z"),
    ("start", "2026-13-01"),
    ("start", "2026-02-30T00:00:00Z"),
    ("start", "2026-01-01T00:00:00+25:00"),
    ("start", "--5"),
    ("start", "5-"),
    ("start", "\u00b2"),  # str.isdigit() is true, int() refuses
    ("start", "\u0661\u0662\u0663"),  # Arabic-Indic digits: int() accepts, not ASCII ns
    ("start", "now"),
    ("start", " 2026-01-01"),
    ("end", "2026-01-01T00:00:00Z\n"),
]


@pytest.mark.parametrize("via", ["fast path", "fastapi"])
@pytest.mark.parametrize(("name", "value"), BAD_TIMES)
def test_bad_times_get_422_naming_the_parameter(svc, via, name, value):
    params = {name: value} if via == "fast path" else {name: value, "via": "fastapi"}
    for timeframe in ("raw", "1m"):
        r = svc.get("/ticks/PETR4", timeframe=timeframe, **params)
        assert r.status_code == 422, r.text
        body = r.json()
        assert body["detail"].startswith(f"{name}: ") and set(body) == {"detail", "errors"}
        assert [e["loc"] for e in body["errors"]] == [["query", name]]


@pytest.mark.parametrize("timeframe", ["raw", "1s", "1m", "1h"])
def test_the_edges_of_the_time_range_are_answered(svc, timeframe):
    for start, end in [
        ("0", str(2**63 - 1)),
        ("1970-01-01T00:00:00Z", "2262-04-11T23:47:16.854775807Z"),
        ("1970-01-01", "2262-04-11T23:47:16.854775807+00:00"),
        (str(2**63 - 2), str(2**63 - 1)),
        ("0", "1"),
    ]:
        for order in ("asc", "desc"):
            fast = svc.get("/ticks/PETR4", timeframe=timeframe, start=start, end=end, order=order)
            routed = svc.get(
                "/ticks/PETR4", timeframe=timeframe, start=start, end=end, order=order, via="x"
            )
            assert fast.status_code == routed.status_code == 200, (start, end, fast.text)
            assert fast.content == routed.content
    whole = svc.get("/ticks/PETR4", start="0", end=str(2**63 - 1), limit=100_000).json()
    assert whole["count"] == (2000 if timeframe == "raw" else whole["count"]) > 0


@pytest.mark.parametrize("via", [{}, {"via": "fastapi"}])
@pytest.mark.parametrize("limit", ["9" * 5000, "1" + "0" * 30, "-1", "\u00b2", "1.5"])
def test_bad_limits_get_422(svc, via, limit):
    r = svc.get("/ticks/PETR4", limit=limit, **via)
    assert r.status_code == 422, r.text
    assert "limit" in r.json()["detail"]


def test_a_symbol_with_a_trailing_newline_is_refused_everywhere(svc):
    for body in ({"symbol": "NLSYM\n"}, {"symbol": "NLSYM\n", "exchange": "SIM"}):
        r = svc.post("/subscribe", body)
        assert r.status_code == 422, r.text
        assert "invalid symbol" in r.json()["detail"]
    assert svc.post("/unsubscribe", {"symbol": "PETR4\n"}).status_code == 422
    assert "NLSYM\n" not in svc.service.exchanges
    assert [s.symbol for s in svc.service.store.subscriptions()] == ["PETR4", "VALE3"]
    for via in ({}, {"via": "fastapi"}):
        r = svc.get("/ticks/PETR4%0A", **via)  # requests would not encode a raw newline
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["loc"] == ["path", "symbol"]


def test_malformed_json_without_the_token_gets_401(svc):
    del svc.http.headers["Authorization"]
    for path in ("/subscribe", "/unsubscribe"):
        for data in (b"{not json", b'{"symbol": "a b"}', b"[1, 2]", b""):
            r = svc.http.post(
                svc.url + path, data=data, headers={"Content-Type": "application/json"}
            )
            assert r.status_code == 401, (path, data, r.text)
            assert "bearer token" in r.json()["detail"]
            assert r.headers["WWW-Authenticate"] == "Bearer"
        r = svc.http.post(svc.url + path, data=b"{not json", headers={"Authorization": "Bearer x"})
        assert r.status_code == 401, r.text


def _declared(svc, path: str, method: str):
    import schemathesis

    return schemathesis.openapi.from_url(svc.url + "/openapi.json")[path][method]


def test_error_bodies_match_the_declared_schema(svc):
    """404, 401 and 422 (the route's own and FastAPI's) are declared and their bodies match."""
    ticks = _declared(svc, "/ticks/{symbol}", "GET")
    for params, status in [
        ({}, 404),
        ({"via": "fastapi"}, 404),
        ({"start": "1500-01-01"}, 422),
        ({"limit": "0"}, 422),
        ({"start": "2026-01-02", "end": "2026-01-01"}, 422),
    ]:
        r = svc.get("/ticks/NOPE", **params)
        assert r.status_code == status, r.text
        ticks.validate_response(r)
        assert isinstance(r.json()["detail"], str)
    assert svc.get("/ticks/NOPE").json() == {
        "detail": "no subscription and no stored ticks for NOPE"
    }
    unsubscribe = _declared(svc, "/unsubscribe", "POST")
    r = svc.post("/unsubscribe", {"symbol": "ITUB4"})
    assert r.status_code == 404 and r.json() == {"detail": "ITUB4 is not subscribed"}
    unsubscribe.validate_response(r)
    r = svc.post("/unsubscribe", {"symbol": "a b"})
    assert r.status_code == 422
    unsubscribe.validate_response(r)
    del svc.http.headers["Authorization"]
    r = svc.post("/unsubscribe", {"symbol": "PETR4"})
    assert r.status_code == 401
    unsubscribe.validate_response(r)
    responses = svc.get("/openapi.json").json()["paths"]["/ticks/{symbol}"]["get"]["responses"]
    assert {"200", "404", "422", "503"} <= set(responses)
    assert "Retry-After" in responses["503"]["headers"]


def test_an_unavailable_store_is_a_503_with_retry_after(svc):
    from hft_pipeline.store.base import StoreUnavailableError

    store = svc.service.store

    def down(*args):
        raise StoreUnavailableError("connection refused (test)")

    ticks = _declared(svc, "/ticks/{symbol}", "GET")
    symbols = store.symbols
    store.symbols = down
    try:
        for via in ({}, {"via": "fastapi"}):
            r = svc.get("/ticks/ITUB4", **via)  # not in memory: the store is asked
            assert r.status_code == 503, r.text
            assert r.headers["Retry-After"] == "5"  # HFT_PERSIST_RETRY_MAX_S, rounded up
            assert r.json() == {
                "detail": "the store is unavailable (connection refused (test)); retry in 5 s"
            }
            ticks.validate_response(r)
        assert svc.get("/ticks/PETR4", limit=2).status_code == 200  # memory still answers
    finally:
        store.symbols = symbols


def test_degraded_health_is_a_503_with_retry_after(svc):
    health = _declared(svc, "/health", "GET")
    r = svc.get("/health")
    assert r.status_code == 200 and "Retry-After" not in r.headers
    health.validate_response(r)
    svc.service.feed_error = "RuntimeError: feed gone (test)"
    try:
        r = svc.get("/health")
    finally:
        svc.service.feed_error = None
    assert r.status_code == 503 and r.headers["Retry-After"] == "5"
    assert r.json()["status"] == "degraded" and "feed gone" in r.json()["problems"][0]
    health.validate_response(r)
