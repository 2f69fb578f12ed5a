from datetime import UTC, datetime
from pathlib import Path

import pytest
from pydantic import SecretStr

from hft_pipeline.settings import Settings, SettingsError, env_name, reference_markdown


def test_environment_is_read_with_the_hft_prefix_and_typed():
    s = Settings.from_env(
        {
            "HFT_HOME": "/data/hft",
            "HFT_API_PORT": "9000",
            "HFT_RATE": "2500.5",
            "HFT_SYMBOLS": "R_100, frxEURUSD,,PETR4",
            "HFT_LOG_FSYNC": "always",
            "HFT_STORE_URL": "postgresql://u@h/db",
        }
    )
    assert s.home == Path("/data/hft") and s.api_port == 9000 and s.rate == 2500.5
    assert s.symbols == ("R_100", "frxEURUSD", "PETR4")
    assert s.log_fsync == "always" and s.resolved_store_url == "postgresql://u@h/db"


def test_defaults_and_overrides():
    s = Settings.from_env({"HFT_API_PORT": "9000"}, api_port=8100, rate=None)
    assert s.api_port == 8100 and s.rate == 1000.0  # explicit option beats env; None is ignored
    assert s.resolved_store_url.startswith("sqlite:////") and s.resolved_store_url.endswith(
        ".hft/hft.sqlite3"
    )
    assert s.persist_batch_size == 2000 and s.persist_batch_timeout_ms == 50 and s.pool_size == 20


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"HFT_API_PORT": "eighty"}, "HFT_API_PORT"),
        ({"HFT_API_PORT": "70000"}, "HFT_API_PORT"),
        ({"HFT_LOG_FSYNC": "maybe"}, "HFT_LOG_FSYNC"),
        ({"HFT_RATE": "0"}, "HFT_RATE"),
        ({"HFT_BUFFER_MAX_BYTES": "-1"}, "HFT_BUFFER_MAX_BYTES"),
        ({"HFT_STORE_URL": "mysql://x"}, "HFT_STORE_URL"),
    ],
)
def test_bad_values_name_the_variable(env, needle):
    with pytest.raises(SettingsError, match=needle):
        Settings.from_env(env)


@pytest.mark.parametrize("symbol", ["NLSYM\n", "PETR4\r\n", "a b", "R_100|x", "", "x" * 33, "_X"])
def test_bad_symbols_are_refused_with_the_reason(symbol):
    with pytest.raises(SettingsError, match="HFT_SYMBOLS: invalid symbol"):
        Settings(symbols=("PETR4", symbol)).check()
    with pytest.raises(SettingsError, match="HFT_SYMBOLS"):
        Settings.from_env({}, symbols=(symbol,))


def test_settings_built_directly_read_no_environment(monkeypatch):
    monkeypatch.setenv("HFT_API_PORT", "9100")
    monkeypatch.setenv("SMTP_SERVER", "mail.example")
    assert Settings().api_port == 8002 and Settings().smtp_server == ""
    assert (
        Settings.from_env().api_port == 9100 and Settings.from_env().smtp_server == "mail.example"
    )


def test_every_variable_keeps_its_name_alert_channels_without_prefix():
    s = Settings.from_env(
        {
            "HFT_PERSIST_BATCH_SIZE": "500",
            "HFT_LATE_GRACE_S": "30",
            "HFT_ALERT_CRITICAL_TICKS": "5",
            "HFT_PARTITIONS_START": "2026-03-04T05:59:59Z",
            "HFT_INDICATOR_CACHE_BYTES": "1048576",
            "SMTP_PORT": "465",
            "ALERT_MIN_LEVEL": "ERROR",
            "HFT_SMTP_PORT": "25",  # not a variable: alert channels have no prefix
            "DAGSTER_HOME": "/srv/dagster",
        }
    )
    assert (s.persist_batch_size, s.late_grace_s, s.alert_critical_ticks) == (500, 30.0, 5)
    assert s.partitions_start == datetime(2026, 3, 4, 5, tzinfo=UTC)
    assert (s.indicator_cache_bytes, s.smtp_port, s.alert_min_level) == (1048576, 465, "ERROR")
    assert s.dagster_home == Path("/srv/dagster")
    assert {env_name(n) for n in Settings.model_fields} >= {
        "HFT_HOME", "HFT_STORE_URL", "HFT_API_TOKEN", "HFT_LOG_FSYNC", "DISCORD_WEBHOOK_URL",
        "TELEGRAM_BOT_TOKEN", "TELEGRAM_CHAT_ID", "SMTP_SERVER", "SMTP_PORT", "SMTP_USERNAME",
        "SMTP_PASSWORD", "EMAIL_FROM", "EMAIL_TO", "ALERT_MIN_LEVEL",
    }  # fmt: skip


def test_secrets_are_secret_str_and_never_in_repr():
    env = {
        "HFT_API_TOKEN": "tok-1",
        "SMTP_PASSWORD": "pw-2",
        "TELEGRAM_BOT_TOKEN": "tg-3",
        "DISCORD_WEBHOOK_URL": "https://discord.example/api/webhooks/1/dc-4",
        "HFT_STORE_URL": "postgresql://u:pg-5@h/db",
    }
    s = Settings.from_env(env)
    assert isinstance(s.api_token, SecretStr) and s.api_token.get_secret_value() == "tok-1"
    assert s.smtp_password.get_secret_value() == "pw-2"
    text = repr(s) + str(s)
    for secret in ("tok-1", "pw-2", "tg-3", "dc-4"):
        assert secret not in text
    assert [s.display(n) for n in ("api_token", "smtp_password", "store_url", "smtp_server")] == [
        "***", "***", "postgresql://u:***@h/db", ""
    ]  # fmt: skip


def test_sources_say_where_each_value_came_from():
    s = Settings.from_env({"HFT_RATE": "10", "HFT_SEED": "7"}, seed=8)
    assert s.sources() == {"rate": "HFT_RATE", "seed": "command line"}
    changed = s.with_(api_port=9001)
    assert changed.api_port == 9001 and changed.rate == 10.0
    assert changed.sources() == {**s.sources(), "api_port": "set in code"}


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"HFT_LATE_GRACE_S": "-1"}, "HFT_LATE_GRACE_S='-1'"),
        ({"HFT_ALERT_PENDING_TICKS": "many"}, "HFT_ALERT_PENDING_TICKS='many'"),
        ({"SMTP_PORT": "smtp"}, "SMTP_PORT='smtp'"),
        (
            {"HFT_PARTITIONS_START": "yesterday"},
            "HFT_PARTITIONS_START='yesterday': use an ISO-8601",
        ),
        ({"HFT_API_TOKEN": ""}, None),  # empty is unset
    ],
)
def test_bad_new_values_name_the_variable(env, needle):
    if needle is None:
        assert Settings.from_env(env).api_token.get_secret_value() == ""
        return
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert needle in str(info.value)


def test_a_bad_secret_is_named_but_not_shown():
    with pytest.raises(SettingsError, match="HFT_API_PORT") as info:
        Settings.from_env({"HFT_API_PORT": "x", "HFT_API_TOKEN": "tok-9"})
    assert "tok-9" not in str(info.value)


def test_policies_read_their_thresholds_from_the_settings():
    from hft_pipeline.orchestration.jobs import HealthPolicy, WatermarkPolicy

    assert WatermarkPolicy.from_env({}) == WatermarkPolicy(60.0, 48, 300.0)
    w = WatermarkPolicy.from_env({"HFT_LATE_GRACE_S": "5", "HFT_SENSOR_MAX_REQUESTS": "0"})
    assert (w.grace_s, w.max_requests) == (5.0, 1)  # at least one request per tick
    h = HealthPolicy.from_env({"HFT_ALERT_LAG_S": "7.5", "HFT_ALERT_CRITICAL_TICKS": "0"})
    assert (h.max_lag_s, h.critical_after_ticks, h.max_pending_ticks) == (7.5, 1, 100_000)


def test_docs_configuration_lists_every_variable_as_the_model_says():
    doc = (Path(__file__).parents[1] / "docs" / "configuration.md").read_text()
    start = doc.index("<!-- generated by `hft config --reference`; do not edit by hand -->")
    end = doc.index("<!-- end of generated reference -->")
    generated = doc[start:end].split("\n", 1)[1].strip()
    assert generated == reference_markdown().strip(), "regenerate: hft config --reference"
    for name in Settings.model_fields:
        assert f"| `{env_name(name)}` |" in generated
