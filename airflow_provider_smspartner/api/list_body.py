"""The ``stop-sms/list`` payload: its body decoded by Arrow, and its rows as a DataFrame.

Lists reach millions of rows, so nothing here builds a Python object per row: the body is read by
Arrow's JSON reader and the frame is built column-wise. Imported lazily by the hook (it loads
pandas and pyarrow), never at DAG-parse time.

The response contract is ``api.contract``'s; the Arrow reader here is only a fast way to accept a
body that keeps it. It accepts nothing the generic parser would refuse: Arrow itself refuses
every type mismatch against the schema (a string ``nbData``, a fractional or out-of-range ``id``,
a duplicate key), and what it would let through (nulls, missing fields, invalid UTF-8, an id of 0,
an odd ``createdAt``) makes it hand the body to the generic parser, which names the problem.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from airflow_provider_smspartner.api.contract import (
    CREATED_AT_PATTERN,
    LIST_ENDPOINT,
    MIN_STOP_ID,
    OK_CODE,
    check_list_body,
    contract_error,
    describe,
    incomplete_list_error,
    is_json_integer,
)
from airflow_provider_smspartner.exceptions import SmsPartnerResponseError

CREATED_AT_FORMAT = "%Y-%m-%d %H:%M:%S"
#: The UTC instants a Python ``datetime`` holds (``StopEntry.created_at``, the warehouse drivers).
EARLIEST_UTC = pd.Timestamp("0001-01-01 00:00:00", tz="UTC")
LATEST_UTC = pd.Timestamp("9999-12-31 23:59:59.999999", tz="UTC")
STOP_TYPE = pa.struct([("id", pa.int64()), ("phoneNumber", pa.string()), ("createdAt", pa.string())])
_BODY_SCHEMA = pa.schema(
    [("success", pa.bool_()), ("code", pa.int64()), ("nbData", pa.int64()), ("data", pa.list_(STOP_TYPE))]
)


def _rows_keep_the_contract(items: pa.StructArray) -> bool:
    """Vectorised twin of ``api.contract.stop_row_problem`` for rows Arrow already typed."""
    if items.null_count:
        return False
    if any(items.field(name).null_count for name in ("id", "phoneNumber", "createdAt")):
        return False
    if len(items) == 0:
        return True
    try:
        # Arrow stores JSON strings without checking their UTF-8; a full validation does.
        items.field("phoneNumber").validate(full=True)
        items.field("createdAt").validate(full=True)
    except pa.ArrowInvalid:
        return False
    if pc.min(items.field("id")).as_py() < MIN_STOP_ID:
        return False
    created_ok = pc.match_substring_regex(items.field("createdAt"), f"^{CREATED_AT_PATTERN}$")
    return bool(pc.all(created_ok).as_py())


def parse_stop_list_body(content: bytes) -> dict[str, Any] | None:
    """Parse a list body that keeps the contract into ``{"success", "code", "nbData", "data": StructArray}``.

    Returns ``None`` (the caller then uses the generic parser, its contract and its error mapping)
    for anything else: an error body, unexpected types, nulls, not JSON.

    :raises SmsPartnerResponseError: when the body is otherwise well-formed but ``nbData``
        disagrees with its rows (so a truncated list of millions of rows is not parsed twice).
    """
    # Arrow's reader takes newline-delimited JSON: one document must be on one line. It must also
    # start as an object: pyarrow's reader crashes the process (segfault) on a body whose first
    # document is ``null``, so nothing else is ever handed to it.
    document = content.strip()
    if not document.startswith(b"{") or b"\n" in document:
        return None
    try:
        table = pa_json.read_json(
            io.BytesIO(content),
            read_options=pa_json.ReadOptions(block_size=len(content) + 1, use_threads=True),
            parse_options=pa_json.ParseOptions(
                explicit_schema=_BODY_SCHEMA, unexpected_field_behavior="ignore"
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    if table.num_rows != 1:
        return None
    row = {name: table.column(name)[0].as_py() for name in ("success", "code", "nbData")}
    if row["success"] is not True or row["code"] != OK_CODE:
        return None
    announced = row["nbData"]
    column = table.column("data")
    if not is_json_integer(announced) or announced < 0 or column.null_count:
        return None
    items = column.combine_chunks().flatten()
    if not _rows_keep_the_contract(items):
        return None
    if announced != len(items):
        raise incomplete_list_error(announced, len(items))
    return {**row, "data": items}


def check_complete_list(body: dict[str, Any]) -> None:
    """Refuse a list body whose ``data``/``nbData`` break the contract (retryable).

    Takes the rows as an Arrow array (from :func:`parse_stop_list_body`) or as plain JSON rows.
    """
    data = body.get("data")
    if not isinstance(data, pa.StructArray):
        check_list_body(body)
        return
    announced = body.get("nbData")
    if not isinstance(announced, int) or not is_json_integer(announced) or announced < 0:
        raise contract_error(LIST_ENDPOINT, f"'nbData' must be a non-negative integer, got {announced!r}")
    if announced != len(data):
        raise incomplete_list_error(announced, len(data))
    if not _rows_keep_the_contract(data):
        raise contract_error(LIST_ENDPOINT, "some rows lack an id, number or date, or hold odd values")


def stop_list_array(data: Any) -> pa.StructArray:
    """The list's rows as a ``StructArray`` of ``STOP_TYPE``, from Arrow or from plain JSON rows.

    :raises SmsPartnerResponseError: when a row lacks its id, number or date.
    """
    if isinstance(data, pa.Array):
        array = data
    else:
        try:
            array = pa.array(data or [], type=STOP_TYPE)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError) as exc:
            raise SmsPartnerResponseError(
                f"SMS Partner {LIST_ENDPOINT}: unexpected row shape ({exc})"
            ) from None
    for field in ("id", "phoneNumber", "createdAt"):
        if array.field(field).null_count:
            raise SmsPartnerResponseError(f"SMS Partner {LIST_ENDPOINT}: some rows have no {field!r}")
    return array


class ImpossibleTimeError(ValueError):
    """A ``createdAt`` that is no date and time, or one whose UTC instant a ``datetime`` cannot hold.

    :param position: Its position among the values read.
    :param value: The value as given.
    """

    def __init__(self, position: int, value: Any, problem: str) -> None:
        super().__init__(f"{describe(value)} {problem}")
        self.position = position
        self.value = value


def local_times_to_utc(values: Sequence[Any] | pd.Series, api_timezone: str) -> pd.Series:
    """Read naive ``YYYY-MM-DD HH:MM:SS`` strings as wall-clock time in ``api_timezone``; return UTC.

    The API gives no offset. At the autumn DST change an hour repeats: we read it as the first
    (summer-time) occurrence; times inside the spring gap are shifted forward. An impossible value
    raises, because a wrong opt-out date is worse than a failed extract.

    :raises ImpossibleTimeError: (a ``ValueError``) for the first value that is no date and time
        (another format, Feb 30, year 0000), or whose UTC instant is outside years 1 to 9999.
    """
    series = pd.Series(values, dtype="object") if not isinstance(values, pd.Series) else values
    local = pd.to_datetime(series, format=CREATED_AT_FORMAT, errors="coerce")
    # numpy's calendar has a year 0000 (MySQL's zero date); a datetime's has none.
    wrong = local.isna().to_numpy() | (local.dt.year < 1).to_numpy()
    if wrong.any():
        position = int(np.flatnonzero(wrong)[0])
        raise ImpossibleTimeError(position, series.iloc[position], "is not a date and time")
    out_of_range = f"in {api_timezone} is outside years 1 to 9999 in UTC"
    try:
        utc = _to_utc(local, api_timezone)
    except (ValueError, NotImplementedError, OverflowError):
        # pandas looks offsets up with datetimes, which a time a few hours from year 10000 (or 0)
        # overflows: name the first such value.
        edge = np.flatnonzero(((local.dt.year <= 1) | (local.dt.year >= 9999)).to_numpy())
        for position in edge.tolist():
            try:
                _to_utc(local.iloc[position : position + 1], api_timezone)
            except (ValueError, NotImplementedError, OverflowError):
                raise ImpossibleTimeError(position, series.iloc[position], out_of_range) from None
        raise
    wrong = ((utc < EARLIEST_UTC) | (utc > LATEST_UTC)).to_numpy()
    if wrong.any():
        position = int(np.flatnonzero(wrong)[0])
        raise ImpossibleTimeError(position, series.iloc[position], out_of_range)
    return utc


def _to_utc(local: pd.Series, api_timezone: str) -> pd.Series:
    localized = local.dt.tz_localize(
        api_timezone, ambiguous=np.ones(len(local), dtype=bool), nonexistent="shift_forward"
    )
    return localized.dt.tz_convert("UTC").astype("datetime64[us, UTC]")


def records_to_frame(records: pa.StructArray, api_timezone: str) -> pd.DataFrame:
    """Convert the list's rows (``id``, ``phoneNumber``, ``createdAt``) into a DataFrame.

    :return: columns ``stop_id`` (int64), ``phone_number`` (as the API sent it) and ``created_at``
        (UTC).
    :raises SmsPartnerResponseError: when a ``createdAt`` is impossible (see :func:`local_times_to_utc`),
        naming its stop id and value.
    """
    if len(records) == 0:
        return pd.DataFrame(
            {
                "stop_id": pd.Series([], dtype="int64"),
                "phone_number": pd.Series([], dtype="str"),
                "created_at": pd.Series([], dtype="datetime64[us, UTC]"),
            }
        )
    try:
        created_at = local_times_to_utc(records.field("createdAt").to_pandas().astype("str"), api_timezone)
    except ImpossibleTimeError as exc:  # well-formed but impossible, e.g. Feb 30
        stop_id = records.field("id")[exc.position].as_py()
        raise contract_error(LIST_ENDPOINT, f"stop id {stop_id}: 'createdAt' {exc}") from None
    return pd.DataFrame(
        {
            "stop_id": pd.Series(records.field("id").to_numpy(zero_copy_only=False), dtype="int64"),
            "phone_number": records.field("phoneNumber").to_pandas().astype("str"),
            "created_at": created_at,
        }
    )


def unreadable_stop_ids(frame: pd.DataFrame) -> list[int]:
    """The stop ids (sorted) of the list rows with no ``phone_e164``."""
    missing = frame["phone_e164"].isna().to_numpy(dtype=bool)
    return sorted(int(i) for i in frame["stop_id"].to_numpy()[missing])
