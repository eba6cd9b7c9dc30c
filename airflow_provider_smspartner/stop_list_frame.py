"""Builds the stop-list DataFrame from the API's raw records, vectorised (lists reach millions of rows)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from airflow_provider_smspartner.phone_numbers import normalize_phone_numbers

CREATED_AT_FORMAT = "%Y-%m-%d %H:%M:%S"
E164_SHAPE = r"\+[1-9][0-9]{6,14}"


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


def empty_stop_list_frame() -> pd.DataFrame:
    """A stop-list frame with no rows and the documented column types."""
    return pd.DataFrame(
        {
            "stop_id": pd.Series([], dtype="int64"),
            "phone_number": pd.Series([], dtype="str"),
            "phone_e164": pd.Series([], dtype="str"),
            "created_at": pd.Series([], dtype="datetime64[us, UTC]"),
        }
    )


def records_to_frame(records: pa.StructArray, api_timezone: str, with_e164: bool = True) -> pd.DataFrame:
    """Convert the list's rows (``id``, ``phoneNumber``, ``createdAt``) into the stop-list DataFrame.

    :param with_e164: Add ``phone_e164``; callers that only need the raw rows skip normalisation.
    :return: columns ``stop_id`` (int64), ``phone_number`` (as the API sent it), ``phone_e164``
        (normalised; a plain ``+digits`` number libphonenumber does not validate is kept as sent,
        so it still matches contacts; missing only if the API returns something unusable) and
        ``created_at`` (UTC).
    """
    if len(records) == 0:
        frame = empty_stop_list_frame()
        return frame if with_e164 else frame.drop(columns="phone_e164")
    stop_ids = pd.Series(records.field("id").to_numpy(zero_copy_only=False), dtype="int64")
    phones = records.field("phoneNumber").to_pandas().astype("str")
    created = local_times_to_utc(records.field("createdAt").to_pandas().astype("str"), api_timezone)
    columns = {"stop_id": stop_ids, "phone_number": phones}
    if with_e164:
        columns["phone_e164"] = _stop_list_e164(phones).to_numpy()
    return pd.DataFrame({**columns, "created_at": created})


def _stop_list_e164(phones: pd.Series) -> pd.Series:
    # pandas' default text dtype ("str", missing = NaN), like the other text columns.
    e164 = normalize_phone_numbers(phones, default_region="FR")["phone_e164"].astype("str")
    # A number on the stop list must never drop out of a join: if libphonenumber does not know
    # the range (new allocations, metadata lag) but the API sent a plain E.164 string, keep it.
    unknown = e164.isna() & phones.str.fullmatch(E164_SHAPE)
    return e164.where(~unknown, phones) if unknown.any() else e164
