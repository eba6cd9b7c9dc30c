"""Tests of utils.redaction: secrets out of messages and out of the HTTP stack's log records."""

from __future__ import annotations

import json
import logging
import re
from urllib.parse import quote, quote_plus

import pytest

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


KEYS = [
    "plus+slash/eq=amp&pct%hash#q?-012",
    "space é ü-0123456789",
    'quote"back\\slash-0123',
    "日本語のキー-0123",
]


@pytest.mark.parametrize("key", KEYS, ids=["url-special", "non-ascii", "quotes", "cjk"])
def test_every_form_of_a_key_is_redacted(key):
    register_secret(key)
    forms = [key, quote(key, safe=""), quote(key), quote_plus(key), json.dumps(key)[1:-1], repr(key)[1:-1]]
    forms.append(re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), quote_plus(key)))  # lower-case hex
    for form in forms:
        assert redact(f"GET /v1/me?apiKey={form}&x=1") == f"GET /v1/me?apiKey={REDACTED}&x=1", form


def test_forms_and_their_registration():
    forms = register_secret("a+b c/d-0123456789")
    assert {"a+b c/d-0123456789", "a%2Bb%20c%2Fd-0123456789", "a%2Bb+c%2Fd-0123456789"} <= forms
    assert register_secret("abc") == set()  # too short: nothing registered, nothing to mask


def test_longer_forms_are_replaced_first():
    # quote("k%2B") contains quote_plus-like pieces; no tail of the key may survive.
    key = "k%2Bk%2Bk-0123456789"
    register_secret(key)
    assert redact(quote(key, safe="")) == REDACTED
