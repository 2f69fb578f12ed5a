"""The code location loads with no environment, creates no store, and holds every definition."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, Definitions

from hft_pipeline.definitions import defs
from hft_pipeline.orchestration.jobs import ANALYTICS_JOB, CANDLES_JOB

ROOT = Path(__file__).resolve().parents[2]
ASSETS = {"ticks", "candles", "indicators", "backtests", "strategy_comparison"}
SENSORS = {
    "ingest_watermark_sensor",
    "ingest_health_sensor",
    "first_analytics_sensor",
    "run_failure_alert_sensor",
}
SCHEDULES = {"daily_analytics_schedule", "candles_catchup_schedule"}


@pytest.mark.timeout(120)
def test_definitions_validate_with_an_empty_environment_and_create_no_store(
    tmp_path: Path,
) -> None:
    shutil.copy(ROOT / "workspace.yaml", tmp_path / "workspace.yaml")
    dagster = Path(sys.executable).with_name("dagster")
    result = subprocess.run(
        [str(dagster), "definitions", "validate", "-w", "workspace.yaml"],
        cwd=tmp_path,
        env={},  # no HFT_*, no DAGSTER_HOME, no secrets, not even PATH
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Validation successful for code location hft_pipeline" in result.stdout + result.stderr
    created = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    # The embedded store would be .hft/hft.sqlite3 here; loading definitions must not create it.
    assert not any(p.endswith((".sqlite3", ".sqlite3-wal", ".db")) for p in created), created


def test_definitions_hold_every_asset_job_sensor_schedule_and_resource() -> None:
    Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    keys = {key.to_user_string() for key in repo.asset_graph.get_all_asset_keys()}
    assert keys >= ASSETS
    assert {s.name for s in repo.sensor_defs} == SENSORS
    assert {s.name for s in repo.schedule_defs} == SCHEDULES
    assert {CANDLES_JOB, ANALYTICS_JOB} <= {j.name for j in repo.get_all_jobs()}
    assert set(defs.resources) == {"store", "ingest_api", "alerts"}

    candles_job = defs.resolve_job_def(CANDLES_JOB)
    assert candles_job.partitions_def is not None
    assert {k.to_user_string() for k in candles_job.asset_layer.executable_asset_keys} == {
        "candles",
        "indicators",
    }
    analytics_job = defs.resolve_job_def(ANALYTICS_JOB)
    assert {k.to_user_string() for k in analytics_job.asset_layer.executable_asset_keys} == {
        "backtests",
        "strategy_comparison",
    }
    # The graph a newcomer sees: ticks -> candles -> indicators -> backtests -> comparison.
    graph = repo.asset_graph
    assert AssetKey("ticks") in graph.get(AssetKey("candles")).parent_keys
    assert AssetKey("candles") in graph.get(AssetKey("indicators")).parent_keys
    assert AssetKey("backtests") in graph.get(AssetKey("strategy_comparison")).parent_keys

    watermark = repo.get_sensor_def("ingest_watermark_sensor")
    assert watermark.default_status.value == "RUNNING"
    assert watermark.minimum_interval_seconds == 30
    assert repo.get_schedule_def("daily_analytics_schedule").cron_schedule == "10 0 * * *"
    assert repo.get_schedule_def("daily_analytics_schedule").execution_timezone == "UTC"
    for name in SCHEDULES:
        assert repo.get_schedule_def(name).default_status.value == "RUNNING"


def test_workspace_loads_the_module_and_no_pyproject_override() -> None:
    workspace = yaml.safe_load((ROOT / "workspace.yaml").read_text())
    (entry,) = workspace["load_from"]
    assert entry["python_module"]["module_name"] == "hft_pipeline.definitions"
    assert "[tool.dagster]" not in (ROOT / "pyproject.toml").read_text()


def test_instance_configs_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with DagsterInstance.get() as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert instance.run_monitoring_enabled
        assert not instance.telemetry_enabled
        queue = instance.get_concurrency_config().run_queue_config
        assert queue.max_concurrent_runs == 2
        assert instance.get_runs_count() == 0
    assert (home / "history" / "runs.db").exists()  # embedded storage under DAGSTER_HOME

    pg = yaml.safe_load((ROOT / "deploy" / "postgres" / "dagster.yaml").read_text())
    db = pg["storage"]["postgres"]["postgres_db"]
    assert db["scheme"] == "postgresql+psycopg2"
    assert {db[k]["env"] for k in ("hostname", "port", "username", "password", "db_name")} == {
        f"DAGSTER_PG_{n}" for n in ("HOST", "PORT", "USER", "PASSWORD", "DB")
    }
    root = yaml.safe_load((ROOT / "dagster.yaml").read_text())
    shared = ("telemetry", "run_coordinator", "concurrency", "run_monitoring", "sensors")
    assert {k: pg[k] for k in shared} == {k: root[k] for k in shared}
    assert os.environ["DAGSTER_HOME"] == str(home)
