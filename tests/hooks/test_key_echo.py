"""Issue 19: an API that echoes the key back in an error, in an encoding of its own, over loopback HTTP.

A server may write the key it was sent into its error page or message JSON-escaped (``\\/``),
HTML-escaped (``&amp;``, ``&#43;``, ``&#x2F;``, ``&lt;``) or percent-encoded twice (``%252B``). None
of these may reach the exception the hook raises, the retry warning or any other log record
(caplog for the standard library's, the captured output for Airflow's structlog). The server is
``tests.helpers.LoopbackServer``: the sandbox never echoes a key.
"""

from __future__ import annotations

import html
import json
import logging
from urllib.parse import quote

import pytest

from airflow_provider_smspartner.exceptions import SmsPartnerAuthError, SmsPartnerServerError
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.utils.redaction import REDACTED, secret_forms
from tests.conftest import smspartner_connection_json
from tests.helpers import LoopbackServer, use_connection

KEY = 'plus+slash/eq=amp&pct%hash#q?<lt>"quote é-0123456789'

#: The three encodings of the finding (id, encoder).
ENCODINGS = {
    "json-slash": lambda key: json.dumps(key)[1:-1].replace("/", "\\/"),
    "html-entities": lambda key: html.escape(key).replace("+", "&#43;").replace("/", "&#x2F;"),
    "double-percent": lambda key: quote(quote(key, safe=""), safe=""),
}


def _reply(status: str, content_type: str, body: str) -> bytes:
    payload = body.encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {len(payload)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + payload


def _html_page(echo: str) -> bytes:
    return _reply("500 Internal Server Error", "text/html", f"<html><p>Invalid key: {echo}</p></html>")


def _json_message(echo: str) -> bytes:
    message = json.dumps({"success": False, "code": 10, "message": f"Invalid key: {echo}"})
    return _reply("401 Unauthorized", "application/json", message)


ECHOES = [
    pytest.param(_html_page, SmsPartnerServerError, encoding, id=f"{page}-{encoding}")
    for page in ("500-html-page",)
    for encoding in ENCODINGS
] + [
    pytest.param(_json_message, SmsPartnerAuthError, encoding, id=f"401-json-message-{encoding}")
    for encoding in ENCODINGS
]


class TestEchoedKey:
    @pytest.mark.parametrize(("reply", "error", "encoding"), ECHOES)
    def test_in_neither_the_error_nor_the_logs(self, monkeypatch, capfd, caplog, reply, error, encoding):
        caplog.set_level(logging.DEBUG)
        echo = ENCODINGS[encoding](KEY)
        with LoopbackServer(reply(echo)) as server:
            use_connection(monkeypatch, smspartner_connection_json(server.url, api_key=KEY, max_retries=1))
            hook = SmsPartnerHook()
            with pytest.raises(error) as excinfo:
                hook.get_account()
            ok, message = hook.test_connection()
            assert server.connections >= 2

        assert not ok
        # The echo was in the answer and is redacted; what surrounds it survives.
        assert f"Invalid key: {REDACTED}" in str(excinfo.value)
        assert f"Invalid key: {REDACTED}" in message
        messages = [record.getMessage() for record in caplog.records]
        assert any("apiKey=" in line for line in messages), "urllib3 DEBUG lines were not captured"
        # The hook logs through Airflow's structlog, to the captured output.
        output = capfd.readouterr()
        if error is SmsPartnerServerError:  # retried: the retry warning carries the error text
            assert f"Invalid key: {REDACTED}" in output.out + output.err
            assert "retry 1 of 1" in output.out + output.err
        texts = [str(excinfo.value), repr(excinfo.value), excinfo.value.message, message, caplog.text]
        texts += [output.out, output.err]
        forms = {KEY, echo, *secret_forms(KEY), *(encode(KEY) for encode in ENCODINGS.values())}
        leaks = [(form, text) for text in texts + messages for form in forms if form in text]
        assert leaks == []
