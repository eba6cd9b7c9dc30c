"""The ``stop-sms/list`` payload: its body decoded by Arrow, and its rows as a DataFrame.

Lists reach millions of rows, so nothing here builds a Python object per row: the body is read by
Arrow's JSON reader and the frame is built column-wise. Imported lazily by the hook (it loads
pandas and pyarrow), never at DAG-parse time.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.json as pa_json

from airflow_provider_smspartner.exceptions import SmsPartnerResponseError
from airflow_provider_smspartner.utils.api import LIST_ENDPOINT, OK_CODE

CREATED_AT_FORMAT = "%Y-%m-%d %H:%M:%S"
STOP_TYPE = pa.struct([("id", pa.int64()), ("phoneNumber", pa.string()), ("createdAt", pa.string())])
_BODY_SCHEMA = pa.schema(
    [("success", pa.bool_()), ("code", pa.int64()), ("nbData", pa.int64()), ("data", pa.list_(STOP_TYPE))]
)


def parse_stop_list_body(content: bytes) -> dict[str, Any] | None:
    """Parse a successful list body into ``{"success", "code", "nbData", "data": StructArray}``.

    Returns ``None`` (the caller then uses the generic JSON parser and its error mapping) when the
    body is not the documented success shape: an error body, unexpected types, or not JSON.
    """
    # Arrow's reader takes newline-delimited JSON: one document must be on one line.
    if not content or b"\n" in content.strip():
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
    if row["success"] is False or row["code"] not in (None, OK_CODE):
        return None
    data = table.column("data").combine_chunks()
    items = data.flatten() if data.null_count == 0 else pa.array([], type=STOP_TYPE)
    return {**row, "data": items}


def check_complete_list(body: dict[str, Any]) -> None:
    """Refuse a stop list whose rows disagree with its announced count (retryable)."""
    data = body.get("data")
    if data is None:
        data = body["data"] = []
    if not isinstance(data, (list, pa.Array)):
        raise SmsPartnerResponseError(f"SMS Partner {LIST_ENDPOINT}: 'data' is not a list")
    announced = body.get("nbData")
    if announced is not None and int(announced) != len(data):
        raise SmsPartnerResponseError(
            f"SMS Partner {LIST_ENDPOINT}: incomplete list: nbData={announced} but {len(data)} rows "
            "received; refusing partial data"
        )


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


def local_times_to_utc(values: Sequence[Any] | pd.Series, api_timezone: str) -> pd.Series:
    """Read naive ``YYYY-MM-DD HH:MM:SS`` strings as wall-clock time in ``api_timezone``; return UTC.

    The API gives no offset. At the autumn DST change an hour repeats: we read it as the first
    (summer-time) occurrence; times inside the spring gap are shifted forward. Unparsable values
    raise, because a wrong opt-out date is worse than a failed extract.
    """
    series = pd.Series(values, dtype="object") if not isinstance(values, pd.Series) else values
    local = pd.to_datetime(series, format=CREATED_AT_FORMAT, errors="raise")
    localized = local.dt.tz_localize(
        api_timezone, ambiguous=np.ones(len(local), dtype=bool), nonexistent="shift_forward"
    )
    return localized.dt.tz_convert("UTC").astype("datetime64[us, UTC]")


def records_to_frame(records: pa.StructArray, api_timezone: str) -> pd.DataFrame:
    """Convert the list's rows (``id``, ``phoneNumber``, ``createdAt``) into a DataFrame.

    :return: columns ``stop_id`` (int64), ``phone_number`` (as the API sent it) and ``created_at``
        (UTC).
    """
    if len(records) == 0:
        return pd.DataFrame(
            {
                "stop_id": pd.Series([], dtype="int64"),
                "phone_number": pd.Series([], dtype="str"),
                "created_at": pd.Series([], dtype="datetime64[us, UTC]"),
            }
        )
    return pd.DataFrame(
        {
            "stop_id": pd.Series(records.field("id").to_numpy(zero_copy_only=False), dtype="int64"),
            "phone_number": records.field("phoneNumber").to_pandas().astype("str"),
            "created_at": local_times_to_utc(
                records.field("createdAt").to_pandas().astype("str"), api_timezone
            ),
        }
    )
