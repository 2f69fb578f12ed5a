"""`hft up` starts the ingest service and `dagster dev`; one SIGINT stops all of it with exit 0."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from hft_pipeline.launcher import prepare_dagster_home

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port: int, path: str) -> tuple[int, bytes] | None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    except OSError:
        return None
    finally:
        conn.close()


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, f"hft up exited with {proc.returncode} while waiting for {what}"
        time.sleep(0.25)
    raise AssertionError(f"{what} not ready within {timeout}s")


def test_prepare_dagster_home_links_the_project_config(tmp_path: Path) -> None:
    home = prepare_dagster_home(tmp_path / "dagster", ROOT)
    link = home / "dagster.yaml"
    assert link.is_symlink() and link.resolve() == (ROOT / "dagster.yaml").resolve()
    # A dagster.yaml of the user's own is left alone.
    own = tmp_path / "own"
    own.mkdir()
    (own / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    prepare_dagster_home(own, ROOT)
    assert not (own / "dagster.yaml").is_symlink()
    assert (own / "dagster.yaml").read_text() == "telemetry:\n  enabled: false\n"


@pytest.mark.timeout(120)
def test_hft_up_starts_both_and_one_sigint_stops_everything(tmp_path: Path) -> None:
    home = tmp_path / "home"
    api_port, ui_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HFT_", "DAGSTER_"))}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hft_pipeline.cli",
            "up",
            "--home",
            str(home),
            "--port",
            str(api_port),
            "--dagster-port",
            str(ui_port),
            "--rate",
            "200",
        ],
        cwd=ROOT,
        env=env,
        start_new_session=True,  # like a terminal: the signal goes to hft up alone
    )
    try:
        wait_for(lambda: (get(api_port, "/health") or (0,))[0] == 200, 30, "ingest /health", proc)
        wait_for(lambda: (get(ui_port, "/server_info") or (0,))[0] == 200, 90, "Dagster UI", proc)
        family = psutil.Process(proc.pid).children(recursive=True)
        commands = [" ".join(p.cmdline()) for p in family if p.is_running()]
        assert any("hft_pipeline.cli ingest" in c for c in commands), commands
        assert any("dagster dev" in c for c in commands), commands
        assert any(
            "dagster-daemon" in c or "dagster_daemon" in c or "daemon" in c for c in commands
        )
        assert (home / "dagster" / "dagster.yaml").resolve() == (ROOT / "dagster.yaml").resolve()

        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        stop_s = time.monotonic() - started
        _, alive = psutil.wait_procs(family, timeout=5)
        assert not alive, [p.pid for p in alive]
        assert get(api_port, "/health") is None and get(ui_port, "/server_info") is None
        assert stop_s < 45
        # The instance lives under HFT_HOME/dagster and the ticks under HFT_HOME.
        assert (home / "dagster" / "history" / "runs.db").exists()
        assert (home / "hft.sqlite3").exists()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
