"""The API-server plugin that lets the UI's Test button test a stored ``smspartner`` connection."""

from __future__ import annotations

import asyncio
import json

import pytest

from airflow_provider_smspartner.plugins.connection_check import ConnectionTestPortFix, drop_unset_port


def _body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


class TestConnectionTestPortFix:
    def test_registered_as_an_airflow_plugin_entry_point(self):
        from importlib.metadata import distributions

        # As Airflow reads them: every distribution on sys.path (a stale *.egg-info in the
        # working tree may shadow the installed metadata for importlib's deduplicated view).
        found = {
            ep.value
            for dist in distributions()
            for ep in dist.entry_points
            if ep.group == "airflow.plugins" and ep.name == "smspartner_connection_test"
        }
        assert found == {
            "airflow_provider_smspartner.plugins.connection_check:SmsPartnerConnectionTestPlugin"
        }

    def test_plugin_class_is_an_airflow_plugin_with_the_middleware(self):
        from airflow.plugins_manager import AirflowPlugin, is_valid_plugin

        from airflow_provider_smspartner.plugins.connection_check import (
            SmsPartnerConnectionTestPlugin as plugin,
        )

        assert issubclass(plugin, AirflowPlugin)
        assert is_valid_plugin(plugin)
        assert [m["middleware"] for m in plugin.fastapi_root_middlewares] == [ConnectionTestPortFix]

    @pytest.mark.parametrize(
        ("body", "expected"),
        [
            (
                _body(conn_type="smspartner", connection_id="s", port=0, host="h"),
                _body(conn_type="smspartner", connection_id="s", host="h"),
            ),
            (_body(conn_type="smspartner", port=443), None),
            (_body(conn_type="smspartner", port=None), None),
            (_body(conn_type="smspartner", port=False), None),
            (_body(conn_type="smspartner"), None),
            (_body(conn_type="http", port=0), None),
            (b"not json", None),
            (b"[0]", None),
        ],
        ids=[
            "unset-port",
            "real-port",
            "null-port",
            "false-port",
            "no-port",
            "other-type",
            "not-json",
            "not-object",
        ],
    )
    def test_drop_unset_port(self, body: bytes, expected: bytes | None):
        result = drop_unset_port(body)
        if expected is None:
            assert result == body
        else:
            assert json.loads(result) == json.loads(expected)

    @staticmethod
    def _through_middleware(path: str, chunks: list[bytes], method: str = "POST") -> tuple[bytes, dict]:
        seen: dict = {}

        async def app(scope, receive, send):
            body, more = b"", True
            while more:
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            seen["body"], seen["headers"] = body, dict(scope["headers"])

        messages = [
            {"type": "http.request", "body": chunk, "more_body": i < len(chunks) - 1}
            for i, chunk in enumerate(chunks)
        ]

        async def receive():
            return messages.pop(0)

        async def send(message):
            raise AssertionError("the test app sends nothing")

        length = str(sum(len(c) for c in chunks)).encode()
        scope = {"type": "http", "method": method, "path": path, "headers": [(b"content-length", length)]}
        asyncio.run(ConnectionTestPortFix(app)(scope, receive, send))
        return seen["body"], seen["headers"]

    def test_middleware_rewrites_a_chunked_test_request(self):
        body = _body(conn_type="smspartner", connection_id="s", port=0)
        seen, headers = self._through_middleware("/api/v2/connections/test", [body[:10], body[10:]])
        assert json.loads(seen) == {"conn_type": "smspartner", "connection_id": "s"}
        assert headers[b"content-length"] == str(len(seen)).encode()

    @pytest.mark.parametrize(
        ("path", "method"),
        [("/api/v2/connections", "POST"), ("/api/v2/connections/test", "GET")],
        ids=["other-route", "other-method"],
    )
    def test_middleware_leaves_other_requests_alone(self, path: str, method: str):
        body = _body(conn_type="smspartner", port=0)
        seen, _ = self._through_middleware(path, [body], method)
        assert seen == body
