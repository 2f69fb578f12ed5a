"""Tick files: CSV / CSV.gz / Parquet reading, timestamps, errors, seq numbering, replay pacing."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hft_pipeline.ingest.feeds import (
    Feed,
    ReplayFeed,
    ResumePoint,
    generate,
    make_feed,
)
from hft_pipeline.ingest.tickfile import (
    TickFileError,
    TickFileReader,
    count_rows,
    derive_seqs,
    read_tick_file,
)
from hft_pipeline.market.ticks import TickBatch, concat_batches
from hft_pipeline.settings import Settings

T0 = 1_700_000_000_000_000_000


def sample_frame(n_per_symbol: int = 700) -> pd.DataFrame:
    """Three symbols interleaved by time, as a recorder would write them."""
    parts = [
        generate(1, s, 0, n_per_symbol, 300.0, 3, T0).to_frame()
        for s in ("PETR4", "frxEURUSD", "R_100")
    ]
    frame = pd.concat(parts).sort_values(["ts", "symbol"], kind="stable").reset_index(drop=True)
    return frame[["symbol", "ts", "price", "volume", "bid", "ask", "seq"]]


def read_all(path: Path, **kwargs) -> pd.DataFrame:
    batches = list(read_tick_file(path, **kwargs))
    return concat_batches(batches).to_frame()[
        ["symbol", "ts", "price", "volume", "bid", "ask", "seq"]
    ]


@pytest.mark.parametrize("name", ["ticks.csv", "ticks.csv.gz", "ticks.parquet"])
def test_round_trip_in_chunks(tmp_path: Path, name: str) -> None:
    frame = sample_frame()
    path = tmp_path / name
    if name.endswith(".parquet"):
        frame.to_parquet(path, row_group_size=250)
    else:
        frame.to_csv(path, index=False)
    batches = list(read_tick_file(path, chunk_rows=333))
    assert all(len(b) <= 333 for b in batches) and len(batches) >= 7
    assert all(isinstance(b, TickBatch) for b in batches)
    pd.testing.assert_frame_equal(read_all(path, chunk_rows=333), frame)
    assert count_rows(path) == len(frame)


def test_count_rows_with_and_without_a_final_newline(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("symbol,ts,price,volume\nA1,1,1.0,1\nA1,2,1.0,1")
    assert count_rows(path) == 2
    path.write_text("symbol,ts,price,volume\nA1,1,1.0,1\nA1,2,1.0,1\nA1,3,1.0,1\n")
    assert count_rows(path) == 3
    path.write_text("symbol,ts,price,volume\n")
    assert count_rows(path) == 0
    assert list(read_tick_file(path)) == []


def test_iso_timestamps_with_offsets_z_and_naive_are_utc_nanoseconds(tmp_path: Path) -> None:
    path = tmp_path / "iso.csv"
    path.write_text(
        "symbol,ts,price,volume\n"
        "PETR4,2024-03-01T13:00:00.123456789-03:00,38.01,100\n"
        "PETR4,2024-03-01T16:00:00.5Z,38.02,200\n"
        "VALE3,2024-03-01 16:00:01,62.00,300\n"
    )
    out = read_all(path)
    expected = [
        pd.Timestamp("2024-03-01T16:00:00Z").value + 123_456_789,
        pd.Timestamp("2024-03-01T16:00:00Z").value + 500_000_000,
        pd.Timestamp("2024-03-01T16:00:01Z").value,
    ]
    np.testing.assert_array_equal(out["ts"].to_numpy(), expected)
    assert list(out["symbol"]) == ["PETR4", "PETR4", "VALE3"]
    assert out["bid"].isna().all() and out["ask"].isna().all()


def test_parquet_datetime_columns_tz_aware_and_naive(tmp_path: Path) -> None:
    ns = np.array([T0, T0 + 1_500, T0 + 2_000_000_000], dtype=np.int64)
    for tz in ("America/Sao_Paulo", None):
        stamps = pd.to_datetime(ns, unit="ns", utc=True)
        stamps = stamps.tz_convert(tz) if tz else stamps.tz_localize(None)
        table = pa.table(
            {
                "symbol": ["PETR4"] * 3,
                "ts": pa.array(stamps, type=pa.timestamp("ns", tz=tz)),
                "price": [38.0, 38.01, 38.02],
                "volume": [100, 200, 300],
            }
        )
        path = tmp_path / f"dt-{tz is None}.parquet"
        pq.write_table(table, path)
        np.testing.assert_array_equal(read_all(path)["ts"].to_numpy(), ns)
    # microsecond precision columns convert too
    table = pa.table(
        {
            "symbol": ["A1"],
            "ts": pa.array([T0 // 1000], type=pa.timestamp("us")),
            "price": [1.0],
            "volume": [1.0],
        }
    )
    pq.write_table(table, tmp_path / "us.parquet")
    assert read_all(tmp_path / "us.parquet")["ts"].iloc[0] == T0


def test_missing_column_error_names_the_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("symbol,ts,volume\nPETR4,1,100\n")
    with pytest.raises(
        TickFileError, match=r"missing required column 'price'.*found \['symbol', 'ts', 'volume'\]"
    ):
        list(read_tick_file(path))
    table = pa.table({"ts": [1], "price": [1.0], "volume": [1.0]})
    pq.write_table(table, tmp_path / "bad.parquet")
    with pytest.raises(TickFileError, match="missing required column 'symbol'"):
        list(read_tick_file(tmp_path / "bad.parquet"))


@pytest.mark.parametrize(
    ("body", "reason", "pattern"),
    [
        (
            "PETR4,1,38.0,100\nPETR4,2,abc,100\n",
            "bad_number",
            r"row 2, column 'price': 'abc' is not a number \(bad_number\)",
        ),
        (
            "PETR4,1,38.0,100\nPETR4,yesterday,38.0,100\n",
            "bad_timestamp",
            r"row 2, column 'ts': 'yesterday' is not a timestamp",
        ),
        (
            "PETR4,1,38.0,100\nBAD|SYM,2,38.0,100\n",
            "bad_symbol",
            r"row 2, column 'symbol': 'BAD\|SYM' is not a symbol",
        ),
        (
            'PETR4,1,38.0,100\n"NLSYM\n",2,38.0,100\n',
            "bad_symbol",
            r"row 2, column 'symbol': 'NLSYM\\n' is not a symbol",
        ),
        (
            "PETR4,1,38.0,100\nPETR4,,38.0,100\n",
            "bad_timestamp",
            r"row 2, column 'ts': an empty cell is not",
        ),
        (
            "PETR4,1,38.0,100\n,2,38.0,100\n",
            "bad_symbol",
            r"row 2, column 'symbol': an empty cell is not",
        ),
        (
            "PETR4,1,38.0,100\nPETR4,2,38.0,-3\n",
            "negative_volume",
            r"row 2, column 'volume': -3 is a negative volume",
        ),
    ],
)
def test_a_bad_row_is_counted_or_strictly_refused_naming_row_and_column(
    tmp_path: Path, body: str, reason: str, pattern: str
) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("symbol,ts,price,volume\n" + body)
    with pytest.raises(TickFileError, match=pattern):
        list(read_tick_file(path, strict=True))
    reader = TickFileReader(path)
    out = concat_batches(list(read_tick_file(path, reader=reader))).to_frame()
    assert out[["symbol", "ts", "price"]].values.tolist() == [["PETR4", 1, 38.0]]
    assert reader.read == 2
    assert {k: v for k, v in reader.rejected.items() if v} == {reason: 1}


def test_bad_seq_and_unknown_extension(tmp_path: Path) -> None:
    path = tmp_path / "seq.csv"
    path.write_text(
        "symbol,ts,price,volume,seq\nPETR4,1,38.0,100,1\nPETR4,2,38.0,100,1.5\n"
        "PETR4,3,38.0,100,3.0\nPETR4,4,38.0,100,99999999999999999999\nPETR4,5,38.0,100,-2\n"
    )
    with pytest.raises(TickFileError, match=r"row 2, column 'seq': '1.5' is not a whole number"):
        list(read_tick_file(path, strict=True))
    reader = TickFileReader(path)
    out = concat_batches(list(read_tick_file(path, reader=reader)))
    assert out.seq.tolist() == [1, 3] and out.ts.tolist() == [1, 3]
    assert {k: v for k, v in reader.rejected.items() if v} == {"bad_seq": 2, "negative_seq": 1}
    with pytest.raises(TickFileError, match=r"use \.csv, \.csv\.gz or \.parquet"):
        list(read_tick_file(tmp_path / "ticks.json"))


def test_a_line_with_more_fields_than_the_header_is_counted_as_malformed(tmp_path: Path) -> None:
    path = tmp_path / "fields.csv"
    path.write_text("symbol,ts,price,volume\nA1,1,1.0,1\nA1,2,1.0,1,7\nA1,3,1.0,1\n")
    reader = TickFileReader(path)
    assert concat_batches(list(read_tick_file(path, reader=reader))).ts.tolist() == [1, 3]
    assert reader.read == 3 and reader.rejected["malformed_line"] == 1
    with pytest.raises(TickFileError, match=r"Expected 4 fields in line 3, saw 5"):
        list(read_tick_file(path, strict=True))


def test_empty_cells_keep_the_other_integers_exact(tmp_path: Path) -> None:
    # An empty cell used to turn ts (and seq) into float64, which rounds ns to 256 ns.
    big = T0 + 123_456_789
    path = tmp_path / "holes.csv"
    path.write_text(
        f"symbol,ts,price,volume,seq\nA1,{big},1.0,1,{big}\nA1,,1.0,1,5\nA1,{big + 1},1.0,1,\n"
    )
    reader = TickFileReader(path)
    out = concat_batches(list(read_tick_file(path, reader=reader)))
    assert out.ts.tolist() == [big] and out.seq.tolist() == [big]
    assert {k: v for k, v in reader.rejected.items() if v} == {"bad_timestamp": 1, "bad_seq": 1}
    table = pa.table(
        {
            "symbol": ["A1", "A1", None],
            "ts": pa.array([big, None, big + 2], pa.int64()),
            "price": [1.0, 1.0, 1.0],
            "volume": [1.0, 1.0, 1.0],
            "seq": pa.array([big, 1, None], pa.int64()),
        }
    )
    pq.write_table(table, tmp_path / "holes.parquet")
    reader = TickFileReader(tmp_path / "holes.parquet")
    out = concat_batches(list(read_tick_file(tmp_path / "holes.parquet", reader=reader)))
    assert out.ts.tolist() == [big] and out.seq.tolist() == [big]
    assert {k: v for k, v in reader.rejected.items() if v} == {
        "bad_symbol": 1,
        "bad_timestamp": 1,
    }


def test_derived_seq_is_ts_bumped_past_the_previous_seq_of_the_symbol() -> None:
    last = np.array([-1, -1], np.int64)
    sym = np.array([0, 0, 0, 1, 0])
    ts = np.array([100, 100, 99, 5, 150], np.int64)
    assert derive_seqs(sym, ts, last).tolist() == [100, 101, 102, 5, 150]
    assert last.tolist() == [150, 5]
    assert derive_seqs(np.array([0, 1]), np.array([150, 7], np.int64), last).tolist() == [151, 7]


def test_seq_is_assigned_per_symbol_in_file_order_after_the_resume_point(tmp_path: Path) -> None:
    path = tmp_path / "noseq.csv"
    rows = ["symbol,ts,price,volume"]
    order = ["PETR4", "VALE3", "PETR4", "PETR4", "R_100", "VALE3", "PETR4"]
    rows += [f"{s},{T0 + i},10.0,100" for i, s in enumerate(order)]
    path.write_text("\n".join(rows) + "\n")
    resume = {"VALE3": ResumePoint(seq=41, ts=T0 - 1, price=62.0)}
    out = read_all(path, chunk_rows=3, resume=resume)  # numbering continues across chunks
    assert list(out["symbol"]) == order
    assert list(out["seq"]) == [0, 42, 1, 2, 0, 43, 3]


def test_files_with_seq_skip_ticks_at_or_below_the_resume_point(tmp_path: Path) -> None:
    frame = sample_frame(100)
    path = tmp_path / "seq.parquet"
    frame.to_parquet(path)
    resume = {
        "PETR4": ResumePoint(seq=59, ts=0, price=1.0),
        "R_100": ResumePoint(seq=99, ts=0, price=1.0),
    }
    out = read_all(path, chunk_rows=50, resume=resume)
    assert list(out[out.symbol == "PETR4"]["seq"]) == list(range(60, 100))
    assert (out.symbol != "R_100").all()
    assert list(out[out.symbol == "frxEURUSD"]["seq"]) == list(range(100))


def test_seqs_out_of_file_order_are_not_skipped(tmp_path: Path) -> None:
    # The reader skips only what the resume point covers; the service's sequencer decides
    # about the rest (it used to drop any seq below an earlier chunk's highest).
    frame = sample_frame(100).iloc[::-1]
    path = tmp_path / "desc.csv"
    frame.to_csv(path, index=False)
    out = read_all(path, chunk_rows=40)
    assert len(out) == 300
    assert sorted(out[out.symbol == "PETR4"]["seq"]) == list(range(100))


async def test_replay_feed_as_fast_as_possible_with_subscriptions(tmp_path: Path) -> None:
    frame = sample_frame(400)
    path = tmp_path / "ticks.csv.gz"
    frame.to_csv(path, index=False)
    feed = ReplayFeed(path, chunk_rows=200)
    assert isinstance(feed, Feed) and feed.name == "replay:ticks.csv.gz"
    feed.unsubscribe("R_100")
    got = []
    async for batch in feed.batches():
        got.append(batch)
        if sum(map(len, got)) >= 300:
            feed.subscribe("R_100")  # back for the rest of the file
    out = concat_batches(got).to_frame()
    r100 = out[out.symbol == "R_100"]
    assert 0 < len(r100) < 400
    assert list(r100["seq"]) == list(range(400 - len(r100), 400))
    assert len(out[out.symbol == "PETR4"]) == 400
    assert feed.rows_read == len(frame)


async def test_replay_feed_with_explicit_symbols_and_resume(tmp_path: Path) -> None:
    frame = sample_frame(50).drop(columns=["seq"])
    path = tmp_path / "ticks.csv"
    frame.to_csv(path, index=False)
    feed = ReplayFeed(path, symbols=["PETR4"])
    feed.resume_from({"PETR4": ResumePoint(seq=9, ts=0, price=1.0)})
    out = concat_batches([b async for b in feed.batches()])
    assert set(out.symbol_names()) == {"PETR4"}
    np.testing.assert_array_equal(out.seq, np.arange(10, 60))


async def test_replay_feed_counts_the_rows_it_rejects(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("symbol,ts,price,volume\nA1,1,1.0,1\nA1,2,-1.0,1\nA|1,3,1.0,1\nA1,4,1.0,1\n")
    feed = ReplayFeed(path)
    out = concat_batches([b async for b in feed.batches()])
    assert out.ts.tolist() == [1, 4] and feed.rows_read == 2
    assert {k: v for k, v in feed.rejected.items() if v} == {
        "bad_symbol": 1,
        "non_positive_price": 1,
    }


async def test_replay_speed_paces_file_time_against_the_wall_clock(tmp_path: Path) -> None:
    # 1.2 s of file time at 4x real time: about 0.3 s of wall time, slices never early.
    n = 240
    frame = pd.DataFrame(
        {
            "symbol": ["PETR4"] * n,
            "ts": T0 + np.arange(n, dtype=np.int64) * 5_000_000,
            "price": 38.0,
            "volume": 100.0,
        }
    )
    path = tmp_path / "paced.parquet"
    frame.to_parquet(path)
    feed = ReplayFeed(path, speed=4.0, chunk_rows=100)
    started = time.monotonic()
    parts = []
    async for batch in feed.batches():
        parts.append((time.monotonic() - started, batch))
    elapsed = time.monotonic() - started
    file_span = (frame.ts.iloc[-1] - frame.ts.iloc[0]) / 1e9
    assert elapsed >= file_span / 4 - 0.01
    assert elapsed < file_span  # clearly faster than real time
    for wall, batch in parts:
        due = (batch.ts[0] - T0) / 1e9 / 4.0
        assert wall >= due - 0.002
    assert len(parts) > 20  # emitted in slices, not one chunk at a time
    assert sum(len(b) for _, b in parts) == n


async def test_close_stops_a_paced_replay(tmp_path: Path) -> None:
    frame = pd.DataFrame(
        {
            "symbol": "PETR4",
            "ts": T0 + np.arange(100, dtype=np.int64) * 1_000_000_000,
            "price": 1.0,
            "volume": 1.0,
        }
    )
    path = tmp_path / "slow.csv"
    frame.to_csv(path, index=False)
    feed = ReplayFeed(path, speed=1.0)
    got = []
    started = time.monotonic()
    async for batch in feed.batches():
        got.append(batch)
        if len(got) == 2:
            await feed.close()
    assert len(got) == 2
    assert time.monotonic() - started < 3.0


def test_make_feed_builds_a_replay_feed(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("symbol,ts,price,volume\nA1,1,1.0,1\n")
    feed = make_feed(Settings(feed="replay", replay_file=str(path), replay_speed=2.0))
    assert isinstance(feed, ReplayFeed) and feed.speed == 2.0
    with pytest.raises(ValueError, match="speed must be >= 0"):
        ReplayFeed(path, speed=-1)
