"""Ticks in memory: batches of numpy columns (struct of arrays) and symbol validation."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

#: The symbol grammar (docs/architecture.md#symbols) as a JSON Schema / OpenAPI pattern, where
#: `$` ends the text.
SYMBOL_REGEX = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,31}$"
#: The same grammar for Python's `re`, where `$` also matches before a final newline ("PETR4\n"
#: would pass `match`): `\Z` ends the text whether one calls `match`, `fullmatch` or `search`.
SYMBOL_PATTERN = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.-]{0,31}\Z")

TICK_COLUMNS = ("ts", "seq", "price", "volume", "bid", "ask")

#: Every reason an incoming tick can be rejected for, in the order they are checked: one
#: definition for the validator that applies them and the metrics that count them.
REJECT_REASONS: tuple[str, ...] = (
    "bad_symbol",
    "non_finite_price",
    "non_positive_price",
    "non_finite_volume",
    "negative_volume",
    "bad_timestamp",
    "future_timestamp",
)


class InvalidSymbolError(ValueError):
    """A symbol name that would break partition keys, URLs or SQL identifiers."""


def validate_symbol(symbol: str) -> str:
    """Return `symbol` unchanged if it is a legal name, else raise InvalidSymbolError."""
    if not isinstance(symbol, str) or not SYMBOL_PATTERN.fullmatch(symbol):
        raise InvalidSymbolError(
            f"invalid symbol {symbol!r}: use 1-32 characters from A-Z a-z 0-9 _ . - "
            "starting with a letter or digit (e.g. R_100, frxEURUSD, PETR4)"
        )
    return symbol


def is_valid_symbol(symbol: object) -> bool:
    return isinstance(symbol, str) and SYMBOL_PATTERN.fullmatch(symbol) is not None


@dataclass(slots=True)
class TickBatch:
    """Ticks of one or more symbols as columns.

    `sym[i]` indexes `symbols`, so a batch carries its own small symbol table;
    components map it to their own ids with `SymbolIndex.ids_for`. Missing
    bid/ask are NaN. Ticks are in arrival order, not necessarily sorted.
    """

    symbols: tuple[str, ...]
    sym: np.ndarray  # int32
    ts: np.ndarray  # int64 ns since the Unix epoch, UTC
    seq: np.ndarray  # int64, per symbol
    price: np.ndarray  # float64
    volume: np.ndarray  # float64
    bid: np.ndarray  # float64, NaN when absent
    ask: np.ndarray  # float64, NaN when absent

    def __len__(self) -> int:
        return int(self.ts.shape[0])

    @classmethod
    def empty(cls) -> TickBatch:
        return cls(
            symbols=(),
            sym=np.empty(0, np.int32),
            ts=np.empty(0, np.int64),
            seq=np.empty(0, np.int64),
            price=np.empty(0, np.float64),
            volume=np.empty(0, np.float64),
            bid=np.empty(0, np.float64),
            ask=np.empty(0, np.float64),
        )

    @classmethod
    def from_columns(
        cls,
        symbol: Sequence[str] | np.ndarray | str,
        ts: Iterable,
        seq: Iterable,
        price: Iterable,
        volume: Iterable,
        bid: Iterable | None = None,
        ask: Iterable | None = None,
    ) -> TickBatch:
        """Build a batch from per-tick columns; `symbol` may be one name for all ticks."""
        ts_a = np.asarray(ts, dtype=np.int64)
        n = ts_a.shape[0]
        if isinstance(symbol, str):
            symbols: tuple[str, ...] = (symbol,)
            sym = np.zeros(n, np.int32)
        else:
            names, inverse = np.unique(
                np.asarray(symbol, dtype=object).astype(str), return_inverse=True
            )
            symbols = tuple(str(s) for s in names)
            sym = inverse.astype(np.int32).reshape(-1)
        nan = np.full(n, np.nan)
        return cls(
            symbols=symbols,
            sym=sym,
            ts=ts_a,
            seq=np.asarray(seq, dtype=np.int64),
            price=np.asarray(price, dtype=np.float64),
            volume=np.asarray(volume, dtype=np.float64),
            bid=nan if bid is None else np.asarray(bid, dtype=np.float64),
            ask=nan.copy() if ask is None else np.asarray(ask, dtype=np.float64),
        )

    def symbol_names(self) -> np.ndarray:
        """The symbol of every tick as an object array (slow path: tests, files, SQL)."""
        return (
            np.asarray(self.symbols, dtype=object)[self.sym] if len(self) else np.empty(0, object)
        )

    def take(self, index: np.ndarray) -> TickBatch:
        """A new batch with the ticks at `index` (integer positions or a boolean mask)."""
        return TickBatch(
            symbols=self.symbols,
            sym=self.sym[index],
            ts=self.ts[index],
            seq=self.seq[index],
            price=self.price[index],
            volume=self.volume[index],
            bid=self.bid[index],
            ask=self.ask[index],
        )

    def to_frame(self):
        """A pandas DataFrame with columns symbol, ts, seq, price, volume, bid, ask."""
        import pandas as pd

        return pd.DataFrame(
            {
                "symbol": self.symbol_names(),
                "ts": self.ts,
                "seq": self.seq,
                "price": self.price,
                "volume": self.volume,
                "bid": self.bid,
                "ask": self.ask,
            }
        )

    @classmethod
    def from_frame(cls, frame) -> TickBatch:
        """Inverse of `to_frame`; bid/ask columns are optional."""
        return cls.from_columns(
            frame["symbol"].to_numpy(),
            frame["ts"].to_numpy(),
            frame["seq"].to_numpy(),
            frame["price"].to_numpy(),
            frame["volume"].to_numpy(),
            frame["bid"].to_numpy() if "bid" in frame else None,
            frame["ask"].to_numpy() if "ask" in frame else None,
        )


def concat_batches(batches: Sequence[TickBatch]) -> TickBatch:
    """One batch holding all ticks of `batches`, in order, with a merged symbol table."""
    batches = [b for b in batches if len(b)]
    if not batches:
        return TickBatch.empty()
    if len(batches) == 1:
        return batches[0]
    index = SymbolIndex()
    sym = np.concatenate([index.ids_for(b) for b in batches]).astype(np.int32)
    return TickBatch(
        symbols=tuple(index.names),
        sym=sym,
        ts=np.concatenate([b.ts for b in batches]),
        seq=np.concatenate([b.seq for b in batches]),
        price=np.concatenate([b.price for b in batches]),
        volume=np.concatenate([b.volume for b in batches]),
        bid=np.concatenate([b.bid for b in batches]),
        ask=np.concatenate([b.ask for b in batches]),
    )


class SymbolIndex:
    """Interns symbol names to dense ids 0..n-1 so per-symbol state can live in arrays."""

    __slots__ = ("_ids", "_tables", "names")

    #: Symbol tables remembered by `ids_for`: feeds reuse a handful of tables, and mapping
    #: a 150-name table name by name on every small batch costs more than the batch itself.
    MAX_TABLES = 64

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.names: list[str] = []
        self._ids: dict[str, int] = {}
        self._tables: dict[tuple[str, ...], np.ndarray] = {}
        for name in names:
            self.id_of(name)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self._ids

    def id_of(self, name: str) -> int:
        """The id of `name`, assigning the next free one on first sight."""
        ident = self._ids.get(name)
        if ident is None:
            ident = len(self.names)
            self._ids[name] = ident
            self.names.append(name)
        return ident

    def get(self, name: str) -> int | None:
        return self._ids.get(name)

    def ids_for(self, batch: TickBatch) -> np.ndarray:
        """This index's id of every tick in `batch` (int32), interning new names."""
        if not len(batch):
            return np.empty(0, np.int32)
        table = self._tables.get(batch.symbols)
        if table is None:
            table = np.fromiter(
                (self.id_of(s) for s in batch.symbols), np.int32, len(batch.symbols)
            )
            if len(self._tables) >= self.MAX_TABLES:
                self._tables.clear()
            self._tables[batch.symbols] = table
        return table[batch.sym]
