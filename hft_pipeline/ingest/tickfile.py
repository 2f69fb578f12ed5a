"""Tick files (CSV, gzipped CSV, Parquet): a chunked reader that checks every row.

Columns: symbol, ts, price, volume, and optionally bid, ask, seq. `ts` is int64 nanoseconds
since the Unix epoch, or ISO-8601 text / a datetime column (converted to UTC; naive means UTC).
A bad row is rejected and counted by reason (or, strict, refuses the file naming its row and
column). `derive_seqs` is the import's seq rule for files without seq; the replay feed numbers
them in file order instead (`read_tick_file`). The rules: docs/import.md.
"""

from __future__ import annotations

import gzip
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hft_pipeline.ingest.feeds.base import ResumePoint
from hft_pipeline.market.ticks import SYMBOL_PATTERN, SymbolIndex, TickBatch

REQUIRED_COLUMNS = ("symbol", "ts", "price", "volume")
OPTIONAL_COLUMNS = ("bid", "ask", "seq")
DEFAULT_CHUNK_ROWS = 100_000

#: Why a row of a tick file is rejected, in the order the checks run (the first failing one
#: counts). The names shared with the ingest validator mean the same there.
ROW_REJECT_REASONS: tuple[str, ...] = (
    "malformed_line",
    "bad_symbol",
    "bad_timestamp",
    "future_timestamp",
    "bad_number",
    "non_finite_price",
    "non_positive_price",
    "non_finite_volume",
    "negative_volume",
    "bad_seq",
    "negative_seq",
)

_EXPLAIN = {
    "bad_symbol": "is not a symbol (1-32 of A-Z a-z 0-9 _ . -, starting with a letter or digit)",
    "bad_timestamp": "is not a timestamp (int64 ns since the epoch > 0, or ISO-8601 text)",
    "future_timestamp": "is in the future",
    "bad_number": "is not a number",
    "non_finite_price": "is not a finite price",
    "non_positive_price": "is not a price > 0",
    "non_finite_volume": "is not a finite volume",
    "negative_volume": "is a negative volume",
    "bad_seq": "is not a whole number",
    "negative_seq": "is a negative seq",
}

# pandas' default NA markers, for the numeric columns only: "NA" or "NULL" may be a ticker.
_NUMERIC_NA = (
    *("", "#N/A", "#N/A N/A", "#NA", "-1.#IND", "-1.#QNAN", "-NaN", "-nan", "1.#IND"),
    *("1.#QNAN", "<NA>", "N/A", "NA", "NULL", "NaN", "None", "n/a", "nan", "null"),
)
_INTEGER_TEXT = r"[+-]?\d+"
_MAX_EXACT_FLOAT = 2.0**53


class TickFileError(ValueError):
    """A tick file we cannot read: unknown format, a missing column or (strict) a bad row."""


def file_format(path: str | Path) -> str:
    """'csv' or 'parquet' from the file name (.csv, .csv.gz, .parquet, .pq)."""
    name = str(path).lower()
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    raise TickFileError(f"{path}: unknown tick file type; use .csv, .csv.gz or .parquet")


def file_columns(path: str | Path) -> list[str]:
    """The column names of a tick file, read from its header or Parquet schema only."""
    if file_format(path) == "parquet":
        import pyarrow.parquet as pq

        return list(pq.ParquetFile(path).schema_arrow.names)
    return [str(c).strip() for c in pd.read_csv(path, nrows=0).columns]


def count_rows(path: str | Path) -> int:
    """Number of ticks in the file, cheaply (Parquet metadata; CSV line count minus the header)."""
    if file_format(path) == "parquet":
        import pyarrow.parquet as pq

        return int(pq.ParquetFile(path).metadata.num_rows)
    opener = gzip.open if str(path).lower().endswith(".gz") else open
    lines, last = 0, b"\n"
    with opener(path, "rb") as fh:
        while block := fh.read(1 << 20):
            lines += block.count(b"\n")
            last = block[-1:]
    if last != b"\n":
        lines += 1  # a last line without a newline
    return max(0, lines - 1)


def is_symbol(name: object) -> bool:
    """True if `name` is a legal symbol as a whole ("NLSYM\\n" is not)."""
    return isinstance(name, str) and SYMBOL_PATTERN.fullmatch(name) is not None


def derive_seqs(sym: np.ndarray, ts: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Seqs for ticks without one: per symbol, seq = max(ts, previous seq + 1), in the given order.

    `sym` indexes `last`, the previous seq of each symbol (-1 for none), updated in place.
    Written as seq_k = k + max(last + 1, max_{j<=k}(ts_j - j)) per symbol, so one cumulative
    max per symbol replaces a loop over ticks.
    """
    seq = np.empty(len(ts), np.int64)
    if not len(ts):
        return seq
    order = np.argsort(sym, kind="stable")
    counts = np.bincount(sym, minlength=len(last))
    starts = np.cumsum(counts) - counts
    for s in np.flatnonzero(counts):
        idx = order[starts[s] : starts[s] + counts[s]]
        k = np.arange(idx.size, dtype=np.int64)
        base = np.maximum(np.maximum.accumulate(ts[idx] - k), last[s] + 1)
        seq[idx] = base + k
        last[s] = seq[idx[-1]]
    return seq


@dataclass(slots=True)
class FileChunk:
    """The accepted rows of one chunk, in file order, and their positions (data rows from 0).

    `ticks.seq` holds the file's seq, or zeros when the file has no seq column.
    """

    ticks: TickBatch
    rows: np.ndarray  # int64


class TickFileReader:
    """Reads a tick file in chunks of `chunk_rows`, checking every row.

    Rows failing a check are left out and counted in `rejected` by reason (ROW_REJECT_REASONS);
    with `strict` the first one raises TickFileError naming its row (data rows counted from 1),
    column and value. Timestamps above `max_ts` (ns) are future_timestamp. File-level problems
    (unknown type, missing column, a column of an impossible type) always raise.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        strict: bool = False,
        max_ts: int | None = None,
    ) -> None:
        self.path = Path(path)
        columns = file_columns(path)
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise TickFileError(
                f"{path}: missing required column {', '.join(repr(c) for c in missing)}; found "
                f"{columns}; need {list(REQUIRED_COLUMNS)} and optionally {list(OPTIONAL_COLUMNS)}"
            )
        self.columns = [c for c in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS) if c in columns]
        self.has_seq = "seq" in self.columns
        self.chunk_rows = int(chunk_rows)
        self.strict = strict
        self.max_ts = max_ts
        self.read = 0  # rows read so far, rejected ones and malformed lines included
        self.rejected = dict.fromkeys(ROW_REJECT_REASONS, 0)

    def chunks(self) -> Iterator[FileChunk]:
        """Yield the accepted rows chunk by chunk (a chunk may be empty)."""
        row0 = 0
        for frame, malformed in self._frames():
            self.read += malformed
            self.rejected["malformed_line"] += malformed
            chunk = self._check(frame, row0)
            row0 += len(frame)
            self.read += len(frame)
            yield chunk

    def _frames(self) -> Iterator[tuple[pd.DataFrame, int]]:
        """(frame, lines skipped as malformed) per chunk."""
        if file_format(self.path) == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            # Integers stay exact with nulls (nullable Int64, not float64 with NaN).
            def nullable(t: pa.DataType) -> pd.api.extensions.ExtensionDtype | None:
                return pd.Int64Dtype() if pa.types.is_integer(t) else None

            pf = pq.ParquetFile(self.path)
            for batch in pf.iter_batches(batch_size=self.chunk_rows, columns=self.columns):
                yield batch.to_pandas(types_mapper=nullable), 0
            return
        na_values = {c: list(_NUMERIC_NA) for c in ("price", "volume", "bid", "ask")}
        na_values |= {"symbol": [""], "ts": [""], "seq": [""]}
        try:
            reader = pd.read_csv(
                self.path,
                # No usecols: with it, pandas takes a line with too many fields without a word.
                # As text: symbols that look numeric stay names; ts and seq stay exact int64
                # (an empty cell would turn an inferred column into float64).
                dtype={"symbol": str, "ts": str, "seq": str},
                keep_default_na=False,
                na_values={c: v for c, v in na_values.items() if c in self.columns},
                chunksize=self.chunk_rows,
                skipinitialspace=True,
                on_bad_lines="error" if self.strict else "warn",
            )
        except (ValueError, pd.errors.ParserError) as exc:
            raise TickFileError(f"{self.path}: {exc}") from None
        with reader:
            while True:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", pd.errors.ParserWarning)
                    try:
                        frame = next(reader)
                    except StopIteration:
                        return
                    except (ValueError, pd.errors.ParserError) as exc:
                        raise TickFileError(f"{self.path}: {exc}".strip()) from None
                frame.columns = [str(c).strip() for c in frame.columns]
                frame = frame[self.columns]
                skipped = sum(
                    str(w.message).count("Skipping line")
                    for w in caught
                    if issubclass(w.category, pd.errors.ParserWarning)
                )
                yield frame, skipped

    def _check(self, frame: pd.DataFrame, row0: int) -> FileChunk:
        n = len(frame)
        sym, names, bad_symbol = _symbols(frame["symbol"], self.path)
        ts, bad_ts = _timestamps(frame["ts"], self.path)
        price, bad_price = _numbers(frame["price"], "price", self.path)
        volume, bad_volume = _numbers(frame["volume"], "volume", self.path)
        bid, bad_bid = _optional_numbers(frame, "bid", self.path)
        ask, bad_ask = _optional_numbers(frame, "ask", self.path)
        if self.has_seq:
            seq, bad_seq = _seqs(frame["seq"], self.path)
        else:
            seq, bad_seq = np.zeros(n, np.int64), np.zeros(n, bool)
        future = ts > self.max_ts if self.max_ts is not None else np.zeros(n, bool)
        checks = (
            ("bad_symbol", "symbol", bad_symbol),
            ("bad_timestamp", "ts", bad_ts | (ts <= 0)),
            ("future_timestamp", "ts", future),
            ("bad_number", "price", bad_price),
            ("bad_number", "volume", bad_volume),
            ("bad_number", "bid", bad_bid),
            ("bad_number", "ask", bad_ask),
            ("non_finite_price", "price", ~np.isfinite(price)),
            ("non_positive_price", "price", ~(price > 0)),
            ("non_finite_volume", "volume", ~np.isfinite(volume)),
            ("negative_volume", "volume", volume < 0),
            ("bad_seq", "seq", bad_seq),
            ("negative_seq", "seq", seq < 0),
        )
        failed = np.zeros(n, np.int8)  # 1 + index of the first failing check, 0 = accepted
        for k, (_, _, bad) in enumerate(checks):
            failed[(failed == 0) & bad] = k + 1
        if self.strict and failed.any():
            first = int(np.argmax(failed != 0))
            reason, column, _ = checks[failed[first] - 1]
            raise TickFileError(
                f"{self.path}: row {row0 + first + 1}, column {column!r}: "
                f"{_shown(frame[column].iloc[first])} {_EXPLAIN[reason]} ({reason}); "
                "nothing was imported (without --strict such rows are skipped and counted)"
            )
        counts = np.bincount(failed, minlength=len(checks) + 1)
        for k, (reason, _, _) in enumerate(checks):
            self.rejected[reason] += int(counts[k + 1])
        keep = failed == 0
        # The batch's symbol table holds only names of accepted rows (stores refuse others).
        used, code = np.unique(sym[keep], return_inverse=True)
        batch = TickBatch(
            tuple(names[i] for i in used.tolist()),
            code.astype(np.int32).reshape(-1),
            ts[keep],
            seq[keep],
            price[keep],
            volume[keep],
            bid[keep],
            ask[keep],
        )
        rows = np.flatnonzero(keep).astype(np.int64) + row0
        return FileChunk(batch, rows)


def _shown(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    return "an empty cell" if pd.isna(value) else str(value)


def _type_error(path: Path, column: str, values: pd.Series, need: str) -> TickFileError:
    return TickFileError(f"{path}: column {column!r} is {values.dtype}: {need}")


def _symbols(values: pd.Series, path: Path) -> tuple[np.ndarray, list[str], np.ndarray]:
    """(code per row, names, bad mask); empty cells and illegal names are bad."""
    codes, uniques = pd.factorize(values)
    names = [u if isinstance(u, str) else "" for u in uniques]
    legal = np.fromiter((is_symbol(u) for u in names), bool, len(names))
    bad = (codes < 0) | ~np.append(legal, False)[codes]
    return np.where(codes < 0, 0, codes), names, bad


def _timestamps(values: pd.Series, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(int64 ns since the epoch, bad mask) of a ts column; ts <= 0 is checked by the caller."""
    dtype = values.dtype
    if pd.api.types.is_datetime64_any_dtype(dtype):
        stamps = values
        if getattr(stamps.dt, "tz", None) is not None:
            stamps = stamps.dt.tz_convert("UTC").dt.tz_localize(None)
        missing = stamps.isna().to_numpy()
        ns = stamps.astype("datetime64[ns]").to_numpy().view(np.int64).copy()
        ns[missing] = 0
        return ns, missing
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_float_dtype(dtype):
        # Float nanoseconds lose precision past 2**53 (~104 days after 1970); refuse them.
        raise _type_error(path, "ts", values, "use int64 nanoseconds since the epoch or ISO-8601")
    if pd.api.types.is_integer_dtype(dtype):
        missing = values.isna().to_numpy()
        return values.to_numpy(dtype=np.int64, na_value=0), missing
    ns, ok, rest, text = _integer_text(values)
    if len(rest):
        stamps = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
        good = stamps.notna().to_numpy()
        stamps = stamps.dt.tz_localize(None).astype("datetime64[ns]")
        ns[rest[good]] = stamps.to_numpy().view(np.int64)[good]
        ok[rest[good]] = True
    return ns, ~ok


def _integer_text(values: pd.Series) -> tuple[np.ndarray, np.ndarray, np.ndarray, pd.Series]:
    """The integer cells of a text column, exact: (int64 per row, ok mask, positions and text
    of the other non-empty cells). Empty cells are neither."""
    n = len(values)
    ints, ok = np.zeros(n, np.int64), np.zeros(n, bool)
    present = np.flatnonzero(values.notna().to_numpy())  # positions: chunks keep the file's index
    cells = values.iloc[present]
    try:  # fast path: every non-empty cell is integer text
        ints[present] = cells.astype(np.int64).to_numpy()
        ok[present] = True
        return ints, ok, np.empty(0, np.int64), cells.iloc[:0]
    except (ValueError, TypeError, OverflowError):
        pass
    text = cells.astype(str).str.strip()
    is_int = text.str.fullmatch(_INTEGER_TEXT).to_numpy(dtype=bool)
    ints[present[is_int]], ok[present[is_int]] = _exact_ints(text[is_int])
    return ints, ok, present[~is_int], text[~is_int]


def _exact_ints(text: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, ok mask) of integer text; numbers outside int64 are not ok."""
    try:
        return text.astype(np.int64).to_numpy(), np.ones(len(text), bool)
    except (ValueError, OverflowError):
        big = [int(v) for v in text]  # rare: some value does not fit
        ok = np.array([-(2**63) <= v < 2**63 for v in big], bool)
        return np.array([v if o else 0 for v, o in zip(big, ok, strict=True)], np.int64), ok


def _numbers(values: pd.Series, column: str, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(float64, bad mask): text that is not a number is bad; empty cells are NaN."""
    dtype = values.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return np.full(len(values), np.nan), np.ones(len(values), bool)
    if pd.api.types.is_numeric_dtype(dtype):
        return values.to_numpy(dtype=np.float64, na_value=np.nan), np.zeros(len(values), bool)
    if pd.api.types.is_datetime64_any_dtype(dtype):
        raise _type_error(path, column, values, "must be numeric")
    parsed = pd.to_numeric(values, errors="coerce")
    bad = (parsed.isna() & values.notna()).to_numpy()
    return parsed.to_numpy(dtype=np.float64, na_value=np.nan), bad


def _optional_numbers(
    frame: pd.DataFrame, column: str, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    if column in frame:
        return _numbers(frame[column], column, path)
    return np.full(len(frame), np.nan), np.zeros(len(frame), bool)


def _seqs(values: pd.Series, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(int64, bad mask): empty cells and values that are not whole numbers are bad."""
    dtype = values.dtype
    n = len(values)
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_datetime64_any_dtype(dtype):
        raise _type_error(path, "seq", values, "must hold whole numbers")
    if pd.api.types.is_integer_dtype(dtype):
        return values.to_numpy(dtype=np.int64, na_value=0), values.isna().to_numpy()
    if pd.api.types.is_float_dtype(dtype):
        seq, ok = np.zeros(n, np.int64), np.zeros(n, bool)
        floats, where = values.to_numpy(np.float64, na_value=np.nan), np.arange(n)
    else:
        seq, ok, where, text = _integer_text(values)
        floats = pd.to_numeric(text, errors="coerce").to_numpy(np.float64)
    # "12.0" is 12; fractions, NaN and floats too large to be exact are bad.
    whole = (
        np.isfinite(floats) & (floats == np.floor(floats)) & (np.abs(floats) <= _MAX_EXACT_FLOAT)
    )
    seq[where[whole]] = floats[whole].astype(np.int64)
    ok[where[whole]] = True
    return seq, ~ok


def read_tick_file(
    path: str | Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    resume: dict[str, ResumePoint] | None = None,
    strict: bool = False,
    reader: TickFileReader | None = None,
) -> Iterator[TickBatch]:
    """Yield the file's accepted ticks as TickBatches of at most `chunk_rows`, in file order.

    This is the replay feed's view of a file; memory stays bounded by the chunk size. With a
    seq column, ticks at or below their symbol's `resume` point are skipped and the rest
    passed on in any order (the service's sequencer judges them). Without one, ticks are
    numbered per symbol in file order after the resume point: consecutive seqs, because the
    live sequencer would count every jump of a ts-derived seq as a gap (`hft import` derives
    seqs from ts instead, docs/import.md). Rejected rows are counted in `reader.rejected`.
    """
    reader = reader or TickFileReader(path, chunk_rows=chunk_rows, strict=strict)
    resume = resume or {}
    index = SymbolIndex()
    floor = np.full(0, -1, np.int64)  # per symbol: the resume point's seq, -1 for none
    for chunk in reader.chunks():
        batch = chunk.ticks
        if not len(batch):
            continue
        ids = index.ids_for(batch)
        if len(index) > len(floor):
            new = index.names[len(floor) :]
            points = [resume[s].seq if s in resume else -1 for s in new]
            floor = np.concatenate([floor, np.array(points, np.int64)])
        if not reader.has_seq:
            counts = np.bincount(ids, minlength=len(floor))
            batch.seq = floor[ids] + 1 + _rank_per_symbol(ids, counts)
            floor += counts  # the numbering continues in the next chunk
            yield batch
            continue
        keep = batch.seq > floor[ids]
        if not keep.all():
            batch = batch.take(keep)
        if len(batch):
            yield batch


def _rank_per_symbol(ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Position of each tick among the ticks of its symbol in this batch (0, 1, 2, ...)."""
    order = np.argsort(ids, kind="stable")
    rank = np.empty(ids.size, np.int64)
    rank[order] = np.arange(ids.size) - np.repeat(np.cumsum(counts) - counts, counts)
    return rank
