"""Failure hook and run-failure sensor deliver alerts into loopback receivers."""

from __future__ import annotations

import dagster as dg
import pytest

from hft_pipeline.observability.alerts import run_failed
from hft_pipeline.orchestration.alerting import (
    ALERTED_TAG,
    AlertsResource,
    alert_on_failure,
    run_failure_alert_sensor,
)
from hft_pipeline_tests.observability.receivers import WebhookReceiver, free_port, parse_markdown_v2

SYMBOLS = dg.StaticPartitionsDefinition(["R_100", "frxEURUSD"])


@dg.asset(hooks={alert_on_failure}, partitions_def=SYMBOLS)
def exploding_candles() -> None:
    raise ValueError("boom: corrupt partition")


@dg.asset(hooks={alert_on_failure})
def healthy_indicators() -> int:
    return 1


@dg.asset(partitions_def=SYMBOLS)
def unhooked_backtests() -> None:
    raise RuntimeError("engine crashed")


@pytest.fixture
def web():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


def resource_for(web: WebhookReceiver, **overrides) -> AlertsResource:
    config = {
        "discord_webhook_url": web.discord_url,
        "telegram_bot_token": web.telegram_token,
        "telegram_chat_id": web.chat_id,
        "telegram_api_url": web.base_url,
        "dagster_ui_url": "http://127.0.0.1:3000",
        "read_environment": False,
        "retry_attempts": 2,
        "retry_wait_initial_s": 0.05,
    }
    return AlertsResource(**(config | overrides))


def test_resource_with_nothing_set_loads_and_sends_nothing():
    resource = AlertsResource(read_environment=False)
    assert resource.alerter().channels == []
    defs = dg.Definitions(
        assets=[exploding_candles, healthy_indicators],
        sensors=[run_failure_alert_sensor],
        resources={"alerts": AlertsResource()},
    )
    dg.Definitions.validate_loadable(defs)
    assert defs.resolve_sensor_def("run_failure_alert_sensor").default_status == (
        dg.DefaultSensorStatus.RUNNING
    )
    bad = AlertsResource(read_environment=False, alert_min_level="LOUD")
    assert bad.send(run_failed("j", "r", "e")) == {}


def test_failure_hook_on_an_asset_alerts_and_tags_the_run(web):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [exploding_candles],
        partition_key="R_100",
        instance=instance,
        resources={"alerts": resource_for(web)},
        raise_on_error=False,
    )
    assert not result.success
    assert web.rejected == []
    (discord,) = web.of_kind("discord")
    embed = discord.payload["embeds"][0]
    job = result.dagster_run.job_name  # materialize() runs `__ephemeral_asset_job__`
    assert embed["title"] == f"🔴 ERROR: Failed: step exploding_candles of {job}"
    assert "ValueError: boom: corrupt partition" in embed["description"]
    assert embed["color"] == 0xE74C3C
    assert embed["url"] == f"http://127.0.0.1:3000/runs/{result.run_id}"
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields == {"job": job, "run id": result.run_id, "step": "exploding_candles"}
    (telegram,) = web.of_kind("telegram")
    plain = parse_markdown_v2(telegram.payload["text"])
    assert "ValueError: boom: corrupt partition" in plain and f"run id: {result.run_id}" in plain
    assert instance.get_run_by_id(result.run_id).tags[ALERTED_TAG] == "true"


def test_dead_channels_never_fail_the_run_or_the_hook(web):
    dead = f"http://127.0.0.1:{free_port()}"
    alerts = resource_for(web, discord_webhook_url=f"{dead}/api/webhooks/1/{web.discord_token}")
    # A hook only runs on failure; a healthy asset with every channel dead still succeeds.
    all_dead = resource_for(
        web,
        discord_webhook_url=f"{dead}/api/webhooks/1/{web.discord_token}",
        telegram_api_url=dead,
    )
    ok = dg.materialize([healthy_indicators], resources={"alerts": all_dead}, raise_on_error=False)
    assert ok.success and ok.output_for_node("healthy_indicators") == 1
    result = dg.materialize(
        [exploding_candles],
        partition_key="frxEURUSD",
        resources={"alerts": alerts},
        raise_on_error=False,
    )
    assert not result.success
    types = [e.event_type for e in result.all_events]
    assert dg.DagsterEventType.HOOK_COMPLETED in types
    assert dg.DagsterEventType.HOOK_ERRORED not in types
    assert [e.step_key for e in result.get_step_failure_events()] == ["exploding_candles"]
    assert web.of_kind("discord") == [] and len(web.of_kind("telegram")) == 1


def _failure_context(result: dg.ExecuteInProcessResult, instance, alerts: AlertsResource):
    return dg.build_run_status_sensor_context(
        sensor_name="run_failure_alert_sensor",
        dagster_instance=instance,
        dagster_run=instance.get_run_by_id(result.run_id),
        dagster_event=result.get_run_failure_event(),
        resources={"alerts": alerts},
    ).for_run_failure()


def test_run_failure_sensor_alerts_for_runs_without_a_hook(web):
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [unhooked_backtests], partition_key="R_100", instance=instance, raise_on_error=False
    )
    assert not result.success
    run_failure_alert_sensor(_failure_context(result, instance, resource_for(web)))
    assert web.rejected == []
    (discord,) = web.of_kind("discord")
    embed = discord.payload["embeds"][0]
    job = result.dagster_run.job_name
    assert embed["title"] == f"🔴 ERROR: Failed: run of {job}"
    assert "step unhooked_backtests: RuntimeError: engine crashed" in embed["description"]
    assert f'Execution of run for "{job}" failed' in embed["description"]
    fields = {f["name"]: f["value"] for f in embed["fields"]}
    assert fields["partition"] == "R_100" and fields["run id"] == result.run_id
    plain = parse_markdown_v2(web.of_kind("telegram")[0].payload["text"])
    assert "RuntimeError: engine crashed" in plain and "partition: R_100" in plain


def test_run_failure_sensor_skips_runs_the_hook_already_reported(web):
    instance = dg.DagsterInstance.ephemeral()
    alerts = resource_for(web)
    result = dg.materialize(
        [exploding_candles],
        partition_key="R_100",
        instance=instance,
        resources={"alerts": alerts},
        raise_on_error=False,
    )
    assert len(web.of_kind("discord")) == 1  # from the hook
    outcome = run_failure_alert_sensor(_failure_context(result, instance, alerts))
    assert isinstance(outcome, dg.SkipReason) and "already alerted" in outcome.skip_message
    assert len(web.of_kind("discord")) == 1 and len(web.of_kind("telegram")) == 1


def test_run_failure_sensor_ticks_set_the_cursor_first_then_alert(web):
    """Through the sensor's real tick evaluation: the first tick only sets the cursor."""
    instance = dg.DagsterInstance.ephemeral()
    alerts = resource_for(web)
    defs = dg.Definitions(
        assets=[unhooked_backtests],
        sensors=[run_failure_alert_sensor],
        resources={"alerts": alerts},
    )
    sensor = defs.resolve_sensor_def("run_failure_alert_sensor")
    repo = defs.get_repository_def()
    before = dg.materialize(
        [unhooked_backtests], partition_key="R_100", instance=instance, raise_on_error=False
    )
    first = dg.build_sensor_context(
        instance=instance, repository_def=repo, resources={"alerts": alerts}
    )
    first_result = sensor.evaluate_tick(first)
    assert first_result.cursor and web.of_kind("discord") == []  # a failure before the cursor

    after = dg.materialize(
        [unhooked_backtests], partition_key="frxEURUSD", instance=instance, raise_on_error=False
    )
    second = dg.build_sensor_context(
        instance=instance,
        repository_def=repo,
        resources={"alerts": alerts},
        cursor=first_result.cursor,
    )
    second_result = sensor.evaluate_tick(second)
    assert second_result.cursor != first_result.cursor
    (discord,) = web.of_kind("discord")
    fields = {f["name"]: f["value"] for f in discord.payload["embeds"][0]["fields"]}
    assert fields["run id"] == after.run_id != before.run_id
    assert fields["partition"] == "frxEURUSD"
