"""Assets materialized through Dagster on simulator ticks, on SQLite and PostgreSQL stores."""

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

from hft_pipeline.market.candles import resample_reference
from hft_pipeline.market.frames import to_wide
from hft_pipeline.market.indicators import compute_wide
from hft_pipeline.market.timeframes import TIMEFRAMES
from hft_pipeline.orchestration import checks
from hft_pipeline.orchestration.alerting import AlertsResource, alert_on_failure
from hft_pipeline.orchestration.assets import (
    backtests,
    candle_check_results,
    candles,
    candles_all_timeframes,
    hour_is_open,
    indicators,
    strategy_comparison,
)
from hft_pipeline.orchestration.partitions import (
    PARTITIONS_START_ENV,
    partition_key_for,
    partition_window,
    partitions_start,
    stored_first_tick_ts,
)
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


def test_candle_checks_fail_on_corrupted_data(store_case: StoreCase) -> None:
    frame = simulator_ticks(2)
    write_ticks(store_case.store, frame)
    lo, hi = partition_window(key(0))
    assert materialize([candles], partition_key=key(0), resources=resources(store_case)).success
    by_name = lambda results: {r.check_name: r for r in results}  # noqa: E731
    assert all(r.passed for r in candle_check_results(store_case.store, lo, hi))

    # A bad 1m candle (high below close) and a missing 1m bucket, written through the store.
    good = store_case.store.stored_candles("1m", lo, hi)
    bad = good.drop(index=5).reset_index(drop=True)
    bad.loc[3, "high"] = bad.loc[3, "close"] - 0.5
    store_case.store.replace_candles(bad.assign(timeframe="1m"), lo, hi, ["1m"])
    results = by_name(candle_check_results(store_case.store, lo, hi))
    assert not results["ohlc_invariants"].passed
    assert results["ohlc_invariants"].metadata["violations"].value == 1
    assert not results["candles_match_ticks"].passed  # bucket 5's ticks are no longer counted
    assert not results["gap_report"].passed
    assert results["gap_report"].severity == AssetCheckSeverity.WARN
    assert results["gap_report"].metadata["empty_1m_buckets"].value == 1
    assert results["no_duplicate_buckets"].passed

    # Ticks deleted after the candles were computed: the recount no longer matches.
    assert materialize([candles], partition_key=key(0), resources=resources(store_case)).success
    kept = frame[(frame["ts"] >= lo) & (frame["ts"] < hi) & (frame["symbol"] != "R_100")]
    counts = store_case.store.tick_counts(lo, hi)
    stored = {tf: store_case.store.stored_candles(tf, lo, hi) for tf in TIMEFRAMES}
    counts_after_delete = {s: n for s, n in counts.items() if s in set(kept["symbol"])}
    passed, meta = checks.candles_recount(counts_after_delete, stored)
    assert not passed and meta["mismatches"] == len(TIMEFRAMES)


def test_an_open_hour_is_recounted_from_the_ticks_read_a_closed_one_from_the_store(
    store_case: StoreCase,
) -> None:
    frame = simulator_ticks(1)
    lo, hi = partition_window(key(0))
    first, rest = frame[frame["ts"] < lo + 1800 * 10**9], frame[frame["ts"] >= lo + 1800 * 10**9]
    offset = write_ticks(store_case.store, first)
    grace = 60.0
    # The newest tick is half an hour in: open, though the wall clock is years past the hour.
    assert hour_is_open(store_case.store, hi, grace)
    newest = int(first["ts"].max())
    assert hour_is_open(store_case.store, newest - int(grace * 10**9) + 1, grace)
    assert not hour_is_open(store_case.store, newest - int(grace * 10**9), grace)
    assert materialize([candles], partition_key=key(0), resources=resources(store_case)).success

    # Ticks keep arriving for the open hour after its candles were computed.
    write_ticks(store_case.store, rest, offset=offset)
    by_name = lambda results: {r.check_name: r for r in results}  # noqa: E731
    strict = by_name(candle_check_results(store_case.store, lo, hi))["candles_match_ticks"]
    assert not strict.passed and strict.metadata["open_hours"].value == 0
    read = {lo: first["symbol"].value_counts().to_dict()}
    live = by_name(candle_check_results(store_case.store, lo, hi, read))["candles_match_ticks"]
    assert live.passed and live.metadata["open_hours"].value == 1
    assert live.metadata["ticks"].value == len(first)
    # Counts that do not match what the candles hold still fail.
    short = {lo: {s: n - 1 for s, n in read[lo].items()}}
    assert not by_name(candle_check_results(store_case.store, lo, hi, short))[
        "candles_match_ticks"
    ].passed


def test_partition_without_ticks_stores_nothing_and_passes(tmp_path) -> None:
    case = StoreCase("sqlite", f"sqlite:///{tmp_path / 'hft.sqlite3'}", None)  # type: ignore[arg-type]
    result = materialize([candles, indicators], partition_key=key(0), resources=resources(case))
    assert result.success
    assert all(passed for passed, _ in checks_of(result).values())
    assert result.asset_materializations_for_node("candles")[0].metadata["candles_total"].value == 0
    assert result.asset_materializations_for_node("indicators")[0].metadata["1m_bars"].value == 0


def test_duplicate_and_misaligned_buckets_are_reported() -> None:
    frames = candles_all_timeframes(simulator_ticks(0.5))
    assert checks.no_duplicate_buckets(frames)[0]
    one_minute = frames["1m"]
    dup = pd.concat([one_minute, one_minute.iloc[[2]]], ignore_index=True)
    passed, meta = checks.no_duplicate_buckets({"1m": dup})
    assert not passed and meta["duplicates"] == 1 and meta["misaligned"] == 0
    shifted = one_minute.copy()
    shifted.loc[0, "ts"] += 1_000_000_000
    passed, meta = checks.no_duplicate_buckets({"1m": shifted})
    assert not passed and meta["misaligned"] == 1


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

    all_1m = store_case.store.stored_candles("1m")
    assert len(all_1m) > meta["1m_candles_read"].value  # the history really was cut
    long = all_1m.assign(ts=pd.to_datetime(all_1m["ts"], unit="ns", utc=True))
    full = compute_wide(to_wide(long))
    lo, hi = partition_window(key(hours - 1))
    stored = store_case.store.stored_indicators("1m", lo, hi)
    assert len(stored) == int(((all_1m["ts"] >= lo) & (all_1m["ts"] < hi)).sum())
    assert sorted(stored.columns[2:]) == sorted(full)
    for name, wide in full.items():
        ref = wide.stack(future_stack=True).rename("ref").reset_index()
        ref["ts"] = ref["ts"].astype("int64")
        merged = stored[["symbol", "ts", name]].merge(ref, on=["symbol", "ts"])
        assert len(merged) == len(stored)
        np.testing.assert_allclose(
            merged[name].to_numpy(), merged["ref"].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=name
        )
        assert merged[name].notna().all(), name  # warmed up: no NaN at the partition start

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
    trades = store_case.store.backtest_trades(run.run_key)
    assert len(trades) == bt_meta["trades_stored"].value > 0
    passed, _ = checks.backtest_sanity(metrics, trades)
    assert passed
    # One more trade in the metrics of a run whose trade list is stored: inconsistent.
    first = trades.iloc[0]
    covered = (
        metrics[["strategy", "symbol", "params"]] == first[["strategy", "symbol", "params"]]
    ).all(axis=1)
    broken = metrics.copy()
    broken.loc[covered, "n_trades"] += 1
    assert not checks.backtest_sanity(broken, trades)[0]

    comparison = materialize([strategy_comparison], resources=res)
    assert comparison.success
    cmp_meta = comparison.asset_materializations_for_node("strategy_comparison")[0].metadata
    run_key, ranked = store_case.store.latest_comparison()
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


# --- partitions and resources ---------------------------------------------------------------------


def test_partitions_start_from_env_store_or_this_hour(store_case: StoreCase, tmp_path) -> None:
    now = datetime(2026, 11, 22, 6, 41, 5, tzinfo=UTC)
    assert partitions_start({PARTITIONS_START_ENV: "2026-03-04T05:59:59Z"}) == datetime(
        2026, 3, 4, 5, tzinfo=UTC
    )
    assert partitions_start({PARTITIONS_START_ENV: "2026-03-04"}) == datetime(
        2026, 3, 4, tzinfo=UTC
    )
    with pytest.raises(ValueError, match="ISO-8601"):
        partitions_start({PARTITIONS_START_ENV: "yesterday"})

    # An empty store, then one with ticks: the first tick's hour.
    env = {"HFT_STORE_URL": store_case.url}
    assert partitions_start(env, now=now) == datetime(2026, 11, 22, 6, tzinfo=UTC)
    write_ticks(store_case.store, simulator_ticks(0.2).iloc[5:])
    assert partitions_start(env, now=now) == datetime(2026, 1, 4, 18, tzinfo=UTC)

    # No store at all: this hour, and nothing is created by looking.
    missing = tmp_path / "nowhere" / "hft.sqlite3"
    assert partitions_start({"HFT_STORE_URL": f"sqlite:///{missing}"}, now=now) == datetime(
        2026, 11, 22, 6, tzinfo=UTC
    )
    assert not missing.parent.exists()
    unreachable = f"postgresql://postgres@127.0.0.1:{_closed_port()}/postgres"
    assert stored_first_tick_ts(unreachable) is None


class _FakeIngest(BaseHTTPRequestHandler):
    """A loopback ingest API: /health degraded, /status, and live 1m candles from `candles`."""

    candles: dict[str, list[dict]] = {}
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
            self._send(
                200, {"symbol": symbol, "source": "memory", "count": len(rows), "data": rows}
            )
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


class _HealthyIngest(IngestApiResource):
    def health(self) -> dict:
        return {"status": "ok", "problems": []}


def test_combined_outcome_of_a_ranged_run_adds_counts_and_keeps_failures() -> None:
    ok = (True, {"violations": 0, "examples": "none"})
    bad = (False, {"violations": 2, "examples": "1m PETR4@60"})
    assert checks.combine([ok, bad, ok]) == (False, {"violations": 2, "examples": "1m PETR4@60"})
    assert checks.combine([ok, ok]) == (True, {"violations": 0, "examples": "none"})
