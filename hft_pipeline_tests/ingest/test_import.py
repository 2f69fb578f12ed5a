"""`hft import`: every row stored exactly once or rejected and counted, on SQLite and PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hft_pipeline.ingest import importer
from hft_pipeline.ingest.importer import ImportResult, import_file
from hft_pipeline.ingest.service import IngestService
from hft_pipeline.ingest.tickfile import TickFileError
from hft_pipeline.settings import Settings
from hft_pipeline.store import open_store

T0 = 1_700_000_000_000_000_000  # 2023-11-14 22:13:20 UTC
SYMBOLS = ("PETR4", "VALE3", "R_100")


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'store' / 'hft.sqlite3'}"
    return request.getfixturevalue("pg_dsn")


def settings_for(tmp_path: Path, url: str) -> Settings:
    return Settings(home=tmp_path / "home", store_url=url)


def stored(url: str) -> pd.DataFrame:
    """Every stored tick, sorted by (symbol, seq)."""
    store = open_store(url, pool_size=2)
    try:
        frame = store.read_tick_range(0, 2**62)
    finally:
        store.close()
    return frame.sort_values(["symbol", "seq"], kind="stable").reset_index(drop=True)


def ticks(n: int, *, seed: int = 1, with_seq: bool = True) -> pd.DataFrame:
    """`n` ticks over SYMBOLS in time order; seq counts per symbol from 0."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "symbol": rng.choice(np.array(SYMBOLS, dtype=object), n),
            "ts": T0 + np.arange(n, dtype=np.int64) * 1_000_000,
            "price": np.round(rng.uniform(10, 20, n), 2),
            "volume": rng.integers(1, 10, n) * 100.0,
        }
    )
    if with_seq:
        frame["seq"] = frame.groupby("symbol").cumcount().astype(np.int64)
    return frame


def check_identity(result: ImportResult) -> None:
    assert result.rows == result.accepted + result.duplicates + sum(result.rejected.values())


def assert_stored_once(url: str, expected: pd.DataFrame) -> None:
    """The store holds exactly the (symbol, seq, ts, price) rows of `expected`, each once."""
    got = stored(url)
    want = expected.sort_values(["symbol", "seq"], kind="stable").reset_index(drop=True)
    assert len(got) == len(want)
    assert not got.duplicated(["symbol", "seq"]).any()
    for column in ("symbol", "seq", "ts", "price"):
        assert got[column].tolist() == want[column].tolist(), column


# ---- H1: seqs below an earlier chunk's highest were dropped ----------------------------------


@pytest.mark.parametrize("order", ["shuffled", "descending"])
def test_300k_rows_out_of_seq_order_are_all_stored(
    tmp_path: Path, store_url: str, order: str
) -> None:
    frame = ticks(300_000)
    if order == "shuffled":
        frame = frame.sample(frac=1.0, random_state=3).reset_index(drop=True)
    else:
        frame = frame.sort_values("seq", ascending=False, kind="stable").reset_index(drop=True)
    path = tmp_path / "ticks.csv"
    frame.to_csv(path, index=False)
    result = import_file(path, settings_for(tmp_path, store_url), progress=False)
    assert (result.rows, result.accepted, result.duplicates) == (300_000, 300_000, 0)
    assert result.rejected == {} and result.persisted == 300_000 and result.ok
    check_identity(result)
    assert_stored_once(store_url, frame)


def test_older_history_below_the_stored_max_seq_is_stored(tmp_path: Path, store_url: str) -> None:
    frame = ticks(3_000)
    newer = frame[frame.seq >= 500]
    older = frame[frame.seq < 600]  # seqs 500..599 of every symbol are already stored
    settings = settings_for(tmp_path, store_url)
    newer.to_csv(tmp_path / "newer.csv", index=False)
    older.to_csv(tmp_path / "older.csv", index=False)
    first = import_file(tmp_path / "newer.csv", settings, progress=False)
    assert first.accepted == len(newer)
    second = import_file(tmp_path / "older.csv", settings, progress=False)
    overlap = int((older.seq >= 500).sum())
    assert overlap == 300
    assert (second.rows, second.accepted) == (len(older), len(older) - overlap)
    assert (second.duplicates, second.duplicates_stored) == (overlap, overlap)
    check_identity(second)
    assert_stored_once(store_url, frame)


def test_duplicates_earlier_in_the_file_keep_the_first_row(tmp_path: Path, store_url: str) -> None:
    frame = ticks(2_000)
    again = frame.iloc[:250].copy()
    again["price"] = 99.0  # a later copy of (symbol, seq) loses, whatever it holds
    doubled = pd.concat([frame, again]).reset_index(drop=True)  # the originals come first
    path = tmp_path / "doubled.csv"
    doubled.to_csv(path, index=False)
    result = import_file(path, settings_for(tmp_path, store_url), progress=False)
    assert (result.rows, result.accepted, result.duplicates) == (2_250, 2_000, 250)
    assert result.duplicates_stored == 0
    check_identity(result)
    assert_stored_once(store_url, frame)


# ---- M7: files without seq, re-runs after a failure ------------------------------------------


def test_file_without_seq_imported_twice_stores_it_once(tmp_path: Path, store_url: str) -> None:
    frame = ticks(1_000, with_seq=False)
    frame.loc[10:12, "ts"] = frame.loc[10, "ts"]  # three ticks of one instant
    frame.loc[10:12, "symbol"] = "PETR4"
    path = tmp_path / "noseq.csv"
    frame.to_csv(path, index=False)
    settings = settings_for(tmp_path, store_url)
    first = import_file(path, settings, progress=False)
    assert (first.rows, first.accepted, first.duplicates) == (1_000, 1_000, 0)
    second = import_file(path, settings, progress=False)
    assert (second.rows, second.accepted, second.duplicates) == (1_000, 0, 1_000)
    assert second.duplicates_stored == 1_000
    check_identity(second)
    got = stored(store_url)
    assert len(got) == 1_000
    # seq = ts, bumped to the previous seq + 1 when ts repeats (docs/import.md)
    tied = got[got.ts == frame.loc[10, "ts"]]
    assert tied.seq.tolist() == [frame.loc[10, "ts"] + k for k in range(3)]
    rest = got[got.ts != frame.loc[10, "ts"]]
    assert (rest.seq == rest.ts).all()


@pytest.mark.parametrize("with_seq", [True, False])
def test_bad_cell_after_row_100k_is_rejected_counted_and_the_fixed_rerun_adds_only_it(
    tmp_path: Path, store_url: str, with_seq: bool
) -> None:
    frame = ticks(150_000, with_seq=with_seq)
    bad = frame.astype({"price": object})
    bad.loc[120_000, "price"] = "12,5"  # a decimal comma: not a number
    path = tmp_path / "ticks.csv"
    bad.to_csv(path, index=False)
    settings = settings_for(tmp_path, store_url)
    first = import_file(path, settings, progress=False)
    assert (first.rows, first.accepted, first.duplicates) == (150_000, 149_999, 0)
    assert first.rejected == {"bad_number": 1}
    check_identity(first)
    frame.to_csv(path, index=False)  # fixed
    second = import_file(path, settings, progress=False)
    assert (second.rows, second.accepted, second.duplicates) == (150_000, 1, 149_999)
    check_identity(second)
    expected = frame if with_seq else frame.assign(seq=frame.ts)
    assert_stored_once(store_url, expected)


@pytest.mark.parametrize("with_seq", [True, False])
def test_strict_refuses_a_bad_cell_after_row_100k_and_commits_nothing(
    tmp_path: Path, store_url: str, with_seq: bool
) -> None:
    frame = ticks(150_000, with_seq=with_seq)
    bad = frame.astype({"price": object})
    bad.loc[120_000, "price"] = "12,5"
    path = tmp_path / "ticks.csv"
    bad.to_csv(path, index=False)
    settings = settings_for(tmp_path, store_url)
    with pytest.raises(TickFileError, match=r"row 120001, column 'price': '12,5' is not a number"):
        import_file(path, settings, progress=False, strict=True)
    assert len(stored(store_url)) == 0
    assert not (settings.home / "imports" / path.name).exists()
    frame.to_csv(path, index=False)
    again = import_file(path, settings, progress=False, strict=True)
    assert (again.rows, again.accepted, again.duplicates) == (150_000, 150_000, 0)
    expected = frame if with_seq else frame.assign(seq=frame.ts)
    assert_stored_once(store_url, expected)


def test_a_refused_file_is_refused_at_once_while_the_store_is_down(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(f"symbol,ts,price,volume\nPETR4,{T0},abc,1\n")
    down = "postgresql://postgres@127.0.0.1:9/nowhere"  # the discard port: nothing listens
    started = time.monotonic()
    with pytest.raises(TickFileError, match=r"row 1, column 'price'"):
        import_file(path, settings_for(tmp_path, down), progress=False, strict=True)
    assert time.monotonic() - started < 15


@pytest.mark.parametrize("deadline_s", [10.0, 0.0], ids=["drained", "backlog-left"])
def test_an_import_that_dies_half_way_is_completed_once_by_the_next_run(
    tmp_path: Path, store_url: str, monkeypatch: pytest.MonkeyPatch, deadline_s: float
) -> None:
    frame = ticks(250_000, with_seq=False)
    path = tmp_path / "ticks.parquet"
    frame.to_parquet(path, index=False)
    settings = settings_for(tmp_path, store_url)
    real_ingest = IngestService.ingest
    calls = []

    def dying_ingest(self: IngestService, batch):  # the process dies after two batches
        calls.append(len(batch))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_ingest(self, batch)

    monkeypatch.setattr(IngestService, "ingest", dying_ingest)
    with pytest.raises(KeyboardInterrupt):
        # deadline 0: the persister stops at once and leaves a backlog in the import log
        import_file(path, settings.with_(shutdown_deadline_s=deadline_s), progress=False)
    monkeypatch.setattr(IngestService, "ingest", real_ingest)
    logged = sum(calls[:2])
    assert logged == 2 * importer.INGEST_BATCH_ROWS
    partial = len(stored(store_url))
    assert partial <= logged
    if deadline_s:
        assert partial == logged
    result = import_file(path, settings, progress=False)
    assert result.resumed == logged - partial  # the backlog goes in first ...
    assert result.rows == 250_000  # ... then it is a duplicate like any stored tick
    assert (result.accepted, result.duplicates, result.duplicates_stored) == (
        250_000 - logged,
        logged,
        logged,
    )
    check_identity(result)
    assert_stored_once(store_url, frame.assign(seq=frame.ts))


# ---- L1 / L2: rejections per row, counted by reason ------------------------------------------


def test_negative_seqs_are_rejected_and_counted(tmp_path: Path, store_url: str) -> None:
    frame = ticks(1_000)
    frame.loc[[100, 700], "seq"] = [-1, -5]
    path = tmp_path / "ticks.csv"
    frame.to_csv(path, index=False)
    result = import_file(path, settings_for(tmp_path, store_url), progress=False)
    assert (result.rows, result.accepted, result.duplicates) == (1_000, 998, 0)
    assert result.rejected == {"negative_seq": 2}
    check_identity(result)
    assert_stored_once(store_url, frame[frame.seq >= 0])


def test_every_bad_row_is_rejected_and_counted_by_reason(tmp_path: Path, store_url: str) -> None:
    future = T0 + 10**18  # 2055
    rows = [
        "symbol,ts,price,volume,bid,ask,seq",
        f"PETR4,{T0},10.0,100,9.9,10.1,1",
        f"PETR4,{T0 + 1},10.0,100,,,2",
        f"NA,{T0 + 2},10.0,100,,,1",  # "NA" is a ticker, not a missing value
        f'"NLSYM\n",{T0 + 3},10.0,100,,,1',
        f"BAD|SYM,{T0 + 4},10.0,100,,,1",
        f",{T0 + 5},10.0,100,,,1",
        f"PETR4 ,{T0 + 6},10.0,100,,,3",
        "PETR4,,10.0,100,,,4",
        "PETR4,yesterday,10.0,100,,,5",
        "PETR4,0,10.0,100,,,6",
        f"PETR4,{future},10.0,100,,,7",
        f"PETR4,{T0 + 7},abc,100,,,8",
        f"PETR4,{T0 + 8},10.0,lots,,,9",
        f"PETR4,{T0 + 9},10.0,100,x,,10",
        f"PETR4,{T0 + 10},nan,100,,,11",
        f"PETR4,{T0 + 11},inf,100,,,12",
        f"PETR4,{T0 + 12},0,100,,,13",
        f"PETR4,{T0 + 13},-1.5,100,,,14",
        f"PETR4,{T0 + 14},10.0,inf,,,15",
        f"PETR4,{T0 + 15},10.0,-1,,,16",
        f"PETR4,{T0 + 16},10.0,100,,,1.5",
        f"PETR4,{T0 + 17},10.0,100,,,",
        f"PETR4,{T0 + 18},10.0,100,,,-1",
        f"PETR4,{T0 + 19},10.0,100,,,-7",
        f"PETR4,{T0 + 20},10.0,100,,,2",  # same (symbol, seq) as row 2: a duplicate
        f"PETR4,{T0 + 21},10.0,100,,,17,extra",  # more fields than the header
        "VALE3,2024-03-01T13:00:00.5-03:00,62.0,300,,,1",
        f"VALE3,{T0 + 22},62.0,0,,,2.0",
    ]
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(rows) + "\n")
    result = import_file(path, settings_for(tmp_path, store_url), progress=False)
    assert result.rejected == {
        "malformed_line": 1,
        "bad_symbol": 4,
        "bad_timestamp": 3,
        "future_timestamp": 1,
        "bad_number": 3,
        "non_finite_price": 2,
        "non_positive_price": 2,
        "non_finite_volume": 1,
        "negative_volume": 1,
        "bad_seq": 2,
        "negative_seq": 2,
    }
    assert (result.rows, result.accepted, result.duplicates) == (28, 5, 1)
    check_identity(result)
    got = stored(store_url)
    assert list(zip(got.symbol, got.seq, strict=True)) == [
        ("NA", 1),
        ("PETR4", 1),
        ("PETR4", 2),
        ("VALE3", 1),
        ("VALE3", 2),
    ]
    assert got.ts.iloc[1] == T0 and got.ts.iloc[2] == T0 + 1  # the first (PETR4, 2) won
    assert got.ts.iloc[3] == pd.Timestamp("2024-03-01T16:00:00.5Z").value


def test_sorted_runs_spilled_to_disk_give_the_same_result(tmp_path: Path, store_url: str) -> None:
    frame = ticks(20_000)
    doubled = pd.concat([frame, frame.iloc[::7]]).sample(frac=1.0, random_state=5)
    path = tmp_path / "ticks.parquet"
    doubled.to_parquet(path, index=False, row_group_size=3_000)
    settings = settings_for(tmp_path, store_url)
    result = import_file(path, settings, progress=False, sort_run_rows=2_500)  # 10 runs
    dups = len(frame.iloc[::7])
    assert (result.rows, result.accepted, result.duplicates) == (20_000 + dups, 20_000, dups)
    check_identity(result)
    assert_stored_once(store_url, frame)
    assert not (settings.home / "imports").exists() or not any(
        (settings.home / "imports").iterdir()
    )


# ---- the command ------------------------------------------------------------------------------


def hft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "hft_pipeline.cli", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=os.environ.copy(),
    )


def test_command_exit_codes_with_rejections_and_with_strict(tmp_path: Path) -> None:
    frame = ticks(500)
    bad = frame.astype({"price": object})
    bad.loc[[3, 40], "price"] = ["abc", "-1"]
    path = tmp_path / "ticks.csv"
    bad.to_csv(path, index=False)
    home = tmp_path / "home"
    strict = hft("import", str(path), "--home", str(home), "--no-progress", "--strict")
    assert strict.returncode == 2, strict.stdout + strict.stderr
    assert "row 4, column 'price': 'abc' is not a number" in strict.stderr
    url = f"sqlite:///{home / 'hft.sqlite3'}"
    assert len(stored(url)) == 0
    ok = hft("import", str(path), "--home", str(home), "--no-progress")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "500 rows read = 498 accepted + 0 duplicates" in ok.stdout
    assert "2 rejected (bad_number=1, non_positive_price=1)" in ok.stdout
    again = hft("import", str(path), "--home", str(home), "--no-progress")
    assert again.returncode == 0
    assert "500 rows read = 0 accepted + 498 duplicates" in again.stdout
    assert len(stored(url)) == 498
