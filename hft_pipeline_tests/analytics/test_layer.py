"""The application layer loads without Dagster, orchestration or the ingest service."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import hft_pipeline.analytics

MODULES = sorted(
    f"hft_pipeline.analytics.{p.stem}"
    for p in Path(hft_pipeline.analytics.__file__).parent.glob("*.py")
    if p.stem != "__init__"
)


def test_analytics_modules_import_no_dagster_orchestration_or_ingest() -> None:
    assert {"candles", "indicators", "backtests", "comparison", "checks"} <= {
        m.rsplit(".", 1)[1] for m in MODULES
    }
    code = (
        "import importlib, json, sys\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = json.loads(out.stdout.splitlines()[-1])
    forbidden = ("dagster", "hft_pipeline.orchestration", "hft_pipeline.ingest", "matplotlib")
    assert [m for m in loaded if m.split(".")[0] == "dagster" or m.startswith(forbidden)] == []
