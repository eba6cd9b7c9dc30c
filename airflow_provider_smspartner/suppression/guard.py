"""The gate's guard: a live list the gate cannot trust is refused, as the extract refuses it.

The gate decides who receives the next campaign, so a list that collapsed (an API glitch, the key
of an empty sub-account) or holds rows it cannot match must stop it rather than let opted-out
people through. The reference a list is compared with, in this order:

1. the latest accepted check of the same ``dag_id`` and ``task_id`` in the gate's ``audit_table``;
2. else the latest applied run in the run log of ``stop_list_table`` (the warehouse copy the
   extract keeps);
3. else none: only an empty list is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_smspartner.exceptions import StopListGuardError
from airflow_provider_smspartner.utils.stop_list import describe_stop_ids

if TYPE_CHECKING:
    from airflow_provider_smspartner.sql.list_checks import ListCheck
    from airflow_provider_smspartner.suppression.engine import StopListSnapshot


def check_live_list(
    stop_list: StopListSnapshot,
    reference: ListCheck | None,
    *,
    max_removed_fraction: float | None,
    allow_empty_list: bool,
    on_unreadable_list_row: str,
) -> None:
    """Refuse a live list that is empty, smaller than the reference allows, or (by default) holds
    rows with no E.164.

    :param reference: What the list held when last seen (see the module docstring), or ``None``.
    :param max_removed_fraction: Largest share (0 to 1) of the reference's stops that may be gone;
        ``None`` disables the check.
    :raises StopListGuardError: naming the counts, the reference and the parameter to change.
    """
    rows = stop_list.rows_in_list
    seen = f" ({reference.source} held {reference.rows_in_list:,})" if reference else ""
    if rows == 0:
        if allow_empty_list:
            return
        raise StopListGuardError(
            f"Refusing an empty SMS Partner stop list{seen}: checked against it, every audience "
            "number would pass, opted-out people included; nothing was written. If the list "
            "really is empty (e.g. a new sub-account), run with allow_empty_list=True."
        )
    if reference is not None and reference.rows_in_list > 0 and max_removed_fraction is not None:
        gone = reference.rows_in_list - rows
        # A share, as the user wrote it (the extract's guard compares the same way).
        if gone > 0 and gone / reference.rows_in_list > max_removed_fraction:
            raise StopListGuardError(
                f"Refusing the SMS Partner stop list: it holds {rows:,} stops, {gone:,} fewer than "
                f"the {reference.rows_in_list:,} of {reference.source} "
                f"({gone / reference.rows_in_list:.1%} gone), more than max_removed_fraction="
                f"{max_removed_fraction:g} allows; nothing was written. If that many stops really "
                "left the list, run with a higher max_removed_fraction (None disables the check)."
            )
    if stop_list.unreadable and on_unreadable_list_row == "fail":
        raise StopListGuardError(
            f"Refusing the SMS Partner stop list: {stop_list.unreadable} of its {rows:,} stops hold no "
            f"number that can be read as E.164 (stop ids {describe_stop_ids(stop_list.unreadable_stop_ids)}), "
            "so the gate cannot match them against the audience; nothing was written. Fix these "
            "stops in SMS Partner, or run with on_unreadable_list_row='warn' to match them on "
            "their digits."
        )
