"""Assets materialized through Dagster on simulator ticks, on SQLite and PostgreSQL stores.

What the analytics functions compute is tested in hft_pipeline_tests/analytics; here, that the
assets wire them to Dagster: partitions, ranged runs, checks, metadata, resources.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pytest
from dagster import AssetCheckSeverity, AssetKey, materialize

from hft_pipeline.analytics.checks import backtest_sanity
from hft_pipeline.market.candles import resample_reference
from hft_pipeline.market.timeframes import TIMEFRAMES
from hft_pipeline.orchestration.alerting import AlertsResource, alert_on_failure
from hft_pipeline.orchestration.assets import (
    backtests,
    candles,
    indicators,
    strategy_comparison,
)
from hft_pipeline.orchestration.partitions import partition_key_for, partition_window
from hft_pipeline.orchestration.resources import IngestApiError, IngestApiResource, StoreResource
from hft_pipeline_tests.orchestration.conftest import (
    HOUR_NS,
    SYMBOLS,
    T0,
    StoreCase,
    simulator_ticks,
    write_ticks,
)

RANGE_START = "dagster/asset_partition_range_start"
RANGE_END = "dagster/asset_partition_range_end"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def resources(case: StoreCase) -> dict[str, object]:
    # An API URL where nothing listens: the live comparison is skipped, never blocks.
    return {
        "store": StoreResource(store_url=case.url, pool_size=2),
        "ingest_api": IngestApiResource(base_url=f"http://127.0.0.1:{_closed_port()}", timeout=1),
        "alerts": AlertsResource(),  # no channel configured: the failure hook sends nothing
    }


def key(hour: int) -> str:
    return partition_key_for(T0 + hour * HOUR_NS)


def checks_of(result) -> dict[str, tuple[bool, AssetCheckSeverity]]:
    return {e.check_name: (e.passed, e.severity) for e in result.get_asset_check_evaluations()}


def assert_stored_equal_reference(case: StoreCase, frame: pd.DataFrame, lo: int, hi: int) -> None:
    part = frame[(frame["ts"] >= lo) & (frame["ts"] < hi)]
    for tf in TIMEFRAMES:
        expected = resample_reference(part, tf)
        stored = case.store.stored_candles(tf, lo, hi)
        pd.testing.assert_frame_equal(
            stored.reset_index(drop=True), expected, check_dtype=False, obj=f"{case.name} {tf}"
        )


def test_candles_partition_equals_reference_and_reports_late_ticks(store_case: StoreCase) -> None:
    frame = simulator_ticks(3)
    offset = write_ticks(store_case.store, frame)
    lo, hi = partition_window(key(1))

    result = materialize([candles], partition_key=key(1), resources=resources(store_case))

    assert result.success
    assert_stored_equal_reference(store_case, frame, lo, hi)
    meta = result.asset_materializations_for_node("candles")[0].metadata
    in_hour = int(((frame["ts"] >= lo) & (frame["ts"] < hi)).sum())
    assert meta["ticks_read"].value == in_hour
    assert meta["symbols"].value == len(SYMBOLS)
    assert meta["candles_1m"].value == len(
        resample_reference(frame[frame["ts"].between(lo, hi - 1)], "1m")
    )
    assert meta["late_tick_corrections_vs_stored"].value == 0  # first materialization
    assert checks_of(result) == {
        "candles_match_ticks": (True, AssetCheckSeverity.ERROR),
        "ohlc_invariants": (True, AssetCheckSeverity.ERROR),
        "no_duplicate_buckets": (True, AssetCheckSeverity.ERROR),
        "gap_report": (True, AssetCheckSeverity.WARN),
    }
    # Other hours are untouched.
    assert store_case.store.stored_candles("1m", hi, hi + HOUR_NS).empty

    # Two late ticks land in buckets already materialized: a re-run replaces exactly those.
    late = frame[frame["symbol"] == "VALE3"].iloc[[0]].copy()
    late["ts"] = [lo + 90 * 10**9 + 1]  # inside the hour's second minute
    late["seq"] = frame["seq"].max() + 1
    late["price"] = 1_000.0  # a new high for that 1m candle
    write_ticks(store_case.store, late, offset=offset)
    frame = pd.concat([frame, late], ignore_index=True)

    again = materialize([candles], partition_key=key(1), resources=resources(store_case))

    assert again.success
    assert_stored_equal_reference(store_case, frame, lo, hi)
    meta = again.asset_materializations_for_node("candles")[0].metadata
    assert meta["late_tick_corrections_vs_stored"].value == 1
    assert meta["stored_1m_candles_compared"].value == meta["candles_1m"].value
    assert meta["ticks_read"].value == in_hour + 1


def test_ranged_run_over_three_partitions(store_case: StoreCase) -> None:
    frame = simulator_ticks(3)
    write_ticks(store_case.store, frame)

    result = materialize(
        [candles],
        resources=resources(store_case),
        tags={RANGE_START: key(0), RANGE_END: key(2)},
    )

    assert result.success
    assert all(passed for passed, _ in checks_of(result).values())
    assert_stored_equal_reference(store_case, frame, T0, T0 + 3 * HOUR_NS)
    meta = result.asset_materializations_for_node("candles")
    assert {m.partition for m in meta} == {key(0), key(1), key(2)}
    assert meta[0].metadata["ticks_read"].value == len(frame)


def test_an_open_hour_is_checked_against_the_ticks_its_candles_were_computed_from(
    store_case: StoreCase,
) -> None:
    frame = simulator_ticks(1)
    lo, _ = partition_window(key(0))
    write_ticks(store_case.store, frame[frame["ts"] < lo + 1800 * 10**9])

    result = materialize([candles], partition_key=key(0), resources=resources(store_case))

    assert result.success
    (recount,) = [
        e for e in result.get_asset_check_evaluations() if e.check_name == "candles_match_ticks"
    ]
    assert recount.passed and recount.metadata["open_hours"].value == 1


def test_partition_without_ticks_stores_nothing_and_passes(tmp_path) -> None:
    case = StoreCase("sqlite", f"sqlite:///{tmp_path / 'hft.sqlite3'}", None)  # type: ignore[arg-type]
    result = materialize([candles, indicators], partition_key=key(0), resources=resources(case))
    assert result.success
    assert all(passed for passed, _ in checks_of(result).values())
    assert result.asset_materializations_for_node("candles")[0].metadata["candles_total"].value == 0
    assert result.asset_materializations_for_node("indicators")[0].metadata["1m_bars"].value == 0


def test_blocking_check_stops_indicators_on_bad_ticks(tmp_path) -> None:
    from hft_pipeline.store import open_store

    url = f"sqlite:///{tmp_path / 'hft.sqlite3'}"
    store = open_store(url)
    try:
        frame = simulator_ticks(1)
        frame.loc[10, "volume"] = -3.0  # a corrupt tick the store accepted
        write_ticks(store, frame)
        case = StoreCase("sqlite", url, store)
        result = materialize(
            [candles, indicators],
            partition_key=key(0),
            resources=resources(case),
            raise_on_error=False,
        )
        assert not result.success
        assert checks_of(result)["ohlc_invariants"] == (False, AssetCheckSeverity.ERROR)
        assert result.asset_materializations_for_node("indicators") == []
        assert store.stored_indicators("1m").empty
    finally:
        store.close()


def test_indicators_warm_up_backtests_and_comparison(store_case: StoreCase) -> None:
    hours = 14  # 18:00 to 08:00 the next day
    frame = simulator_ticks(hours)
    write_ticks(store_case.store, frame)
    res = resources(store_case)
    ranged = materialize(
        [candles], resources=res, tags={RANGE_START: key(0), RANGE_END: key(hours - 1)}
    )
    assert ranged.success

    # 06:00 reads back to the first candle; 07:00's look-back (720 bars, or the day start)
    # starts at 19:00, so its warm-up is cut and OBV continues from the stored 06:00 values.
    first = materialize([indicators], partition_key=key(hours - 2), resources=res)
    second = materialize([indicators], partition_key=key(hours - 1), resources=res)
    assert first.success and second.success
    meta = second.asset_materializations_for_node("indicators")[0].metadata
    assert meta["1m_warmup_bars"].value == 720
    assert meta["1m_obv_anchored_symbols"].value == len(SYMBOLS)

    lo, hi = partition_window(key(hours - 1))
    stored = store_case.store.stored_indicators("1m", lo, hi)
    bars = store_case.store.stored_candles("1m", lo, hi)
    assert len(stored) == meta["1m_bars"].value == len(bars)
    assert meta["1m_symbols"].value == len(SYMBOLS)
    assert stored.iloc[:, 2:].notna().all().all()  # warmed up: no NaN at the partition start

    end = datetime.fromtimestamp((T0 + hours * HOUR_NS) // 10**9, UTC).isoformat()
    run_config = {"ops": {"backtests": {"config": {"lookback_days": 0.5, "end": end}}}}
    bt = materialize([backtests], resources=res, run_config=run_config)
    assert bt.success
    assert checks_of(bt) == {"backtest_sanity": (True, AssetCheckSeverity.ERROR)}
    bt_meta = bt.asset_materializations_for_node("backtests")[0].metadata
    run = store_case.store.backtest_runs()[0]
    assert run.run_key == bt_meta["run_key"].value
    assert run.end_ns - run.start_ns == 12 * HOUR_NS
    metrics = store_case.store.backtest_metrics(run.run_key)
    assert len(metrics) == bt_meta["runs"].value == 4 * 10 * len(SYMBOLS)
    assert bt_meta["bars"].value == 720
    assert np.isclose(bt_meta["best_sharpe"].value, metrics["sharpe"].max())
    trades = store_case.store.results.backtest_trades(run.run_key)
    assert len(trades) == bt_meta["trades_stored"].value > 0
    assert backtest_sanity(metrics, trades)[0]

    comparison = materialize([strategy_comparison], resources=res)
    assert comparison.success
    cmp_meta = comparison.asset_materializations_for_node("strategy_comparison")[0].metadata
    run_key, ranked = store_case.store.results.latest_comparison()
    assert run_key == run.run_key
    assert len(ranked) == 4 * len(SYMBOLS) == cmp_meta["rows"].value
    # The comparison's best rows are the stored sweep's best rows (same runs, same metrics).
    best = metrics.loc[metrics.groupby(["strategy", "symbol"])["sharpe"].idxmax()]
    merged = ranked.merge(best, on=["strategy", "symbol"], suffixes=("", "_sweep"))
    assert (merged["params"] == merged["params_sweep"]).all()
    np.testing.assert_allclose(merged["sharpe"], merged["sharpe_sweep"], rtol=1e-12)
    table = cmp_meta["ranked"].value.splitlines()
    assert table[0].split("|")[1].strip() == "rank" and len(table) == 2 + len(ranked)
    assert cmp_meta["figures"].value.count("data:image/png;base64,") == 2 + 4


def test_every_asset_alerts_on_failure() -> None:
    for asset_def in (candles, indicators, backtests, strategy_comparison):
        assert alert_on_failure in asset_def.hook_defs
        assert "alerts" in asset_def.required_resource_keys


def test_asset_graph_keys() -> None:
    assert [k.path[0] for k in candles.dependency_keys] == ["ticks"]
    assert AssetKey("candles") in indicators.dependency_keys
    assert AssetKey("backtests") in strategy_comparison.dependency_keys


# --- resources -------------------------------------------------------------------------------------


class _FakeIngest(BaseHTTPRequestHandler):
    """A loopback ingest API: /health degraded, /status, and live 1m candles from `candles`."""

    candles: dict[str, list[dict]] = {}
    sources: dict[str, str] = {}
    auth: list[str | None] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        self.auth.append(self.headers.get("Authorization"))
        if url.path == "/health":
            self._send(503, {"status": "degraded", "problems": ["store unavailable: refused"]})
        elif url.path == "/status":
            self._send(200, {"persistence": {"pending_ticks": 3, "persisted_ticks": 10}})
        elif url.path.startswith("/ticks/"):
            symbol = url.path.rsplit("/", 1)[1]
            rows = self.candles.get(symbol, [])
            source = self.sources.get(symbol, "memory")
            self._send(200, {"symbol": symbol, "source": source, "count": len(rows), "data": rows})
        else:
            self._send(404, {"detail": "not found"})

    def _send(self, status: int, body: dict) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_ingest() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeIngest)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_ingest_api_resource_health_status_and_token(fake_ingest: str) -> None:
    api = IngestApiResource(base_url=fake_ingest, token="s3cret", timeout=2)
    assert api.status()["persistence"]["pending_ticks"] == 3
    with pytest.raises(IngestApiError, match="503") as info:
        api.health()
    assert info.value.status == 503
    assert info.value.body["problems"] == ["store unavailable: refused"]
    assert _FakeIngest.auth[-1] == "Bearer s3cret"
    with pytest.raises(IngestApiError, match="failed"):
        IngestApiResource(base_url=f"http://127.0.0.1:{_closed_port()}", timeout=1).status()


def test_candles_report_corrections_against_live_candles(tmp_path, fake_ingest: str) -> None:
    from hft_pipeline.store import open_store

    url = f"sqlite:///{tmp_path / 'hft.sqlite3'}"
    store = open_store(url)
    try:
        frame = simulator_ticks(1)
        write_ticks(store, frame)
        live = resample_reference(frame[frame["symbol"] == "PETR4"], "1m")
        live.loc[7, "close"] += 0.01  # the live candle missed a late tick
        live.loc[8, "ticks"] -= 1
        rows = live.drop(columns="symbol").assign(time="iso").to_dict("records")
        _FakeIngest.candles = {"PETR4": rows}  # the API's row shape: time, ts, OHLCV, ticks
        # /health answers 503 here, so point the comparison at a healthy copy of the server.
        res = resources(StoreCase("sqlite", url, store))
        res["ingest_api"] = _HealthyIngest(base_url=fake_ingest, timeout=2)
        result = materialize([candles], partition_key=key(0), resources=res)
        meta = result.asset_materializations_for_node("candles")[0].metadata
        assert meta["live_1m_candles_compared"].value == len(live)
        assert meta["late_tick_corrections_vs_live"].value == 2
    finally:
        _FakeIngest.candles = {}
        store.close()


def test_live_candles_are_the_closed_ones_served_from_memory(fake_ingest: str) -> None:
    candle = {"ts": 60, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 3.0,
              "ticks": 4, "time": "iso"}  # fmt: skip
    _FakeIngest.candles = {
        "PETR4": [{**candle, "closed": True}, {**candle, "ts": 120, "closed": False}],
        "VALE3": [candle],  # served from the store: not live candles
        "R_100": [],
    }
    _FakeIngest.sources = {"VALE3": "store"}
    try:
        api = _HealthyIngest(base_url=fake_ingest, timeout=2)
        live = api.live_candles(["PETR4", "VALE3", "R_100"], 0, 3600 * 10**9)
        assert live is not None
        assert live.to_dict("records") == [
            {"symbol": "PETR4", "ts": 60, "open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5,
             "volume": 3.0, "ticks": 4}
        ]  # fmt: skip
        assert api.live_candles(["VALE3", "R_100"], 0, 3600 * 10**9) is None
        # /health answers 503 on the plain fake: the service is not asked for candles at all.
        plain = IngestApiResource(base_url=fake_ingest, timeout=2)
        assert plain.live_candles(["PETR4"], 0, 3600 * 10**9) is None
    finally:
        _FakeIngest.candles, _FakeIngest.sources = {}, {}


class _HealthyIngest(IngestApiResource):
    def health(self) -> dict:
        return {"status": "ok", "problems": []}
