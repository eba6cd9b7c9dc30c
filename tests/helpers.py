"""Helpers shared by several test modules (the fixtures live in conftest.py)."""

from __future__ import annotations

import re
import socket
import threading
from types import SimpleNamespace
from typing import Any

import pandas as pd
import pytest

from tests.conftest import smspartner_connection_json

#: A minimal task context: what the bulk operators read from it.
CONTEXT: dict[str, Any] = {"dag": SimpleNamespace(dag_id="bulk_dag"), "run_id": "manual__2026-01-01"}
#: Random faults of every retryable kind (lost responses included) at a realistic rate.
FAULTS = {"server_error": 0.05, "drop": 0.05, "lost_response": 0.05, "rate_limit": 0.03}
#: Valid for libphonenumber, refused by the API (fewer than 8 digits): API code 9.
API_REJECTED = ["+6834002", "+6837001", "+6903010"]


def use_sandbox(monkeypatch: pytest.MonkeyPatch, sandbox: Any, **extras: Any) -> None:
    """Point ``smspartner_default`` at ``sandbox``, with enough retries to outlast random faults."""
    extras.setdefault("max_retries", 8)
    monkeypatch.setenv(
        "AIRFLOW_CONN_SMSPARTNER_DEFAULT", smspartner_connection_json(sandbox.base_url, **extras)
    )


def serve_list_rows(monkeypatch: pytest.MonkeyPatch, sandbox: Any, rows: list[tuple[int, str, str]]) -> None:
    """Make the sandbox answer ``stop-sms/list`` with ``rows`` ``(id, phoneNumber, createdAt)``,
    as given (numbers the sandbox itself would never store)."""
    import json

    data = [{"id": i, "phoneNumber": phone, "createdAt": created} for i, phone, created in rows]
    body = json.dumps({"success": True, "code": 200, "nbData": len(data), "data": data}, ensure_ascii=False)
    monkeypatch.setattr(sandbox.state, "list_body", lambda truncated=False: body.encode())


def inject_faults(sandbox: Any, endpoint: str) -> None:
    """Random faults on ``endpoint`` only; ``Retry-After: 0`` keeps 429s fast."""
    sandbox.fault_rates = FAULTS
    sandbox.fault_endpoints = {endpoint}
    sandbox.retry_after = "0"


def new_numbers(count: int, sandbox: Any, prefix: str = "+3364") -> list[str]:
    """``count`` E.164 numbers that are not on the sandbox list."""
    listed = sandbox.state.phone_numbers()
    numbers = (f"{prefix}{i:07d}" for i in range(10 * count + 10))
    return [n for n in numbers if n not in listed][:count]


def national(e164: str) -> str:
    """``+33612345678`` -> ``06 12 34 56 78``."""
    digits = "0" + e164[3:]
    return " ".join(digits[i : i + 2] for i in range(0, 10, 2))


def query_frame(conn_id: str, sql: str) -> pd.DataFrame:
    """The result of ``sql`` on connection ``conn_id``, column names lower-cased."""
    from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook

    frame = resolve_dbapi_hook(conn_id).get_df(sql)
    frame.columns = [str(c).lower() for c in frame.columns]
    return frame


def read_results(conn_id: str, table: str) -> pd.DataFrame:
    """A results table as written, column names lower-cased."""
    return query_frame(conn_id, f"SELECT * FROM {table}")


def drop_table(conn_id: str, table: str) -> None:
    """Drop ``table`` if it exists."""
    from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook

    resolve_dbapi_hook(conn_id).run(f"DROP TABLE IF EXISTS {table}")


def status_counts(frame: pd.DataFrame) -> dict[str, int]:
    """``{status: rows}`` of a results table."""
    return {str(k): int(v) for k, v in frame["status"].value_counts().items()}


def nonzero(summary: dict[str, Any]) -> dict[str, int]:
    """The statuses of a summary that occurred (``total`` and ``results_table`` left out)."""
    return {k: v for k, v in summary.items() if k not in ("total", "results_table") and v}


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class _StopTrigger(Exception):
    """Ends a driven trigger loop (raised from its sleep, outside the trigger's error handling)."""


def drive_trigger(trigger: Any, polls: int) -> list[Any]:
    """Run an event trigger's ``run()`` for ``polls`` polls; return the payloads it yielded.

    The trigger's sleep (``_sleep``) advances its clock (``_monotonic``, set to a
    :class:`FakeClock` when it is not one already) instead of waiting, so a poll interval or a
    back-off of hours takes no real time. Call again to go on where it stopped.
    """
    import asyncio

    if not isinstance(trigger._monotonic, FakeClock):
        trigger._monotonic = FakeClock()
    clock = trigger._monotonic
    slept = 0

    async def sleep(seconds: float) -> None:
        nonlocal slept
        slept += 1
        clock.now += seconds
        if slept >= polls:
            raise _StopTrigger

    trigger._sleep = sleep
    payloads: list[Any] = []

    async def main() -> None:
        async for event in trigger.run():
            payloads.append(event.payload)

    with pytest.raises(_StopTrigger):
        asyncio.run(main())
    return payloads


class RecordingLogger:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, message: str, *args: object) -> None:
        self.lines.append(message % args)

    warning = info


def free_port() -> int:
    """A TCP port free on the loopback interface right now (nothing listens there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def use_connection(
    monkeypatch: pytest.MonkeyPatch, conn_json: str, conn_id: str = "smspartner_default"
) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", conn_json)


class LoopbackServer:
    """A raw TCP server on 127.0.0.1 for what the sandbox cannot be.

    It records every byte it receives on every connection (``received``, ``connections``), so it
    can stand for "another host" that must never see the API key. It answers each request with
    ``reply`` once the whole request has arrived (headers, then as many body bytes as its
    Content-Length says), so ``received`` holds the body by the time the client has its answer.
    The reply goes all at once or one byte every ``trickle_seconds`` (a server trickling its
    status line and headers).
    """

    DEFAULT_REPLY = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
        b"Connection: close\r\n\r\n{}"
    )

    def __init__(self, reply: bytes = DEFAULT_REPLY, trickle_seconds: float | None = None) -> None:
        self.reply = reply
        self.trickle_seconds = trickle_seconds
        self._lock = threading.Lock()
        self._received = bytearray()
        self._connections = 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._socket = socket.create_server(("127.0.0.1", 0))
        self._socket.settimeout(0.05)
        self.port = self._socket.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def received(self) -> bytes:
        with self._lock:
            return bytes(self._received)

    @property
    def connections(self) -> int:
        with self._lock:
            return self._connections

    def __enter__(self) -> LoopbackServer:
        thread = threading.Thread(target=self._accept_loop, daemon=True)
        thread.start()
        self._threads.append(thread)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._socket.close()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._socket.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                self._connections += 1
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(0.05)
        request = bytearray()
        replied = False
        with conn:
            while not self._stop.is_set():
                try:
                    chunk = conn.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    return
                if not chunk:
                    return
                request += chunk
                with self._lock:
                    self._received += chunk
                if not replied and _request_is_complete(request):
                    replied = True
                    if not self._send(conn):
                        return

    def _send(self, conn: socket.socket) -> bool:
        try:
            if not self.trickle_seconds:
                conn.sendall(self.reply)
                return True
            for index in range(len(self.reply)):
                if index and self._stop.wait(self.trickle_seconds):
                    return False
                conn.sendall(self.reply[index : index + 1])
        except OSError:
            return False
        return True


def _request_is_complete(request: bytes) -> bool:
    """Whether ``request`` holds its headers and as many body bytes as its Content-Length says."""
    head, separator, body = request.partition(b"\r\n\r\n")
    if not separator:
        return False
    length = re.search(rb"(?im)^content-length:\s*(\d+)\s*$", head)
    return length is None or len(body) >= int(length.group(1))


def ti_context(
    try_number: int | None,
    map_index: int = -1,
    task_id: str = "add_stops",
    dag_id: str = "bulk_dag",
    run_id: str = "manual__2026-01-01",
) -> dict[str, Any]:
    """A task context with a task instance, as Airflow gives it: what keys a bulk run's results rows."""
    ti = SimpleNamespace(
        dag_id=dag_id, run_id=run_id, task_id=task_id, map_index=map_index, try_number=try_number
    )
    return {"dag": SimpleNamespace(dag_id=dag_id), "run_id": run_id, "ti": ti}


def listed_once(sandbox: Any, numbers: Any) -> bool:
    """Whether every number of ``numbers`` is on the sandbox list exactly once."""
    from collections import Counter

    counts = Counter(entry.phone_number for entry in sandbox.state.list_entries())
    return all(counts[n] == 1 for n in numbers)


def oracle_e164(value: Any, region: str = "FR") -> str | None:
    """libphonenumber on one value (parse, validate, format as E.164), written out here rather
    than taken from the provider: the tests' own oracle. Missing values and NaN give None; an
    integral float is read as the integer it holds."""
    import math

    import phonenumbers

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    try:
        number = phonenumbers.parse(str(value), region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def live_sha256(sandbox: Any) -> str:
    """``list_sha256`` of the sandbox's list as it stands: what an extract of it now records."""
    from airflow_provider_smspartner.utils.stop_list import list_sha256

    entries = sandbox.state.list_entries()
    return list_sha256([e.stop_id for e in entries], [e.phone_number for e in entries])


def max_in_window(times: list[float], window: float = 1.0) -> int:
    """The most timestamps in any half-open window ``(t - window, t]`` (the sandbox's own measure)."""
    times, best, start = sorted(times), 0, 0
    for end, stamp in enumerate(times):
        while times[start] <= stamp - window:
            start += 1
        best = max(best, end - start + 1)
    return best
