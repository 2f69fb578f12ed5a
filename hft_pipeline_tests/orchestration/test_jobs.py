"""Run policies: run keys and tags of every request, and the instance limits that key on them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hft_pipeline.orchestration import jobs
from hft_pipeline.orchestration.assets import candles, indicators

ROOT = Path(__file__).resolve().parents[2]


def test_every_request_has_its_run_key_and_tags() -> None:
    final = jobs.final_candles_request("2026-01-04-18:00")
    assert (final.run_key, final.partition_key) == ("2026-01-04-18:00", "2026-01-04-18:00")
    assert final.tags == {"hft/refresh": "final"}

    live = jobs.live_candles_request("2026-01-04-18:00", 1_767_550_000_000_000_000)
    assert live.run_key == "2026-01-04-18:00@1767550000000000000"
    assert live.tags == {"hft/refresh": "live"}

    catchup = jobs.catchup_candles_request("2026-01-04-18:00", "2026-01-05T07")
    assert catchup.run_key == "catchup:2026-01-04-18:00@2026-01-05T07"
    assert catchup.tags == {"hft/refresh": "final"}

    first = jobs.first_analytics_request(42)
    assert (first.run_key, first.tags) == ("first-analytics-42", {"hft/trigger": "first-analytics"})
    daily = jobs.daily_analytics_request("2026-01-05")
    assert (daily.run_key, daily.tags) == ("analytics-2026-01-05", {"hft/day": "2026-01-05"})


@pytest.mark.parametrize("config", ["dagster.yaml", "deploy/postgres/dagster.yaml"])
def test_instance_concurrency_limits_key_on_the_jobs_tags(config: str) -> None:
    limits = yaml.safe_load((ROOT / config).read_text())["concurrency"]["runs"][
        "tag_concurrency_limits"
    ]
    by_tag = {(limit["key"], limit["value"]): limit["limit"] for limit in limits}
    # One live refresh at a time, one analytics run at a time.
    assert by_tag == {(jobs.REFRESH_TAG, jobs.LIVE): 1, (jobs.JOB_TAG, "analytics"): 1}
    assert jobs.analytics_job.tags[jobs.JOB_TAG] == "analytics"
    assert jobs.candles_job.tags[jobs.JOB_TAG] == "candles"


def test_partitioned_assets_backfill_a_day_per_run() -> None:
    for asset_def in (candles, indicators):
        assert asset_def.backfill_policy == jobs.CANDLES_BACKFILL_POLICY
        assert asset_def.backfill_policy.max_partitions_per_run == 24
