"""Local emulator ("sandbox") of the SMS Partner stop-list API, for tests, benchmarks and demos.

A real HTTP server on loopback that answers like the documented API (``stop-sms/list``,
``stop-sms/add``, ``stop-sms/delete``, ``me``), with fault injection and request counters.
Standard library only, and independent of the rest of the provider on purpose: it validates
phone numbers from the vendor documentation, not with the provider's own code.

Knobs, from Python (``SandboxServer``) or the command line:

- ``latency``, ``rate_limit`` (HTTP 429 + ``Retry-After``), ``error_style`` (API errors as HTTP
  4xx or as HTTP 200 with ``success: false``);
- faults, queued with ``inject(kind, count, endpoint)`` or drawn at random (``fault_rates``):
  ``server_error``, ``bad_gateway``, ``drop``, ``lost_response``, ``slow``, ``malformed``,
  ``rate_limit``, ``truncated_list``, and ``trickle`` (the body written one byte every
  ``trickle_seconds``, so a per-read timeout never fires);
- scripted raw answers, for every odd answer a client must refuse:
  ``respond(body, status=200, endpoint=None, count=1, headers=None)`` serves any bytes with any
  status (``{}``, ``{"success": "false"}``, ``{"nbData": null, "data": null}``, invalid UTF-8,
  deeply nested JSON, a 401 without a code...), and ``redirect(location, status=302, ...)``
  answers a redirect to another host (CLI: ``--respond ENDPOINT STATUS BODY``,
  ``--redirect ENDPOINT STATUS URL``, ``--fault-rate trickle=1 --trickle-seconds 0.5``).

What it saw (requests per endpoint, statuses incl. 429s, the busiest sliding second, faults,
adds applied) is served at ``GET /_sandbox/stats`` and written by the CLI's ``--stats-file PATH``
on exit, so a fleet set-up (several workers sharing one rate limit) can be rehearsed against it.

Run it from a shell with ``python -m airflow_provider_smspartner.sandbox --help``.
"""

from airflow_provider_smspartner.sandbox.endpoints import ERROR_STYLES
from airflow_provider_smspartner.sandbox.faults import (
    ENDPOINTS,
    FAULT_KINDS,
    FaultKind,
    FaultPlan,
    ResponseScript,
    ScriptedResponse,
)
from airflow_provider_smspartner.sandbox.server import SandboxServer, is_loopback_host
from airflow_provider_smspartner.sandbox.state import (
    StopListState,
    StopRecord,
    normalize_documented,
)
from airflow_provider_smspartner.sandbox.stats import STATS_PATH, SandboxStats

__all__ = [
    "ENDPOINTS",
    "ERROR_STYLES",
    "FAULT_KINDS",
    "STATS_PATH",
    "FaultKind",
    "FaultPlan",
    "ResponseScript",
    "SandboxServer",
    "SandboxStats",
    "ScriptedResponse",
    "StopListState",
    "StopRecord",
    "is_loopback_host",
    "normalize_documented",
]
