"""Tests of utils.connection: the connection's settings, validated through the hook."""

from __future__ import annotations

import json

import pytest
from airflow.sdk.exceptions import AirflowNotFoundException

from airflow_provider_smspartner.exceptions import (
    SmsPartnerConfigError,
)
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from tests.helpers import use_connection


class TestConnectionSettings:
    @pytest.mark.parametrize(
        ("host", "expected"),
        [
            ("", "https://api.smspartner.fr/v1"),
            ("api.smspartner.fr", "https://api.smspartner.fr/v1"),
            ("https://api.smspartner.fr", "https://api.smspartner.fr/v1"),
            ("https://api.smspartner.fr/v1/", "https://api.smspartner.fr/v1"),
            ("http://127.0.0.1:8765", "http://127.0.0.1:8765/v1"),
            ("http://localhost:8765/v1", "http://localhost:8765/v1"),
            ("http://[::1]:8765/v1", "http://[::1]:8765/v1"),
        ],
        ids=[
            "empty",
            "bare-host",
            "no-path",
            "trailing-slash",
            "loopback-http",
            "localhost-http",
            "ipv6-loopback",
        ],
    )
    def test_base_url(self, monkeypatch, host, expected):
        use_connection(monkeypatch, json.dumps({"conn_type": "smspartner", "host": host, "password": "k"}))
        assert SmsPartnerHook().settings.base_url == expected

    def test_plain_http_to_remote_host_is_refused(self, monkeypatch):
        use_connection(
            monkeypatch,
            json.dumps({"conn_type": "smspartner", "host": "http://api.example.com", "password": "k"}),
        )
        with pytest.raises(SmsPartnerConfigError, match=r"smspartner_default.*plain http:// .*loopback"):
            SmsPartnerHook().settings  # noqa: B018

    def test_missing_api_key_names_connection(self, monkeypatch):
        use_connection(monkeypatch, json.dumps({"conn_type": "smspartner", "host": ""}), "my_sms")
        with pytest.raises(SmsPartnerConfigError, match=r"'my_sms' has no API key.*password"):
            SmsPartnerHook("my_sms").settings  # noqa: B018

    @pytest.mark.parametrize(
        ("extra", "match"),
        [
            ({"timeout": "abc"}, "'timeout' must be a number of seconds > 0"),
            ({"timeout": 0}, "'timeout' must be"),
            ({"max_retries": -1}, "'max_retries' must be a whole number"),
            ({"max_retries": 1.5}, "'max_retries' must be a whole number"),
            ({"retry_backoff": "x"}, "'retry_backoff'"),
            ({"requests_per_second": 0}, "'requests_per_second' must be a number > 0"),
            ({"api_timezone": "Mars/Olympus"}, "'api_timezone' must be an IANA time zone"),
            ({"max_retry": 3}, "unknown extra.*'max_retry'"),
        ],
        ids=[
            "timeout-text",
            "timeout-zero",
            "retries-negative",
            "retries-fraction",
            "backoff-text",
            "rps-zero",
            "bad-timezone",
            "typo",
        ],
    )
    def test_bad_extra_is_named(self, monkeypatch, extra, match):
        use_connection(monkeypatch, json.dumps({"conn_type": "smspartner", "password": "k", "extra": extra}))
        with pytest.raises(SmsPartnerConfigError, match=match):
            SmsPartnerHook().settings  # noqa: B018

    def test_extras_from_text_are_accepted(self, monkeypatch):
        extra = {"timeout": "12.5", "max_retries": "2", "requests_per_second": "10", "api_timezone": "UTC"}
        use_connection(monkeypatch, json.dumps({"conn_type": "smspartner", "password": "k", "extra": extra}))
        settings = SmsPartnerHook().settings
        assert (settings.timeout, settings.max_retries, settings.requests_per_second) == (12.5, 2, 10.0)
        assert settings.api_timezone == "UTC"

    def test_wrong_connection_type_is_refused(self, monkeypatch):
        use_connection(monkeypatch, json.dumps({"conn_type": "postgres", "host": "db", "password": "k"}))
        with pytest.raises(SmsPartnerConfigError, match=r"of type 'postgres'.*'smspartner'"):
            SmsPartnerHook().settings  # noqa: B018

    def test_missing_connection(self, monkeypatch):
        monkeypatch.delenv("AIRFLOW_CONN_NOPE", raising=False)
        with pytest.raises(AirflowNotFoundException, match="nope"):
            SmsPartnerHook("nope").settings  # noqa: B018

    def test_no_network_or_connection_lookup_at_construction(self, monkeypatch):
        monkeypatch.delenv("AIRFLOW_CONN_SMSPARTNER_DEFAULT", raising=False)
        hook = SmsPartnerHook()  # would raise if it looked the connection up
        assert repr(hook) == "SmsPartnerHook(smspartner_conn_id='smspartner_default')"

    def test_user_agent_names_provider_version(self, smspartner_conn):
        from airflow_provider_smspartner import __version__

        assert (
            SmsPartnerHook().get_conn().headers["User-Agent"] == f"airflow-provider-smspartner/{__version__}"
        )
