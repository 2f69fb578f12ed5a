"""Process start-up: NUMBA_CACHE_DIR is set by the entry points, before numba is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hft_pipeline.runtime import numba_cache_dir


def _python(script: str, cwd: Path, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "HFT_HOME")}
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_configure_numba_cache_before_the_core_points_numba_at_the_home(tmp_path: Path) -> None:
    script = """
import json
from hft_pipeline.runtime import configure_numba_cache
configure_numba_cache()
import hft_pipeline.market.backtest
from numba.core import config
print(json.dumps({"numba": config.CACHE_DIR}))
"""
    got = _python(script, tmp_path, HFT_HOME=str(tmp_path / "home"))
    assert got == {"numba": str(tmp_path / "home" / "numba-cache")}
    got = _python(script, tmp_path)  # no HFT_HOME: the settings' default home, ./.hft
    assert got == {"numba": str(tmp_path / ".hft" / "numba-cache")}
    got = _python(script, tmp_path, HFT_HOME="h", NUMBA_CACHE_DIR=str(tmp_path / "mine"))
    assert got == {"numba": str(tmp_path / "mine")}  # an explicit value wins


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["ingest", "--home", "given"], "given"),  # --home wins over HFT_HOME
        (["smoke", "http://127.0.0.1:9"], "env-home"),  # no --home: HFT_HOME
    ],
)
def test_the_cli_sets_the_cache_before_a_command_runs(
    tmp_path: Path, argv: list[str], expected: str
) -> None:
    # The command is replaced by a probe reporting what it starts with.
    script = f"""
import json, os, sys
from hft_pipeline import cli
def probe(args):
    print(json.dumps({{"dir": os.environ.get("NUMBA_CACHE_DIR"),
                      "numba_loaded": "numba" in sys.modules}}))
    return 0
cli.cmd_ingest = cli.cmd_smoke = probe
cli.main({argv!r})
"""
    got = _python(script, tmp_path, HFT_HOME="env-home")
    assert got == {"dir": str(numba_cache_dir(tmp_path / expected)), "numba_loaded": False}
