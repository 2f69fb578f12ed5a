"""Live candles for every symbol and timeframe, updated incrementally from accepted tick batches.

The kernel, late ticks, compilation, memory and threading: docs/memory.md#live-candles.
"""

from __future__ import annotations

import mmap
from collections.abc import Mapping
from dataclasses import dataclass

import numba
import numpy as np
import pandas as pd

from hft_pipeline.market.candles import exact_volume
from hft_pipeline.market.ticks import SymbolIndex, TickBatch
from hft_pipeline.market.timeframes import TIMEFRAMES, UnknownTimeframeError

_NONE = np.iinfo(np.int64).min
_INT_FIELDS = ("ts", "ticks", "first_ts", "first_seq", "last_ts", "last_seq")
_FLOAT_FIELDS = ("open", "high", "low", "close", "vs", "vc", "vd")
LIVE_CANDLE_COLUMNS = ("ts", "open", "high", "low", "close", "volume", "ticks", "closed")

# Field positions in the kernel's (field, slot, row) arrays; order as in _INT/_FLOAT_FIELDS.
_TS, _TICKS, _FIRST_TS, _FIRST_SEQ, _LAST_TS, _LAST_SEQ = range(6)
_OPEN, _HIGH, _LOW, _CLOSE, _VS, _VC, _VD = range(7)


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
            # Windows of coarser timeframes must nest around the finest one's (late ticks are
            # counted on the finest), and every bucket edge must be one of the finest.
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
        self._ints = np.zeros((len(_INT_FIELDS), self._slots, 0), np.int64)
        self._floats = np.zeros((len(_FLOAT_FIELDS), self._slots, 0), np.float64)
        self._f: dict[str, np.ndarray] = {}
        self._latest = np.empty(0, np.int64)  # per row: start of the newest bucket, or _NONE
        self._latest_slot = np.empty(0, np.int64)  # per row: its slot (saves two divisions)
        self._first_ts = np.empty(0, np.int64)  # per symbol: ts of the first tick memory saw
        self._old = np.empty(0, np.int64)  # per symbol: kernel scratch, pre-batch finest latest
        self._grow(8)
        self.late_total = 0
        self.late_dropped_total = 0
        self.closed_total = 0
        _warm_up()

    # --- storage --------------------------------------------------------------------------------

    def _grow(self, n_symbols: int) -> None:
        if n_symbols <= self._sym_cap:
            return
        cap = max(n_symbols, 2 * self._sym_cap)
        rows_old, rows = self._sym_cap * self._ntf, cap * self._ntf
        # Slot-major per field: every symbol writes the slots of the current time, so only those
        # pages are touched (and committed) rather than a page per symbol row.
        ints = _lazy_zeros((len(_INT_FIELDS), self._slots, rows), np.int64)
        floats = _lazy_zeros((len(_FLOAT_FIELDS), self._slots, rows), np.float64)
        if rows_old:
            # Copy only slots that ever held a candle: writing the rest would commit their pages.
            used = np.flatnonzero(self._ints[_TICKS].any(axis=1))
            ints[:, used, :rows_old] = self._ints[:, used]
            floats[:, used, :rows_old] = self._floats[:, used]
        self._ints, self._floats = ints, floats
        self._f = {name: ints[i] for i, name in enumerate(_INT_FIELDS)}
        self._f.update({name: floats[i] for i, name in enumerate(_FLOAT_FIELDS)})
        latest = np.full(rows, _NONE, np.int64)
        latest[:rows_old] = self._latest
        self._latest = latest
        latest_slot = np.zeros(rows, np.int64)
        latest_slot[:rows_old] = self._latest_slot
        self._latest_slot = latest_slot
        first = np.full(cap, _NONE, np.int64)
        first[: self._sym_cap] = self._first_ts
        self._first_ts = first
        self._old = np.empty(cap, np.int64)
        self._sym_cap = cap

    # --- updates --------------------------------------------------------------------------------

    def update(self, batch: TickBatch) -> UpdateStats:
        """Apply an accepted (validated, de-duplicated) batch; return what changed."""
        n = len(batch)
        if n == 0:
            return UpdateStats(0, 0, 0, 0)
        ids = self._index.ids_for(batch)
        self._grow(len(self._index))
        ts = _column(batch.ts, np.int64)
        late, dropped, closed, first_advances, recount = _apply_ticks(
            ids.astype(np.int32, copy=False),
            ts,
            _column(batch.seq, np.int64),
            _column(batch.price, np.float64),
            _column(batch.volume, np.float64),
            self._tf,
            self._slots,
            self._ints,
            self._floats,
            self._latest,
            self._latest_slot,
            self._first_ts,
            self._old,
        )
        if recount:
            closed = first_advances + _count_new_closed(
                ids.astype(np.int64), ts, self._tf, self._latest, self._old
            )
        self.late_total += late
        self.late_dropped_total += dropped
        self.closed_total += closed
        return UpdateStats(n, late, dropped, closed)

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

    def forming_start(self, symbol: str, timeframe: str) -> int | None:
        """Start of `symbol`'s newest (forming) bucket of `timeframe`, or None before a tick."""
        row, _ = self._row(symbol, timeframe)
        if row is None or self._latest[row] == _NONE:
            return None
        return int(self._latest[row])

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


def _lazy_zeros(shape: tuple[int, ...], dtype: type) -> np.ndarray:
    """Zeros whose pages the OS commits 4 KiB at a time, on first write.

    np.zeros would also map lazily, but numpy advises huge pages for large arrays: the first
    write to each 2 MiB region then zeroes and commits all of it (15-200 ms measured on the first
    batch of 150 symbols, vs ~7 ms here, and again whenever time reaches a new region).
    """
    nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if nbytes == 0:
        return np.zeros(shape, dtype)
    buf = mmap.mmap(-1, nbytes)  # anonymous, private, zero-filled; unmapped with the array
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)  # for systems with transparent huge pages "always"
    return np.frombuffer(buf, dtype).reshape(shape)


def _column(values: np.ndarray, dtype: type) -> np.ndarray:
    # One dtype and layout per argument, so numba compiles (and caches) exactly one version.
    return np.ascontiguousarray(values, dtype=dtype)


@numba.njit(cache=True, nogil=True)
def _apply_ticks(
    sym, ts, seq, price, volume, tf, slots, ints, floats, latest, latest_slot, first_ts, old
):
    """Merge every tick into the ring slot of each timeframe, in place.

    Returns (late, dropped, closed, first_advances, recount); when `recount` is set, `closed` must
    be recomputed as first_advances + `_count_new_closed` (see below). Same results as merging the batch's partial candles (`market.candles`) into the rings:
    - candles: a tick is applied unless its bucket is older than the window at its turn, and an
      applied tick outside the final window is overwritten or unreadable afterwards, so the rings
      read the same as when only ticks inside the batch's final window are merged;
    - late: finest bucket older than the symbol's pre-batch forming bucket;
    - dropped: late and outside the finest timeframe's window after the batch;
    - closed: per row, the pre-batch forming bucket if the row advanced, plus every distinct
      bucket newer than it and older than the post-batch forming bucket.
    """
    n = ts.shape[0]
    ntf = tf.shape[0]
    none = np.iinfo(np.int64).min
    # Pass 1: each symbol's pre-batch forming bucket of the finest timeframe (by nesting, the
    # coarser ones follow from it), and the first tick memory ever saw.
    for i in range(n):
        s = sym[i]
        old[s] = latest[s * ntf]
        if first_ts[s] == none:
            first_ts[s] = ts[i]

    closed = 0
    first_advances = 0  # rows whose pre-batch forming bucket closed
    # A bucket whose first tick of the batch comes after the window passed it is never written,
    # so it cannot be counted in place; that needs in-batch disorder wider than the window, and
    # then `closed` is recounted from its definition below.
    recount = False
    # Pass 2: apply each tick to each timeframe, in arrival order.
    for i in range(n):
        s = sym[i]
        t = ts[i]
        q = seq[i]
        p = price[i]
        v = volume[i]
        for j in range(ntf):
            w = tf[j]
            row = s * ntf + j
            cur = latest[row]
            if cur != none and cur <= t and t - cur < w:
                # Most ticks land in the forming bucket: its slot is known (no divisions).
                b = cur
                slot = latest_slot[row]
                fresh = False
            else:
                k = t // w
                b = k * w
                slot = k % slots
                if cur == none or b > cur:
                    if cur != none:
                        closed += 1  # the forming bucket it replaces
                        if old[s] != none and cur == (old[s] // w) * w:
                            first_advances += 1
                    latest[row] = b
                    latest_slot[row] = slot
                    fresh = True
                elif b <= cur - slots * w:
                    pre = old[s]
                    if pre == none or b > (pre // w) * w:
                        recount = True
                    continue  # older than the window: left to the store
                else:
                    # An older bucket inside the window: its slot holds it, or a stale
                    # bucket one or more ring turns older, which it replaces.
                    fresh = ints[_TICKS, slot, row] == 0 or ints[_TS, slot, row] != b
                    if fresh:
                        pre = old[s]
                        if pre == none or b > (pre // w) * w:
                            closed += 1  # a new bucket between two forming ones: born closed
            if fresh:
                ints[_TS, slot, row] = b
                ints[_TICKS, slot, row] = 1
                ints[_FIRST_TS, slot, row] = t
                ints[_FIRST_SEQ, slot, row] = q
                ints[_LAST_TS, slot, row] = t
                ints[_LAST_SEQ, slot, row] = q
                floats[_OPEN, slot, row] = p
                floats[_HIGH, slot, row] = p
                floats[_LOW, slot, row] = p
                floats[_CLOSE, slot, row] = p
                floats[_VS, slot, row] = v
                floats[_VC, slot, row] = 0.0
                floats[_VD, slot, row] = 0.0
                continue
            ints[_TICKS, slot, row] += 1
            fts = ints[_FIRST_TS, slot, row]
            if t < fts or (t == fts and q < ints[_FIRST_SEQ, slot, row]):
                ints[_FIRST_TS, slot, row] = t
                ints[_FIRST_SEQ, slot, row] = q
                floats[_OPEN, slot, row] = p
            lts = ints[_LAST_TS, slot, row]
            if t > lts or (t == lts and q > ints[_LAST_SEQ, slot, row]):
                ints[_LAST_TS, slot, row] = t
                ints[_LAST_SEQ, slot, row] = q
                floats[_CLOSE, slot, row] = p
            if p > floats[_HIGH, slot, row]:
                floats[_HIGH, slot, row] = p
            if p < floats[_LOW, slot, row]:
                floats[_LOW, slot, row] = p
            # merge_exact_sums((vs, vc, vd), (v, 0, 0)): TwoSum into s, its error into c, and
            # the error of that into d. Needs strict IEEE arithmetic (numba's default).
            vs = floats[_VS, slot, row]
            vc = floats[_VC, slot, row]
            sum_ = vs + v
            bb = sum_ - vs
            e = (vs - (sum_ - bb)) + (v - bb)
            c = vc + e
            cc = c - vc
            g = (vc - (c - cc)) + (e - cc)
            floats[_VS, slot, row] = sum_
            floats[_VC, slot, row] = c
            floats[_VD, slot, row] = floats[_VD, slot, row] + g

    # Pass 3: late and dropped against the finest timeframe's pre- and post-batch windows.
    late = 0
    dropped = 0
    w = tf[0]
    span = slots * w
    for i in range(n):
        s = sym[i]
        pre = old[s]
        b = (ts[i] // w) * w
        if pre != none and b < pre:
            late += 1
            if b <= latest[s * ntf] - span:
                dropped += 1
    return late, dropped, closed, first_advances, recount


def _count_new_closed(
    ids: np.ndarray, ts: np.ndarray, tf: np.ndarray, latest: np.ndarray, old: np.ndarray
) -> int:
    """Distinct (row, bucket) of the batch newer than the row's pre-batch forming bucket and
    older than its post-batch one.

    Slow path in numpy (it sorts every tick's buckets): only needed when a batch's disorder is
    wider than the window, and sorting in the kernel would triple its compile time.
    """
    ntf = tf.shape[0]
    pre = old[ids]
    rows, buckets = [], []
    for j in range(ntf):
        w = tf[j]
        b = ts // w * w
        row = ids * ntf + j
        new = (pre == _NONE) | (b > pre // w * w)
        keep = new & (b < latest[row])
        rows.append(row[keep])
        buckets.append(b[keep])
    pairs = np.stack([np.concatenate(rows), np.concatenate(buckets)], axis=1)
    return int(np.unique(pairs, axis=0).shape[0])


def _warm_up() -> None:
    """Compile (or load from the on-disk cache) the kernels for the dtypes `update` passes."""
    i32, i64, f64 = np.empty(0, np.int32), np.empty(0, np.int64), np.empty(0, np.float64)
    ints = np.zeros((len(_INT_FIELDS), 1, 0), np.int64)
    floats = np.zeros((len(_FLOAT_FIELDS), 1, 0), np.float64)
    tf = np.ones(1, np.int64)
    _apply_ticks(i32, i64, i64, f64, f64, tf, 1, ints, floats, i64, i64, i64, i64)
