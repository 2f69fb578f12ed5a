"""Every tunable of the system in one typed model, read once from the environment.

Field `x` reads `HFT_X` (the alert channels and a few tools' own variables keep their names).
Fields are flat, so `settings.persist_batch_size` reads as before; each belongs to one group
(`GROUPS`), and docs/configuration.md and `hft config` list them by group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PrivateAttr, SecretStr, ValidationError, field_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars

from hft_pipeline.market.ticks import InvalidSymbolError, validate_symbol
from hft_pipeline.observability.redaction import MASK, redact_url

FSYNC_POLICIES = ("always", "interval", "off")

#: First hourly partition when HFT_PARTITIONS_START is unset. Sensors and the catch-up schedule
#: start at the first stored tick, not here, so an early default requests nothing by itself.
DEFAULT_PARTITIONS_START = datetime(2025, 1, 1, tzinfo=UTC)

#: The groups, in the order the docs and `hft config` show them: (key, title).
GROUPS: tuple[tuple[str, str], ...] = (
    ("store", "Home and store"),
    ("api", "Ingest API"),
    ("buffers", "Ring buffers and live candles"),
    ("log", "Tick log"),
    ("persister", "Persister"),
    ("ingest", "Validation, gaps and shutdown"),
    ("feed", "Feeds"),
    ("partitions", "Partitions"),
    ("sensors", "Watermark sensor"),
    ("health", "Ingest health alerts"),
    ("alerts", "Alert channels"),
    ("cache", "Indicator cache"),
    ("runtime", "Dagster and process start-up"),
)

#: Where a value came from, as `hft config` shows it.
DEFAULT, COMMAND_LINE, SET_IN_CODE = "default", "command line", "set in code"


class SettingsError(ValueError):
    """An environment variable or option with a value we cannot use."""


def _var(group: str, env: str, default: Any, doc: str, **constraints: Any) -> Any:
    return Field(
        default,
        description=doc,
        validation_alias=env,
        json_schema_extra={"group": group, "env": env},
        **constraints,
    )


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class _MappingEnvSource(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping instead of `os.environ`."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._mapping = env
        super().__init__(settings_cls, case_sensitive=True, env_ignore_empty=True)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        # The source's one hook for where variables come from (it reads os.environ otherwise).
        return parse_env_vars(self._mapping, True, True, None)


class Settings(BaseSettings):
    """Every tunable of the system; `Settings.from_env()` reads them, `Settings(...)` is exact."""

    model_config = SettingsConfigDict(
        frozen=True,
        validate_by_name=True,
        validate_by_alias=True,
        extra="forbid",
        case_sensitive=True,
    )
    _sources: dict[str, str] = PrivateAttr(default_factory=dict)

    # Home and store.
    home: Path = _var(
        "store",
        "HFT_HOME",
        Path(".hft"),
        "Directory for the tick log, the embedded SQLite store and caches.",
    )
    store_url: str = _var(
        "store",
        "HFT_STORE_URL",
        "",
        "sqlite:///PATH or postgresql://user:pass@host/db; empty: sqlite:///$HFT_HOME/hft.sqlite3.",
    )
    pool_size: int = _var(
        "store", "HFT_POOL_SIZE", 20, "PostgreSQL connections of the ingest service's pool."
    )
    # Ingest API (docs/api.md; store queries: docs/candles.md).
    api_host: str = _var(
        "api",
        "HFT_API_HOST",
        "127.0.0.1",
        "Address the ingest API binds (and Dagster's client calls).",
    )
    api_port: int = _var("api", "HFT_API_PORT", 8002, "Port of the ingest API.")
    api_token: SecretStr = _var(
        "api",
        "HFT_API_TOKEN",
        SecretStr(""),
        "Bearer token mutating endpoints require; empty: no token.",
    )
    api_store_queries: int = _var(
        "api", "HFT_API_STORE_QUERIES", 2, "Store queries the API runs at once.", ge=1
    )
    api_store_queue: int = _var(
        "api",
        "HFT_API_STORE_QUEUE",
        32,
        "Store queries that may wait for a slot (more: 429).",
        ge=0,
    )
    api_store_wait_ms: int = _var(
        "api",
        "HFT_API_STORE_WAIT_MS",
        1000,
        "How long a store query waits for a slot before 429, in ms.",
        ge=0,
    )
    api_store_timeout_s: float = _var(
        "api",
        "HFT_API_STORE_TIMEOUT_S",
        5.0,
        "A store query running longer is cancelled (503), in seconds.",
        gt=0,
    )
    # Ring buffers and live candles.
    buffer_capacity: int = _var(
        "buffers", "HFT_BUFFER_CAPACITY", 5_000_000, "Ticks kept in memory per symbol."
    )
    buffer_max_bytes: int = _var(
        "buffers",
        "HFT_BUFFER_MAX_BYTES",
        2 * 1024**3,
        "Memory budget of all ring buffers together, in bytes.",
    )
    candle_history: int = _var(
        "buffers",
        "HFT_CANDLE_HISTORY",
        10_000,
        "Closed live candles kept per symbol and timeframe.",
    )
    # Tick log.
    log_fsync: str = _var(
        "log", "HFT_LOG_FSYNC", "interval", "fsync policy of the tick log: always, interval or off."
    )
    log_fsync_interval_ms: int = _var(
        "log",
        "HFT_LOG_FSYNC_INTERVAL_MS",
        50,
        "Group-commit interval of the `interval` policy, in ms.",
    )
    log_segment_bytes: int = _var(
        "log",
        "HFT_LOG_SEGMENT_BYTES",
        64 * 1024**2,
        "Size at which the tick log starts a new segment, in bytes.",
    )
    # Persister.
    persist_batch_size: int = _var(
        "persister", "HFT_PERSIST_BATCH_SIZE", 2000, "Ticks per store transaction in steady state."
    )
    persist_batch_timeout_ms: int = _var(
        "persister", "HFT_PERSIST_BATCH_TIMEOUT_MS", 50, "Longest wait to fill a batch, in ms."
    )
    persist_max_batch: int = _var(
        "persister",
        "HFT_PERSIST_MAX_BATCH",
        50_000,
        "Largest transaction while the log holds a backlog (after an outage or restart).",
    )
    persist_retry_initial_s: float = _var(
        "persister",
        "HFT_PERSIST_RETRY_INITIAL_S",
        0.1,
        "First retry delay while the store is down, in seconds.",
    )
    persist_retry_max_s: float = _var(
        "persister",
        "HFT_PERSIST_RETRY_MAX_S",
        5.0,
        "Longest retry delay while the store is down, in seconds.",
    )
    # Validation, gaps and shutdown.
    max_future_skew_s: float = _var(
        "ingest",
        "HFT_MAX_FUTURE_SKEW_S",
        5.0,
        "Ticks stamped further in the future are rejected, in seconds.",
    )
    gap_silence_multiple: float = _var(
        "ingest",
        "HFT_GAP_SILENCE_MULTIPLE",
        10.0,
        "Silence longer than this many typical tick intervals counts as a gap.",
    )
    shutdown_deadline_s: float = _var(
        "ingest",
        "HFT_SHUTDOWN_DEADLINE_S",
        10.0,
        "Time a stopping service gets to persist what it holds, in seconds.",
    )
    # Feeds.
    feed: str = _var("feed", "HFT_FEED", "simulator", "Feed to ingest: simulator, deriv or replay.")
    symbols: Annotated[tuple[str, ...], NoDecode] = _var(
        "feed", "HFT_SYMBOLS", (), "Comma-separated symbols to subscribe on start."
    )
    seed: int = _var(
        "feed", "HFT_SEED", 42, "Simulator seed: the same seed replays the same ticks."
    )
    rate: float = _var("feed", "HFT_RATE", 1000.0, "Simulator ticks per second per symbol.")
    sim_history_s: float = _var(
        "feed",
        "HFT_SIM_HISTORY_S",
        0.0,
        "A symbol with no stored ticks starts this far in the past (emitted at full speed); 0: now.",
    )
    replay_file: str = _var("feed", "HFT_REPLAY_FILE", "", "File the replay feed reads.")
    replay_speed: float = _var(
        "feed",
        "HFT_REPLAY_SPEED",
        0.0,
        "Replay speed: 0 as fast as possible, 1 real time, 10 ten times faster.",
    )
    # Partitions.
    partitions_start: datetime = _var(
        "partitions",
        "HFT_PARTITIONS_START",
        DEFAULT_PARTITIONS_START,
        "First hourly candle partition (ISO-8601, floored to the hour, UTC unless given).",
    )
    # Watermark sensor.
    late_grace_s: float = _var(
        "sensors",
        "HFT_LATE_GRACE_S",
        60.0,
        "Late ticks may still land in a closed hour for this long, in seconds.",
        ge=0,
    )
    sensor_max_requests: int = _var(
        "sensors",
        "HFT_SENSOR_MAX_REQUESTS",
        48,
        "Final partitions requested per sensor tick (at least 1); the cursor continues.",
        ge=0,
    )
    live_refresh_s: float = _var(
        "sensors",
        "HFT_LIVE_REFRESH_S",
        300.0,
        "Refresh the open partition this often, in seconds; 0 turns it off.",
        ge=0,
    )
    # Ingest health alerts.
    alert_pending_ticks: int = _var(
        "health",
        "HFT_ALERT_PENDING_TICKS",
        100_000,
        "Alert when more ticks than this are in the log but not in the store.",
        ge=0,
    )
    alert_lag_s: float = _var(
        "health",
        "HFT_ALERT_LAG_S",
        60.0,
        "Alert when persistence stands still this long with ticks pending, in seconds.",
        ge=0,
    )
    alert_critical_ticks: int = _var(
        "health",
        "HFT_ALERT_CRITICAL_TICKS",
        3,
        "Consecutive bad sensor ticks before the alert turns CRITICAL (at least 1).",
        ge=0,
    )
    alert_critical_s: float = _var(
        "health",
        "HFT_ALERT_CRITICAL_S",
        300.0,
        "Or this long bad, whichever comes first, in seconds.",
        ge=0,
    )
    # Alert channels: their original names, no HFT_ prefix.
    discord_webhook_url: SecretStr = _var(
        "alerts",
        "DISCORD_WEBHOOK_URL",
        SecretStr(""),
        "Discord webhook URL; empty: no Discord channel.",
    )
    telegram_bot_token: SecretStr = _var(
        "alerts", "TELEGRAM_BOT_TOKEN", SecretStr(""), "Telegram bot token (with TELEGRAM_CHAT_ID)."
    )
    telegram_chat_id: str = _var(
        "alerts", "TELEGRAM_CHAT_ID", "", "Telegram chat the bot writes to."
    )
    telegram_api_url: str = _var(
        "alerts", "TELEGRAM_API_URL", "", "Telegram Bot API root; empty: https://api.telegram.org."
    )
    smtp_server: str = _var(
        "alerts", "SMTP_SERVER", "", "SMTP server for e-mail alerts (with EMAIL_TO and a sender)."
    )
    smtp_port: int = _var("alerts", "SMTP_PORT", 587, "SMTP port (STARTTLS on 587, TLS on 465).")
    smtp_username: str = _var(
        "alerts", "SMTP_USERNAME", "", "SMTP login; also the sender when EMAIL_FROM is empty."
    )
    smtp_password: SecretStr = _var("alerts", "SMTP_PASSWORD", SecretStr(""), "SMTP password.")
    email_from: str = _var("alerts", "EMAIL_FROM", "", "Sender address of e-mail alerts.")
    email_to: str = _var("alerts", "EMAIL_TO", "", "Comma-separated recipients of e-mail alerts.")
    alert_min_level: str = _var(
        "alerts",
        "ALERT_MIN_LEVEL",
        "WARNING",
        "Lowest level sent: INFO, WARNING, ERROR or CRITICAL.",
    )
    # Indicator cache.
    indicator_cache_bytes: int | None = _var(
        "cache",
        "HFT_INDICATOR_CACHE_BYTES",
        None,
        "Memory of the per-process indicator cache, in bytes; unset: the cache's default.",
        gt=0,
    )
    redis_url: str = _var(
        "cache",
        "HFT_REDIS_URL",
        "",
        "Redis shared by run processes for cached indicators; empty: memory only.",
    )
    indicator_cache_ttl_s: int = _var(
        "cache",
        "HFT_INDICATOR_CACHE_TTL_S",
        3600,
        "How long Redis keeps a cached indicator, in seconds.",
        gt=0,
    )
    # Dagster and process start-up.
    dagster_ui_url: str = _var(
        "runtime",
        "HFT_DAGSTER_UI_URL",
        "",
        "Dagster UI root for links in alerts (`hft up` sets it).",
    )
    dagster_home: Path | None = _var(
        "runtime",
        "DAGSTER_HOME",
        None,
        "Dagster instance directory; unset: `hft up` uses $HFT_HOME/dagster.",
    )
    numba_cache_dir: Path | None = _var(
        "runtime",
        "NUMBA_CACHE_DIR",
        None,
        "Where numba keeps compiled kernels; unset: $HFT_HOME/numba-cache.",
    )

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, *args: Any, **kwargs: Any):
        # Only what the caller passes: `from_env` reads the environment, once, on purpose.
        return (init_settings,)

    @field_validator("symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(s.strip() for s in value.split(",") if s.strip())
        return value

    @field_validator("partitions_start", mode="before")
    @classmethod
    def _parse_start(cls, value: Any) -> datetime:
        if isinstance(value, str):
            if not value.strip():
                return DEFAULT_PARTITIONS_START
            try:
                value = datetime.fromisoformat(value.strip())
            except ValueError:
                raise ValueError(
                    f"HFT_PARTITIONS_START={value!r}: use an ISO-8601 date or time, e.g. "
                    "2026-11-20 or 2026-11-20T13:00Z"
                ) from None
        if isinstance(value, datetime):
            return _floor_hour(value if value.tzinfo else value.replace(tzinfo=UTC))
        return value

    @property
    def resolved_store_url(self) -> str:
        return self.store_url or f"sqlite:///{(self.home / 'hft.sqlite3').resolve()}"

    @property
    def log_dir(self) -> Path:
        return self.home / "ticklog"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from `env` (default os.environ), then `overrides` (None values ignored)."""
        env = os.environ if env is None else env
        from_env = _MappingEnvSource(cls, env)()
        values = {_field_name(k): v for k, v in from_env.items()}
        given = {k: v for k, v in overrides.items() if v is not None}
        sources = {name: env_name(name) for name in values}
        sources.update(dict.fromkeys(given, COMMAND_LINE))
        settings = _build(cls, {**values, **given}, env)
        settings._sources = sources
        settings.check()
        return settings

    def with_(self, **changes: Any) -> Settings:
        values = {name: getattr(self, name) for name in type(self).model_fields}
        changed = _build(type(self), {**values, **changes}, {})
        sources = {**self.sources(), **dict.fromkeys(changes, SET_IN_CODE)}
        changed._sources = sources
        return changed

    def sources(self) -> dict[str, str]:
        """Where each value came from that is not a default: an environment variable's name,
        "command line" or "set in code"."""
        return dict(self._sources)

    def check(self) -> None:
        """Raise SettingsError naming the first value that cannot work."""
        if self.log_fsync not in FSYNC_POLICIES:
            raise SettingsError(f"HFT_LOG_FSYNC={self.log_fsync!r}: use one of {FSYNC_POLICIES}")
        positive = (
            "buffer_capacity",
            "buffer_max_bytes",
            "persist_batch_size",
            "pool_size",
            "log_segment_bytes",
            "candle_history",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{env_name(name)} must be > 0, got {getattr(self, name)}")
        if self.persist_max_batch < self.persist_batch_size:
            raise SettingsError(
                f"HFT_PERSIST_MAX_BATCH ({self.persist_max_batch}) must be >= "
                f"HFT_PERSIST_BATCH_SIZE ({self.persist_batch_size})"
            )
        if not 0 < self.api_port < 65536:
            raise SettingsError(f"HFT_API_PORT must be 1-65535, got {self.api_port}")
        if self.rate <= 0:
            raise SettingsError(f"HFT_RATE must be > 0 ticks/s, got {self.rate}")
        if not 0 <= self.sim_history_s <= 30 * 86400:
            raise SettingsError(
                f"HFT_SIM_HISTORY_S must be between 0 and 2592000 (30 days), got {self.sim_history_s}"
            )
        for symbol in self.symbols:
            try:
                validate_symbol(symbol)
            except InvalidSymbolError as exc:
                raise SettingsError(f"HFT_SYMBOLS: {exc}") from None
        if not (
            self.store_url == ""
            or self.store_url.startswith(("sqlite://", "postgresql://", "postgres://"))
        ):
            raise SettingsError(
                f"HFT_STORE_URL={redact_url(self.store_url)!r}: use sqlite:///PATH or "
                "postgresql://user@host/db"
            )

    def display(self, name: str) -> str:
        """The value of field `name` as `hft config` shows it: secrets masked, URLs redacted."""
        value = getattr(self, name)
        if isinstance(value, SecretStr):
            return MASK if value.get_secret_value() else ""
        if value is None:
            return ""
        if isinstance(value, tuple):
            return ",".join(value)
        if isinstance(value, datetime):
            return value.isoformat()
        text = str(value)
        return redact_url(text) if "://" in text else text


def _field_name(key: str) -> str:
    return _BY_ENV.get(key, key)


def env_name(field: str) -> str:
    """The environment variable of field `field` (e.g. "HFT_PERSIST_BATCH_SIZE")."""
    return _extra(Settings.model_fields[field])["env"]


def _extra(info: FieldInfo) -> dict[str, Any]:
    extra = info.json_schema_extra
    assert isinstance(extra, dict)
    return extra


def fields_by_group() -> Iterator[tuple[str, str, list[tuple[str, FieldInfo]]]]:
    """(group key, title, [(field name, field info)...]) in GROUPS order."""
    for key, title in GROUPS:
        members = [(n, f) for n, f in Settings.model_fields.items() if _extra(f)["group"] == key]
        yield key, title, members


def _type_name(info: FieldInfo) -> str:
    annotation = info.annotation
    names = {Path: "path", int: "integer", float: "number", str: "text", datetime: "date/time"}
    if annotation is SecretStr:
        return "secret"
    if annotation in names:
        return names[annotation]
    if getattr(annotation, "__origin__", None) is tuple:
        return "comma-separated list"
    args = [a for a in getattr(annotation, "__args__", ()) if a is not type(None)]
    return f"{names.get(args[0], 'text')}, optional" if len(args) == 1 else "text"


def _default_text(info: FieldInfo) -> str:
    value = info.default
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, datetime):
        value = value.isoformat()
    if isinstance(value, tuple):
        value = ",".join(value)
    return "(empty)" if value is None or value == "" else f"`{value}`"


def reference_markdown() -> str:
    """Every variable by group as Markdown tables: the reference part of docs/configuration.md."""
    lines: list[str] = []
    for key, title, members in fields_by_group():
        lines += [f"### {title} (`{key}`)", "", "| Variable | Type | Default | Meaning |"]
        lines.append("|---|---|---|---|")
        for _, info in members:
            doc = (info.description or "").replace("|", "\\|")
            var = _extra(info)["env"]
            lines.append(f"| `{var}` | {_type_name(info)} | {_default_text(info)} | {doc} |")
        lines.append("")
    return "\n".join(lines)


def environment() -> dict[str, str]:
    """A copy of the process environment, for a child process to inherit (then amended)."""
    return dict(os.environ)


def _build(cls: type[Settings], values: dict[str, Any], env: Mapping[str, str]) -> Settings:
    try:
        return cls(**values)
    except ValidationError as exc:
        error = exc.errors()[0]
        name = _field_name(str(error["loc"][0])) if error["loc"] else ""
        if name not in cls.model_fields:
            raise SettingsError(str(exc)) from None
        var = env_name(name)
        raw = values.get(name, env.get(var))
        if isinstance(raw, SecretStr) or name in _SECRETS:
            raw = MASK
        message = str(error["msg"]).removeprefix("Value error, ")
        if message.startswith(var):  # the validator already said it all
            raise SettingsError(message) from None
        raise SettingsError(f"{var}={raw!r}: {message}") from None


_BY_ENV = {_extra(f)["env"]: n for n, f in Settings.model_fields.items()}
_SECRETS = frozenset(n for n, f in Settings.model_fields.items() if f.annotation is SecretStr)


__all__ = [
    "DEFAULT_PARTITIONS_START",
    "FSYNC_POLICIES",
    "GROUPS",
    "Settings",
    "SettingsError",
    "env_name",
    "environment",
    "fields_by_group",
    "reference_markdown",
]
