"""Tests of utils.connection: the connection's settings, validated through the hook."""

from __future__ import annotations

import json
from urllib.parse import urlsplit

import pytest
import requests
from airflow.sdk.exceptions import AirflowNotFoundException
from urllib3.util import parse_url

from airflow_provider_smspartner.exceptions import (
    SmsPartnerConfigError,
)
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.utils.connection import build_base_url
from tests.helpers import use_connection

#: Host fields where URL parsers may disagree on the host, or that hide something: all refused.
TRICKY_HOSTS = {
    "backslash-userinfo": "http://evil.example\\@127.0.0.1/v1",
    "backslash-https": "https://evil.example\\@api.smspartner.fr/v1",
    "backslash-path": "http://127.0.0.1\\v1",
    "userinfo": "http://evil.example@127.0.0.1/v1",
    "userinfo-password": "https://user:secret-pw@api.smspartner.fr/v1",
    "fragment-at": "http://127.0.0.1:8765#@evil.example/v1",
    "query-at": "http://127.0.0.1:8765?@evil.example/v1",
    "tab": "http://127.0.0.1\t.evil.example/v1",
    "newline": "http://127.0.0.1\n/v1",
    "space": "http://127.0.0.1 .evil.example/v1",
    "non-ascii-host": "http://\uff4c\uff4f\uff43\uff41\uff4c\uff48\uff4f\uff53\uff54/v1",  # fullwidth "localhost"
    "percent-host": "http://127.0.0.1%2fevil.example/v1",
    "ipv6-zone": "http://[::1%25eth0]:8765/v1",
    "two-ports": "http://127.0.0.1:80:8765/v1",
    "empty-port": "http://127.0.0.1:/v1",
    "port-range": "http://127.0.0.1:99999/v1",
    "non-http": "ftp://127.0.0.1/v1",
    "no-host": "http:///v1",
    "odd-path": "http://127.0.0.1/v1<script>",
}

#: Accepted host fields, and the URL requests must then talk to.
ACCEPTED_HOSTS = [
    "https://api.smspartner.fr/v1",
    "api.smspartner.fr",
    "https://API.smspartner.fr:443/v1/",
    "http://127.0.0.1:8765",
    "http://127.8.9.10:8765/v1",
    "http://localhost:8765/v1",
    "http://[::1]:8765/v1",
    "https://xn--bcher-kva.example/sms-api/v1",
    "http://127.0.0.1:8765/v1@evil.example",
]


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

    @pytest.mark.parametrize("host", TRICKY_HOSTS.values(), ids=TRICKY_HOSTS.keys())
    def test_anything_parsers_could_read_differently_is_refused(self, host):
        with pytest.raises(SmsPartnerConfigError, match="'c': API base URL"):
            build_base_url("c", host)

    def test_refusal_does_not_echo_user_info(self):
        with pytest.raises(SmsPartnerConfigError) as excinfo:
            build_base_url("c", TRICKY_HOSTS["userinfo-password"])
        assert "secret-pw" not in str(excinfo.value)

    @pytest.mark.parametrize("host", ACCEPTED_HOSTS)
    def test_accepted_urls_are_read_alike_by_urlsplit_urllib3_and_requests(self, host):
        base_url = build_base_url("c", host)
        url = f"{base_url}/me"
        ours, theirs = urlsplit(url), parse_url(url)
        prepared = parse_url(requests.Request("GET", url, params={"apiKey": "k"}).prepare().url)
        assert ours.hostname == theirs.host.strip("[]").lower() == prepared.host.strip("[]").lower()
        assert ours.port == theirs.port == prepared.port
        assert ours.path == theirs.path == prepared.path

    @pytest.mark.parametrize(
        "host",
        [
            "http://api.smspartner.fr/v1",
            "http://127.1:8765/v1",
            "http://localhost.evil.example:8765",
            "http://0x7f.0.0.1/",
        ],
    )
    def test_plain_http_only_to_loopback_literally(self, host):
        with pytest.raises(SmsPartnerConfigError, match="plain http:// is only allowed for loopback"):
            build_base_url("c", host)

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
            ({"max_retry_after": 0}, "'max_retry_after' must be a number of seconds > 0, got 0"),
            ({"max_retry_after": "soon"}, "'max_retry_after' must be a number of seconds > 0"),
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
            "max-retry-after-zero",
            "max-retry-after-text",
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

    def test_max_retry_after_defaults_to_300_seconds(self, monkeypatch):
        extras = ({}, 300.0), ({"max_retry_after": "7200"}, 7200.0), ({"max_retry_after": None}, 300.0)
        for extra, expected in extras:
            use_connection(
                monkeypatch, json.dumps({"conn_type": "smspartner", "password": "k", "extra": extra})
            )
            assert SmsPartnerHook().settings.max_retry_after == expected

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


class TestSharedRateLimitExtras:
    def _settings(self, monkeypatch, **extra):
        use_connection(monkeypatch, json.dumps({"conn_type": "smspartner", "password": "k", "extra": extra}))
        return SmsPartnerHook().settings

    def test_off_by_default(self, monkeypatch):
        settings = self._settings(monkeypatch)
        assert settings.rate_limit_redis_conn_id is None and settings.rate_limit_key is None

    def test_budget_named_after_the_connection_unless_a_key_is_given(self, monkeypatch):
        settings = self._settings(monkeypatch, rate_limit_redis_conn_id="redis_default")
        assert settings.rate_limit_redis_conn_id == "redis_default"
        assert settings.shared_rate_limit_key == "smspartner:smspartner_default"
        settings = self._settings(
            monkeypatch, rate_limit_redis_conn_id=" redis_default ", rate_limit_key="office-ip:81.2.3.4"
        )
        assert settings.rate_limit_redis_conn_id == "redis_default"
        assert settings.shared_rate_limit_key == "office-ip:81.2.3.4"

    def test_emptied_form_fields_mean_off(self, monkeypatch):
        settings = self._settings(monkeypatch, rate_limit_redis_conn_id="", rate_limit_key=None)
        assert settings.rate_limit_redis_conn_id is None

    @pytest.mark.parametrize(
        ("extra", "match"),
        [
            (
                {"rate_limit_redis_conn_id": "redis default"},
                "'rate_limit_redis_conn_id' must be an Airflow connection id",
            ),
            ({"rate_limit_redis_conn_id": 6379}, "'rate_limit_redis_conn_id' must be"),
            (
                {"rate_limit_redis_conn_id": "r", "rate_limit_key": "a{b}"},
                "'rate_limit_key' must be a Redis key",
            ),
            (
                {"rate_limit_redis_conn_id": "r", "rate_limit_key": "a b"},
                "'rate_limit_key' must be a Redis key",
            ),
            (
                {"rate_limit_key": "shared"},
                "'rate_limit_key' names a shared budget, which needs 'rate_limit_redis_conn_id'",
            ),
        ],
        ids=["conn-id-space", "conn-id-number", "key-braces", "key-space", "key-without-redis"],
    )
    def test_bad_values_are_named(self, monkeypatch, extra, match):
        with pytest.raises(SmsPartnerConfigError, match=match):
            self._settings(monkeypatch, **extra)
