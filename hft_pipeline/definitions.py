"""The Dagster code location: assembles assets, jobs, sensors, schedules and resources."""

from __future__ import annotations

import os

from hft_pipeline.runtime import configure_numba_cache

# Before anything can import numba (run workers import vectorbt after loading this module):
# numba reads its cache directory once (docs/layers.md).
configure_numba_cache()

from dagster import Definitions, EnvVar

from hft_pipeline.orchestration.alerting import AlertsResource, run_failure_alert_sensor
from hft_pipeline.orchestration.assets import ALL_ASSETS
from hft_pipeline.orchestration.jobs import analytics_job, candles_job
from hft_pipeline.orchestration.resources import IngestApiResource, StoreResource
from hft_pipeline.orchestration.schedules import candles_catchup_schedule, daily_analytics_schedule
from hft_pipeline.orchestration.sensors import (
    first_analytics_sensor,
    ingest_health_sensor,
    ingest_watermark_sensor,
)


def _store() -> StoreResource:
    # EnvVar keeps the URL (and its password) out of the UI; unset, the resource's embedded default.
    if os.environ.get("HFT_STORE_URL"):
        return StoreResource(store_url=EnvVar("HFT_STORE_URL"))
    return StoreResource()


def _ingest_api() -> IngestApiResource:
    host = os.environ.get("HFT_API_HOST") or "127.0.0.1"
    port = os.environ.get("HFT_API_PORT") or "8002"
    if os.environ.get("HFT_API_TOKEN"):
        return IngestApiResource(base_url=f"http://{host}:{port}", token=EnvVar("HFT_API_TOKEN"))
    return IngestApiResource(base_url=f"http://{host}:{port}")


def _alerts() -> AlertsResource:
    # `hft up` sets HFT_DAGSTER_UI_URL so alerts link to the failed run.
    return AlertsResource(dagster_ui_url=os.environ.get("HFT_DAGSTER_UI_URL") or None)


defs = Definitions(
    assets=ALL_ASSETS,
    jobs=[candles_job, analytics_job],
    sensors=[
        ingest_watermark_sensor,
        ingest_health_sensor,
        first_analytics_sensor,
        run_failure_alert_sensor,
    ],
    schedules=[daily_analytics_schedule, candles_catchup_schedule],
    resources={"store": _store(), "ingest_api": _ingest_api(), "alerts": _alerts()},
)
