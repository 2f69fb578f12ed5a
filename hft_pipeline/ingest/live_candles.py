"""Live candles for every symbol and timeframe, updated incrementally from accepted tick batches.

Each batch becomes mergeable partial candles of the finest timeframe (`market.candles`, the same
code the batch `candles` asset uses), which roll up into the coarser timeframes and then merge, in
one vectorized pass over every touched (symbol, timeframe, bucket), into a direct-mapped ring per
(symbol, timeframe): bucket number k lives in slot k mod (history + 1). The ring holds the forming
bucket and the `history` buckets before it, so at most `history` closed candles; a late tick for a
bucket still in that window is merged exactly (open/close by (ts, seq), exact volume), an older one
is counted in `late_dropped_from_memory` and left to the store.

Memory: 13 eight-byte fields per slot, i.e. at most about 7.3 MB per symbol for 7 timeframes at
history=10,000. Storage is slot-major, so the OS commits pages only as time advances through the
slots (a fresh process holds little; a full 1s ring takes 10,000 s to fill).

Threading: like the ring buffers, `update` runs on the ingest event loop and reads come from API
handlers on the same loop, so no lock is needed; callers on other threads must serialize.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hft_pipeline.market.candles import (
    PartialCandles,
    exact_volume,
    merge_exact_sums,
    partial_candles,
    rollup,
    run_starts,
)
from hft_pipeline.market.ticks import SymbolIndex, TickBatch
from hft_pipeline.market.timeframes import TIMEFRAMES, UnknownTimeframeError

_NONE = np.iinfo(np.int64).min
_INT_FIELDS = ("ts", "ticks", "first_ts", "first_seq", "last_ts", "last_seq")
_FLOAT_FIELDS = ("open", "high", "low", "close", "vs", "vc", "vd")
LIVE_CANDLE_COLUMNS = ("ts", "open", "high", "low", "close", "volume", "ticks", "closed")


@dataclass(frozen=True, slots=True)
class UpdateStats:
    """What one `LiveCandles.update` did."""

    ticks: int
    late: int  # ticks older than their symbol's forming bucket of the finest timeframe
    late_dropped_from_memory: int  # late ticks older than every bucket memory keeps
    closed: int  # candles (all timeframes) that became closed in this update


class LiveCandles:
    """Forming and recent closed candles per (symbol, timeframe), exact under any tick order."""

    def __init__(self, timeframes: Mapping[str, int] = TIMEFRAMES, history: int = 10_000) -> None:
        if not timeframes:
            raise ValueError("LiveCandles needs at least one timeframe")
        if history < 1:
            raise ValueError(f"history must be >= 1 closed candle, got {history}")
        items = sorted(timeframes.items(), key=lambda kv: kv[1])
        base = items[0][1]
        for name, tf in items:
            # Coarser candles are rolled up from the finest one, so they must tile it.
            if tf <= 0 or tf % base:
                raise ValueError(f"timeframe {name}={tf}ns is not a positive multiple of {base}ns")
        self.timeframes: dict[str, int] = dict(items)
        self.history = history
        self._tf_index = {name: j for j, (name, _) in enumerate(items)}
        self._tf = np.array([tf for _, tf in items], dtype=np.int64)
        self._ntf = len(items)
        self._slots = history + 1  # the forming bucket plus `history` closed ones
        self._index = SymbolIndex()
        self._sym_cap = 0
        self._f: dict[str, np.ndarray] = {}
        self._latest = np.empty(0, np.int64)  # per row: start of the newest bucket, or _NONE
        self._first_ts = np.empty(0, np.int64)  # per symbol: ts of the first tick memory saw
        self._grow(8)
        self.late_total = 0
        self.late_dropped_total = 0
        self.closed_total = 0

    # --- storage --------------------------------------------------------------------------------

    def _grow(self, n_symbols: int) -> None:
        if n_symbols <= self._sym_cap:
            return
        cap = max(n_symbols, 2 * self._sym_cap)
        rows_old, rows = self._sym_cap * self._ntf, cap * self._ntf
        # Copy only slots that ever held a candle: writing the rest would commit their pages.
        used = np.flatnonzero(self._f["ticks"].any(axis=1)) if rows_old else None
        for name in _INT_FIELDS + _FLOAT_FIELDS:
            dtype = np.int64 if name in _INT_FIELDS else np.float64
            # Slot-major: every symbol writes the slots of the current time, so only those pages
            # are touched (and committed) rather than a page per symbol row.
            arr = np.zeros((self._slots, rows), dtype)
            if rows_old:
                arr[used, :rows_old] = self._f[name][used]
            self._f[name] = arr
        latest = np.full(rows, _NONE, np.int64)
        latest[:rows_old] = self._latest
        self._latest = latest
        first = np.full(cap, _NONE, np.int64)
        first[: self._sym_cap] = self._first_ts
        self._first_ts = first
        self._sym_cap = cap

    # --- updates --------------------------------------------------------------------------------

    def update(self, batch: TickBatch) -> UpdateStats:
        """Apply an accepted (validated, de-duplicated) batch; return what changed."""
        n = len(batch)
        if n == 0:
            return UpdateStats(0, 0, 0, 0)
        ids = self._index.ids_for(batch).astype(np.int64)
        self._grow(len(self._index))
        uniq, first_pos = np.unique(ids, return_index=True)
        new = self._first_ts[uniq] == _NONE
        if np.any(new):
            self._first_ts[uniq[new]] = batch.ts[first_pos[new]]

        ntf = self._ntf
        base = partial_candles(
            batch.ts, batch.seq, batch.price, batch.volume, int(self._tf[0]), ids
        )
        base.group = base.group * ntf  # row of (symbol, finest timeframe)
        if ntf > 1:
            m = len(base)
            rep = base.take(np.tile(np.arange(m), ntf - 1))
            j = np.repeat(np.arange(1, ntf, dtype=np.int64), m)
            rep.group = rep.group + j
            parts = PartialCandles.concat([base, rollup(rep, self._tf[j])])
        else:
            parts = base
        return self._merge(parts, n)

    def _merge(self, p: PartialCandles, n_ticks: int) -> UpdateStats:
        """Merge partial candles (rows grouped, ascending ts within a row) into the rings."""
        rows = p.group
        tf = self._tf[rows % self._ntf]
        starts = run_starts(rows)
        lengths = np.diff(np.append(starts, len(p)))
        run_rows = rows[starts]
        old_run = self._latest[run_rows]
        new_run = np.maximum(old_run, p.ts[starts + lengths - 1])
        self._latest[run_rows] = new_run
        old_latest = np.repeat(old_run, lengths)
        new_latest = np.repeat(new_run, lengths)

        finest = rows % self._ntf == 0
        late = int(p.ticks[finest & (p.ts < old_latest)].sum())
        closed = int(np.count_nonzero((p.ts > old_latest) & (p.ts < new_latest)))
        closed += int(np.count_nonzero((old_run != _NONE) & (new_run > old_run)))
        keep = p.ts > new_latest - self._slots * tf
        # Only late ticks count as dropped: in-order ticks evicted by newer ones of the same batch
        # were simply aged out. Windows nest (a coarser window reaches further back), so a tick
        # dropped from any timeframe is dropped from the finest one: count there, once per tick.
        dropped = int(p.ticks[finest & ~keep & (p.ts < old_latest)].sum())
        if not np.all(keep):
            p, rows, tf = p.take(keep), rows[keep], tf[keep]

        flat = (p.ts // tf) % self._slots * self._sym_cap * self._ntf + rows
        f = {name: arr.reshape(-1) for name, arr in self._f.items()}
        cur_ticks = f["ticks"][flat]
        present = (cur_ticks > 0) & (f["ts"][flat] == p.ts)

        def cur(name: str, neutral: float | int) -> np.ndarray:
            return np.where(present, f[name][flat], neutral)

        big = np.iinfo(np.int64).max
        c_fts, c_fseq = cur("first_ts", big), cur("first_seq", big)
        c_lts, c_lseq = cur("last_ts", _NONE), cur("last_seq", _NONE)
        earlier = (p.first_ts < c_fts) | ((p.first_ts == c_fts) & (p.first_seq < c_fseq))
        later = (p.last_ts > c_lts) | ((p.last_ts == c_lts) & (p.last_seq > c_lseq))
        vs, vc, vd = merge_exact_sums(
            cur("vs", 0.0), cur("vc", 0.0), cur("vd", 0.0), p.vs, p.vc, p.vd
        )
        f["ts"][flat] = p.ts
        f["ticks"][flat] = np.where(present, cur_ticks, 0) + p.ticks
        f["open"][flat] = np.where(earlier, p.open, f["open"][flat])
        f["first_ts"][flat] = np.where(earlier, p.first_ts, c_fts)
        f["first_seq"][flat] = np.where(earlier, p.first_seq, c_fseq)
        f["close"][flat] = np.where(later, p.close, f["close"][flat])
        f["last_ts"][flat] = np.where(later, p.last_ts, c_lts)
        f["last_seq"][flat] = np.where(later, p.last_seq, c_lseq)
        f["high"][flat] = np.maximum(cur("high", -np.inf), p.high)
        f["low"][flat] = np.minimum(cur("low", np.inf), p.low)
        f["vs"][flat], f["vc"][flat], f["vd"][flat] = vs, vc, vd

        self.late_total += late
        self.late_dropped_total += dropped
        self.closed_total += closed
        return UpdateStats(n_ticks, late, dropped, closed)

    # --- reads ----------------------------------------------------------------------------------

    def symbols(self) -> list[str]:
        """Every symbol seen, in order of first appearance."""
        return list(self._index.names)

    def _row(self, symbol: str, timeframe: str) -> tuple[int | None, int]:
        j = self._tf_index.get(timeframe)
        if j is None:
            raise UnknownTimeframeError(
                f"unknown timeframe {timeframe!r}: live candles have {', '.join(self.timeframes)}"
            )
        s = self._index.get(symbol)
        return (None if s is None else s * self._ntf + j), int(self._tf[j])

    def complete_from(self, symbol: str, timeframe: str) -> int | None:
        """Earliest bucket start from which memory holds every accepted tick of `symbol`, or None."""
        row, tf = self._row(symbol, timeframe)
        if row is None or self._latest[row] == _NONE:
            return None
        first = int(self._first_ts[row // self._ntf])
        oldest_kept = int(self._latest[row]) - (self._slots - 1) * tf
        # The first tick's bucket may hold ticks accepted before memory started (log replay).
        return max((first // tf + 1) * tf, oldest_kept)

    def candles(
        self,
        symbol: str,
        timeframe: str,
        start_ns: int | None = None,
        end_ns: int | None = None,
        limit: int | None = None,
        descending: bool = True,
    ) -> pd.DataFrame:
        """Candles in memory with start_ns <= ts < end_ns, newest first unless descending=False."""
        row, tf = self._row(symbol, timeframe)
        if row is None or self._latest[row] == _NONE:
            return _frame_from({}, 0)
        latest_k = int(self._latest[row]) // tf
        lo = latest_k - self._slots + 1
        hi = latest_k
        if start_ns is not None:
            lo = max(lo, -(-int(start_ns) // tf))
        if end_ns is not None:
            hi = min(hi, (int(end_ns) - 1) // tf)
        if hi < lo:
            return _frame_from({}, 0)
        ks = np.arange(lo, hi + 1, dtype=np.int64)
        if descending:
            ks = ks[::-1]
        pos = ks % self._slots
        ts = self._f["ts"][pos, row]
        valid = (self._f["ticks"][pos, row] > 0) & (ts == ks * tf)
        pos = pos[valid]
        if limit is not None:
            pos = pos[: max(int(limit), 0)]
        cols = {name: self._f[name][pos, row] for name in _INT_FIELDS + _FLOAT_FIELDS}
        return _frame_from(cols, int(self._latest[row]))

    def forming(self, symbol: str) -> pd.DataFrame:
        """The forming candle of every timeframe of `symbol` (column `timeframe`; empty if unseen)."""
        s = self._index.get(symbol)
        names = list(self.timeframes)
        if s is None:
            return _frame_from({}, 0).assign(timeframe=pd.Series([], dtype=object))
        rows = s * self._ntf + np.arange(self._ntf)
        latest = self._latest[rows]
        have = latest != _NONE
        rows, latest = rows[have], latest[have]
        pos = (latest // self._tf[have]) % self._slots
        cols = {name: self._f[name][pos, rows] for name in _INT_FIELDS + _FLOAT_FIELDS}
        frame = _frame_from(cols, latest)
        frame.insert(0, "timeframe", np.asarray(names, dtype=object)[have])
        return frame


def _frame_from(cols: dict[str, np.ndarray], latest: int | np.ndarray) -> pd.DataFrame:
    if not cols:
        return pd.DataFrame(
            {
                "ts": np.empty(0, np.int64),
                "open": np.empty(0),
                "high": np.empty(0),
                "low": np.empty(0),
                "close": np.empty(0),
                "volume": np.empty(0),
                "ticks": np.empty(0, np.int64),
                "closed": np.empty(0, bool),
            }
        )
    return pd.DataFrame(
        {
            "ts": cols["ts"],
            "open": cols["open"],
            "high": cols["high"],
            "low": cols["low"],
            "close": cols["close"],
            "volume": exact_volume(cols["vs"], cols["vc"], cols["vd"]),
            "ticks": cols["ticks"],
            "closed": cols["ts"] < latest,
        }
    )
