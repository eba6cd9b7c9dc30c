"""The operators and a 429 whose ``Retry-After`` is longer than the connection's ``max_retry_after``.

Issue 19: a bulk run spent every input's retries against 429s. Now it stops cleanly: no request
after those in flight, every input left recorded ``not_processed`` with the server's wait in
``note`` (exactly one outcome per input), then the task fails with the hook's message, which says
when to retry; every other operator fails with that same message.

Over loopback against the sandbox, with a SQLite results table; the counts asserted are requests
the sandbox received, never wall-clock figures.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import pytest

from airflow_provider_smspartner.api.throttle import RequestThrottle
from airflow_provider_smspartner.exceptions import SmsPartnerRetryAfterTooLongError
from airflow_provider_smspartner.operators.smspartner import (
    SmsPartnerAddStopsOperator,
    SmsPartnerRemoveStopsOperator,
    SmsPartnerStopListOperator,
    SmsPartnerSuppressAudienceOperator,
)
from airflow_provider_smspartner.transfers.smspartner_to_sql import SmsPartnerStopListToSqlOperator
from tests.conftest import smspartner_connection_json
from tests.helpers import CONTEXT, new_numbers, read_results, status_counts, use_connection

WORKERS = 4
#: Calls answered before the 429: the (FIRST_CALLS + 1)-th call meets it.
FIRST_CALLS = 20
MESSAGE = (
    r"SMS Partner asked to wait 7200 s \(Retry-After\), more than max_retry_after=300 of connection "
    r"'{conn_id}'; retry after (\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ) or raise max_retry_after\."
)


@pytest.fixture
def when_paused(monkeypatch: pytest.MonkeyPatch, sandbox: Any) -> list[int]:
    """The requests the sandbox had received each time a hook paused its throttle for longer than
    ``max_retry_after`` (read once the pause is in force): after that moment only the calls
    already released by the throttle, one per other worker at most, may reach the API. (Counting
    from when the sandbox sent the 429 instead would let workers that finish meanwhile, before
    the hook reads the answer on a loaded machine, make the count depend on timing.)"""
    counts: list[int] = []
    original = RequestThrottle.pause

    def pause(self: RequestThrottle, seconds: float) -> None:
        original(self, seconds)
        if seconds > 300:
            counts.append(sandbox.stats.total)

    monkeypatch.setattr(RequestThrottle, "pause", pause)
    return counts


@pytest.fixture
def conn_id(monkeypatch: pytest.MonkeyPatch, sandbox: Any) -> str:
    """A connection of its own to the sandbox (a long pause must not hold other tests back);
    the sandbox answers 429s with ``Retry-After: 7200``."""
    conn_id = f"retry_after_{uuid.uuid4().hex[:10]}"
    use_connection(monkeypatch, smspartner_connection_json(sandbox.base_url), conn_id)
    sandbox.retry_after = "7200"
    return conn_id


def _check_stopped_run(rows: Any, error: SmsPartnerRetryAfterTooLongError, inputs: int, done: str) -> None:
    """One row per input; each either done or ``not_processed`` with the server's wait as note."""
    assert sorted(rows["input_row"]) == list(range(inputs))
    counts = status_counts(rows)
    assert set(counts) == {done, "not_processed"}, counts
    assert counts[done] >= FIRST_CALLS
    left = rows[rows["status"] == "not_processed"]
    assert set(left["note"]) == {error.retry_hint}
    assert re.fullmatch(r"retry_after=7200s, retry after \S+Z", error.retry_hint)


def _stopped_bulk_run(
    operator: type[Any],
    sandbox: Any,
    endpoint: str,
    numbers: list[str],
    conn_id: str,
    sqlite_conn: str,
    when_paused: list[int],
) -> tuple[SmsPartnerRetryAfterTooLongError, Any, int]:
    """Run ``operator`` over ``numbers`` while the (FIRST_CALLS + 1)-th call on ``endpoint`` meets
    the long Retry-After; check the run stopped there. Return the error, the results rows and the
    calls the sandbox received on ``endpoint``."""
    sandbox.inject("rate_limit", endpoint=endpoint, after=FIRST_CALLS)
    op = operator(
        task_id="bulk",
        smspartner_conn_id=conn_id,
        phone_numbers=numbers,
        max_workers=WORKERS,
        results_table="bulk_results",
        results_conn_id=sqlite_conn,
    )
    with pytest.raises(SmsPartnerRetryAfterTooLongError) as raised:
        op.execute(context=CONTEXT)
    assert re.fullmatch(MESSAGE.format(conn_id=conn_id) + r" \(code 429, HTTP 429\)", str(raised.value))
    # The 429 stopped the run: after the hook paused its throttle, only the calls in flight then
    # (at most the other workers') reached the API.
    calls = sandbox.stats.count(endpoint)
    assert len(when_paused) == 1
    assert sandbox.stats.total - when_paused[0] <= WORKERS - 1
    assert calls >= FIRST_CALLS + 1
    assert sandbox.stats.rate_limited == 1
    return raised.value, read_results(sqlite_conn, "bulk_results"), calls


class TestBulkRunsStopCleanly:
    def test_add(self, sandbox, conn_id, sqlite_conn, when_paused):
        numbers = new_numbers(200, sandbox)
        error, rows, adds = _stopped_bulk_run(
            SmsPartnerAddStopsOperator, sandbox, "stop-sms/add", numbers, conn_id, sqlite_conn, when_paused
        )
        _check_stopped_run(rows, error, len(numbers), "added")
        assert status_counts(rows)["added"] == sandbox.stats.adds_applied == adds - 1
        assert set(rows.loc[rows["status"] == "added", "phone_e164"]) <= sandbox.state.phone_numbers()
        left = set(rows.loc[rows["status"] == "not_processed", "phone_e164"])
        assert not left & sandbox.state.phone_numbers()

    def test_remove(self, sandbox, conn_id, sqlite_conn, when_paused):
        numbers = new_numbers(120, sandbox)
        sandbox.state.seed_numbers(numbers)
        error, rows, deletes = _stopped_bulk_run(
            SmsPartnerRemoveStopsOperator,
            sandbox,
            "stop-sms/delete",
            numbers,
            conn_id,
            sqlite_conn,
            when_paused,
        )
        _check_stopped_run(rows, error, len(numbers), "removed")
        assert status_counts(rows)["removed"] == deletes - 1
        left = set(rows.loc[rows["status"] == "not_processed", "phone_e164"])
        assert left == set(numbers) & sandbox.state.phone_numbers()

    def test_without_a_results_table_the_task_fails_the_same_way(self, sandbox, conn_id, when_paused):
        sandbox.inject("rate_limit", endpoint="stop-sms/add", after=FIRST_CALLS)
        op = SmsPartnerAddStopsOperator(
            task_id="add_stops",
            smspartner_conn_id=conn_id,
            phone_numbers=new_numbers(100, sandbox),
            max_workers=WORKERS,
        )
        with pytest.raises(SmsPartnerRetryAfterTooLongError, match=MESSAGE.format(conn_id=conn_id)):
            op.execute(context=CONTEXT)
        assert sandbox.stats.total - when_paused[0] <= WORKERS - 1


def _stop_list(conn_id: str, sqlite_conn: str) -> Any:
    return SmsPartnerStopListOperator(task_id="stop_list", smspartner_conn_id=conn_id)


def _extract(conn_id: str, sqlite_conn: str) -> Any:
    return SmsPartnerStopListToSqlOperator(
        task_id="extract", smspartner_conn_id=conn_id, sql_conn_id=sqlite_conn, table="stop_list"
    )


def _gate(conn_id: str, sqlite_conn: str) -> Any:
    return SmsPartnerSuppressAudienceOperator(
        task_id="suppress", smspartner_conn_id=conn_id, phone_numbers=["+33655443322"], mode="check"
    )


class TestOtherOperatorsFailWithTheSameMessage:
    @pytest.mark.parametrize("build", [_stop_list, _extract, _gate], ids=["stop-list", "extract", "gate"])
    def test_fails_at_once_with_when_to_retry(self, sandbox, conn_id, sqlite_conn, build):
        sandbox.inject("rate_limit", endpoint="stop-sms/list")
        with pytest.raises(SmsPartnerRetryAfterTooLongError, match=MESSAGE.format(conn_id=conn_id)):
            build(conn_id, sqlite_conn).execute(context=CONTEXT)
        assert sandbox.stats.count("stop-sms/list") == 1  # not retried
