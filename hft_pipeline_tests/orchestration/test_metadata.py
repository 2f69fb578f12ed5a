"""What the UI shows: report metadata, markdown tables, PNG figures, check severities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from dagster import AssetCheckSeverity, MetadataValue

from hft_pipeline.analytics.candles import CandlesReport, Corrections
from hft_pipeline.analytics.indicators import IndicatorsReport
from hft_pipeline.market.comparison import compare_strategies
from hft_pipeline.market.frames import to_wide
from hft_pipeline.orchestration.checks import CANDLE_CHECK_SPECS, check_results
from hft_pipeline.orchestration.metadata import (
    candles_metadata,
    comparison_markdown,
    indicators_metadata,
    png_markdown,
    render_figures,
)

PNG = b"\x89PNG\r\n\x1a\n"


def _wide(n_symbols: int = 3, n_bars: int = 1500) -> dict:
    rng = np.random.default_rng(11)
    idx = pd.date_range("2024-01-01", periods=n_bars, freq="1min", tz="UTC", name="ts")
    frames = {}
    for i in range(n_symbols):
        c = 100 * np.cumprod(1 + rng.normal(0, 0.002, n_bars))
        o = np.r_[c[0], c[:-1]]
        frames[f"S{i}"] = pd.DataFrame(
            {"open": o, "high": np.maximum(o, c) * 1.001, "low": np.minimum(o, c) * 0.999,
             "close": c, "volume": 1.0},
            index=idx,
        )  # fmt: skip
    return to_wide(frames)


def test_figures_are_pngs_for_equity_drawdown_and_each_strategys_heatmap(tmp_path: Path) -> None:
    result = compare_strategies(_wide(), max_bytes=2 * 1024**2)
    paths = render_figures(result, tmp_path)
    assert set(paths) == {"equity_curves", "drawdown", "heatmap_sma_crossover",
                          "heatmap_rsi_mean_reversion", "heatmap_bollinger_breakout",
                          "heatmap_macd_signal_cross"}  # fmt: skip
    for p in paths.values():
        assert p.read_bytes()[:8] == PNG and p.stat().st_size > 10_000

    markdown = png_markdown(paths)
    assert markdown.count("](data:image/png;base64,iVBORw0KGgo") == len(paths)
    assert markdown.startswith("**equity_curves**\n\n![equity_curves](data:image/png;base64,")

    table = comparison_markdown(result.best, top=5).splitlines()
    assert len(table) == 2 + 5
    assert [c.strip() for c in table[0].strip("|").split("|")] == [
        "rank", "strategy", "symbol", "params", "sharpe", "total_return", "max_drawdown",
        "win_rate", "n_trades",
    ]  # fmt: skip
    first = result.best.iloc[0]
    assert f"{first['sharpe']:.3f}" in table[2] and first["params"] in table[2]


def test_candles_metadata_counts_what_the_rebuild_did() -> None:
    report = CandlesReport(ticks_read=10, symbols={"B", "A"})
    report.candles.update({"1s": 9, "1m": 2, "1h": 1})
    report.vs_stored = Corrections(compared=2, changed=1, added=1)
    report.vs_live = Corrections(compared=2, changed=2)
    meta = candles_metadata(report, 0.12345)
    assert meta["symbol_list"] == "A, B" and meta["symbols"] == 2
    assert meta["candles_1m"] == 2 and meta["candles_5s"] == 0 and meta["candles_total"] == 12
    assert meta["late_tick_corrections_vs_stored"] == 2
    assert meta["stored_1m_candles_compared"] == 2
    assert meta["late_tick_corrections_vs_live"] == 2
    assert meta["seconds"] == 0.123


def test_indicators_metadata_prefixes_each_count_with_its_timeframe() -> None:
    report = IndicatorsReport({"1m": {"bars": 60, "warmup_bars": 720}}, cache_hits=1)
    assert indicators_metadata(report, ["rsi_14", "obv"]) == {
        "1m_bars": 60,
        "1m_warmup_bars": 720,
        "indicators": "rsi_14, obv",
        "timeframes": "1m",
        "cache_hits": 1,
    }


def test_failed_checks_are_errors_except_gaps_which_warn() -> None:
    outcomes = {spec.name: (False, {"examples": "x"}) for spec in CANDLE_CHECK_SPECS}
    results = {r.check_name: r for r in check_results(outcomes)}
    assert {n: r.severity for n, r in results.items()} == {
        "candles_match_ticks": AssetCheckSeverity.ERROR,
        "ohlc_invariants": AssetCheckSeverity.ERROR,
        "no_duplicate_buckets": AssetCheckSeverity.ERROR,
        "gap_report": AssetCheckSeverity.WARN,
    }
    assert all(not r.passed for r in results.values())
    assert results["gap_report"].metadata["examples"] == MetadataValue.text("x")
    assert {s.name: s.blocking for s in CANDLE_CHECK_SPECS} == {
        "candles_match_ticks": True,
        "ohlc_invariants": True,
        "no_duplicate_buckets": True,
        "gap_report": False,
    }
