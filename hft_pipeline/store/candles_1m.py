"""Stored one-minute candles (docs/candles.md): a batch's partial candles, the upsert, the reads.

`write_ticks` upserts the 1m partial candles of every batch in the ticks' transaction, so the
candles_1m table always equals the 1m candles of the stored ticks; 5m/15m/1h candles are rollups
of its rows (exact: their buckets are unions of whole minutes).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hft_pipeline.market.candles import PartialCandles, exact_volume, partial_candles, rollup
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.market.timeframes import TIMEFRAMES

MINUTE_NS = TIMEFRAMES["1m"]

#: Columns of candles_1m in the order `upsert_columns` gives them.
COLUMNS = (
    "symbol_id", "ts_ns", "open", "high", "low", "close", "volume_s", "volume_c", "volume_d",
    "ticks", "first_ts_ns", "first_seq", "last_ts_ns", "last_seq",
)  # fmt: skip

#: What the candle reads select, in `READ_DTYPE` order.
READ_COLUMNS = "ts_ns, open, high, low, close, volume_s, volume_c, volume_d, ticks"
READ_DTYPE = np.dtype(
    [
        ("ts", "i8"),
        ("open", "f8"),
        ("high", "f8"),
        ("low", "f8"),
        ("close", "f8"),
        ("vs", "f8"),
        ("vc", "f8"),
        ("vd", "f8"),
        ("ticks", "i8"),
    ]
)
_FRAME_COLUMNS = ("ts", "open", "high", "low", "close", "volume", "ticks")


def batch_minutes(batch: TickBatch) -> PartialCandles:
    """The 1m partial candles of `batch`, per (index into batch.symbols, minute), sorted."""
    return partial_candles(batch.ts, batch.seq, batch.price, batch.volume, MINUTE_NS, batch.sym)


_PART_FIELDS = (
    "ts", "open", "high", "low", "close", "vs", "vc", "vd", "ticks",
    "first_ts", "first_seq", "last_ts", "last_seq",
)  # fmt: skip


def upsert_columns(parts: PartialCandles, symbol_ids: np.ndarray) -> list[np.ndarray]:
    """The columns (COLUMNS order) of `parts`, whose group indexes `symbol_ids`."""
    return [symbol_ids[parts.group], *(getattr(parts, f) for f in _PART_FIELDS)]


def _two_sum_error(a: str, b: str) -> str:
    """SQL for the rounding error of a + b (Knuth's TwoSum; IEEE doubles in both databases)."""
    s = f"({a} + {b})"
    bb = f"({s} - {a})"
    return f"(({a} - ({s} - {bb})) + ({b} - {bb}))"


def merge_assignments(greatest: str, least: str) -> str:
    """The DO UPDATE SET list merging an `excluded` partial candle into the stored row `o`
    (`insert into candles_1m as o`: the short alias keeps the PostgreSQL statement under
    psycopg's 4 KiB limit for cached query parsing, which costs ~2.6 ms per batch without).

    Open/close come from the side whose first/last (ts, seq) is earlier/later; volume is merged
    like `market.candles.merge_exact_sums`, term for term, so a row equals the candle of all its
    ticks whatever batches and order they came in. `greatest`/`least`: the dialect's 2-argument
    max/min. Every expression reads the row as it was before the update (SQL semantics).
    """
    old, new = "o.", "excluded."
    earlier = f"({new}first_ts_ns, {new}first_seq) < ({old}first_ts_ns, {old}first_seq)"
    later = f"({new}last_ts_ns, {new}last_seq) > ({old}last_ts_ns, {old}last_seq)"
    s1, c1, d1 = (f"{old}volume_{x}" for x in "scd")
    s2, c2, d2 = (f"{new}volume_{x}" for x in "scd")
    e = _two_sum_error(s1, s2)
    c0 = f"({c1} + {c2})"
    f = _two_sum_error(c1, c2)
    g = _two_sum_error(c0, e)
    sets = {
        **{c: f"case when {earlier} then {new}{c} else {old}{c} end" for c in ("open", "first_ts_ns", "first_seq")},
        **{c: f"case when {later} then {new}{c} else {old}{c} end" for c in ("close", "last_ts_ns", "last_seq")},
        "high": f"{greatest}({old}high, {new}high)",
        "low": f"{least}({old}low, {new}low)",
        "ticks": f"{old}ticks + {new}ticks",
        "volume_s": f"{s1} + {s2}",
        "volume_c": f"{c0} + {e}",
        "volume_d": f"{d1} + {d2} + {f} + {g}",
    }  # fmt: skip
    return ", ".join(f"{column} = {value}" for column, value in sets.items())


def minute_rows_limit(tf_ns: int, limit: int | None) -> int | None:
    """How many 1m rows to read for `limit` candles of `tf_ns` (a bucket holds at most tf/1m)."""
    return None if limit is None else limit * (tf_ns // MINUTE_NS)


def check_timeframe(tf_ns: int) -> None:
    if tf_ns < MINUTE_NS or tf_ns % MINUTE_NS:
        raise ValueError(
            "stored minute candles serve 1m and coarser timeframes only (multiples of 1m); "
            "use TickStore.candles for finer ones"
        )


def candles_from_minutes(
    rows: np.ndarray, tf_ns: int, limit: int | None, descending: bool
) -> pd.DataFrame:
    """Candles of `tf_ns` from 1m rows (READ_DTYPE, read in `descending` order), as
    `TickStore.candles` returns them.

    Rows read with `minute_rows_limit`: only the bucket at the far end of what was read can be
    incomplete, and it is never among the `limit` kept (a bucket has at most tf/1m rows).
    """
    if descending:
        rows = rows[::-1]
    n = len(rows)
    if tf_ns == MINUTE_NS:
        ts, ticks = rows["ts"], rows["ticks"]
        prices = {f: rows[f] for f in ("open", "high", "low", "close")}
        volume = exact_volume(rows["vs"], rows["vc"], rows["vd"]) if n else np.empty(0)
    else:
        zeros = np.zeros(n, np.int64)
        parts = rollup(
            PartialCandles(
                zeros, rows["ts"], rows["open"], rows["high"], rows["low"], rows["close"],
                rows["vs"], rows["vc"], rows["vd"], rows["ticks"], zeros, zeros, zeros, zeros,
            ),
            tf_ns,
        )  # fmt: skip
        ts, ticks = parts.ts, parts.ticks
        prices = {f: getattr(parts, f) for f in ("open", "high", "low", "close")}
        volume = parts.volume if len(parts) else np.empty(0)
    columns = {"ts": ts, **prices, "volume": volume, "ticks": ticks}
    frame = pd.DataFrame(
        {
            c: np.ascontiguousarray(v, dtype=np.int64 if c in ("ts", "ticks") else np.float64)
            for c, v in columns.items()
        },
        columns=list(_FRAME_COLUMNS),
    )
    if descending:
        frame = frame.iloc[::-1]
        return (frame if limit is None else frame.iloc[:limit]).reset_index(drop=True)
    return frame if limit is None else frame.iloc[:limit].reset_index(drop=True)
