"""Ready-made alerts for the events the pipeline reports: failed runs and checks, ingest health,
circuit breakers, trades and standout backtests."""

from __future__ import annotations

from hft_pipeline.observability.alerts.model import Alert, Level


def run_failed(
    job: str, run_id: str, error: str, url: str | None = None, *, step: str | None = None
) -> Alert:
    """A Dagster run (or one of its steps) failed."""
    fields = {"job": job, "run id": run_id}
    if step:
        fields["step"] = step
    what = f"step {step} of {job}" if step else f"run of {job}"
    return Alert(Level.ERROR, f"Failed: {what}", error, fields, "dagster", url)


def asset_check_failed(
    asset: str, check: str, partition: str | None, description: str, *, level: Level = Level.ERROR
) -> Alert:
    """An asset check did not pass."""
    fields = {"asset": asset, "check": check, "partition": partition or "(unpartitioned)"}
    return Alert(level, f"Asset check failed: {asset} / {check}", description, fields, "dagster")


def ingest_stalled(
    lag_s: float, pending: int, detail: str, *, level: Level = Level.WARNING
) -> Alert:
    """The ingest service is unhealthy or persistence lags (WARNING, escalated to CRITICAL)."""
    fields = {"persistence lag": f"{lag_s:.1f} s", "pending ticks": f"{pending:,}"}
    return Alert(level, "Ingest stalled", detail, fields, "ingest")


def ingest_recovered(
    lag_s: float, pending: int, detail: str = "", *, down_for_s: float | None = None
) -> Alert:
    """The ingest service is healthy again."""
    fields = {"persistence lag": f"{lag_s:.1f} s", "pending ticks": f"{pending:,}"}
    if down_for_s is not None:
        fields["unhealthy for"] = f"{down_for_s:.0f} s"
    return Alert(
        Level.INFO, "Ingest recovered", detail or "Ingest is healthy again.", fields, "ingest"
    )


def circuit_breaker_opened(name: str, failures: int, cooldown_s: float) -> Alert:
    """A circuit breaker opened after repeated failures; calls pause for the cool-down."""
    fields = {
        "breaker": name,
        "consecutive failures": str(failures),
        "cool-down": f"{cooldown_s:g} s",
    }
    message = f"{name} failed {failures} times in a row; calls are paused for {cooldown_s:g} s."
    return Alert(Level.ERROR, f"Circuit breaker open: {name}", message, fields, "ingest")


def trade_executed(symbol: str, side: str, price: float, size: float, strategy: str) -> Alert:
    """A strategy executed a trade."""
    fields = {
        "symbol": symbol,
        "side": side.upper(),
        "price": f"{price:.10g}",
        "size": f"{size:.10g}",
        "strategy": strategy,
    }
    message = f"{strategy}: {side.upper()} {size:.10g} {symbol} @ {price:.10g}"
    return Alert(Level.INFO, f"Trade: {side.upper()} {symbol}", message, fields, "strategy")


def high_win_rate(strategy: str, symbol: str, win_rate: float, trades: int) -> Alert:
    """A strategy's win rate (a fraction, 0..1) stands out over enough trades."""
    fields = {
        "strategy": strategy,
        "symbol": symbol,
        "win rate": f"{win_rate:.1%}",
        "trades": str(trades),
    }
    message = f"{strategy} on {symbol} won {win_rate:.1%} of {trades} trades."
    return Alert(Level.INFO, f"High win rate: {strategy} on {symbol}", message, fields, "backtests")
