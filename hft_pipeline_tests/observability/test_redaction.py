"""One redaction function for every surface: user-info and query-string secrets, free text."""

from __future__ import annotations

import logging

import pytest

from hft_pipeline.observability import redaction
from hft_pipeline.observability.redaction import redact, redact_url, register_url, secrets_of_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://u:s3cret-pw@db:5432/hft", "postgresql://u:***@db:5432/hft"),
        ("postgresql://u@db/hft?password=hunter22", "postgresql://u@db/hft?password=***"),
        (
            "postgresql://u@db/hft?sslmode=require&sslpassword=k3y-pass&application_name=x",
            "postgresql://u@db/hft?sslmode=require&sslpassword=***&application_name=x",
        ),
        ("postgresql://u:a@db/hft?PASSWORD=b", "postgresql://u:***@db/hft?PASSWORD=***"),
        ("host=db user=u password=hunter22 dbname=hft", "host=db user=u password=*** dbname=hft"),
        ("sqlite:////var/lib/hft/hft.sqlite3", "sqlite:////var/lib/hft/hft.sqlite3"),
        ("postgresql://u@db/hft", "postgresql://u@db/hft"),
    ],
)
def test_redact_url_masks_user_info_and_sensitive_query_parameters(url, shown):
    assert redact_url(url) == shown


def test_secrets_of_url_finds_every_form_also_percent_encoded():
    assert secrets_of_url("postgresql://u:p%40ss-word@h/db?password=q1w2e3r4") == [
        "p%40ss-word",
        "p@ss-word",
        "q1w2e3r4",
    ]


def test_registered_secrets_vanish_from_free_text_and_log_records(caplog):
    url = "postgresql://u@h:1/db?password=zebra-hunter-77"
    assert register_url(url) == "postgresql://u@h:1/db?password=***"
    text = "connection to h failed for password zebra-hunter-77 (password=zebra-hunter-77)"
    assert "zebra-hunter-77" not in redact(text)
    assert redact("see postgresql://bob:topsecret99@db/x") == "see postgresql://bob:***@db/x"
    redaction.install()
    logger = logging.getLogger("hft_pipeline.some.module")
    with caplog.at_level(logging.INFO):
        logger.info("store %s failed", url.replace("?password=", "?pw-was="))
        logger.info("raw secret zebra-hunter-77 in a message")
    # caplog's handler is the root's: the filter installed there runs on every record
    assert all("zebra-hunter-77" not in r.getMessage() for r in caplog.records)
