"""Per-symbol sequence tracking: drop duplicate ticks (same symbol and seq), detect gaps.

A tick is new when its seq is above the highest seen for its symbol, or when it fills a
recorded hole (a seq skipped earlier that arrives late). Anything else is a duplicate.
Silence gaps (a symbol quiet for longer than a multiple of its usual interval) are tracked
by wall clock.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import numpy as np

from hft_pipeline.market.ticks import SymbolIndex, TickBatch

MAX_HOLE_RANGES = (
    4096  # per symbol; older holes are forgotten (their late fills count as duplicates)
)


@dataclass(slots=True)
class SequenceStats:
    duplicates: int = 0
    gaps: int = 0  # seq jumps
    missing: int = 0  # seqs skipped by those jumps
    filled: int = 0  # late ticks that filled a hole


class Sequencer:
    """Duplicate filter and seq-gap detector over multi-symbol batches (vectorized fast path)."""

    def __init__(self) -> None:
        self.index = SymbolIndex()
        self.max_seq = np.full(0, -1, np.int64)
        self.seq_gaps = np.zeros(0, np.int64)
        self.duplicates = np.zeros(0, np.int64)
        # symbol id -> sorted, disjoint inclusive ranges [lo, hi] of seqs not yet seen
        self._holes: dict[int, list[tuple[int, int]]] = {}

    def seed(self, last_seqs: dict[str, int]) -> None:
        """Start from the highest seq already persisted per symbol (after a restart)."""
        for name, seq in last_seqs.items():
            ident = self.index.id_of(name)
            self._grow()
            self.max_seq[ident] = max(self.max_seq[ident], seq)

    def last_seq(self, symbol: str) -> int | None:
        ident = self.index.get(symbol)
        if ident is None or ident >= len(self.max_seq) or self.max_seq[ident] < 0:
            return None
        return int(self.max_seq[ident])

    def process(self, batch: TickBatch) -> tuple[TickBatch, SequenceStats]:
        """Return (new ticks in arrival order, stats); duplicates are dropped and counted."""
        stats = SequenceStats()
        n = len(batch)
        if n == 0:
            return batch, stats
        ids = self.index.ids_for(batch)
        self._grow()
        order = np.lexsort((batch.seq, ids))  # stable: first arrival of equal keys comes first
        s_ids, s_seq = ids[order], batch.seq[order]
        dup = np.zeros(n, bool)
        dup[1:] = (s_ids[1:] == s_ids[:-1]) & (s_seq[1:] == s_seq[:-1])
        fresh = (s_seq > self.max_seq[s_ids]) & ~dup
        stale = np.flatnonzero(~fresh & ~dup)
        accepted = fresh.copy()
        for i in stale:  # rare: late or duplicate ticks only
            if self._fill_hole(int(s_ids[i]), int(s_seq[i])):
                accepted[i] = True
                stats.filled += 1

        f = np.flatnonzero(fresh)
        if f.size:
            f_ids, f_seq = s_ids[f], s_seq[f]
            first = np.ones(f.size, bool)
            first[1:] = f_ids[1:] != f_ids[:-1]
            prev = np.empty_like(f_seq)
            prev[first] = self.max_seq[f_ids[first]]
            prev[~first] = f_seq[:-1][~first[1:]]
            jump = (f_seq - prev > 1) & (prev >= 0)  # no gap before a symbol's first known seq
            for j in np.flatnonzero(jump):  # rare: one iteration per gap
                self._add_hole(int(f_ids[j]), int(prev[j]) + 1, int(f_seq[j]) - 1)
            if jump.any():
                stats.gaps = int(jump.sum())
                stats.missing = int((f_seq[jump] - prev[jump] - 1).sum())
                np.add.at(self.seq_gaps, f_ids[jump], 1)
            last = np.ones(f.size, bool)
            last[:-1] = f_ids[1:] != f_ids[:-1]
            self.max_seq[f_ids[last]] = f_seq[last]

        rejected = ~accepted
        stats.duplicates = int(rejected.sum())
        if stats.duplicates == 0:
            return batch, stats
        np.add.at(self.duplicates, s_ids[rejected], 1)
        mask = np.zeros(n, bool)
        mask[order[accepted]] = True
        return batch.take(mask), stats

    def holes(self, symbol: str) -> list[tuple[int, int]]:
        ident = self.index.get(symbol)
        return list(self._holes.get(ident, [])) if ident is not None else []

    def _grow(self) -> None:
        extra = len(self.index) - len(self.max_seq)
        if extra > 0:
            self.max_seq = _grown(self.max_seq, extra, fill=-1)
            self.seq_gaps = _grown(self.seq_gaps, extra)
            self.duplicates = _grown(self.duplicates, extra)

    def _add_hole(self, ident: int, lo: int, hi: int) -> None:
        ranges = self._holes.setdefault(ident, [])
        ranges.append((lo, hi))  # fresh seqs only grow, so holes arrive in order
        if len(ranges) > MAX_HOLE_RANGES:
            del ranges[0]

    def _fill_hole(self, ident: int, seq: int) -> bool:
        ranges = self._holes.get(ident)
        if not ranges:
            return False
        k = bisect.bisect_right(ranges, (seq, float("inf"))) - 1
        if k < 0:
            return False
        lo, hi = ranges[k]
        if not lo <= seq <= hi:
            return False
        pieces = [(a, b) for a, b in ((lo, seq - 1), (seq + 1, hi)) if a <= b]
        ranges[k : k + 1] = pieces
        return True


class SilenceDetector:
    """Flags a symbol silent for longer than `multiple` times its usual arrival interval.

    The hot path only stamps arrival times and counts ticks; `check`, run about once a second,
    turns them into each symbol's mean inter-arrival time (an exponentially weighted average
    over the checks in which the symbol was heard, so a silence never dilutes it).
    """

    def __init__(self, multiple: float = 10.0, min_silence_ns: int = 1_000_000_000) -> None:
        self.multiple = multiple
        self.min_silence_ns = min_silence_ns
        self.index = SymbolIndex()
        self.last_arrival = np.zeros(0, np.int64)
        self.arrivals = np.zeros(0, np.int64)  # ticks since the previous check
        self.interval = np.zeros(0, np.float64)  # usual ns between ticks, 0 = not known yet
        self.silent = np.zeros(0, bool)
        self.gaps = np.zeros(0, np.int64)
        self._checked_arrival = np.zeros(0, np.int64)  # last_arrival as of the previous check

    def observe(self, batch: TickBatch, now_ns: int) -> None:
        """Record that the symbols of `batch` were heard from at `now_ns`."""
        if not len(batch):
            return
        ids = self.index.ids_for(batch)
        extra = len(self.index) - len(self.last_arrival)
        if extra > 0:
            self.last_arrival, self.arrivals = (
                _grown(self.last_arrival, extra),
                _grown(self.arrivals, extra),
            )
            self.interval, self.silent = _grown(self.interval, extra), _grown(self.silent, extra)
            self.gaps, self._checked_arrival = (
                _grown(self.gaps, extra),
                _grown(self._checked_arrival, extra),
            )
        self.last_arrival[ids] = now_ns
        self.arrivals += np.bincount(ids, minlength=len(self.arrivals))
        self.silent[ids] = False

    def check(self, now_ns: int, active: set[str] | None = None) -> list[str]:
        """Symbols that just went silent (each silence counted once), optionally among `active`."""
        heard = (self.arrivals > 0) & (self._checked_arrival > 0)
        observed = (self.last_arrival[heard] - self._checked_arrival[heard]) / self.arrivals[heard]
        old = self.interval[heard]
        self.interval[heard] = np.where(old > 0, 0.8 * old + 0.2 * observed, observed)
        self._checked_arrival = self.last_arrival.copy()
        self.arrivals[:] = 0
        known = self.interval > 0
        limit = np.where(
            known, np.maximum(self.interval * self.multiple, self.min_silence_ns), np.inf
        )
        quiet = (self.last_arrival > 0) & (now_ns - self.last_arrival > limit) & ~self.silent
        if active is not None:
            quiet &= np.array([name in active for name in self.index.names], bool)
        ids = np.flatnonzero(quiet)
        self.silent[ids] = True
        self.gaps[ids] += 1
        return [self.index.names[i] for i in ids]


def _grown(array: np.ndarray, extra: int, fill: int = 0) -> np.ndarray:
    """`array` with `extra` more elements of value `fill` (per-symbol state for new symbols)."""
    return np.concatenate([array, np.full(extra, fill, array.dtype)])
