"""The `hft` command as a user runs it: ingest + smoke, import, bad options."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import requests

from hft_pipeline.store import open_store
from hft_pipeline_tests.ingest.harness import free_port

HFT = [sys.executable, "-m", "hft_pipeline.cli"]


def run(*args, env=None, timeout=120):
    return subprocess.run(
        [*HFT, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_ingest_then_smoke_passes_and_sigterm_exits_zero(tmp_path):
    port = free_port()
    proc = subprocess.Popen(
        [*HFT, "ingest", "--home", str(tmp_path / "home"), "--port", str(port), "--rate", "500"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                requests.get(url + "/health", timeout=1)
                break
            except requests.ConnectionError:
                time.sleep(0.1)
        smoke = run("smoke", url, "--seconds", "2")
        assert smoke.returncode == 0, smoke.stdout + smoke.stderr
        assert "0 failed" in smoke.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "stopped cleanly" in out


def test_smoke_fails_loudly_without_a_server():
    smoke = run("smoke", f"http://127.0.0.1:{free_port()}", "--seconds", "0")
    assert smoke.returncode == 1
    assert "FAIL" in smoke.stdout and "connectivity" in smoke.stdout


def tick_frame(n=3000, bad=0):
    rng = np.random.default_rng(5)
    symbols = rng.choice(["PETR4", "VALE3", "R_100"], n)
    frame = pd.DataFrame(
        {
            "symbol": symbols,
            "ts": 1_760_000_000_000_000_000 + np.arange(n) * 1_000_000,
            "price": np.round(rng.uniform(10, 20, n), 2),
            "volume": rng.integers(1, 10, n) * 100.0,
        }
    )
    frame["seq"] = frame.groupby("symbol").cumcount()
    if bad:
        frame.loc[: bad - 1, "price"] = -1.0
    return frame


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_import_file_through_log_into_store(tmp_path, fmt):
    frame = tick_frame(bad=7)
    path = tmp_path / f"ticks.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path, index=False)
    home = tmp_path / "home"
    result = run("import", str(path), "--home", str(home))
    assert result.returncode == 0, result.stderr
    assert "2,993 accepted" in result.stdout and "non_positive_price=7" in result.stdout
    assert "100%" in result.stderr  # the progress bar ran to the end
    store = open_store(f"sqlite:///{home / 'hft.sqlite3'}")
    try:
        good = frame.iloc[7:]
        for symbol, want in good.groupby("symbol"):
            got = store.read_ticks(symbol)
            assert got["seq"].tolist() == want["seq"].tolist()
            assert got["price"].tolist() == want["price"].tolist()
            assert got["ts"].tolist() == want["ts"].tolist()
    finally:
        store.close()
    again = run("import", str(path), "--home", str(home), "--no-progress")
    assert again.returncode == 0 and "0 accepted" in again.stdout  # seq makes re-imports idempotent
    assert not (home / "imports" / path.name).exists()  # import log removed once persisted


def test_import_reports_a_missing_column(tmp_path):
    path = tmp_path / "bad.csv"
    tick_frame().drop(columns=["price"]).to_csv(path, index=False)
    result = run("import", str(path), "--home", str(tmp_path / "home"))
    assert result.returncode == 2 and "price" in result.stderr


@pytest.mark.parametrize(
    ("args", "env", "needle"),
    [
        (["ingest", "--store", "mysql://x"], {}, "HFT_STORE_URL"),
        (["ingest"], {"HFT_LOG_FSYNC": "sometimes"}, "HFT_LOG_FSYNC"),
        (["ingest"], {"HFT_API_PORT": "http"}, "HFT_API_PORT"),
        (["ingest", "--feed", "replay"], {}, "--file"),
        (["ingest", "--symbols", "PETR4,bad|name"], {}, "invalid symbol"),
    ],
)
def test_bad_options_exit_2_with_a_message(tmp_path, args, env, needle):
    result = run(*args, "--home", str(tmp_path / "home"), env=env, timeout=60)
    assert result.returncode == 2, result.stdout + result.stderr
    assert needle in result.stderr
