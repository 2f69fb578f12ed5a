"""Deterministic tick simulator: tick k of symbol s under seed S is a pure function of (S, s, k).

Generator, price model and timestamps: docs/simulator.md.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass

import numpy as np

from hft_pipeline.ingest.feeds.base import ResumePoint
from hft_pipeline.market.ticks import TickBatch, validate_symbol

log = logging.getLogger(__name__)

DEFAULT_SYMBOLS: tuple[str, ...] = ("PETR4", "VALE3", "ITUB4", "BBDC4", "ABEV3")

#: Ticks per block of the bridge construction (a power of two so i / BLOCK is exact).
BLOCK = 4096
_SQRT_BLOCK = 64.0
_COARSE_CHUNK = 1 << 20

_MASK = (1 << 64) - 1
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_TWO_POW_32 = 4294967296.0

# Independent random streams per symbol.
_STREAM_SHOCK = 1
_STREAM_COARSE = 2
_STREAM_AUX = 3

_UNANCHORED = np.iinfo(np.int64).min


@dataclass(frozen=True, slots=True)
class Instrument:
    """How a symbol trades: start price (in ticks), tick grid, volatility per tick, lot size."""

    p0_ticks: float
    inv_tick: int  # 1 / tick size, an integer so price = n / inv_tick is an exact decimal
    sigma: float  # standard deviation of log-price per tick
    lot: float  # volume unit
    lots_mean: float  # mean number of lots per trade (geometric); 0 means volume == lot

    @property
    def tick(self) -> float:
        return 1.0 / self.inv_tick

    @property
    def p0(self) -> float:
        return self.p0_ticks / self.inv_tick


_B3_LEVELS = {"PETR4": 38.00, "VALE3": 62.00, "ITUB4": 33.00, "BBDC4": 14.00, "ABEV3": 13.00}
_FX_LEVELS = {
    "frxEURUSD": 1.08,
    "frxGBPUSD": 1.27,
    "frxUSDJPY": 150.0,
    "frxAUDUSD": 0.66,
    "frxUSDCHF": 0.88,
    "frxUSDCAD": 1.36,
}
# Deriv's volatility indices quote with these decimals; R_N has N % annualised volatility at
# one tick per second.
_DERIV_DECIMALS = {"R_10": 3, "R_25": 3, "R_50": 4, "R_75": 4, "R_100": 2}
_SECONDS_PER_YEAR = 365 * 86400


def symbol_hash(symbol: str) -> int:
    """A stable 64-bit hash of `symbol` (blake2b; unlike hash() it is the same in every process)."""
    return int.from_bytes(hashlib.blake2b(symbol.encode(), digest_size=8).digest(), "little")


def instrument_for(symbol: str) -> Instrument:
    """The price level, tick size, volatility and lot size the simulator uses for `symbol`."""
    h = symbol_hash(symbol)
    frac = (h >> 11) / float(1 << 53)  # deterministic uniform in [0, 1) for unknown names
    if symbol.startswith("frx"):
        level = _FX_LEVELS.get(symbol, 0.5 + 1.5 * frac)
        inv_tick = 1000 if "JPY" in symbol else 100_000
        return Instrument(round(level * inv_tick), inv_tick, 1.5e-5, 1000.0, 20.0)
    if symbol in _DERIV_DECIMALS or symbol.startswith(("R_", "1HZ")):
        decimals = _DERIV_DECIMALS.get(symbol, 2)
        digits = "".join(c for c in symbol.removeprefix("1HZ") if c.isdigit())
        vol = (int(digits) if digits else 100) / 100.0
        level = 500.0 + 9500.0 * frac
        inv_tick = 10**decimals
        return Instrument(
            round(level * inv_tick), inv_tick, vol / math.sqrt(_SECONDS_PER_YEAR), 1.0, 0.0
        )
    # B3 stocks and anything else: BRL-like prices with a 0.01 tick, lots of 100 shares.
    level = _B3_LEVELS.get(symbol, 5.0 + 95.0 * frac)
    return Instrument(round(level * 100), 100, 5e-5, 100.0, 4.0)


def interval_ns(rate: float, n_symbols: int) -> int:
    """Nanoseconds between two ticks of one symbol when `n_symbols` share `rate` ticks/s."""
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number of ticks per second, got {rate!r}")
    if n_symbols < 1:
        raise ValueError(f"n_symbols must be >= 1, got {n_symbols!r}")
    return max(1, round(n_symbols * 1e9 / rate))


def _splitmix_scalar(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK
    return x ^ (x >> 31)


def stream_key(seed: int, symbol: str, stream: int) -> np.uint64:
    """The 64-bit key of one random stream of `symbol` under `seed`."""
    x = _splitmix_scalar((seed & _MASK) ^ _splitmix_scalar(symbol_hash(symbol)))
    return np.uint64(_splitmix_scalar(x ^ _splitmix_scalar(stream * 0x632BE59BD9B4E019)))


def _hash(key: np.ndarray | np.uint64, k: np.ndarray) -> np.ndarray:
    """64 random bits for counter `k` of stream `key` (SplitMix64 finaliser), elementwise."""
    x = key + k.astype(np.uint64) * _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def _normal(key: np.ndarray | np.uint64, k: np.ndarray) -> np.ndarray:
    """A standard normal per counter (Box-Muller on the two 32-bit halves of one hash)."""
    h = _hash(key, k)
    u1 = ((h >> np.uint64(32)).astype(np.float64) + 1.0) / _TWO_POW_32  # (0, 1]: log is finite
    u2 = (h & np.uint64(0xFFFFFFFF)).astype(np.float64) / _TWO_POW_32
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def _coarse_endpoint(coarse_key: np.uint64, block: int) -> float:
    """E_block = W at tick block * BLOCK: the coarse walk summed in order, in bounded chunks."""
    total = 0.0
    for lo in range(0, block, _COARSE_CHUNK):
        steps = _SQRT_BLOCK * _normal(coarse_key, np.arange(lo, min(block, lo + _COARSE_CHUNK)))
        # Folding the carry into the first step keeps the additions in the same order as one
        # np.cumsum over everything, so the result is bit-identical for any chunking.
        steps[0] += total
        total = float(np.cumsum(steps)[-1])
    return total


def _coarse_step(coarse_key: np.ndarray | np.uint64, block: np.ndarray) -> np.ndarray:
    """E_{b+1} - E_b for each block b."""
    return _SQRT_BLOCK * _normal(coarse_key, block)


def _block_walk(
    shock_key: np.ndarray, block: np.ndarray, e_start: np.ndarray, e_end: np.ndarray
) -> np.ndarray:
    """W over whole blocks, one row per block: a Brownian bridge from e_start to e_end.

    Every caller computes a block through this function as a whole row, so the same block
    yields the same bits whichever range or batch asked for it.
    """
    k = block[:, None] * BLOCK + np.arange(BLOCK, dtype=np.int64)[None, :]
    z = _normal(shock_key[:, None], k)
    partial = np.cumsum(z, axis=1)
    s = np.empty_like(partial)
    s[:, 0] = 0.0
    s[:, 1:] = partial[:, :-1]  # S_i = z_0 + ... + z_{i-1}
    s_total = partial[:, -1:]
    frac = np.arange(BLOCK, dtype=np.float64)[None, :] / BLOCK
    return e_start[:, None] + (s - frac * s_total) + frac * (e_end - e_start)[:, None]


def _price_ticks(walk: np.ndarray, p0_ticks: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Price in whole ticks (>= 1) from the walk, elementwise (rows broadcast over columns)."""
    n = np.rint(p0_ticks * np.exp(sigma * walk))
    return np.maximum(n, 1.0).astype(np.int64)


@dataclass(frozen=True, slots=True)
class _Aux:
    jitter: np.ndarray  # int64 ns
    volume: np.ndarray  # float64
    bid_ticks: np.ndarray  # int64, subtract from price ticks
    ask_ticks: np.ndarray  # int64, add to bid ticks


def _aux(
    aux_key: np.ndarray | np.uint64,
    k: np.ndarray,
    step_ns: int,
    lot: np.ndarray | float,
    lots_mean: np.ndarray | float,
) -> _Aux:
    """Timestamp jitter, volume and spread for each tick from one 64-bit hash."""
    h = _hash(aux_key, k)
    half = np.int64(step_ns // 2)
    # Bits 0-31: jitter in [0, interval/2), so ts_{k+1} - ts_k >= 1 ns.
    jitter = ((h & np.uint64(0xFFFFFFFF)) * np.uint64(half) >> np.uint64(32)).astype(np.int64)
    # Bits 32-61: geometric number of lots (mean lots_mean + 1).
    u = ((h >> np.uint64(32)) & np.uint64(0x3FFFFFFF)).astype(np.float64)
    u = (u + 1.0) / float(1 << 30)
    lots = 1.0 + np.floor(-np.log(u) * lots_mean)
    # Bits 62-63: the trade is at the bid or one tick above it; the spread is one or two ticks.
    bid_below = ((h >> np.uint64(62)) & np.uint64(1)).astype(np.int64)
    spread = 1 + ((h >> np.uint64(63)) & np.uint64(1)).astype(np.int64)
    return _Aux(jitter, lots * lot, bid_below, spread)


def _faults(k: np.ndarray, price: np.ndarray, volume: np.ndarray, bad_every: int) -> None:
    """In place: every `bad_every`-th tick is malformed (alternately NaN price, negative volume)."""
    if bad_every <= 0:
        return
    bad = (k + 1) % bad_every == 0
    nth = (k + 1) // bad_every
    price[bad & (nth % 2 == 1)] = np.nan
    volume[bad & (nth % 2 == 0)] = -volume[bad & (nth % 2 == 0)]


def generate(
    seed: int,
    symbol: str,
    k_start: int,
    k_end: int,
    rate: float,
    n_symbols: int,
    t0: int,
    *,
    bad_every: int = 0,
) -> TickBatch:
    """Ticks k_start <= k < k_end of `symbol`: exactly what a simulator with these parameters emits.

    Memory is proportional to k_end - k_start (plus up to two blocks); call it in chunks for
    long ranges: any chunking gives identical ticks.
    """
    validate_symbol(symbol)
    if k_start < 0 or k_end < k_start:
        raise ValueError(f"need 0 <= k_start <= k_end, got {k_start}, {k_end}")
    step = interval_ns(rate, n_symbols)
    if k_end == k_start:
        batch = TickBatch.empty()
        batch.symbols = (symbol,)
        return batch
    inst = instrument_for(symbol)
    shock_key = stream_key(seed, symbol, _STREAM_SHOCK)
    coarse_key = stream_key(seed, symbol, _STREAM_COARSE)
    aux_key = stream_key(seed, symbol, _STREAM_AUX)

    b0, b1 = k_start // BLOCK, (k_end - 1) // BLOCK
    blocks = np.arange(b0, b1 + 1, dtype=np.int64)
    e_first = _coarse_endpoint(coarse_key, b0)
    steps = _coarse_step(coarse_key, blocks)
    steps[0] += e_first
    ends = np.cumsum(steps)  # E_{b0+1} .. E_{b1+1}, same addition order as _coarse_endpoint
    starts = np.empty_like(ends)
    starts[0] = e_first
    starts[1:] = ends[:-1]
    walk = _block_walk(np.full(blocks.size, shock_key), blocks, starts, ends)
    ticks_all = _price_ticks(walk, np.float64(inst.p0_ticks), np.float64(inst.sigma)).reshape(-1)
    k = np.arange(k_start, k_end, dtype=np.int64)
    price_ticks = ticks_all[k - b0 * BLOCK]
    return _assemble(
        (symbol,),
        np.zeros(k.size, np.int32),
        k,
        t0 + k * step,
        price_ticks,
        _aux(aux_key, k, step, inst.lot, inst.lots_mean),
        np.float64(inst.inv_tick),
        bad_every,
    )


def _assemble(
    symbols: tuple[str, ...],
    sym: np.ndarray,
    k: np.ndarray,
    base_ts: np.ndarray,
    price_ticks: np.ndarray,
    aux: _Aux,
    inv_tick: np.ndarray | np.float64,
    bad_every: int,
) -> TickBatch:
    bid_ticks = np.maximum(price_ticks - aux.bid_ticks, 1)
    ask_ticks = bid_ticks + aux.ask_ticks
    # Dividing the integer tick count by 1/tick gives the double nearest to the decimal price
    # (38.01, not 38.010000000000005), like a price parsed from an exchange message.
    price = price_ticks / inv_tick
    volume = aux.volume
    _faults(k, price, volume, bad_every)
    return TickBatch(
        symbols=symbols,
        sym=sym,
        ts=base_ts + aux.jitter,
        seq=k,
        price=price,
        volume=volume,
        bid=bid_ticks / inv_tick,
        ask=ask_ticks / inv_tick,
    )


class SimulatorFeed:
    """A Feed that paces the deterministic simulator against the wall clock.

    `rate` is the total ticks/s of the `n_symbols` initial symbols (default: how many are
    subscribed at construction); the per-symbol interval stays fixed for the feed's lifetime,
    so symbols subscribed later add their own ticks on top. Each symbol has its own anchor t0:
    `now` when it first starts at k = 0, or, after `resume_from`, the t0 that puts its last
    known tick where the store has it; the ticks missed during downtime are then emitted at
    full speed (deterministic backlog). Resume points given after the first poll (a symbol
    subscribed at run time) and symbols unsubscribed and subscribed again continue their
    sequence from `now` instead, with no backlog for the time they were off.

    `history_s` > 0: a symbol starting at k = 0 in the first poll is anchored that far in the
    past instead of at `now`, so a fresh system begins with hours of (deterministic) history,
    emitted at full speed like a restart's backlog. Symbols subscribed later start at `now`.
    """

    def __init__(
        self,
        symbols: Iterable[str] = (),
        *,
        seed: int = 42,
        rate: float = 1000.0,
        include_defaults: bool = True,
        n_symbols: int | None = None,
        emit_interval_s: float = 0.002,
        max_batch: int = 100_000,
        bad_every: int = 0,
        clock: Callable[[], int] = time.time_ns,
        name: str = "simulator",
        history_s: float = 0.0,
    ) -> None:
        initial = list(dict.fromkeys([*(DEFAULT_SYMBOLS if include_defaults else ()), *symbols]))
        for s in initial:
            validate_symbol(s)
        self.name = name
        self.seed = int(seed)
        self.rate = float(rate)
        self.n_symbols = int(n_symbols or max(1, len(initial)))
        self.interval_ns = interval_ns(self.rate, self.n_symbols)
        self.emit_interval_s = float(emit_interval_s)
        self.max_batch = int(max_batch)
        self.bad_every = int(bad_every)
        if not 0 <= history_s < 2**62 / 1e9:
            raise ValueError(f"history_s must be >= 0, got {history_s}")
        self.history_ns = int(history_s * 1e9)
        self._clock = clock
        self._closed = False
        self._polled = False  # the session has begun: later resume points mean no backlog
        self._live_resume: set[str] = set()
        self._resume: dict[str, ResumePoint] = {}
        self._row: dict[str, int] = {}
        self._names: list[str] = []
        # Per-symbol state lives in arrays indexed by row, allocated with spare capacity so
        # subscribing one symbol at a time stays cheap; rows past len(self._names) are unused.
        self._keys = np.zeros((0, 3), np.uint64)  # shock, coarse, aux
        self._p0 = np.zeros(0)
        self._sigma = np.zeros(0)
        self._inv_tick = np.ones(0)
        self._lot = np.zeros(0)
        self._lots_mean = np.zeros(0)
        self._t0 = np.zeros(0, np.int64)
        self._next_k = np.zeros(0, np.int64)
        self._last_ts = np.zeros(0, np.int64)
        self._active = np.zeros(0, bool)
        self._started = np.zeros(0, bool)  # emitted or anchored in this session
        self._block = np.zeros(0, np.int64)  # first cached block, -1 for none
        self._ends = np.zeros((0, 3))  # E_block, E_block+1, E_block+2
        self._cache = np.zeros((0, 2 * BLOCK), np.int64)  # price ticks of two blocks
        self._grow(max(8, len(initial)))
        for s in initial:
            self.subscribe(s)

    # -- Feed interface -------------------------------------------------------------------------

    @property
    def symbols(self) -> list[str]:
        """The symbols currently produced."""
        return [s for s, r in self._row.items() if self._active[r]]

    def subscribe(self, symbol: str) -> None:
        """Start producing `symbol` (idempotent); it starts after its resume point, or at k = 0."""
        validate_symbol(symbol)
        row = self._row.get(symbol)
        if row is None:
            row = self._add_row(symbol)
        if not self._active[row]:
            self._active[row] = True
            self._t0[row] = _UNANCHORED  # anchored at the next poll, against that poll's clock

    def unsubscribe(self, symbol: str) -> None:
        """Stop producing `symbol` (idempotent; unknown names are ignored)."""
        row = self._row.get(symbol)
        if row is not None:
            self._active[row] = False

    def resume_from(self, last: dict[str, ResumePoint]) -> None:
        """Continue each symbol at seq + 1 with timestamps anchored so its last tick keeps its ts."""
        self._resume.update(last)
        if self._polled:
            self._live_resume.update(last)
        for symbol in last:
            row = self._row.get(symbol)
            if row is not None and not self._started[row]:
                self._t0[row] = _UNANCHORED

    async def close(self) -> None:
        """Stop the `batches()` iterator at its next step."""
        self._closed = True

    async def batches(self) -> AsyncIterator[TickBatch]:
        """Yield every tick when the wall clock reaches its ts, in batches every ~emit_interval_s."""
        while not self._closed:
            batch, backlog = self.poll(self._clock())
            if len(batch):
                yield batch
            if self._closed:
                break
            if backlog:
                await asyncio.sleep(0)  # catching up: let the consumer run, then go on at once
                continue
            due = self._next_due_ns()
            wait = 0.05 if due is None else (due - self._clock()) / 1e9
            # At least one emit interval so ticks group into batches; at most 50 ms so a new
            # subscription or close() is noticed promptly.
            await asyncio.sleep(min(0.05, max(self.emit_interval_s, wait)))

    # -- Deterministic core ---------------------------------------------------------------------

    def poll(self, now: int) -> tuple[TickBatch, bool]:
        """All ticks due at wall time `now` (ns) not emitted yet, and whether a backlog remains.

        Per symbol at most min(BLOCK, max_batch / active symbols) ticks are returned per call.
        """
        self._anchor(now)
        self._polled = True
        act = np.flatnonzero(self._active & (self._t0 <= now))
        if act.size == 0:
            return TickBatch.empty(), False
        upper = (now - self._t0[act]) // self.interval_ns  # last k whose un-jittered ts <= now
        cap = max(1, min(BLOCK, self.max_batch // act.size))
        want = upper - self._next_k[act] + 1
        count = np.clip(want, 0, cap)
        backlog = bool((want > cap).any())
        keep = count > 0
        rows, count = act[keep], count[keep]
        if rows.size == 0:
            return TickBatch.empty(), backlog
        self._ensure_blocks(rows)

        r = np.repeat(rows, count)
        starts = np.cumsum(count) - count
        offset = np.arange(r.size, dtype=np.int64) - np.repeat(starts, count)
        k = self._next_k[r] + offset
        aux = _aux(self._keys[r, 2], k, self.interval_ns, self._lot[r], self._lots_mean[r])
        base_ts = self._t0[r] + k * self.interval_ns
        # Jitter can push the last candidate of a symbol past `now`; ts increases per symbol,
        # so the due ticks of each symbol are a prefix of its candidates.
        due = base_ts + aux.jitter <= now
        n_due = np.add.reduceat(due.astype(np.int64), starts)
        has = n_due > 0
        self._last_ts[rows[has]] = (base_ts + aux.jitter)[(starts + n_due - 1)[has]]
        self._next_k[rows] += n_due

        price_ticks = self._cache[r, k - self._block[r] * BLOCK]
        present = np.zeros(self._t0.shape[0], bool)
        present[rows[has]] = True
        local = np.cumsum(present) - 1
        batch = _assemble(
            tuple([self._names[i] for i in np.flatnonzero(present).tolist()]),
            local[r].astype(np.int32),
            k,
            base_ts,
            price_ticks,
            aux,
            self._inv_tick[r],
            self.bad_every,
        )
        # Time order across symbols; any sort keeps each symbol's order (its ts strictly increase).
        index = np.flatnonzero(due)
        index = index[np.argsort(batch.ts[index])]
        return batch.take(index), backlog

    def expected(self, symbol: str, k_start: int, k_end: int) -> TickBatch:
        """What this feed emits for ticks k_start <= k < k_end of `symbol` under its current anchor."""
        row = self._row[symbol]
        if self._t0[row] == _UNANCHORED:
            raise ValueError(f"{symbol} has no anchor yet: poll or iterate the feed first")
        return generate(
            self.seed,
            symbol,
            k_start,
            k_end,
            self.rate,
            self.n_symbols,
            int(self._t0[row]),
            bad_every=self.bad_every,
        )

    def anchor(self, symbol: str) -> int | None:
        """The t0 (ns) of `symbol`'s current stream, None until it is anchored."""
        t0 = int(self._t0[self._row[symbol]])
        return None if t0 == _UNANCHORED else t0

    def next_seq(self, symbol: str) -> int:
        """The seq of the next tick `symbol` will emit."""
        return int(self._next_k[self._row[symbol]])

    # -- internals ------------------------------------------------------------------------------

    _ROW_ARRAYS = (
        ("_keys", 0),
        ("_p0", 0.0),
        ("_sigma", 0.0),
        ("_inv_tick", 1.0),
        ("_lot", 0.0),
        ("_lots_mean", 0.0),
        ("_t0", _UNANCHORED),
        ("_next_k", 0),
        ("_last_ts", _UNANCHORED),
        ("_active", False),
        ("_started", False),
        ("_block", -1),
        ("_ends", 0.0),
        ("_cache", 0),
    )

    def _grow(self, capacity: int) -> None:
        for attr, fill in self._ROW_ARRAYS:
            old = getattr(self, attr)
            new = np.full((capacity, *old.shape[1:]), fill, dtype=old.dtype)
            new[: old.shape[0]] = old
            setattr(self, attr, new)

    def _add_row(self, symbol: str) -> int:
        row = len(self._names)
        if row == self._t0.shape[0]:
            self._grow(2 * row)
        inst = instrument_for(symbol)
        self._row[symbol] = row
        self._names.append(symbol)
        for i, stream in enumerate((_STREAM_SHOCK, _STREAM_COARSE, _STREAM_AUX)):
            self._keys[row, i] = stream_key(self.seed, symbol, stream)
        self._p0[row] = inst.p0_ticks
        self._sigma[row] = inst.sigma
        self._inv_tick[row] = float(inst.inv_tick)
        self._lot[row] = inst.lot
        self._lots_mean[row] = inst.lots_mean
        return row

    def _anchor(self, now: int) -> None:
        """Give every newly active symbol its t0 (see the class docstring)."""
        for row in np.flatnonzero(self._active & (self._t0 == _UNANCHORED)):
            symbol = self._names[row]
            point = self._resume.get(symbol)
            if self._started[row]:
                # Re-subscribed in this session: go on from now, after the last emitted tick.
                start = max(now, int(self._last_ts[row]) + 1)
                self._t0[row] = start - int(self._next_k[row]) * self.interval_ns
            elif point is not None and symbol in self._live_resume:
                # Subscribed while running (say, again after a restart): no backlog for the
                # time it was unsubscribed; go on from now after its last known tick.
                start = max(now, int(point.ts) + 1)
                self._t0[row] = start - (int(point.seq) + 1) * self.interval_ns
                self._next_k[row] = int(point.seq) + 1
                self._last_ts[row] = int(point.ts)
            elif point is not None:
                k_last = int(point.seq)
                jitter = _aux(
                    self._keys[row : row + 1, 2],
                    np.array([k_last]),
                    self.interval_ns,
                    self._lot[row],
                    self._lots_mean[row],
                ).jitter[0]
                self._t0[row] = int(point.ts) - k_last * self.interval_ns - int(jitter)
                self._next_k[row] = k_last + 1
                self._last_ts[row] = int(point.ts)
                self._check_resume_price(symbol, point)
            else:
                # History only for the symbols of the first poll: one subscribed while running
                # starts now, like any new instrument.
                self._t0[row] = now if self._polled else now - self.history_ns
                self._next_k[row] = 0
            self._started[row] = True

    def _check_resume_price(self, symbol: str, point: ResumePoint) -> None:
        if point.seq < 0:
            return
        tick = generate(self.seed, symbol, point.seq, point.seq + 1, self.rate, self.n_symbols, 0)
        if not math.isclose(float(tick.price[0]), point.price, rel_tol=1e-12):
            log.warning(
                "resuming %s at seq %d: stored price %s differs from the simulator's %s "
                "(different seed?); continuing with the simulator's stream",
                symbol,
                point.seq,
                point.price,
                float(tick.price[0]),
            )

    def _ensure_blocks(self, rows: np.ndarray) -> None:
        """Make the price cache of `rows` hold the block of next_k and the one after it."""
        need = self._next_k[rows] // BLOCK
        current = self._block[rows]
        shift = rows[(current >= 0) & (need == current + 1)]
        if shift.size:
            self._cache[shift, :BLOCK] = self._cache[shift, BLOCK:]
            self._ends[shift, :2] = self._ends[shift, 1:]
            self._block[shift] += 1
            nxt = self._block[shift] + 1
            self._ends[shift, 2] = self._ends[shift, 1] + _coarse_step(self._keys[shift, 1], nxt)
            self._cache[shift, BLOCK:] = self._walk_ticks(shift, nxt, 1)
        jump = rows[(need != current) & ~((current >= 0) & (need == current + 1))]
        if jump.size:
            need = self._next_k[jump] // BLOCK
            # Resuming far into a stream: O(k / BLOCK) per symbol, once per (re)start.
            e0 = np.array(
                [
                    _coarse_endpoint(self._keys[r, 1], int(b))
                    for r, b in zip(jump, need, strict=True)
                ]
            )
            e1 = e0 + _coarse_step(self._keys[jump, 1], need)
            e2 = e1 + _coarse_step(self._keys[jump, 1], need + 1)
            self._block[jump] = need
            self._ends[jump] = np.stack([e0, e1, e2], axis=1)
            self._cache[jump, :BLOCK] = self._walk_ticks(jump, need, 0)
            self._cache[jump, BLOCK:] = self._walk_ticks(jump, need + 1, 1)

    def _walk_ticks(self, rows: np.ndarray, blocks: np.ndarray, slot: int) -> np.ndarray:
        walk = _block_walk(
            self._keys[rows, 0], blocks, self._ends[rows, slot], self._ends[rows, slot + 1]
        )
        return _price_ticks(walk, self._p0[rows, None], self._sigma[rows, None])

    def _next_due_ns(self) -> int | None:
        """The earliest ts among the next ticks of active, anchored symbols."""
        act = np.flatnonzero(self._active & (self._t0 != _UNANCHORED))
        if act.size == 0:
            return None
        k = self._next_k[act]
        jitter = _aux(self._keys[act, 2], k, self.interval_ns, 1.0, 0.0).jitter
        return int((self._t0[act] + k * self.interval_ns + jitter).min())
