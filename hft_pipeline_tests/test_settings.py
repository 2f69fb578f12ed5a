from pathlib import Path

import pytest

from hft_pipeline.settings import Settings, SettingsError


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
