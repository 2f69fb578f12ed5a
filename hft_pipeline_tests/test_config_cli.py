"""`hft config`: the effective settings by group, where each came from, no secret in the output."""

from __future__ import annotations

from pathlib import Path

import pytest

from hft_pipeline import cli
from hft_pipeline.settings import GROUPS, Settings, env_name

SECRETS = {
    "HFT_API_TOKEN": "tok-5f1c9e",
    "SMTP_PASSWORD": "smtp-9a7b3d",
    "TELEGRAM_BOT_TOKEN": "123456:tg-4e2f",
    "DISCORD_WEBHOOK_URL": "https://discord.example/api/webhooks/1/dc-8c1a",
}


def _rows(out: str) -> dict[str, list[str]]:
    """{variable: [value, source]} of the printed table."""
    rows = {}
    for line in out.splitlines():
        if line.startswith("  ") and not line.strip().startswith("("):
            var, value, source = line.split(maxsplit=2)
            rows[var] = [value, source]
    return rows


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in Settings.model_fields:
        if env_name(name) != "NUMBA_CACHE_DIR":
            monkeypatch.delenv(env_name(name), raising=False)
    for var, value in SECRETS.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("HFT_STORE_URL", "postgresql://hft:pg-3d5e@db.example/hft")
    monkeypatch.setenv("HFT_PERSIST_BATCH_SIZE", "500")


def test_config_prints_every_variable_by_group_with_its_source(
    env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["config", "--home", str(tmp_path / "h")]) == 0
    out = capsys.readouterr().out
    headers = [line for line in out.splitlines() if line.startswith("[")]
    assert headers == [f"[{key}] {title}" for key, title in GROUPS]
    rows = _rows(out)
    assert set(rows) == {env_name(name) for name in Settings.model_fields}
    assert rows["HFT_HOME"] == [str(tmp_path / "h"), "command line"]
    assert rows["HFT_PERSIST_BATCH_SIZE"] == ["500", "HFT_PERSIST_BATCH_SIZE"]
    assert rows["HFT_PERSIST_MAX_BATCH"] == ["50000", "default"]
    assert rows["HFT_STORE_URL"] == ["postgresql://hft:***@db.example/hft", "HFT_STORE_URL"]
    assert rows["SMTP_PORT"] == ["587", "default"]
    assert rows["ALERT_MIN_LEVEL"] == ["WARNING", "default"]
    for var in SECRETS:
        assert rows[var] == ["***", var]


def test_config_never_prints_a_secret(
    env: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["config", "--home", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    for secret in [*SECRETS.values(), "pg-3d5e", "dc-8c1a", "tg-4e2f"]:
        assert secret not in captured.out and secret not in captured.err


def test_config_names_the_bad_variable(
    env: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HFT_LATE_GRACE_S", "-5")
    assert cli.main(["config"]) == 2
    err = capsys.readouterr().err
    assert "HFT_LATE_GRACE_S='-5'" in err and "greater than or equal to 0" in err
