"""Provider metadata read by Airflow through the ``apache_airflow_provider`` entry point."""

from __future__ import annotations

from typing import Any

from airflow_provider_smspartner import __version__
from airflow_provider_smspartner.utils.connection import connection_form_fields, extras_placeholder


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
                "python-modules": ["airflow_provider_smspartner.operators.smspartner"],
            }
        ],
        "triggers": [
            {
                "integration-name": "SMS Partner",
                "python-modules": ["airflow_provider_smspartner.triggers.smspartner"],
            }
        ],
        "transfers": [
            {
                "source-integration-name": "SMS Partner",
                "target-integration-name": "Common SQL",
                "python-module": "airflow_provider_smspartner.transfers.smspartner_to_sql",
            },
            {
                "source-integration-name": "Common SQL",
                "target-integration-name": "Common SQL",
                "python-module": "airflow_provider_smspartner.transfers.phone_numbers_to_sql",
            },
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
                        "extra": extras_placeholder(),
                    },
                },
                "conn-fields": connection_form_fields(),
            }
        ],
    }
