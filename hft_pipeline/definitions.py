"""The Dagster code location: assembles assets, jobs, sensors, schedules and resources."""

from __future__ import annotations

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
from hft_pipeline.settings import Settings, env_name


def _store(settings: Settings) -> StoreResource:
    # EnvVar keeps the URL (and its password) out of the UI; unset, the resource's embedded default.
    if settings.store_url:
        return StoreResource(store_url=EnvVar(env_name("store_url")))
    return StoreResource()


def _ingest_api(settings: Settings) -> IngestApiResource:
    base_url = f"http://{settings.api_host}:{settings.api_port}"
    if settings.api_token.get_secret_value():
        return IngestApiResource(base_url=base_url, token=EnvVar(env_name("api_token")))
    return IngestApiResource(base_url=base_url)


def _alerts(settings: Settings) -> AlertsResource:
    # Secrets set in the environment reach the resource as EnvVar, never as values in the UI;
    # the other channel settings are read by the resource itself. `hft up` sets
    # HFT_DAGSTER_UI_URL so alerts link to the failed run.
    secrets = {
        name: EnvVar(env_name(name))
        for name in ("discord_webhook_url", "telegram_bot_token", "smtp_password")
        if getattr(settings, name).get_secret_value()
    }
    return AlertsResource(dagster_ui_url=settings.dagster_ui_url or None, **secrets)


_settings = Settings.from_env()

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
    resources={
        "store": _store(_settings),
        "ingest_api": _ingest_api(_settings),
        "alerts": _alerts(_settings),
    },
)
