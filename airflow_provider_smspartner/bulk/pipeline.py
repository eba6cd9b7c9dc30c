"""Bulk add and remove of stop-list numbers: the pipeline behind the two bulk operators.

    values -> normalise (E.164) -> invalid / duplicate settled -> diff against the stop list (one
    list call) -> dry run stops here -> one API call per remaining number, concurrently, through
    ONE shared hook (its throttle and retries serve every thread) -> one outcome per input value.

Every input value ends in exactly one status, so nothing is silently dropped; the caller
(:func:`conclude`) writes the outcomes, then decides whether the task fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from airflow.exceptions import AirflowException

from airflow_provider_smspartner.bulk.outcomes import (
    NOT_PROCESSED,
    CallOutcome,
    count_statuses,
    listed_pairs,
    merge_call_outcomes,
    plan_inputs,
    settle,
    settle_rest,
    undecided,
)
from airflow_provider_smspartner.bulk.progress import ProgressReporter
from airflow_provider_smspartner.bulk.results import ResultsTable
from airflow_provider_smspartner.bulk.runner import RunReport, run_calls
from airflow_provider_smspartner.exceptions import SmsPartnerAuthError, StopNotFoundError
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.utils.arguments import check_count

log = logging.getLogger(__name__)

#: Every status an input of a bulk add can end in (the summary has one count per status).
ADD_STATUSES = ("invalid", "duplicate", "skipped_existing", "added", "already_present", "failed", "would_add")
#: Every status an input of a bulk remove can end in.
REMOVE_STATUSES = ("invalid", "duplicate", "not_on_list", "removed", "failed", "would_remove")
#: Failures logged one per line; the rest are counted (the results table has them all).
FAILURE_SAMPLE = 10


@dataclass(frozen=True)
class BulkOptions:
    """How a bulk run behaves.

    :param default_region: Region of numbers written without an international prefix.
    :param dry_run: Decide everything, call nothing that changes the list.
    :param max_workers: Threads making API calls (they share the hook's throttle).
    :param skip_existing: Add only: diff against the current list first (one list call).
    """

    default_region: str = "FR"
    dry_run: bool = False
    max_workers: int = 8
    skip_existing: bool = True

    def __post_init__(self) -> None:
        # The region is checked where it is used, by the normalisation, before any API call.
        check_count("max_workers", self.max_workers, minimum=1)


@dataclass
class BulkResult:
    """The outcome of a bulk run before it is concluded.

    :param outcomes: One row per input value (see ``outcomes.OUTCOME_COLUMNS``).
    :param statuses: The statuses of this kind of run (``ADD_STATUSES`` or ``REMOVE_STATUSES``).
    :param fatal: The authentication error that stopped the run, if one did.
    """

    outcomes: pd.DataFrame
    statuses: tuple[str, ...]
    fatal: SmsPartnerAuthError | None = None

    def counts(self) -> dict[str, int]:
        """``total`` and one count per status (``not_processed`` too after a fatal error)."""
        statuses = self.statuses + ((NOT_PROCESSED,) if self.fatal is not None else ())
        return count_statuses(self.outcomes, statuses)


def _now() -> Any:
    return pd.Timestamp.now(tz="UTC").to_pydatetime()


def _log_plan(outcomes: pd.DataFrame, logger: Any) -> None:
    status = outcomes["status"]
    invalid = outcomes.loc[status == "invalid", "error_message"].value_counts()
    reasons = ", ".join(f"{reason}: {count}" for reason, count in invalid.items())
    logger.info(
        "%d inputs: %d distinct valid numbers, %d invalid%s, %d duplicates",
        len(outcomes),
        int(undecided(outcomes).sum()),
        int(invalid.sum()),
        f" ({reasons})" if reasons else "",
        int((status == "duplicate").sum()),
    )


def _send(
    items: Sequence[Any], call: Callable[[Any], CallOutcome], label: str, options: BulkOptions, logger: Any
) -> RunReport:
    workers = min(options.max_workers, max(len(items), 1))
    logger.info("Calling %s %d times with %d workers", label, len(items), workers)
    return run_calls(items, call, workers, ProgressReporter(len(items), label, logger))


def add_stops(values: pd.Series, hook: SmsPartnerHook, options: BulkOptions, logger: Any = log) -> BulkResult:
    """Add the numbers of ``values`` to the stop list.

    :param values: Raw values, one per input row.
    :param hook: Shared by every worker thread.
    :return: Statuses from ``ADD_STATUSES`` (``not_processed`` for inputs left after an auth error).
    """
    outcomes = plan_inputs(values, options.default_region, _now())
    _log_plan(outcomes, logger)
    if options.skip_existing:
        stop_list = hook.get_stop_list_df()
        listed = listed_pairs(outcomes, stop_list).drop_duplicates("row")
        settle(outcomes, listed["row"], "skipped_existing", listed["stop_id"])
        logger.info(
            "The stop list holds %d numbers; %d inputs are on it already", len(stop_list), len(listed)
        )
    todo = np.flatnonzero(undecided(outcomes).to_numpy())
    if options.dry_run:
        settle_rest(outcomes, "would_add")
        logger.info("Dry run: %d numbers would be added; nothing sent", len(todo))
        return BulkResult(outcomes, ADD_STATUSES)

    def add(phone: str) -> CallOutcome:
        added = hook.add_stop(phone)
        return CallOutcome(added.status, stop_id=added.stop_id)

    phones = outcomes["phone_e164"].to_numpy(dtype=object)[todo].tolist()
    report = _send(phones, add, "stop-sms/add", options, logger)
    merge_call_outcomes(outcomes, todo, report.outcomes)
    return BulkResult(outcomes, ADD_STATUSES, report.fatal)


def remove_stops(
    values: pd.Series, hook: SmsPartnerHook, options: BulkOptions, logger: Any = log
) -> BulkResult:
    """Remove the numbers of ``values`` from the stop list.

    Numbers are mapped to stop ids through one list call (E.164 on both sides); a number listed
    under several stop ids has all of them removed. A stop id gone by the time of its delete (code
    4: someone removed it meanwhile) counts as ``not_on_list``.

    :return: Statuses from ``REMOVE_STATUSES`` (``not_processed`` for inputs left after an auth error).
    """
    outcomes = plan_inputs(values, options.default_region, _now())
    _log_plan(outcomes, logger)
    stop_list = hook.get_stop_list_df()
    pairs = listed_pairs(outcomes, stop_list)
    absent = undecided(outcomes).to_numpy().copy()
    absent[pairs["row"].to_numpy()] = False
    settle(outcomes, np.flatnonzero(absent), "not_on_list")
    logger.info(
        "The stop list holds %d numbers; %d inputs are on it (%d stop ids)",
        len(stop_list),
        pairs["row"].nunique(),
        len(pairs),
    )
    if options.dry_run:
        first = pairs.drop_duplicates("row")
        settle(outcomes, first["row"], "would_remove", first["stop_id"])
        logger.info("Dry run: %d stop ids would be removed; nothing sent", len(pairs))
        return BulkResult(outcomes, REMOVE_STATUSES)

    def remove(stop_id: int) -> CallOutcome:
        try:
            hook.remove_stop(stop_id)
        except StopNotFoundError:
            return CallOutcome("not_on_list", stop_id=stop_id)
        return CallOutcome("removed", stop_id=stop_id)

    stop_ids = [int(i) for i in pairs["stop_id"]]
    report = _send(stop_ids, remove, "stop-sms/delete", options, logger)
    merge_call_outcomes(outcomes, pairs["row"].to_numpy(), report.outcomes, item_stop_ids=stop_ids)
    return BulkResult(outcomes, REMOVE_STATUSES, report.fatal)


def log_failures(outcomes: pd.DataFrame, logger: Any, limit: int = FAILURE_SAMPLE) -> None:
    """Log the first ``limit`` failures, one per line, and how many more there are."""
    failed = outcomes[outcomes["status"] == "failed"]
    for row in failed.head(limit).itertuples(index=False):
        code = "" if row.error_code is pd.NA else f"code {row.error_code}: "
        logger.warning(
            "failed: %s (input %r): %s%s", row.phone_e164, row.input_value, code, row.error_message
        )
    if len(failed) > limit:
        logger.warning("... and %d more failures", len(failed) - limit)


def conclude(
    result: BulkResult,
    max_failed: int,
    results: ResultsTable | None = None,
    dag_id: str | None = None,
    run_id: str | None = None,
    logger: Any = log,
) -> dict[str, Any]:
    """Report a bulk run: log it, write the results table, then fail the task if it must.

    Outcomes are written before anything is raised, so nothing is lost when the task fails.

    :param max_failed: Failures tolerated before the task fails.
    :param results: Where to append one row per input value, if anywhere.
    :return: ``total``, one count per status, and ``results_table`` when one was written.
    :raises SmsPartnerAuthError: when the API refused the key (the run stopped at once).
    :raises AirflowException: when more than ``max_failed`` inputs failed.
    """
    summary: dict[str, Any] = dict(result.counts())
    log_failures(result.outcomes, logger)
    logger.info("Summary: %s", ", ".join(f"{key}={value}" for key, value in summary.items()))
    if results is not None:
        written = results.write(result.outcomes, dag_id, run_id)
        summary["results_table"] = results.table
        logger.info("Wrote %d outcome rows to %s on %r", written, results.table, results.conn_id)
    where = f"results table {results.table} (connection {results.conn_id!r})" if results else "the log above"
    if result.fatal is not None:
        logger.error(
            "Stopped at once: the API refused the key (%s); %d inputs not processed. Fix the connection "
            "and re-run: numbers already added are skipped. Outcomes so far: %s",
            result.fatal,
            summary.get(NOT_PROCESSED, 0),
            where,
        )
        raise result.fatal
    if summary["failed"] > max_failed:
        raise AirflowException(
            f"{summary['failed']} of {summary['total']} numbers failed (max_failed={max_failed}); "
            f"every outcome, with error codes and messages, is in {where}. A re-run retries only what "
            "is not done yet."
        )
    return summary
