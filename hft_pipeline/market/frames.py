"""Candles frame converters: per-symbol frames, long frames and wide (time x symbol) fields.

The shapes, and why nothing is forward filled: docs/market.md#frames.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

OHLCV: tuple[str, ...] = ("open", "high", "low", "close", "volume")

Wide = dict[str, pd.DataFrame]


def split_long(long: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per-symbol candles frames from a long frame with a `symbol` column (index or column `ts`)."""
    if "symbol" not in long.columns:
        raise ValueError("a long candles frame needs a 'symbol' column")
    frame = long if long.index.name == "ts" else long.set_index("ts")
    return {
        str(sym): part.drop(columns="symbol").sort_index()
        for sym, part in frame.groupby("symbol", sort=True)
    }


def to_wide(
    frames: Mapping[str, pd.DataFrame] | pd.DataFrame, fields: tuple[str, ...] = OHLCV
) -> Wide:
    """`{field: DataFrame[ts x symbol]}` on the union of timestamps; absent bars are NaN."""
    if isinstance(frames, pd.DataFrame):
        frames = split_long(frames)
    if not frames:
        raise ValueError("no candles: pass at least one symbol")
    symbols = list(frames)
    index = frames[symbols[0]].index
    for sym in symbols[1:]:
        if not frames[sym].index.equals(index):
            index = index.union(frames[sym].index)
    index = index.rename("ts")
    columns = pd.Index(symbols, name="symbol")
    wide: Wide = {}
    for field in fields:
        data = np.full((len(index), len(symbols)), np.nan)
        for j, sym in enumerate(symbols):
            frame = frames[sym]
            if field not in frame.columns:
                raise ValueError(f"candles for {sym!r} lack column {field!r}")
            col = frame[field].to_numpy(dtype=np.float64)
            if frame.index.equals(index):
                data[:, j] = col
            else:
                data[index.get_indexer(frame.index), j] = col
        wide[field] = pd.DataFrame(data, index=index, columns=columns)
    return wide


def from_wide(wide: Wide) -> dict[str, pd.DataFrame]:
    """Per-symbol candles frames back from the wide form, dropping the NaN (absent) bars."""
    close = wide["close"]
    out: dict[str, pd.DataFrame] = {}
    for sym in close.columns:
        frame = pd.DataFrame({field: wide[field][sym] for field in wide})
        out[str(sym)] = frame[frame["close"].notna()]
    return out


__all__ = ["OHLCV", "Wide", "from_wide", "split_long", "to_wide"]
