"""The outcome table of a bulk run: one row per input value, filled in as the run decides.

Before any API call the inputs are normalised to E.164, invalid values and repeats are settled,
and the rest is matched against the stop list; after the calls, their outcomes are merged in.
Pure pandas: no Airflow, no HTTP, no database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

from airflow_provider_smspartner.phone_numbers import normalize_phone_numbers
from airflow_provider_smspartner.sql.tables import RESULT_COLUMNS, RESULT_KEY

#: Columns of the outcome table (``input_value``, ``phone_e164``, ``status``, ``stop_id``,
#: ``error_code``, ``error_message``, ``note``, ``decided_at``): a results table holds them with
#: the task instance and try (``sql.tables.results_table_spec``). Its position in the table is
#: the input row.
OUTCOME_COLUMNS = RESULT_COLUMNS[len(RESULT_KEY) :]


@dataclass(frozen=True)
class CallOutcome:
    """What one API call ended in.

    :param status: An outcome name (``added``, ``removed``, ``failed``...).
    :param stop_id: The stop id the call created or targeted, when known.
    :param error_code: The API code of a failure (``None`` when none came back, e.g. a timeout).
    :param error_message: The (redacted) error text of a failure.
    :param note: How the outcome was established when the answer alone did not say (a lost
        response confirmed against the list, an earlier try's call...).
    :param unapplied_status: Only for ``pending``: the status to take if the list shows the call
        was not applied (``failed``, or ``already_present`` for a code 3 after a lost answer).
    :param finished_at: Wall-clock time (epoch seconds) the call ended.
    """

    status: str
    stop_id: int | None = None
    error_code: int | None = None
    error_message: str | None = None
    note: str | None = None
    unapplied_status: str | None = None
    finished_at: float = 0.0


#: Status of an input left unprocessed because an error stopped the run: a refused API key, or a
#: ``Retry-After`` longer than the connection's ``max_retry_after`` (then ``note`` holds the wait).
NOT_PROCESSED = "not_processed"
#: Status of an input whose call may have been applied and is not confirmed yet: written ahead of
#: the call (write-ahead row), kept when the answer was lost, settled against the stop list at the
#: end of the run or by the next try. Never in the summary of a finished run.
PENDING = "pending"
#: The status a call the API applied takes, per kind of run (``add`` / ``remove``).
APPLIED = {"add": "added", "remove": "removed"}
#: Statuses that say the API applied a call.
APPLIED_STATUSES = tuple(APPLIED.values())
# When one input maps to several calls (a number listed under several stop ids), the row reports
# the most alarming of their outcomes: a failure must never hide behind a success.
ArrayLike: TypeAlias = "np.ndarray | pd.Series | Sequence[Any]"
_MERGE_PRIORITY = ("failed", NOT_PROCESSED, PENDING, "removed", "added", "already_present", "not_on_list")
_RANK = {status: i for i, status in enumerate(_MERGE_PRIORITY)}


def plan_inputs(values: pd.Series, default_region: str, now: datetime) -> pd.DataFrame:
    """Normalise ``values`` and settle the inputs that need no API call.

    :param values: Raw values, one per input row (any dtype).
    :param default_region: Region of numbers written without an international prefix.
    :param now: Timestamp (aware UTC) for ``decided_at`` of the rows decided here.
    :return: The outcome table (``OUTCOME_COLUMNS``, ``RangeIndex``): ``status`` is ``invalid``
        (with the reason in ``error_message``), ``duplicate`` (same E.164 as an earlier input), or
        missing for the inputs still to decide.
    """
    normalised = normalize_phone_numbers(values.reset_index(drop=True), default_region=default_region)
    e164 = normalised["phone_e164"].astype("string")
    invalid = e164.isna()
    status = pd.Series(pd.NA, index=normalised.index, dtype="string")
    status[invalid] = "invalid"
    status[~invalid & e164.duplicated()] = "duplicate"
    size = len(normalised)
    return pd.DataFrame(
        {
            "input_value": normalised["input"],
            "phone_e164": e164,
            "status": status,
            "stop_id": pd.array([pd.NA] * size, dtype="Int64"),
            "error_code": pd.array([pd.NA] * size, dtype="Int64"),
            "error_message": normalised["reason"].astype("string"),
            "note": pd.Series(pd.NA, index=normalised.index, dtype="string"),
            "decided_at": pd.Series(pd.Timestamp(now), index=normalised.index).astype("datetime64[us, UTC]"),
        }
    )


def undecided(outcomes: pd.DataFrame) -> pd.Series:
    """Mask of the rows whose status is not settled yet."""
    return outcomes["status"].isna()


def listed_pairs(outcomes: pd.DataFrame, stop_list: pd.DataFrame) -> pd.DataFrame:
    """Match the undecided rows against the stop list on E.164.

    :param stop_list: Columns ``phone_e164`` and ``stop_id`` (as ``SmsPartnerHook.get_stop_list_df``).
    :return: Columns ``row`` (position in ``outcomes``) and ``stop_id``, one pair per stop id the
        row's number is listed under (a number may be listed more than once), ordered by row, stop id.
    """
    mask = undecided(outcomes).to_numpy()
    left = pd.DataFrame(
        {"row": np.flatnonzero(mask), "phone_e164": outcomes["phone_e164"].to_numpy(dtype=object)[mask]}
    )
    right = stop_list.loc[stop_list["phone_e164"].notna(), ["phone_e164", "stop_id"]]
    right = right.astype({"phone_e164": object, "stop_id": "int64"})
    pairs = left.merge(right, on="phone_e164", how="inner")
    return pairs.sort_values(["row", "stop_id"], kind="stable")[["row", "stop_id"]].reset_index(drop=True)


def settle(
    outcomes: pd.DataFrame,
    rows: ArrayLike,
    status: str,
    stop_ids: ArrayLike | None = None,
    notes: ArrayLike | None = None,
) -> None:
    """Give ``rows`` (positions) ``status``, and their ``stop_id`` / ``note`` when given (in place)."""
    rows = np.asarray(rows, dtype=np.int64)
    outcomes.loc[rows, "status"] = status
    if stop_ids is not None:
        outcomes.loc[rows, "stop_id"] = pd.array(np.asarray(stop_ids, dtype=np.int64), dtype="Int64")
    if notes is not None:
        outcomes.loc[rows, "note"] = pd.array(list(notes), dtype="string")


def settle_rest(outcomes: pd.DataFrame, status: str) -> None:
    """Give every undecided row ``status`` (in place)."""
    outcomes.loc[undecided(outcomes), "status"] = status


def merge_call_outcomes(
    outcomes: pd.DataFrame,
    rows: ArrayLike,
    results: Sequence[CallOutcome | None],
    item_stop_ids: ArrayLike | None = None,
) -> None:
    """Write the outcomes of the API calls into their rows (in place).

    :param rows: Row position of each call (a row may have several calls).
    :param results: Outcome of each call; ``None`` (never attempted) becomes ``not_processed``.
    :param item_stop_ids: Stop id each call targeted, used where the outcome carries none.
    """
    if len(results) == 0:
        return
    fallback_ids = [None] * len(results) if item_stop_ids is None else list(item_stop_ids)
    calls = pd.DataFrame(
        {
            "row": np.asarray(rows, dtype=np.int64),
            "status": [r.status if r is not None else NOT_PROCESSED for r in results],
            "stop_id": pd.array(
                [
                    r.stop_id if r is not None and r.stop_id is not None else fallback_ids[i]
                    for i, r in enumerate(results)
                ],
                dtype="Int64",
            ),
            "error_code": pd.array([r.error_code if r is not None else None for r in results], dtype="Int64"),
            "error_message": pd.array(
                [r.error_message if r is not None else None for r in results], dtype="string"
            ),
            "note": pd.array([r.note if r is not None else None for r in results], dtype="string"),
            "finished_at": [r.finished_at if r is not None else np.nan for r in results],
        }
    )
    calls["rank"] = calls["status"].map(_RANK).fillna(len(_RANK))
    chosen = calls.sort_values(["row", "rank"], kind="stable").drop_duplicates("row")
    target = chosen["row"].to_numpy()
    outcomes.loc[target, "status"] = chosen["status"].to_numpy()
    outcomes.loc[target, "stop_id"] = chosen["stop_id"].array
    outcomes.loc[target, "error_code"] = chosen["error_code"].array
    outcomes.loc[target, "error_message"] = chosen["error_message"].array
    outcomes.loc[target, "note"] = chosen["note"].array
    finished = pd.to_datetime(chosen["finished_at"], unit="s", utc=True).astype("datetime64[us, UTC]")
    outcomes.loc[target, "decided_at"] = finished.fillna(
        outcomes["decided_at"].iloc[target].set_axis(finished.index)
    ).array


def merge_row_outcomes(results: Sequence[CallOutcome], item_stop_ids: Sequence[int | None]) -> CallOutcome:
    """The outcome of one row from the outcomes of its calls, as :func:`merge_call_outcomes` picks it
    (the most alarming; the targeted stop id where the outcome carries none). Used to write a row
    as soon as its last call ends."""
    best = min(range(len(results)), key=lambda i: _RANK.get(results[i].status, len(_RANK)))
    chosen = results[best]
    if chosen.stop_id is None and item_stop_ids[best] is not None:
        return replace(chosen, stop_id=item_stop_ids[best])
    return chosen


def count_statuses(outcomes: pd.DataFrame, statuses: Sequence[str]) -> dict[str, int]:
    """``{"total": rows, <status>: rows with it, ...}`` with every status of ``statuses`` present."""
    found = outcomes["status"].value_counts()
    counts = {"total": len(outcomes)}
    for status in statuses:
        counts[status] = int(found.get(status, 0))
    return counts
