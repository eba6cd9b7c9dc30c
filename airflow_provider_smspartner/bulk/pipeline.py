"""Bulk add and remove of stop-list numbers: the pipeline behind the two bulk operators.

    values -> normalise (E.164) -> invalid / duplicate settled -> diff against the stop list (one
    list call; it also settles what earlier tries of the task instance left pending) -> dry run
    stops here -> one API call per remaining number, concurrently, through ONE shared hook (its
    throttle and retries serve every thread) -> calls whose answer was lost checked against one
    fresh list fetch -> one outcome per input value.

Every input value ends in exactly one status, so nothing is silently dropped. With a results
table the outcomes are recorded while the run goes (``bulk.recorder``): settled inputs first,
each call's input as ``pending`` before it is sent, outcomes in batches; :func:`conclude` then
logs the run and decides whether the task fails.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
from airflow.exceptions import AirflowException

from airflow_provider_smspartner.bulk.attempts import AttemptJournal, is_ambiguous, journal_attempts
from airflow_provider_smspartner.bulk.numbers import mask_number
from airflow_provider_smspartner.bulk.outcomes import (
    NOT_PROCESSED,
    PENDING,
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
from airflow_provider_smspartner.bulk.reconcile import Kind, Recovery, reconcile_calls, recover_earlier
from airflow_provider_smspartner.bulk.recorder import RunRecorder
from airflow_provider_smspartner.bulk.results import TryResults
from airflow_provider_smspartner.bulk.runner import RunReport, failure_outcome, run_calls
from airflow_provider_smspartner.exceptions import (
    SmsPartnerAuthError,
    SmsPartnerRetryAfterTooLongError,
    StopNotFoundError,
)
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.utils.arguments import check_count
from airflow_provider_smspartner.utils.redaction import redact

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
    :param fatal: The error that stopped the run, if one did: the API refused the key, or asked
        to wait longer than the connection's ``max_retry_after`` (the inputs left are then
        ``not_processed``, with the server's wait in ``note``).
    :param unconfirmed: Why calls whose answer was lost could not be checked against the list
        (the list fetch failed); their inputs stay ``pending`` for the next try.
    :param results: The try's rows in the results table, when one is kept.
    :param rows_written: Rows of this try in the results table.
    """

    outcomes: pd.DataFrame
    statuses: tuple[str, ...]
    fatal: SmsPartnerAuthError | SmsPartnerRetryAfterTooLongError | None = None
    unconfirmed: BaseException | None = None
    results: TryResults | None = None
    rows_written: int = 0

    def counts(self) -> dict[str, int]:
        """``total`` and one count per status (``not_processed`` after a fatal error, ``pending``
        when calls could not be confirmed)."""
        statuses = self.statuses + ((NOT_PROCESSED,) if self.fatal is not None else ())
        if self.unconfirmed is not None or (self.outcomes["status"] == PENDING).any():
            statuses += (PENDING,)
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


def _recover(
    kind: Kind,
    results: TryResults | None,
    outcomes: pd.DataFrame,
    stop_list: pd.DataFrame | None,
    logger: Any,
) -> Recovery:
    """Settle what earlier tries of the task instance left pending (needs the current list)."""
    if results is None or results.earlier.empty or stop_list is None:
        return Recovery()
    # In keyed-hash mode the earlier rows hold hashes: matched to this run's and the list's numbers.
    known = pd.concat([outcomes["phone_e164"], stop_list["phone_e164"]], ignore_index=True)
    recovery = recover_earlier(kind, results.earlier_e164(known), stop_list, results.try_number)
    if not recovery.updates.empty:
        logger.info(
            "Try %d: %d inputs of earlier tries were left pending (the try ended before recording their "
            "outcome); checked against the list: %s",
            results.try_number,
            len(recovery.updates),
            recovery.describe(),
        )
    return recovery


def _note_earlier(
    outcomes: pd.DataFrame, rows: np.ndarray, recovery: Recovery, verb: str
) -> list[str | None] | None:
    """Notes for ``rows`` whose number an earlier try of the task instance added / removed."""
    if not recovery.applied_by:
        return None
    phones = outcomes["phone_e164"].to_numpy(dtype=object)[rows]
    return [
        f"{verb} by try {recovery.applied_by[p]} of this task instance" if p in recovery.applied_by else None
        for p in phones
    ]


@contextmanager
def _recording(
    results: TryResults | None, outcomes: pd.DataFrame, logger: Any
) -> Iterator[RunRecorder | None]:
    """The run's recorder (``None`` without a results table); when the run is stopped
    (``execution_timeout``, SIGTERM, any exception), every input is recorded on the way out (briefly),
    then the interruption propagates."""
    if results is None:
        yield None
        return
    recorder = RunRecorder(results, outcomes, logger)
    try:
        yield recorder
    except BaseException as exc:
        recorder.abort(outcomes, reason=type(exc).__name__)
        raise


def _send(
    items: Sequence[Any],
    call: Callable[[Any], CallOutcome],
    label: str,
    options: BulkOptions,
    logger: Any,
    recorder: RunRecorder | None,
) -> RunReport:
    workers = min(options.max_workers, max(len(items), 1))
    logger.info("Calling %s %d times with %d workers", label, len(items), workers)
    return run_calls(items, call, workers, ProgressReporter(len(items), label, logger), journal=recorder)


def _pending(exc: BaseException) -> CallOutcome:
    """A call that may have been applied: its failure kept, its status settled later (``failed``
    if the list shows it was not)."""
    return replace(failure_outcome(exc), status=PENDING, unapplied_status="failed")


def _lost(journal: AttemptJournal) -> str:
    return redact(f"the answer to an earlier attempt was lost ({journal.ambiguous})")


def _confirm(
    kind: Kind,
    report: RunReport,
    items: Sequence[Any],
    hook: SmsPartnerHook,
    logger: Any,
    start_list: pd.DataFrame | None,
) -> BaseException | None:
    """Check the calls left ``pending`` against one fresh list fetch (in ``report``, in place).

    :param start_list: The list fetched before the calls, if it was: a number on it was not added
        by this run, whatever a lost answer suggests.
    :return: The error of the list fetch if it failed (the calls stay pending), else ``None``.
    """
    unsure = [i for i, o in enumerate(report.outcomes) if o is not None and o.status == PENDING]
    if not unsure or report.fatal is not None:
        return None
    logger.info("%d calls got no usable answer; checking them against a fresh stop list", len(unsure))
    try:
        stop_list = hook.get_stop_list_df()
    except SmsPartnerAuthError:
        raise
    except Exception as exc:
        logger.error("Could not fetch the stop list to confirm %d calls: %s", len(unsure), exc)
        return exc
    listed_before = set() if start_list is None else set(start_list["phone_e164"].dropna().astype(str))
    report.outcomes[:] = reconcile_calls(kind, report.outcomes, items, stop_list, listed_before)
    settled = pd.Series([outcome.status for i in unsure if (outcome := report.outcomes[i]) is not None])
    logger.info(
        "Confirmed against the list: %s",
        ", ".join(f"{status}: {count}" for status, count in settled.value_counts().items()),
    )
    return None


def _skip_listed(
    outcomes: pd.DataFrame, stop_list: pd.DataFrame, recovery: Recovery, skip_existing: bool, logger: Any
) -> None:
    """Settle as ``skipped_existing`` the inputs already on ``stop_list`` (without ``skip_existing``,
    only those an earlier try of the task instance added)."""
    listed = listed_pairs(outcomes, stop_list).drop_duplicates("row")
    if not skip_existing:
        # Without the diff, only what an earlier try of this task instance added is not sent again.
        phones = outcomes["phone_e164"].to_numpy(dtype=object)[listed["row"].to_numpy()]
        listed = listed[[p in recovery.applied_by for p in phones]]
    rows = listed["row"].to_numpy()
    settle(
        outcomes,
        rows,
        "skipped_existing",
        listed["stop_id"],
        _note_earlier(outcomes, rows, recovery, "added"),
    )
    logger.info("The stop list holds %d numbers; %d inputs are on it already", len(stop_list), len(listed))


def _settle_unlisted(
    outcomes: pd.DataFrame, stop_list: pd.DataFrame, recovery: Recovery, logger: Any
) -> pd.DataFrame:
    """Settle as ``not_on_list`` the inputs not on ``stop_list``.

    :return: The (``row``, ``stop_id``) pairs of the inputs on it, one per stop id.
    """
    pairs = listed_pairs(outcomes, stop_list)
    absent = undecided(outcomes).to_numpy().copy()
    absent[pairs["row"].to_numpy()] = False
    absent_rows = np.flatnonzero(absent)
    settle(
        outcomes, absent_rows, "not_on_list", notes=_note_earlier(outcomes, absent_rows, recovery, "removed")
    )
    logger.info(
        "The stop list holds %d numbers; %d inputs are on it (%d stop ids)",
        len(stop_list),
        pairs["row"].nunique(),
        len(pairs),
    )
    return pairs


def _adder(hook: SmsPartnerHook, journal: AttemptJournal) -> Callable[[str], CallOutcome]:
    """The call adding one number, its attempts noted in ``journal``."""

    def add(phone: str) -> CallOutcome:
        journal.start()
        try:
            added = hook.add_stop(phone)
        except SmsPartnerAuthError:
            raise
        except Exception as exc:
            if journal.ambiguous is not None or is_ambiguous(exc):
                return _pending(exc)
            raise
        if added.status == "already_present" and journal.ambiguous is not None:
            # Code 3 to a retry: most likely this call's own earlier attempt, applied but
            # unanswered. The list at the end of the run says (and gives the stop id).
            return CallOutcome(PENDING, note=_lost(journal), unapplied_status="already_present")
        return CallOutcome(added.status, stop_id=added.stop_id)

    return add


def _remover(hook: SmsPartnerHook, journal: AttemptJournal) -> Callable[[int], CallOutcome]:
    """The call removing one stop id, its attempts noted in ``journal``."""

    def remove(stop_id: int) -> CallOutcome:
        journal.start()
        try:
            hook.remove_stop(stop_id)
        except StopNotFoundError:
            if journal.ambiguous is not None:
                # Code 4 to a retry: the earlier attempt removed it and its answer was lost.
                return CallOutcome(
                    "removed", stop_id=stop_id, note=_lost(journal) + "; the retry found it gone"
                )
            return CallOutcome("not_on_list", stop_id=stop_id)
        except SmsPartnerAuthError:
            raise
        except Exception as exc:
            if journal.ambiguous is not None or is_ambiguous(exc):
                return replace(_pending(exc), stop_id=stop_id)
            raise
        return CallOutcome("removed", stop_id=stop_id)

    return remove


def _begin(recorder: RunRecorder | None, outcomes: pd.DataFrame, recovery: Recovery) -> None:
    """Record the settled inputs and what earlier tries left pending, when a results table is kept."""
    if recorder is not None:
        recorder.begin(outcomes, recovery.updates)


def add_stops(
    values: pd.Series,
    hook: SmsPartnerHook,
    options: BulkOptions,
    logger: Any = log,
    results: TryResults | None = None,
) -> BulkResult:
    """Add the numbers of ``values`` to the stop list.

    :param values: Raw values, one per input row.
    :param hook: Shared by every worker thread.
    :param results: This try's rows in the results table (prepared before any API call), if kept.
    :return: Statuses from ``ADD_STATUSES`` (``not_processed`` for inputs left after an auth error or a
        ``Retry-After`` longer than ``max_retry_after``).
    """
    outcomes = plan_inputs(values, options.default_region, _now())
    _log_plan(outcomes, logger)
    has_earlier = results is not None and not results.earlier.empty
    stop_list = hook.get_stop_list_df() if options.skip_existing or has_earlier else None
    recovery = _recover("add", results, outcomes, stop_list, logger)
    if stop_list is not None:
        _skip_listed(outcomes, stop_list, recovery, options.skip_existing, logger)
    todo = np.flatnonzero(undecided(outcomes).to_numpy())
    with _recording(results, outcomes, logger) as recorder:
        if options.dry_run:
            settle_rest(outcomes, "would_add")
            logger.info("Dry run: %d numbers would be added; nothing sent", len(todo))
            _begin(recorder, outcomes, recovery)
            return _done(BulkResult(outcomes, ADD_STATUSES, results=results), recorder, outcomes)
        _begin(recorder, outcomes, recovery)
        if recorder is not None:
            recorder.plan_calls(todo)
        phones = outcomes["phone_e164"].to_numpy(dtype=object)[todo].tolist()
        with journal_attempts(hook) as journal:
            report = _send(phones, _adder(hook, journal), "stop-sms/add", options, logger, recorder)
        unconfirmed = _confirm("add", report, phones, hook, logger, stop_list)
        merge_call_outcomes(outcomes, todo, report.outcomes)
        result = BulkResult(outcomes, ADD_STATUSES, report.fatal, unconfirmed, results)
        return _done(result, recorder, outcomes)


def remove_stops(
    values: pd.Series,
    hook: SmsPartnerHook,
    options: BulkOptions,
    logger: Any = log,
    results: TryResults | None = None,
) -> BulkResult:
    """Remove the numbers of ``values`` from the stop list.

    Numbers are mapped to stop ids through one list call (E.164 on both sides); a number listed
    under several stop ids has all of them removed. A stop id gone by the time of its delete (code
    4: someone removed it meanwhile) counts as ``not_on_list``, unless an earlier attempt of the
    same call got no answer (then this run removed it: ``removed``).

    :param results: This try's rows in the results table (prepared before any API call), if kept.
    :return: Statuses from ``REMOVE_STATUSES`` (``not_processed`` for inputs left after an auth error or a
        ``Retry-After`` longer than ``max_retry_after``).
    """
    outcomes = plan_inputs(values, options.default_region, _now())
    _log_plan(outcomes, logger)
    stop_list = hook.get_stop_list_df()
    recovery = _recover("remove", results, outcomes, stop_list, logger)
    pairs = _settle_unlisted(outcomes, stop_list, recovery, logger)
    with _recording(results, outcomes, logger) as recorder:
        if options.dry_run:
            first = pairs.drop_duplicates("row")
            settle(outcomes, first["row"], "would_remove", first["stop_id"])
            logger.info("Dry run: %d stop ids would be removed; nothing sent", len(pairs))
            _begin(recorder, outcomes, recovery)
            return _done(BulkResult(outcomes, REMOVE_STATUSES, results=results), recorder, outcomes)
        stop_ids = [int(i) for i in pairs["stop_id"]]
        rows = pairs["row"].to_numpy()
        _begin(recorder, outcomes, recovery)
        if recorder is not None:
            recorder.plan_calls(rows, stop_ids)
        with journal_attempts(hook) as journal:
            report = _send(stop_ids, _remover(hook, journal), "stop-sms/delete", options, logger, recorder)
        unconfirmed = _confirm("remove", report, stop_ids, hook, logger, None)
        merge_call_outcomes(outcomes, rows, report.outcomes, item_stop_ids=stop_ids)
        result = BulkResult(outcomes, REMOVE_STATUSES, report.fatal, unconfirmed, results)
        return _done(result, recorder, outcomes)


def _done(result: BulkResult, recorder: RunRecorder | None, outcomes: pd.DataFrame) -> BulkResult:
    if recorder is not None:
        result.rows_written = recorder.finish(outcomes)
    return result


def log_failures(
    outcomes: pd.DataFrame, logger: Any, limit: int = FAILURE_SAMPLE, hashed: bool = False
) -> None:
    """Log the first ``limit`` failures, one per line, and how many more there are.

    :param hashed: Keyed-hash mode: a line names the input row, not the number, and the number
        is masked out of the message (``numbers.mask_number``).
    """
    failed = outcomes[outcomes["status"] == "failed"]
    for position, row in zip(failed.index[:limit], failed.head(limit).itertuples(index=False), strict=True):
        code = "" if row.error_code is pd.NA else f"code {row.error_code}: "
        if hashed:
            message = mask_number(row.error_message, row.phone_e164)
            logger.warning("failed: input row %d: %s%s", position, code, message)
            continue
        logger.warning(
            "failed: %s (input %r): %s%s", row.phone_e164, row.input_value, code, row.error_message
        )
    if len(failed) > limit:
        logger.warning("... and %d more failures", len(failed) - limit)


def conclude(result: BulkResult, max_failed: int, logger: Any = log, hashed: bool = False) -> dict[str, Any]:
    """Report a bulk run: log it, then fail the task if it must.

    The outcomes are in the results table by then (recorded while the run went), so nothing is
    lost when the task fails.

    :param max_failed: Failures tolerated before the task fails.
    :param hashed: Keyed-hash mode: no number in the log lines (:func:`log_failures`).
    :return: ``total``, one count per status, and ``results_table`` when one was written.
    :raises SmsPartnerAuthError: when the API refused the key (the run stopped at once).
    :raises SmsPartnerRetryAfterTooLongError: when the API asked to wait longer than the
        connection's ``max_retry_after`` (the run stopped at once; its message says when to retry).
    :raises AirflowException: when calls could not be confirmed, or more than ``max_failed`` inputs failed.
    """
    summary: dict[str, Any] = dict(result.counts())
    results = result.results
    log_failures(result.outcomes, logger, hashed=hashed)
    logger.info("Summary: %s", ", ".join(f"{key}={value}" for key, value in summary.items()))
    if results is not None:
        summary["results_table"] = results.table
        logger.info(
            "%s holds %d rows of %s", results.describe(), result.rows_written, results.identity.describe()
        )
    where = results.describe() if results is not None else "the log above"
    if isinstance(result.fatal, SmsPartnerRetryAfterTooLongError):
        logger.error(
            "Stopped at once: %s %d inputs not processed (their note holds the wait). Outcomes so far: "
            "%s; a re-run after that time sends only what is not done yet.",
            result.fatal,
            summary.get(NOT_PROCESSED, 0),
            where,
        )
        raise result.fatal
    if result.fatal is not None:
        logger.error(
            "Stopped at once: the API refused the key (%s); %d inputs not processed. Fix the connection "
            "and re-run: numbers already added are skipped. Outcomes so far: %s",
            result.fatal,
            summary.get(NOT_PROCESSED, 0),
            where,
        )
        raise result.fatal
    if result.unconfirmed is not None:
        raise AirflowException(
            f"{summary.get(PENDING, 0)} calls got no answer and the stop list could not be fetched to check "
            f"them ({result.unconfirmed}); they are recorded pending in {where}. A retry of this task "
            "checks them against the list first and sends only what did not land."
        )
    if summary["failed"] > max_failed:
        raise AirflowException(
            f"{summary['failed']} of {summary['total']} numbers failed (max_failed={max_failed}); "
            f"every outcome, with error codes and messages, is in {where}. A re-run retries only what "
            "is not done yet."
        )
    return summary
