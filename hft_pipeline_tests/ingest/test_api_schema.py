"""The ingest API against its own /openapi.json: schemathesis on the real loopback server.

Schemathesis's `st run` (its examples, coverage and fuzzing phases, MAX_EXAMPLES per operation)
runs every check but positive_data_acceptance against the served schema, with and without
HFT_API_TOKEN: no 5xx, and every answer declared (status, content type, headers, body). That
check is left out because no schema can say that start must be before end, which dates exist
(2026-02-30) or where int64 nanoseconds end; test_api.py covers those answers one by one.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest

from hft_pipeline.market.ticks import TickBatch
from hft_pipeline.settings import Settings
from hft_pipeline_tests.ingest.harness import ScriptedFeed, running_service

#: Cases per operation and phase; with a fixed seed, each run is a few hundred cases in ~10 s.
MAX_EXAMPLES = 50
SEED = 20261204
TOKEN = "s3cret"


def _ticks(symbol: str, n: int) -> TickBatch:
    ts = (time.time_ns() // 10**9 - 600) * 10**9 + np.arange(n) * 250_000_000
    return TickBatch.from_columns(symbol, ts, np.arange(n), 50.0 + np.arange(n) % 7, np.ones(n))


@pytest.mark.parametrize("token", ["", TOKEN], ids=["without token", "with token"])
def test_every_answer_is_declared_and_none_is_a_server_error(tmp_path, token):
    settings = Settings(home=tmp_path / "home", symbols=("PETR4", "R_100"), api_token=token)
    feed = ScriptedFeed([_ticks("PETR4", 1000), _ticks("R_100", 200)])  # the schema's examples
    report = tmp_path / "schemathesis.json"
    command = [
        *(sys.executable, "-m", "schemathesis.cli", "run"),
        *("--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--workers", "1"),
        *("--checks", "all", "--exclude-checks", "positive_data_acceptance"),
        *("--report", "json", "--report-json-path", str(report)),
        *(("--header", f"Authorization: Bearer {token}") if token else ()),
    ]
    with running_service(settings, feed=feed) as svc:
        svc.wait(lambda: svc.service.pending_ticks == 0 and svc.service.buffers.count("R_100"))
        run = subprocess.run(
            [*command, svc.url + "/openapi.json"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=tmp_path,  # its hypothesis database stays out of the checkout
        )
    result = json.loads(report.read_text())
    print(f"schemathesis {'with' if token else 'without'} token:", json.dumps(result["test_cases"]))
    output = run.stdout[-8000:] + run.stderr[-2000:]
    assert result["failures"] == [] and result["errors"] == [], output
    assert run.returncode == 0, output
    assert result["complete"] and result["operations"]["tested"] == 9, output
    assert result["test_cases"]["generated"] >= 200, result["test_cases"]
    assert result["warnings"]["missing_test_data"] == [], output  # the cases reach stored ticks
