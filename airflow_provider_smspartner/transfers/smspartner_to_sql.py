"""SmsPartnerStopListToSqlOperator: lands the SMS Partner stop list in a table of any SQL database.

Import-light (parsed with every DAG): pandas and the warehouse writer load inside ``execute``.

The table fails closed: it is what stands between an opted-out person and the next campaign, so
``replace`` and ``upsert`` refuse a list that would empty it or remove too much of it (the
guard, :func:`check_removals`), and an odd row never blocks the list (:func:`prepare_stop_list`).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_smspartner.exceptions import DuplicateStopIdError, StopListGuardError
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.utils.arguments import (
    DEFAULT_CHUNK_SIZE,
    WRITE_MODES,
    check_choice,
    check_count,
    check_flag,
    check_fraction,
)

if TYPE_CHECKING:
    import logging

    import pandas as pd
    from airflow.sdk import Context

    from airflow_provider_smspartner.utils.sql_writer import RemovalCounts, TableSpec

#: Characters removed from ``phoneNumber``: C0 controls (NUL included), DEL and C1 controls.
#: PostgreSQL cannot store NUL in text, and none of them belongs in a phone number.
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f-\x9f]"
#: How many stop ids a log line or an error names.
_SHOWN_IDS = 10


def stop_list_table_spec() -> TableSpec:
    """The warehouse stop-list table. ``removed_at`` keeps the opt-out history in upsert mode.

    ``phone_number`` is unbounded text (``LONGTEXT`` on MySQL/MariaDB): the API may send any
    string, and a row the warehouse cannot take must not block the list.
    """
    from airflow_provider_smspartner.utils.sql_writer import Column, TableSpec

    return TableSpec(
        columns=(
            Column("stop_id", "bigint", nullable=False),
            Column("phone_number", "long_text"),
            Column("phone_e164", "short_text"),
            Column("created_at", "timestamp"),
            Column("extracted_at", "timestamp"),
            Column("removed_at", "timestamp"),
        ),
        key="stop_id",
        indexes=("phone_e164",),
        compared=("phone_number", "phone_e164", "created_at"),
        soft_delete="removed_at",
    )


def _ids(stop_ids: Any) -> str:
    shown = [str(i) for i in sorted(set(stop_ids))[:_SHOWN_IDS]]
    more = len(set(stop_ids)) - len(shown)
    return ", ".join(shown) + (f" and {more} more" if more > 0 else "")


def _may_hold_control_characters(values: pd.Series) -> bool:
    """A pre-check over the raw UTF-8 bytes, ten times faster than the regex on a million numbers.

    A control character is a byte below 0x20, 0x7F, or 0xC2 followed by 0x80-0x9F (C1); 0xC2 also
    starts other characters, so ``True`` only means "look closer".
    """
    import numpy as np
    import pyarrow as pa

    # Typed as text: an empty object column would otherwise become a NullArray (pandas 2).
    array = pa.array(values, type=pa.large_string(), from_pandas=True)
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    for chunk in chunks:
        data = chunk.buffers()[2]
        if data is None:
            continue
        raw = np.frombuffer(data, dtype=np.uint8)
        if ((raw < 0x20) | (raw == 0x7F) | (raw == 0xC2)).any():
            return True
    return False


def prepare_stop_list(frame: pd.DataFrame, log: logging.Logger | Any) -> pd.DataFrame:
    """Make every row of the list one the warehouse takes, the same way on every database.

    - Control characters (NUL included) are removed from ``phone_number`` and ``phone_e164`` is
      recomputed from what is left, so the stop still matches its number; logged with the ids.
    - A stop id listed twice with the same number is kept once, with the earliest ``created_at``;
      logged with the ids.
    - A stop id listed twice with different numbers is refused: which number the id stands for is
      unknown, and a key can hold one.

    :param frame: ``SmsPartnerHook.get_stop_list_df()``'s frame.
    :return: the frame to write (a new one when a row changed).
    :raises DuplicateStopIdError: naming the stop ids listed with different numbers.
    """
    if _may_hold_control_characters(frame["phone_number"]):
        frame = _remove_control_characters(frame, log)
    if not frame["stop_id"].is_unique:
        frame = _merge_repeated_stop_ids(frame, log)
    return frame


def _remove_control_characters(frame: pd.DataFrame, log: logging.Logger | Any) -> pd.DataFrame:
    dirty = frame["phone_number"].str.contains(CONTROL_CHARACTERS, regex=True)
    if dirty.any():
        from airflow_provider_smspartner.phone_numbers import stop_list_e164

        frame = frame.copy()
        cleaned = frame.loc[dirty, "phone_number"].str.replace(CONTROL_CHARACTERS, "", regex=True)
        frame.loc[dirty, "phone_number"] = cleaned
        frame.loc[dirty, "phone_e164"] = stop_list_e164(cleaned).to_numpy()
        log.warning(
            "%d row(s) had control characters in phoneNumber, removed before writing (stop ids %s)",
            int(dirty.sum()),
            _ids(frame.loc[dirty, "stop_id"]),
        )
    return frame


def _merge_repeated_stop_ids(frame: pd.DataFrame, log: logging.Logger | Any) -> pd.DataFrame:
    rows = frame.loc[frame["stop_id"].duplicated(keep=False), ["stop_id", "phone_number", "created_at"]]
    numbers = rows.groupby("stop_id")["phone_number"].nunique()
    conflicting = numbers.index[numbers > 1]
    if len(conflicting):
        raise DuplicateStopIdError(
            f"SMS Partner listed {len(conflicting)} stop id(s) more than once with different numbers: "
            f"{_ids(conflicting)}. A stop id stands for one number, so the list cannot be written; "
            "nothing was written. Ask SMS Partner support to fix these stops."
        )
    earliest = rows.groupby("stop_id")["created_at"].min()
    log.warning(
        "%d stop id(s) listed more than once with the same number, kept once with the earliest "
        "createdAt (stop ids %s)",
        len(earliest),
        _ids(earliest.index),
    )
    frame = frame[~frame["stop_id"].duplicated(keep="first")].reset_index(drop=True)
    merged = frame["stop_id"].isin(earliest.index)
    frame.loc[merged, "created_at"] = frame.loc[merged, "stop_id"].map(earliest).to_numpy()
    return frame


def check_removals(
    counts: RemovalCounts,
    *,
    table: str,
    max_removed_fraction: float | None,
    allow_empty_list: bool,
) -> None:
    """The guard: refuse a list that empties the table, or removes too much of it.

    Called by the writer inside the write's transaction, under the table's lock, before anything
    changes. Counts are of stops on the list (``removed_at IS NULL``).

    :raises StopListGuardError: with the counts and the parameter that overrides the check.
    """
    live, removed, incoming = counts.live, counts.removed, counts.incoming
    if live == 0:
        return
    if incoming == 0:
        if allow_empty_list:
            return
        raise StopListGuardError(
            f"Refusing an empty stop list for table {table}: it holds {live:,} stop(s) on the list "
            "(removed_at IS NULL), which an empty answer would remove; nothing was written. If the "
            "SMS Partner list really is empty, run with allow_empty_list=True."
        )
    # A share, as the user wrote it: 57 of 100 is not more than 0.57 (57 > 0.57 * 100 would be).
    if max_removed_fraction is not None and removed / live > max_removed_fraction:
        raise StopListGuardError(
            f"Refusing the stop list for table {table}: it would remove {removed:,} of the {live:,} "
            f"stops on the list ({removed / live:.1%}; the new list has {incoming:,}), more than "
            f"max_removed_fraction={max_removed_fraction:g} allows; nothing was written. If that many "
            "stops really left the list, run with a higher max_removed_fraction (None disables the check)."
        )


class SmsPartnerStopListToSqlOperator(BaseOperator):
    """Extract the SMS Partner stop list into a table of any ``DbApiHook`` database.

    The table is created when missing (``stop_id`` key, index on ``phone_e164``, UTC timestamps;
    ISO-8601 text on SQLite). The whole list is fetched and checked complete before the database
    is touched, and the table changes in one transaction, under a per-table lock, so a failure
    leaves it as it was and two runs into one table apply one after the other.

    ``replace`` and ``upsert`` fail closed: they refuse (:class:`StopListGuardError`, nothing
    written) an empty list while the table holds stops on the list (``removed_at IS NULL``), and a
    list that would remove more than ``max_removed_fraction`` of them. Control characters are
    removed from numbers; a stop id listed twice is kept once, or refused
    (:class:`DuplicateStopIdError`) when its numbers differ.

    :param sql_conn_id: Connection of the destination database (postgres, mysql, sqlite, any DbApiHook).
    :param table: Destination table, ``name`` or ``schema.name``. (templated)
    :param mode: ``replace`` (default): the table holds exactly the current list. ``upsert``: new stop
        ids inserted, changed rows updated, ids no longer on the list kept with ``removed_at`` set
        (cleared if they come back). ``append``: only stop ids not yet in the table (no guard:
        it removes nothing).
    :param max_removed_fraction: Largest share (0 to 1) of the stops on the list that one run may
        remove; ``None`` disables the check. Default 0.2.
    :param allow_empty_list: Apply an empty list even when the table holds stops on the list.
    :param smspartner_conn_id: The ``smspartner`` connection. (templated)
    :param chunk_size: Rows per load chunk.
    :return: ``{"rows_in_list", "inserted", "updated", "removed", "table", "mode"}``.
    """

    template_fields: Sequence[str] = ("sql_conn_id", "table", "mode", "smspartner_conn_id")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        sql_conn_id: str,
        table: str,
        mode: str = "replace",
        max_removed_fraction: float | None = 0.2,
        allow_empty_list: bool = False,
        smspartner_conn_id: str = SmsPartnerHook.default_conn_name,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sql_conn_id = sql_conn_id
        self.table = table
        self.mode = mode
        self.max_removed_fraction = max_removed_fraction
        self.allow_empty_list = allow_empty_list
        self.smspartner_conn_id = smspartner_conn_id
        self.chunk_size = chunk_size
        check_count("chunk_size", chunk_size, minimum=1)
        check_fraction("max_removed_fraction", max_removed_fraction, allow_none=True)
        check_flag("allow_empty_list", allow_empty_list)

    def execute(self, context: Context) -> dict[str, Any]:
        import pandas as pd

        from airflow_provider_smspartner.utils.sql_writer import SqlTableWriter, resolve_dbapi_hook

        check_choice("mode", self.mode, WRITE_MODES)  # templated: checked once rendered
        # A bad table name fails here, before the API is called.
        writer = SqlTableWriter(
            resolve_dbapi_hook(self.sql_conn_id), self.table, stop_list_table_spec(), self.chunk_size
        )

        frame = SmsPartnerHook(smspartner_conn_id=self.smspartner_conn_id).get_stop_list_df()
        self.log.info("Fetched %d stops from SMS Partner", len(frame))
        frame = prepare_stop_list(frame, self.log)
        extracted_at = pd.Timestamp.now(tz="UTC").floor("s")
        frame["extracted_at"] = extracted_at
        frame["removed_at"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")

        guard = None
        if self.mode != "append":
            guard = partial(
                check_removals,
                table=str(writer.table),
                max_removed_fraction=self.max_removed_fraction,
                allow_empty_list=self.allow_empty_list,
            )
        written = writer.write(
            frame,
            self.mode,  # type: ignore[arg-type]
            now=extracted_at.to_pydatetime(),
            guard=guard,
        )
        summary = {
            "rows_in_list": len(frame),
            "inserted": written.inserted,
            "updated": written.updated,
            "removed": written.removed,
            "table": str(writer.table),
            "mode": self.mode,
        }
        self.log.info(
            "%s %s (%s): %d stops in the list; %d inserted, %d updated, %d removed%s",
            self.mode,
            writer.table,
            writer.dialect_name,
            summary["rows_in_list"],
            summary["inserted"],
            summary["updated"],
            summary["removed"],
            " (table created)" if written.created_table else "",
        )
        return summary
