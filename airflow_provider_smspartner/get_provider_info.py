"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_smspartner import __version__


def get_provider_info() -> dict[str, Any]:
    """Describe the provider, its hook and the ``smspartner`` connection form to Airflow."""
    return {
        "package-name": "airflow-provider-smspartner",
        "name": "SMS Partner",
        "description": "Keep the SMS Partner stop list (SMS opt-outs) in sync with your warehouse.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "SMS Partner",
                "external-doc-url": "https://www.docpartner.dev/",
                "tags": ["service"],
            }
        ],
        "hooks": [
            {
                "integration-name": "SMS Partner",
                "python-modules": ["airflow_provider_smspartner.hooks.smspartner"],
            }
        ],
        "operators": [
            {
                "integration-name": "SMS Partner",
                "python-modules": ["airflow_provider_smspartner.operators.stop_list"],
            }
        ],
        "transfers": [
            {
                "source-integration-name": "SMS Partner",
                "target-integration-name": "Common SQL",
                "python-module": "airflow_provider_smspartner.transfers.stop_list_to_sql",
            }
        ],
        "connection-types": [
            {
                "connection-type": "smspartner",
                "hook-class-name": "airflow_provider_smspartner.hooks.smspartner.SmsPartnerHook",
                "hook-name": "SMS Partner",
                "ui-field-behaviour": {
                    "hidden-fields": ["login", "schema", "port"],
                    "relabeling": {"password": "API Key", "host": "API base URL"},
                    "placeholders": {
                        "host": "https://api.smspartner.fr/v1",
                        "password": "Your SMS Partner API key",
                        "extra": (
                            '{"timeout": 30, "max_retries": 5, "retry_backoff": 1, '
                            '"requests_per_second": 25, "api_timezone": "Europe/Paris"}'
                        ),
                    },
                },
                "conn-fields": {
                    "timeout": {
                        "label": "Timeout (seconds)",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                    },
                    "max_retries": {
                        "label": "Max retries",
                        "schema": {"type": ["integer", "null"], "minimum": 0},
                    },
                    "retry_backoff": {
                        "label": "Retry backoff base (seconds)",
                        "schema": {"type": ["number", "null"], "minimum": 0},
                    },
                    "requests_per_second": {
                        "label": "Requests per second (client throttle)",
                        "schema": {"type": ["number", "null"], "exclusiveMinimum": 0},
                    },
                    "api_timezone": {
                        "label": "API timezone (of createdAt)",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            }
        ],
    }
