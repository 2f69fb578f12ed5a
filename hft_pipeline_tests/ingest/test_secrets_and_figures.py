"""Secrets stay out of every surface; pending_ticks is exact after a restart."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time

import numpy as np

from hft_pipeline.ingest.service import IngestService
from hft_pipeline.ingest.ticklog import TickLog
from hft_pipeline.market.ticks import TickBatch, concat_batches
from hft_pipeline.settings import Settings
from hft_pipeline.store import open_store
from hft_pipeline_tests.ingest.harness import (
    ScriptedFeed,
    free_port,
    running_service,
    start_ingest,
)

SECRET, SSL_SECRET = "hunter2-query-secret", "ssl-key-secret-99"
T0 = (time.time_ns() // 10**9 - 3600) * 10**9


def closed_port() -> int:
    return free_port()  # nothing listens there: connections are refused at once


def secret_urls(port: int) -> list[str]:
    return [
        f"postgresql://postgres@127.0.0.1:{port}/hft?password={SECRET}&sslpassword={SSL_SECRET}",
        f"postgresql://postgres:{SECRET}@127.0.0.1:{port}/hft?sslpassword={SSL_SECRET}",
    ]


def assert_clean(text: str) -> None:
    assert SECRET not in text and SSL_SECRET not in text, text


def test_no_secret_on_status_health_last_error_or_log_lines(tmp_path, caplog):
    for i, url in enumerate(secret_urls(closed_port())):
        settings = Settings(home=tmp_path / f"home{i}", store_url=url, symbols=("PETR4",))
        with (
            caplog.at_level(logging.DEBUG),
            running_service(settings, feed=ScriptedFeed(), require_drained=False) as svc,
        ):
            status = svc.get("/status")
            health = svc.get("/health")
            assert health.status_code == 503 and status.json()["status"] == "degraded"
            assert "***" in status.json()["persistence"]["store"]
            assert_clean(status.text)
            assert_clean(health.text)
            assert_clean(str(svc.service.persister.last_error))
            assert_clean(str(svc.service.store_error))
        for record in caplog.records:
            assert_clean(record.getMessage())
            if record.exc_text:
                assert_clean(record.exc_text)
        caplog.clear()


def test_no_secret_in_the_start_up_log_line_or_a_start_error(tmp_path):
    port = free_port()
    url = secret_urls(closed_port())[1]
    home = tmp_path / "h"
    proc = start_ingest(home, url, port, "--symbols", "PETR4", ready="/test")
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert "ingest running" in out and "store unavailable at start" in out, out
    assert_clean(out)

    bad = f"mysql://root:{SECRET}@db/hft?password={SSL_SECRET}"
    cmd = [sys.executable, "-m", "hft_pipeline.cli", "ingest", "--home", str(home)]
    failed = subprocess.run([*cmd, "--store", bad], capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and "HFT_STORE_URL" in failed.stderr
    assert_clean(failed.stdout + failed.stderr)


def _records(n_records: int, per_record: int) -> list[TickBatch]:
    out = []
    for r in range(n_records):
        k = np.arange(r * per_record, (r + 1) * per_record)
        out.append(
            TickBatch.from_columns("PETR4", T0 + k * 1000, k, 10 + (k % 5) / 10, np.ones(len(k)))
        )
    return out


def test_pending_ticks_after_a_restart_is_exact_and_reaches_zero(tmp_path):
    """300 records of 1,000 ticks, the store holding the first 150: pending is 150,000, not the
    ~100,000-tick replay chunks that straddle the store's offset."""
    settings = Settings(home=tmp_path / "home", symbols=("PETR4",))
    settings.home.mkdir()
    (settings.home / "ticklog.id").write_text("fixed")
    records = _records(300, 1000)
    with TickLog(settings.log_dir) as ticklog:
        offsets = [ticklog.append(b) for b in records]
    store = open_store(settings.resolved_store_url)
    store.write_ticks(concat_batches(records[:150]), offsets[149], "ticklog-fixed")
    store.close()

    service = IngestService(settings, feed=ScriptedFeed())
    report = service.open()
    try:
        assert report.replayed_ticks == 300_000
        assert report.backlog_ticks == 150_000
        assert service.pending_ticks <= 150_000
        deadline = time.monotonic() + 60
        while service.pending_ticks and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.pending_ticks == 0
        assert service.persister.persisted_ticks == 150_000
        service.refresh_gauges()
        assert service.metrics.pending_ticks._value.get() == 0
    finally:
        service.close()
    store = open_store(settings.resolved_store_url)
    try:
        assert len(store.read_ticks("PETR4")) == 300_000
    finally:
        store.close()
