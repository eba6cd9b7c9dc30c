"""Settling what the answers did not: calls whose answer was lost, and earlier tries' unfinished rows.

Both are decided against one fresh fetch of the stop list, which is the truth: after an add,
a number on the list was added (by this call, since it was not listed when the run planned it);
after a remove, a stop id gone from the list was removed. Pure pandas: no Airflow, no HTTP.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

import pandas as pd

from airflow_provider_smspartner.bulk.outcomes import (
    APPLIED,
    APPLIED_STATUSES,
    NOT_PROCESSED,
    PENDING,
    CallOutcome,
)

Kind = Literal["add", "remove"]


def listed_ids(stop_list: pd.DataFrame) -> dict[str, int]:
    """``{E.164: smallest stop id}`` of the numbers on the list."""
    frame = stop_list.loc[stop_list["phone_e164"].notna(), ["phone_e164", "stop_id"]]
    frame = frame.sort_values("stop_id", kind="stable").drop_duplicates("phone_e164")
    return dict(zip(frame["phone_e164"].astype(str), frame["stop_id"].astype("int64").tolist(), strict=True))


def reconcile_calls(
    kind: Kind,
    results: Sequence[CallOutcome | None],
    items: Sequence[str] | Sequence[int],
    stop_list: pd.DataFrame,
    listed_before: Collection[str] = (),
) -> list[CallOutcome | None]:
    """Settle the ``pending`` outcomes (answer lost) against ``stop_list``, fetched after the calls.

    Add: a number on the list was added by this run (its stop id taken from the list), unless it
    was listed before the run (``listed_before``); otherwise the outcome becomes its
    ``unapplied_status``. Remove: a stop id gone from the list was removed by this run.

    :param items: What each call was made with: E.164 numbers (add) or stop ids (remove).
    :return: The outcomes, with no ``pending`` left.
    """
    settled: list[CallOutcome | None] = list(results)
    phones = listed_ids(stop_list) if kind == "add" else {}
    ids = set(stop_list["stop_id"].astype("int64").tolist()) if kind == "remove" else set()
    for index, outcome in enumerate(results):
        if outcome is None or outcome.status != PENDING:
            continue
        item = items[index]
        if kind == "add":
            stop_id = phones.get(str(item))
            applied = stop_id is not None and str(item) not in listed_before
            note = (
                "on the stop list at the end of the run"
                if applied
                else "not on the stop list at the end of the run"
            )
        else:
            stop_id = int(item)
            applied = stop_id not in ids
            note = (
                "gone from the stop list at the end of the run"
                if applied
                else "still on the stop list at the end of the run"
            )
        prefix = f"{outcome.note}; " if outcome.note else "no answer received; "
        if applied:
            settled[index] = replace(outcome, status=APPLIED[kind], stop_id=stop_id, note=prefix + note)
        else:
            status = outcome.unapplied_status or "failed"
            settled[index] = replace(outcome, status=status, note=prefix + note)
    return settled


@dataclass
class Recovery:
    """What a try learnt from the rows earlier tries of its task instance left.

    :param updates: Earlier rows to settle: ``try_number``, ``input_row``, ``status``,
        ``stop_id``, ``note``.
    :param applied_by: ``{E.164: try}`` of the numbers an earlier try added (or removed), the
        ones settled here included.
    """

    updates: pd.DataFrame = field(
        default_factory=lambda: pd.DataFrame(columns=["try_number", "input_row", "status", "stop_id", "note"])
    )
    applied_by: dict[str, int] = field(default_factory=dict)

    def describe(self) -> str:
        if self.updates.empty:
            return "nothing to settle"
        counts = self.updates["status"].value_counts()
        return ", ".join(f"{count} {status}" for status, count in counts.items())


def recover_earlier(kind: Kind, earlier: pd.DataFrame, stop_list: pd.DataFrame, try_number: int) -> Recovery:
    """Settle earlier tries' ``pending`` rows (their try ended before the outcome was written).

    Add: a number on the list now was added by the try that recorded it ``pending`` (its row
    becomes ``added``, stop id from the list); a number off the list was not, and its row becomes
    ``not_processed`` (this try sends it again). Remove: off the list means ``removed``. If
    several tries left the same number pending, the latest one's call is the one that counts.

    :param earlier: ``TryResults.earlier``: ``try_number``, ``input_row``, ``phone_e164``, ``status``, ``stop_id``.
    :param try_number: This try (named in the notes).
    """
    recovery = Recovery()
    if earlier.empty:
        return recovery
    done = earlier[earlier["status"].isin(APPLIED_STATUSES)]
    applied_by = {
        str(phone): int(tn)
        for phone, tn in zip(done["phone_e164"], done["try_number"], strict=True)
        if phone is not pd.NA and phone is not None
    }
    pending = earlier[earlier["status"] == PENDING].sort_values(
        ["try_number", "input_row"], ascending=[False, True]
    )
    phones = listed_ids(stop_list)
    rows = []
    claimed: set[str] = set()
    for tn, row, phone, stop_id in zip(
        pending["try_number"], pending["input_row"], pending["phone_e164"], pending["stop_id"], strict=True
    ):
        number = None if phone is pd.NA or phone is None else str(phone)
        listed = number is not None and number in phones
        applied = listed if kind == "add" else (number is not None and not listed)
        when = f"when try {try_number} started"
        lost = f"try {tn} ended before recording its outcome"
        if applied and number not in claimed:
            claimed.add(str(number))
            applied_by[str(number)] = int(tn)
            where = f"on the stop list {when}" if kind == "add" else f"off the stop list {when}"
            new_id = phones[str(number)] if kind == "add" else stop_id
            rows.append((int(tn), int(row), APPLIED[kind], new_id, f"{lost}; {where}"))
        else:
            where = "not on the stop list" if kind == "add" else "still on the stop list"
            rows.append(
                (int(tn), int(row), NOT_PROCESSED, stop_id, f"{lost}; {where} {when}, which handles it")
            )
    recovery.updates = pd.DataFrame(rows, columns=["try_number", "input_row", "status", "stop_id", "note"])
    recovery.applied_by = applied_by
    return recovery
