"""The results methods of `TickStore`, written once: both stores pass them to `self.results`."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from hft_pipeline.store.base import BacktestRun
from hft_pipeline.store.results.repository import ResultsRepository


class StoredResults:
    """Mixin of SqliteStore and PostgresStore: the results half of the store protocol."""

    results: ResultsRepository

    def replace_candles(
        self, candles: pd.DataFrame, start_ns: int, end_ns: int, timeframes: Sequence[str]
    ) -> int:
        """See `TickStore.replace_candles`."""
        return self.results.replace_candles(candles, start_ns, end_ns, timeframes)

    def stored_candles(
        self,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        symbols: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """See `TickStore.stored_candles`."""
        return self.results.stored_candles(timeframe, start_ns, end_ns, symbols)

    def replace_indicators(
        self, timeframe: str, values: pd.DataFrame, start_ns: int, end_ns: int
    ) -> int:
        """See `TickStore.replace_indicators`."""
        return self.results.replace_indicators(timeframe, values, start_ns, end_ns)

    def stored_indicators(
        self,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        symbols: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """See `TickStore.stored_indicators`."""
        return self.results.stored_indicators(timeframe, start_ns, end_ns, symbols)

    def write_backtest(self, run: BacktestRun, metrics: pd.DataFrame, trades: pd.DataFrame) -> None:
        """See `TickStore.write_backtest`."""
        self.results.write_backtest(run, metrics, trades)

    def backtest_runs(self) -> list[BacktestRun]:
        """See `TickStore.backtest_runs`."""
        return self.results.backtest_runs()

    def backtest_metrics(self, run_key: str) -> pd.DataFrame:
        """See `TickStore.backtest_metrics`."""
        return self.results.backtest_metrics(run_key)

    def write_comparison(self, run_key: str, ranked: pd.DataFrame) -> None:
        """See `TickStore.write_comparison`."""
        self.results.write_comparison(run_key, ranked)
