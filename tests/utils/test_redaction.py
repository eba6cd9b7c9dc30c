"""Tests of utils.redaction: secrets out of messages and out of the HTTP stack's log records."""

from __future__ import annotations

import logging

from airflow_provider_smspartner.utils.redaction import REDACTED, redact, register_secret

SECRET = "redaction-test-secret-0123456789"


def test_registered_secret_is_redacted():
    register_secret(SECRET)
    assert redact(f"GET /v1/me?apiKey={SECRET} failed") == f"GET /v1/me?apiKey={REDACTED} failed"


def test_very_short_secret_is_not_redacted_everywhere():
    register_secret("k")  # a placeholder key must not turn every "k" of every message into ***
    assert redact("Invalid API key") == "Invalid API key"


def test_http_loggers_are_filtered(caplog):
    register_secret(SECRET)
    with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
        logging.getLogger("urllib3.connectionpool").debug("GET /v1/me?apiKey=%s HTTP/1.1 200", SECRET)
    assert SECRET not in caplog.text
    assert REDACTED in caplog.text
