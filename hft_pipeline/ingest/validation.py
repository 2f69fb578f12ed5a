"""Validation of incoming tick batches: reject bad ticks, count each reason, never raise."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from hft_pipeline.market.ticks import REJECT_REASONS, TickBatch, is_valid_symbol

__all__ = ["REJECT_REASONS", "TickValidator"]


class TickValidator:
    """Splits a batch into accepted ticks and rejection counts by reason (first failing check wins)."""

    def __init__(
        self, max_future_skew_s: float = 5.0, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.max_future_skew_ns = int(max_future_skew_s * 1e9)
        self.clock = clock
        self._tables: dict[tuple[str, ...], np.ndarray] = {}
        self.rejected = dict.fromkeys(REJECT_REASONS, 0)

    def validate(self, batch: TickBatch) -> tuple[TickBatch, dict[str, int]]:
        """Return (accepted ticks in arrival order, {reason: count} for this batch)."""
        n = len(batch)
        if n == 0:
            return batch, {}
        symbol_ok = self._valid_table(batch.symbols)
        horizon = self.clock() + self.max_future_skew_ns
        checks = (
            ("bad_symbol", ~symbol_ok[batch.sym]),
            ("non_finite_price", ~np.isfinite(batch.price)),
            ("non_positive_price", ~(batch.price > 0)),
            ("non_finite_volume", ~np.isfinite(batch.volume)),
            ("negative_volume", batch.volume < 0),
            ("bad_timestamp", batch.ts <= 0),
            ("future_timestamp", batch.ts > horizon),
        )
        bad = np.zeros(n, bool)
        counts: dict[str, int] = {}
        for reason, failed in checks:
            fresh = failed & ~bad
            k = int(np.count_nonzero(fresh))
            if k:
                counts[reason] = k
                self.rejected[reason] += k
                bad |= fresh
        if not counts:
            return batch, counts
        return batch.take(~bad), counts

    def _valid_table(self, symbols: tuple[str, ...]) -> np.ndarray:
        """Which names of a batch's symbol table are legal (cached: feeds reuse their tables)."""
        ok = self._tables.get(symbols)
        if ok is None:
            if len(self._tables) >= 64:
                self._tables.clear()
            ok = self._tables[symbols] = np.fromiter(
                (is_valid_symbol(s) for s in symbols), bool, len(symbols)
            )
        return ok
