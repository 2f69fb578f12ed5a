"""The assets' check specs, and analytics check outcomes as Dagster check results."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from dagster import AssetCheckResult, AssetCheckSeverity, AssetCheckSpec

from hft_pipeline.analytics.checks import CANDLE_CHECKS, CheckOutcome

#: Candle checks that only warn: gaps are market reality, not a broken pipeline.
WARNING_CHECKS = frozenset({"gap_report"})

CANDLE_CHECK_SPECS = [
    AssetCheckSpec(
        name, asset="candles", blocking=name not in WARNING_CHECKS, description=description
    )
    for name, description in CANDLE_CHECKS.items()
]

BACKTEST_CHECK_SPECS = [
    AssetCheckSpec(
        "backtest_sanity",
        asset="backtests",
        blocking=True,
        description="No NaN metric where trades closed; n_trades equals the trade list.",
    )
]


def check_results(outcomes: Mapping[str, CheckOutcome]) -> Iterator[AssetCheckResult]:
    """One result per outcome: ERROR when failed, WARN for the warning-only checks."""
    for name, (passed, metadata) in outcomes.items():
        severity = AssetCheckSeverity.WARN if name in WARNING_CHECKS else AssetCheckSeverity.ERROR
        yield AssetCheckResult(check_name=name, passed=passed, metadata=metadata, severity=severity)


__all__ = ["BACKTEST_CHECK_SPECS", "CANDLE_CHECK_SPECS", "WARNING_CHECKS", "check_results"]
