"""Tests of utils.redaction: secrets out of messages and out of the HTTP stack's log records."""

from __future__ import annotations

import html
import html.entities
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


#: Keys holding every character an encoding rewrites (id, key).
KEYS = [
    ("url-special", "plus+slash/eq=amp&pct%hash#q?-0123"),
    ("html-special", "lt<gt>quote\"apos'-0123456789"),
    ("space", "space in key-0123456789"),
    ("accents", "accentué-ünïcodé-0123"),
    ("cjk", "日本語のキー-0123"),
    ("emoji", "key-\U0001f600-0123456789"),  # a surrogate pair in JSON
    ("looks-encoded", "%41%42%2B-looks-encoded-0123"),
    ("backslashes", "back\\slash\\n-and\\u0041-0123"),
    ("entity-like", "amp&copy&para;&#47;-0123"),
]


def _lower_hex(text: str) -> str:
    return re.sub(r"%[0-9A-F]{2}", lambda m: m.group().lower(), text)


def _each_char(key: str, escape) -> str:
    """``key`` with every character but ASCII letters and digits written by ``escape``."""
    return "".join(c if c.isascii() and c.isalnum() else escape(c) for c in key)


def _json_u(key: str, hex_format: str) -> str:
    """Every character (even letters) as JSON ``\\uXXXX``, astral ones as surrogate pairs."""
    units = key.encode("utf-16-be")
    return "".join(
        "\\u" + format(int.from_bytes(units[i : i + 2], "big"), hex_format) for i in range(0, len(units), 2)
    )


def _json_slash(text: str) -> str:
    """JSON-escaped as PHP's json_encode writes it: ``/`` as ``\\/``, non-ASCII as ``\\uxxxx``."""
    return json.dumps(text)[1:-1].replace("/", "\\/")


_NAMED = {c: name for name, c in reversed(html.entities.html5.items()) if len(c) == 1 and name.endswith(";")}


def _html_named(c: str) -> str:
    return f"&{_NAMED[c]}" if c in _NAMED else f"&#{ord(c)};"


#: Every encoding a server could echo the key in (id, encoder).
ENCODINGS = [
    ("raw", lambda k: k),
    ("quote", lambda k: quote(k, safe="")),
    ("quote-keep-slash", quote),
    ("quote_plus", quote_plus),
    ("quote_plus-lower-hex", lambda k: _lower_hex(quote_plus(k))),
    ("repr", lambda k: repr(k)[1:-1]),
    ("ascii", lambda k: ascii(k)[1:-1]),
    ("json", lambda k: json.dumps(k)[1:-1]),
    ("json-utf8", lambda k: json.dumps(k, ensure_ascii=False)[1:-1]),
    ("json-slash", _json_slash),
    ("json-u-upper-every-char", lambda k: _json_u(k, "04X")),
    ("json-u-lower-every-char", lambda k: _json_u(k, "04x")),
    ("html-escape", html.escape),
    ("html-escape-no-quotes", lambda k: html.escape(k, quote=False)),
    ("html-decimal", lambda k: _each_char(k, lambda c: f"&#{ord(c)};")),
    ("html-hex-lower", lambda k: _each_char(k, lambda c: f"&#x{ord(c):x};")),
    ("html-hex-upper", lambda k: _each_char(k, lambda c: f"&#X{ord(c):X};")),
    ("html-named", lambda k: _each_char(k, _html_named)),
    ("percent-double", lambda k: quote(quote(k, safe=""), safe="")),
    ("percent-double-plus", lambda k: quote_plus(quote_plus(k))),
    ("percent-double-lower-hex", lambda k: _lower_hex(quote(quote(k, safe=""), safe=""))),
    ("percent-triple", lambda k: quote(quote(quote(k, safe=""), safe=""), safe="")),
    ("percent-then-json-slash", lambda k: _json_slash(quote(k))),
    ("percent-then-json-u", lambda k: _json_u(quote_plus(k), "04x")),
    ("percent-then-html", lambda k: html.escape(quote(k))),
    ("json-then-percent", lambda k: quote(_json_slash(k), safe="")),
    ("json-then-html", lambda k: html.escape(_json_slash(k))),
    ("html-then-json", lambda k: _json_slash(html.escape(k))),
    ("html-then-percent-double", lambda k: quote(quote(html.escape(k), safe=""), safe="")),
]


class TestEveryEncodingIsRedacted:
    """A server may echo the key in any encoding: none of them may reach a message or a log."""

    @pytest.mark.parametrize(
        ("key", "encode"),
        [
            pytest.param(key, encode, id=f"{key_id}-{encoding_id}")
            for key_id, key in KEYS
            for encoding_id, encode in ENCODINGS
        ],
    )
    def test_echoed_key_is_redacted_and_the_rest_survives(self, key, encode):
        register_secret(key)
        echoed = encode(key)
        text = f"Error 401: invalid key <b>{echoed}</b>, see https://example.com/?a=1&amp;b=%2F"
        assert (
            redact(text)
            == f"Error 401: invalid key <b>{REDACTED}</b>, see https://example.com/?a=1&amp;b=%2F"
        )

    @pytest.mark.parametrize(("key_id", "key"), KEYS, ids=[key_id for key_id, _ in KEYS])
    def test_every_occurrence_in_one_text(self, key_id, key):
        register_secret(key)
        text = " | ".join(f"{name}={encode(key)}" for name, encode in ENCODINGS)
        assert redact(text) == " | ".join(f"{name}={REDACTED}" for name, _ in ENCODINGS)

    @pytest.mark.parametrize(
        "text",
        [
            "GET /v1/me?apiKey=***&phoneNumber=%2B33612345678 HTTP/1.1",
            "caf\\u00e9 \\/path &lt;b&gt; &#47; &sol; %252F %2541 \\\\ & % \\",
            "a key-like text: plus+slash/eq=amp&pct%hash#q?-012 (one character short)",
            "%E2%82 %ZZ &#xD800; &#1; \\uD83D alone \\x4 &unknown; 100% & done",
        ],
        ids=["url", "escapes-without-key", "key-prefix", "broken-escapes"],
    )
    def test_text_without_the_key_is_untouched(self, text):
        for _, key in KEYS:
            register_secret(key)
        assert redact(text) == text

    def test_part_of_the_key_encoded_is_not_redacted(self):
        key = "partial/key+0123456789"
        register_secret(key)
        text = f"{quote(quote(key[:-1], safe=''), safe='')} {_json_slash(key[1:])}"
        assert redact(text) == text


def test_forms_and_their_registration():
    forms = register_secret("a+b c/d-0123456789")
    assert {"a+b c/d-0123456789", "a%2Bb%20c%2Fd-0123456789", "a%2Bb+c%2Fd-0123456789"} <= forms
    assert register_secret("abc") == set()  # too short: nothing registered, nothing to mask


def test_longer_forms_are_replaced_first():
    # quote("k%2B") contains quote_plus-like pieces; no tail of the key may survive.
    key = "k%2Bk%2Bk-0123456789"
    register_secret(key)
    assert redact(quote(key, safe="")) == REDACTED


def test_text_with_too_many_readings_is_withheld(monkeypatch):
    register_secret(SECRET)
    monkeypatch.setattr("airflow_provider_smspartner.utils.redaction._MAX_VIEWS", 2)
    assert redact("%2541 \\u0041 &amp;") == REDACTED  # three decoded views: not all checked
