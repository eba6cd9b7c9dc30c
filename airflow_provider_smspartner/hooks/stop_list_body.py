"""Decodes the ``stop-sms/list`` body with Arrow: millions of rows without a Python dict per row."""

from __future__ import annotations

import io
from typing import Any

import pyarrow as pa
import pyarrow.json as pa_json

from airflow_provider_smspartner.exceptions import SmsPartnerResponseError

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
    if row["success"] is False or row["code"] not in (None, 200):
        return None
    data = table.column("data").combine_chunks()
    items = data.flatten() if data.null_count == 0 else pa.array([], type=STOP_TYPE)
    return {**row, "data": items}


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
                f"SMS Partner stop-sms/list: unexpected row shape ({exc})"
            ) from None
    for field in ("id", "phoneNumber", "createdAt"):
        if array.field(field).null_count:
            raise SmsPartnerResponseError(f"SMS Partner stop-sms/list: some rows have no {field!r}")
    return array
