"""Local emulator ("sandbox") of the SMS Partner stop-list API, for tests, benchmarks and demos.

A real HTTP server on loopback that answers like the documented API (``stop-sms/list``,
``stop-sms/add``, ``stop-sms/delete``, ``me``), with fault injection and request counters.
Standard library only, and independent of the rest of the provider on purpose: it validates
phone numbers from the vendor documentation, not with the provider's own code.

Run it from a shell with ``python -m airflow_provider_smspartner.sandbox --help``.
"""

from airflow_provider_smspartner.sandbox.faults import (
    ENDPOINTS,
    FAULT_KINDS,
    FaultKind,
    FaultPlan,
)
from airflow_provider_smspartner.sandbox.server import (
    ERROR_STYLES,
    SandboxServer,
    SandboxStats,
    is_loopback_host,
)
from airflow_provider_smspartner.sandbox.state import (
    StopListState,
    StopRecord,
    normalize_documented,
)

__all__ = [
    "ENDPOINTS",
    "ERROR_STYLES",
    "FAULT_KINDS",
    "FaultKind",
    "FaultPlan",
    "SandboxServer",
    "SandboxStats",
    "StopListState",
    "StopRecord",
    "is_loopback_host",
    "normalize_documented",
]
