"""Dagster wiring of the alert channels: a resource, a failure hook for assets, a run-failure sensor.

Hooks go on the assets (`@asset(hooks={alert_on_failure})`) because hooks given to
`define_asset_job` do not fire for `__ASSET_JOB` runs. The sensor is the backstop for failures
no hook sees (a killed run, a crashed run worker); it skips runs whose hook already alerted.
"""

from __future__ import annotations

import traceback
from typing import TYPE_CHECKING

import dagster as dg

from hft_pipeline.observability.alerts import (
    Alert,
    Alerter,
    DeliveryResult,
    RetryPolicy,
    run_failed,
)
from hft_pipeline.settings import env_name, environment

if TYPE_CHECKING:
    from dagster._utils.error import SerializableErrorInfo

# Set on a run by the failure hook once an alert went out, so the sensor does not repeat it.
ALERTED_TAG = "hft_pipeline/failure_alerted"

# The resource's fields that override the settings field of the same name.
_CHANNEL_FIELDS = (
    "discord_webhook_url",
    "telegram_bot_token",
    "telegram_chat_id",
    "telegram_api_url",
    "smtp_server",
    "smtp_port",
    "smtp_username",
    "smtp_password",
    "email_from",
    "email_to",
    "alert_min_level",
)


class AlertsResource(dg.ConfigurableResource):
    """Alert channels for Dagster code. Unset fields fall back to the alert variables
    (docs/configuration.md).

    Pass secrets as `dg.EnvVar(...)` (or leave them unset) so they never appear in the UI.
    With nothing configured the resource loads and sends nothing.
    """

    discord_webhook_url: str | None = None
    telegram_bot_token: str | None = None
    telegram_chat_id: str | None = None
    telegram_api_url: str | None = None
    smtp_server: str | None = None
    smtp_port: str | None = None
    smtp_username: str | None = None
    smtp_password: str | None = None
    email_from: str | None = None
    email_to: str | None = None
    alert_min_level: str | None = None
    # Base URL of the Dagster UI (e.g. http://127.0.0.1:3000) for links to runs.
    dagster_ui_url: str | None = None
    read_environment: bool = True
    retry_attempts: int = 4
    retry_timeout_s: float = 30.0
    retry_wait_initial_s: float = 0.5

    def alerter(self) -> Alerter:
        """An `Alerter` over the configured channels (the caller closes it)."""
        env = environment() if self.read_environment else {}
        for field_name in _CHANNEL_FIELDS:
            value = getattr(self, field_name)
            if value is not None and value != "":
                env[env_name(field_name)] = str(value)
        retry = RetryPolicy(
            attempts=self.retry_attempts,
            timeout_s=self.retry_timeout_s,
            wait_initial_s=self.retry_wait_initial_s,
        )
        return Alerter.from_env(env, retry=retry)

    def send(self, alert: Alert) -> dict[str, DeliveryResult]:
        """Deliver `alert` to every channel; never raises (a bad setting is logged, not thrown)."""
        try:
            alerter = self.alerter()
        except Exception as exc:  # noqa: BLE001 - e.g. a bad ALERT_MIN_LEVEL must not fail a run
            dg.get_dagster_logger().error(f"alerts are misconfigured: {exc}")
            return {}
        try:
            return alerter.send(alert)
        finally:
            alerter.close()

    def run_url(self, run_id: str) -> str | None:
        return f"{self.dagster_ui_url.rstrip('/')}/runs/{run_id}" if self.dagster_ui_url else None


def _describe(results: dict[str, DeliveryResult]) -> str:
    if not results:
        return "no channel configured (or below ALERT_MIN_LEVEL)"
    return ", ".join(
        f"{name}: ok" if r.ok else f"{name}: failed ({r.error})" for name, r in results.items()
    )


def _error_text(exc: BaseException | None) -> str:
    if exc is None:
        return "(no exception recorded)"
    lines = traceback.format_exception(exc)
    # The last frames and the message are what a reader needs; channels clip further.
    return "".join(lines)[-3000:]


@dg.failure_hook(required_resource_keys={"alerts"})
def alert_on_failure(context: dg.HookContext) -> None:
    """Alert that a step failed. A failing channel is logged and never fails the run."""
    try:
        alerts: AlertsResource = context.resources.alerts
        alert = run_failed(
            context.job_name,
            context.run_id,
            _error_text(context.op_exception),
            alerts.run_url(context.run_id),
            step=context.step_key,
        )
        results = alerts.send(alert)
        context.log.info(f"failure alert for step {context.step_key}: {_describe(results)}")
        if any(r.ok for r in results.values()):
            context.instance.add_run_tags(context.run_id, {ALERTED_TAG: "true"})
    except Exception as exc:  # noqa: BLE001 - alerting must never fail the run
        context.log.warning(f"failure alert not sent: {type(exc).__name__}: {exc}")


def _root_cause(error: SerializableErrorInfo | None) -> str:
    """The user's exception under Dagster's wrappers, with its innermost frames."""
    if error is None:
        return "failed (no error recorded)"
    while error.cause is not None:
        error = error.cause
    frames = "".join(error.stack[-2:]).rstrip()
    return f"{error.message.strip()}\n{frames}" if frames else error.message.strip()


def _job_label(run: dg.DagsterRun) -> str:
    # Dagster's implicit asset jobs (`__ASSET_JOB...`) say nothing to a reader; the assets do.
    if run.job_name.startswith("__") and run.asset_selection:
        return "assets " + ", ".join(sorted(k.to_user_string() for k in run.asset_selection))
    return run.job_name


@dg.run_failure_sensor(
    name="run_failure_alert_sensor",
    monitor_all_code_locations=True,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Alerts on failed runs no failure hook reported (killed runs, crashed workers).",
)
def run_failure_alert_sensor(context: dg.RunFailureSensorContext, alerts: AlertsResource):
    """Backstop alert for every failed run in every code location (first tick sets the cursor)."""
    run = context.dagster_run
    if run.tags.get(ALERTED_TAG):
        return dg.SkipReason(f"run {run.run_id}: the failure hook already alerted")
    details = [context.failure_event.message or "run failed"]
    for event in context.get_step_failure_events():
        details.append(f"step {event.step_key}: {_root_cause(event.step_failure_data.error)}")
    alert = run_failed(_job_label(run), run.run_id, "\n".join(details), alerts.run_url(run.run_id))
    partition = run.tags.get("dagster/partition")
    if partition:
        alert = Alert(
            alert.level,
            alert.title,
            alert.message,
            {**alert.fields, "partition": partition},
            alert.source,
            alert.url,
        )
    results = alerts.send(alert)
    context.log.info(f"run failure alert for {run.run_id}: {_describe(results)}")
    return None


__all__ = ["ALERTED_TAG", "AlertsResource", "alert_on_failure", "run_failure_alert_sensor"]
