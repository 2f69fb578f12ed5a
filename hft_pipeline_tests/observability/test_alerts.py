"""Alert channels against loopback receivers: Discord, Telegram (MarkdownV2) and SMTP."""

from __future__ import annotations

import logging
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from aiosmtpd.smtp import AuthResult

from hft_pipeline.observability import alerts as A
from hft_pipeline.observability.alerts import Alert, Alerter, Level, RetryPolicy
from hft_pipeline_tests.observability.receivers import (
    SmtpReceiver,
    WebhookReceiver,
    check_discord_payload,
    free_port,
    parse_markdown_v2,
)

FAST = RetryPolicy(attempts=3, timeout_s=10.0, wait_initial_s=0.05, wait_max_s=0.2, wait_jitter_s=0)
NASTY = "a_b*c[d](e)~f`g>h#i+j-k=l|m{n}o.p!q\\r <b>&amp;</b> @everyone"


@pytest.fixture
def web():
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def smtp():
    receiver = SmtpReceiver()
    yield receiver
    receiver.close()


def env_for(web: WebhookReceiver, smtp: SmtpReceiver | None = None, **extra: str) -> dict[str, str]:
    env = {
        "DISCORD_WEBHOOK_URL": web.discord_url,
        "TELEGRAM_BOT_TOKEN": web.telegram_token,
        "TELEGRAM_CHAT_ID": web.chat_id,
        "TELEGRAM_API_URL": web.base_url,
    }
    if smtp is not None:
        env |= {
            "SMTP_SERVER": "127.0.0.1",
            "SMTP_PORT": str(smtp.port),
            "EMAIL_FROM": "alerts@example.test",
            "EMAIL_TO": "ops@example.test, oncall@example.test",
        }
    return env | extra


def nasty_alert(level: Level = Level.ERROR) -> Alert:
    return Alert(
        level,
        f"Title {NASTY}",
        f"Message {NASTY}\nsecond line",
        {"job": NASTY, "run id": "0f3c-42"},
        source="tests",
        url="http://127.0.0.1:3000/runs/0f3c-42",
    )


def test_level_parse_and_order():
    assert Level.parse("warning") is Level.WARNING
    assert Level.parse(" CRITICAL ") is Level.CRITICAL
    assert Level.INFO < Level.WARNING < Level.ERROR < Level.CRITICAL
    with pytest.raises(ValueError, match="use one of INFO, WARNING, ERROR, CRITICAL"):
        Level.parse("loud")


def test_from_env_enables_only_complete_channels():
    assert Alerter.from_env({}).channels == []
    assert Alerter.from_env({}).min_level is Level.WARNING
    partial = Alerter.from_env(
        {"TELEGRAM_BOT_TOKEN": "123456:abcdef", "SMTP_SERVER": "mail", "ALERT_MIN_LEVEL": "error"}
    )
    assert partial.channels == [] and partial.min_level is Level.ERROR
    full = Alerter.from_env(
        {
            "DISCORD_WEBHOOK_URL": "https://discord.example/api/webhooks/1/tok",
            "TELEGRAM_BOT_TOKEN": "123456:abcdef",
            "TELEGRAM_CHAT_ID": "42",
            "SMTP_SERVER": "mail.example",
            "SMTP_USERNAME": "bot@example.test",
            "EMAIL_TO": "a@example.test,b@example.test",
        }
    )
    assert full.channel_names == ["discord", "telegram", "email"]
    email = full.channels[2]
    assert (email.port, email.sender, email.recipients) == (
        587,
        "bot@example.test",
        ["a@example.test", "b@example.test"],
    )
    assert email.implicit_tls is False
    assert Alerter.from_env({}).send(nasty_alert()) == {}


def test_all_channels_deliver_with_colour_escaping_and_html(web, smtp):
    alerter = Alerter.from_env(env_for(web, smtp), retry=FAST)
    results = alerter.send(nasty_alert(Level.CRITICAL))
    assert {k: (r.ok, r.attempts) for k, r in results.items()} == {
        "discord": (True, 1),
        "telegram": (True, 1),
        "email": (True, 1),
    }
    assert web.rejected == []

    (discord,) = web.of_kind("discord")
    embed = discord.payload["embeds"][0]
    assert embed["color"] == 0x8B0000
    assert embed["title"].endswith(f"CRITICAL: Title {NASTY}")
    assert embed["description"] == f"Message {NASTY}\nsecond line"
    assert [(f["name"], f["value"]) for f in embed["fields"]] == [
        ("job", NASTY),
        ("run id", "0f3c-42"),
    ]
    assert embed["url"] == "http://127.0.0.1:3000/runs/0f3c-42"
    assert discord.payload["allowed_mentions"] == {"parse": []}

    (telegram,) = web.of_kind("telegram")
    plain = parse_markdown_v2(telegram.payload["text"])
    assert f"CRITICAL: Title {NASTY}" in plain
    assert f"Message {NASTY}\nsecond line" in plain
    assert f"job: {NASTY}" in plain
    assert "http://127.0.0.1:3000/runs/0f3c-42" in plain

    (message,) = smtp.messages
    # A long subject is folded onto a continuation line; unfolding leaves the leading space.
    assert message["Subject"].strip() == f"[CRITICAL] Title {NASTY}"
    assert smtp.envelopes[0][:2] == (
        "alerts@example.test",
        ["ops@example.test", "oncall@example.test"],
    )
    assert message.get_content_type() == "multipart/alternative"
    text = message.get_body(("plain",)).get_content()
    page = message.get_body(("html",)).get_content()
    assert f"job: {NASTY}" in text and "<b>&amp;</b>" in text
    assert "&lt;b&gt;&amp;amp;&lt;/b&gt;" in page and "<b>&amp;</b>" not in page
    assert "color:#8b0000" in page


def test_colour_follows_level(web):
    alerter = Alerter.from_env({"DISCORD_WEBHOOK_URL": web.discord_url, "ALERT_MIN_LEVEL": "INFO"})
    for level in Level:
        assert alerter.send(Alert(level, "t", "m"))["discord"].ok
    colours = [r.payload["embeds"][0]["color"] for r in web.of_kind("discord")]
    assert colours == [0x3498DB, 0xF1C40F, 0xE74C3C, 0x8B0000]


def test_min_level_filters(web):
    alerter = Alerter.from_env(env_for(web, ALERT_MIN_LEVEL="ERROR"), retry=FAST)
    assert alerter.send(Alert(Level.WARNING, "only a warning", "m")) == {}
    assert set(alerter.send(Alert(Level.ERROR, "an error", "m"))) == {"discord", "telegram"}
    titles = [r.payload["embeds"][0]["title"] for r in web.of_kind("discord")]
    assert titles == ["🔴 ERROR: an error"]
    assert len(web.of_kind("telegram")) == 1


def test_oversized_alert_fits_discord_and_telegram_limits(web):
    huge = Alert(
        Level.ERROR,
        "T" * 1000,
        ("x" * 50 + "." * 50) * 200,  # 20,000 characters, half of them reserved in MarkdownV2
        {f"field {i} " + "n" * 300: "v." * 700 for i in range(40)},
    )
    results = Alerter.from_env(env_for(web), retry=FAST).send(huge)
    assert web.rejected == []
    assert results["discord"].ok and results["telegram"].ok
    embed = web.of_kind("discord")[0].payload["embeds"][0]
    assert check_discord_payload({"embeds": [embed]}) == []
    assert len(embed["title"]) == 256 and embed["title"].endswith("…")
    assert 0 < len(embed["fields"]) <= 25
    assert all(len(f["name"]) <= 256 and len(f["value"]) <= 1024 for f in embed["fields"])
    total = len(embed["title"]) + len(embed["description"]) + len(embed["footer"]["text"])
    total += sum(len(f["name"]) + len(f["value"]) for f in embed["fields"])
    assert 5000 < total <= 6000
    assert "more fields omitted" in embed["description"]
    text = web.of_kind("telegram")[0].payload["text"]
    assert 3000 < len(text.encode("utf-16-le")) // 2 <= 4096
    plain = parse_markdown_v2(text)
    assert "…" in plain and "more fields omitted" in plain


def test_telegram_text_counts_utf16_and_never_splits_an_escape():
    for pad in range(6):
        alert = Alert(Level.ERROR, "🚀" * 3, "a" * pad + "😀." * 3000, {"k": "v"})
        text = A.telegram_text(alert)
        assert len(text.encode("utf-16-le")) // 2 <= 4096
        assert parse_markdown_v2(text).startswith("🔴 ERROR: 🚀🚀🚀\n" + "a" * pad + "😀.")


def test_429_retry_after_is_honoured(web):
    web.discord_429_first = web.telegram_429_first = True
    start = time.monotonic()
    results = Alerter.from_env(env_for(web), retry=FAST).send(Alert(Level.ERROR, "rate", "limited"))
    assert results["discord"].ok and results["discord"].attempts == 2
    assert results["telegram"].ok and results["telegram"].attempts == 2
    limited = dict(web.rate_limited)
    discord_wait = web.of_kind("discord")[0].at - limited["discord"]
    telegram_wait = web.of_kind("telegram")[0].at - limited["telegram"]
    # Discord's JSON retry_after (0.3 s) wins over its coarser Retry-After header (1 s).
    assert 0.3 <= discord_wait < 0.9
    assert 1.0 <= telegram_wait < 1.8
    assert time.monotonic() - start < 3


def test_retry_after_beyond_the_deadline_gives_up(web):
    web.telegram_429_first = True  # retry_after 1 s
    policy = RetryPolicy(attempts=4, timeout_s=0.5, wait_initial_s=0.05, wait_jitter_s=0)
    result = Alerter.from_env(env_for(web), retry=policy).send(Alert(Level.ERROR, "t", "m"))[
        "telegram"
    ]
    assert (result.ok, result.attempts) == (False, 1)
    assert "HTTP 429" in result.error and "retry after 1.0 s" in result.error


def test_failing_channel_neither_blocks_nor_fails_the_others(web, smtp):
    dead = f"http://127.0.0.1:{free_port()}/api/webhooks/1/{web.discord_token}"
    slow = RetryPolicy(
        attempts=4, timeout_s=10, wait_initial_s=0.4, wait_max_s=1.0, wait_jitter_s=0
    )
    alerter = Alerter.from_env(env_for(web, smtp, DISCORD_WEBHOOK_URL=dead), retry=slow)
    start = time.monotonic()
    results = alerter.send(Alert(Level.ERROR, "partial", "outage"))
    took = time.monotonic() - start
    assert results["telegram"].ok and results["email"].ok
    assert results["discord"].ok is False and results["discord"].attempts == 4
    assert "ConnectionError" in results["discord"].error
    assert took >= 0.4 + 0.8 + 1.0  # the dead channel really backed off three times...
    assert web.of_kind("telegram")[0].at - start < 0.5  # ...while the others went out at once
    assert results["email"].elapsed_s < 0.5 and len(smtp.messages) == 1


def test_a_channel_that_raises_anything_is_reported_not_raised(web):
    class Broken:
        name = "broken"

        def deliver(self, alert):
            raise RuntimeError("kaput")

        def close(self):
            pass

    alerter = Alerter([Broken(), A.DiscordChannel(web.discord_url)], retry=FAST)
    results = alerter.send(Alert(Level.CRITICAL, "t", "m"))
    assert results["broken"].ok is False and results["broken"].attempts == 1
    assert results["broken"].error == "RuntimeError: kaput"
    assert results["discord"].ok


def test_client_errors_are_not_retried(web):
    bad_chat = Alerter.from_env(env_for(web, TELEGRAM_CHAT_ID="999"), retry=FAST)
    result = bad_chat.send(Alert(Level.ERROR, "t", "m"))["telegram"]
    assert (result.ok, result.attempts) == (False, 1)
    assert "HTTP 400" in result.error and "chat not found" in result.error


def test_secrets_never_reach_logs_or_errors(web, caplog):
    caplog.set_level(logging.DEBUG)
    dead_port = free_port()
    good = Alerter.from_env(env_for(web), retry=FAST)
    dead = Alerter.from_env(
        {
            "DISCORD_WEBHOOK_URL": f"http://127.0.0.1:{dead_port}/api/webhooks/1/{web.discord_token}",
            "TELEGRAM_BOT_TOKEN": web.telegram_token,
            "TELEGRAM_CHAT_ID": web.chat_id,
            "TELEGRAM_API_URL": f"http://127.0.0.1:{dead_port}",
        },
        retry=FAST,
    )
    assert all(r.ok for r in good.send(Alert(Level.ERROR, "t", "m")).values())
    failed = dead.send(Alert(Level.ERROR, "t", "m"))
    assert not any(r.ok for r in failed.values())
    secrets = [web.discord_token, web.telegram_token]
    logged = caplog.text + "\n".join(r.getMessage() for r in caplog.records)
    errors = "\n".join(r.error or "" for r in failed.values())
    for secret in secrets:
        assert secret not in logged
        assert secret not in errors
    # urllib3 did log the request paths, with the secrets masked.
    assert "/bot***/sendMessage" in logged
    assert "***" in errors


def test_ready_made_alerts():
    assert A.run_failed("candles_job", "abc", "boom").level is Level.ERROR
    step = A.run_failed("j", "r", "e", "http://x/runs/r", step="candles")
    assert (step.title, step.fields["step"], step.url) == (
        "Failed: step candles of j",
        "candles",
        "http://x/runs/r",
    )
    check = A.asset_check_failed("candles", "ohlc_invariants", "2024-01-01-00:00", "3 bad rows")
    assert check.fields == {
        "asset": "candles",
        "check": "ohlc_invariants",
        "partition": "2024-01-01-00:00",
    }
    stalled = A.ingest_stalled(123.4, 56789, "lag over 60 s", level=Level.CRITICAL)
    assert stalled.level is Level.CRITICAL and stalled.fields["pending ticks"] == "56,789"
    recovered = A.ingest_recovered(0.2, 0, down_for_s=300)
    assert recovered.level is Level.INFO and recovered.fields["unhealthy for"] == "300 s"
    breaker = A.circuit_breaker_opened("postgres", 5, 30)
    assert breaker.level is Level.ERROR and "paused for 30 s" in breaker.message
    trade = A.trade_executed("R_100", "buy", 1234.5, 0.25, "sma_cross")
    assert trade.message == "sma_cross: BUY 0.25 R_100 @ 1234.5"
    win = A.high_win_rate("rsi", "frxEURUSD", 0.8125, 48)
    assert win.fields["win rate"] == "81.2%" and win.level is Level.INFO


# ---------------------------------------------------------------- SMTP over TLS, with login


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def _authenticator(server, session, envelope, mechanism, auth_data):
    ok = auth_data.login == b"bot@example.test" and auth_data.password == b"s3cret-password"
    return AuthResult(success=ok, handled=False)


@pytest.mark.parametrize("mode", ["starttls", "implicit"])
def test_email_over_tls_logs_in_only_with_username(tls_files, mode):
    cert, key = tls_files
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(cert))
    tls = (
        {"tls_context": server_ctx, "require_starttls": True}
        if mode == "starttls"
        # aiosmtpd only counts STARTTLS as TLS for AUTH; under implicit TLS the socket is TLS anyway.
        else {"ssl_context": server_ctx, "auth_require_tls": False}
    )
    receiver = SmtpReceiver(authenticator=_authenticator, **tls)
    try:

        def channel(**login):
            return A.EmailChannel("127.0.0.1", receiver.port, "alerts@example.test", ["ops@example.test"],
                                  implicit_tls=mode == "implicit", ssl_context=client_ctx, **login)  # fmt: skip

        with_login = channel(username="bot@example.test", password="s3cret-password")
        results = Alerter([with_login], retry=FAST).send(Alert(Level.ERROR, "tls", "body"))
        assert results["email"].ok, results["email"].error
        anonymous = Alerter([channel()], retry=FAST).send(Alert(Level.ERROR, "anon", "body"))
        assert anonymous["email"].ok, anonymous["email"].error
        wrong = channel(username="bot@example.test", password="wrong-password")
        refused = Alerter([wrong], retry=FAST).send(Alert(Level.ERROR, "bad", "body"))["email"]
        assert (refused.ok, refused.attempts) == (
            False,
            1,
        ) and "login refused (535)" in refused.error
        assert [m["Subject"] for m in receiver.messages] == ["[ERROR] tls", "[ERROR] anon"]
        assert [e[2] for e in receiver.envelopes] == [True, False]
    finally:
        receiver.close()
