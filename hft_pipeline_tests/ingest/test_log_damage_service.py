"""A damaged tick log, as the service reports it: the intact records are persisted, the lost
ticks are in /status, /metrics and /health (degraded until acknowledged), start-up never fails.
A subscription stored before symbols were fully matched does not stop the service either."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hft_pipeline.ingest.ticklog import TickLog
from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.settings import Settings
from hft_pipeline.store import open_store
from hft_pipeline_tests.ingest.harness import ScriptedFeed, running_service

T0 = (time.time_ns() // 10**9 - 900) * 10**9


def batch(seq0: int, n: int) -> TickBatch:
    k = np.arange(seq0, seq0 + n)
    return TickBatch.from_columns("PETR4", T0 + k * 1_000_000, k, 30 + (k % 9) / 10, np.ones(n))


def write_log(log_dir: Path, records: int, per_record: int) -> list[int]:
    with TickLog(log_dir) as ticklog:
        return [ticklog.append(batch(i * per_record, per_record)) for i in range(records)]


def flip(log_dir: Path, offset: int, n: int = 4) -> None:
    [segment] = sorted(log_dir.glob("*.log"))
    with open(segment, "r+b") as f:
        f.seek(offset - int(segment.stem))
        data = bytearray(f.read(n))
        f.seek(offset - int(segment.stem))
        f.write(bytes(b ^ 0xFF for b in data))


def test_damage_in_the_middle_keeps_later_records_and_degrades_health_until_acknowledged(
    tmp_path,
):
    settings = Settings(home=tmp_path / "home", symbols=("PETR4",))
    settings.home.mkdir()
    ends = write_log(settings.log_dir, records=40, per_record=500)
    flip(settings.log_dir, ends[19] + 200)  # inside record 20's payload

    with running_service(settings, feed=ScriptedFeed()) as svc:
        svc.wait(lambda: svc.service.pending_ticks == 0)
        health = svc.get("/health")
        assert health.status_code == 503
        [problem] = health.json()["problems"]
        assert problem.startswith("tick log damaged: 1 span(s)") and "lost 500 ticks" in problem
        damage = svc.get("/status").json()["log"]["damage"]
        assert damage["unacknowledged"] == 1 and damage["lost_ticks"] == 500
        [span] = damage["spans"]
        assert (span["offset"], span["end"], span["records"], span["ticks"]) == (
            ends[19],
            ends[20],
            1,
            500,
        )
        assert span["acknowledged"] is False
        metrics = svc.get("/metrics").text
        assert 'hft_log_damaged_spans{state="unacknowledged"} 1.0' in metrics
        assert "hft_log_lost_ticks 500.0" in metrics

        ack = svc.post("/log/acknowledge")
        assert ack.status_code == 200 and ack.json()["acknowledged"] == 1
        assert svc.get("/health").status_code == 200
        assert svc.get("/status").json()["log"]["damage"]["spans"][0]["acknowledged"] is True

    with running_service(settings, feed=ScriptedFeed()) as svc:  # acknowledged stays so
        assert svc.get("/health").status_code == 200
        assert svc.get("/status").json()["log"]["damage"]["lost_ticks"] == 500

    store = open_store(settings.resolved_store_url)
    try:
        seqs = store.read_ticks("PETR4")["seq"].to_numpy()
    finally:
        store.close()
    expected = np.r_[np.arange(0, 10_000), np.arange(10_500, 20_000)]
    assert np.array_equal(seqs, expected)  # every intact record before and after the damage


def test_a_stored_subscription_with_an_invalid_name_is_ignored_at_start(tmp_path, caplog):
    settings = Settings(home=tmp_path / "home", symbols=("PETR4",))
    settings.home.mkdir()
    store = open_store(settings.resolved_store_url)
    try:
        # As an older version stored it (its check used re.match with "$").
        with store._conn() as conn:
            conn.execute(
                "insert into subscriptions (symbol, exchange, created_ns) values (?, ?, ?)",
                ("NLSYM\n", "SIM", 1),
            )
    finally:
        store.close()
    with running_service(settings, feed=ScriptedFeed()) as svc:
        assert svc.get("/health").status_code == 200
        assert svc.get("/status").json()["subscriptions"] == ["PETR4"]
    assert any("ignoring stored subscription 'NLSYM\\n'" in r.getMessage() for r in caplog.records)
