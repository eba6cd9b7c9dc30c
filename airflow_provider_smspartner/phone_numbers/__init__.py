"""E.164 normalisation of phone numbers, vectorised, stop-list matching and keyed hashing.

Pure package: no Airflow import and nothing from the rest of the provider (pandas, numpy,
``phonenumbers``; the fast path in the ``_fast_path`` package also uses pyarrow, the engine behind
pandas' string dtype).

The truth is libphonenumber: for every value, :func:`normalize_phone_numbers` returns exactly what
``phonenumbers.parse`` + ``is_valid_number`` + ``format_number(..., E164)`` say, one value at a
time (the plain per-value loop the tests and the benchmark compare with lives in
``tests/phone_numbers/reference.py``, outside the wheel).
The speed comes from converting each value to text once, de-duplicating the texts, and deciding
them column-wise with libphonenumber's own metadata and patterns (``_fast_path``); the few
texts it does not decide (about 5 per 1,000 distinct texts in the benchmark corpus: unusual
Unicode, RFC 3966 parameters, ...) go through ``phonenumbers.parse`` one by one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import phonenumbers
from phonenumbers import NumberParseException, PhoneNumberFormat

from airflow_provider_smspartner.phone_numbers._fast_path import fast_normalize
from airflow_provider_smspartner.phone_numbers._fast_path.columns import factorize, texts_at, to_arrow
from airflow_provider_smspartner.phone_numbers._fast_path.metadata import supported_region
from airflow_provider_smspartner.phone_numbers._fast_path.result import (
    EMPTY,
    INVALID_COUNTRY_CODE,
    INVALID_NUMBER,
    NOT_A_NUMBER,
    TOO_LONG,
    TOO_SHORT,
    UNDECIDED,
    VALID,
    FastResult,
    e164_strings,
)
from airflow_provider_smspartner.phone_numbers.hashing import hash_e164, key_bytes
from airflow_provider_smspartner.phone_numbers.list_numbers import clean_list_numbers

__all__ = [
    "REASONS",
    "flag_stopped",
    "hash_phone_numbers",
    "normalize_phone_numbers",
    "phone_text",
    "stop_list_e164",
]

#: Reason codes, in the order of the internal integer codes (1..6).
REASONS: tuple[str, ...] = (
    "empty",
    "not_a_number",
    "too_short",
    "too_long",
    "invalid_country_code",
    "invalid_number",
)

_PARSE_ERROR_CODES = {
    NumberParseException.NOT_A_NUMBER: NOT_A_NUMBER,
    NumberParseException.TOO_SHORT_NSN: TOO_SHORT,
    NumberParseException.TOO_SHORT_AFTER_IDD: TOO_SHORT,
    NumberParseException.TOO_LONG: TOO_LONG,
    NumberParseException.INVALID_COUNTRY_CODE: INVALID_COUNTRY_CODE,
}

# Output dtype of phone_e164 and reason: pandas' nullable string dtype (missing = pd.NA).
_STRING_DTYPE = pd.StringDtype()
_REASON_LABELS = pd.array(list(REASONS), dtype=_STRING_DTYPE)

_INT64_LIMIT = 2.0**63


# ---------------------------------------------------------------------------------------------
# Text conversion: one definition, used by the fast path and the per-value path alike.
# ---------------------------------------------------------------------------------------------


def phone_text(value: Any) -> str | None:
    """Convert one input value to the text that is handed to libphonenumber.

    * missing values (``None``, float NaN, ``pd.NA``, ``pd.NaT``) -> ``None`` (reason ``empty``);
    * ``str`` -> unchanged;
    * ``bool`` (Python or numpy) -> ``"True"`` / ``"False"``, which libphonenumber rejects as
      ``not_a_number`` (a boolean is never a phone number, even though ``True == 1``);
    * integers (Python or numpy) -> ``str(int(value))``;
    * floats: integral -> ``str(int(value))`` (so an Excel export ``33612345678.0`` reads as
      ``33612345678``); NaN -> ``None``; anything else (``6.5``, ``inf``) -> ``repr(float(value))``;
    * anything else -> ``str(value)``.

    :param value: one cell of the input.
    :return: the text, or ``None`` for a missing value.
    """
    if isinstance(value, str):
        return str(value)
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer):
        return str(int(value))
    if isinstance(value, float | np.floating):
        number = float(value)
        if math.isnan(number):
            return None
        if number.is_integer():
            return str(int(number))
        return repr(number)
    return str(value)


def _float_text(value: float) -> str | None:
    if value != value:  # NaN
        return None
    return str(int(value)) if value.is_integer() else repr(value)


# Exact-type shortcuts for phone_text in the hot loop (subclasses such as bool go the long way).
_CONVERTERS: dict[type, Any] = {int: str, float: _float_text, type(None): lambda _: None}


def _is_blank(text: str | None) -> bool:
    return text is None or not text.strip()


def _check_region(default_region: str) -> str:
    region = default_region.upper() if isinstance(default_region, str) else default_region
    if not isinstance(region, str) or not supported_region(region):
        raise ValueError(
            f"default_region {default_region!r} is not a region libphonenumber knows; "
            "use an ISO 3166-1 alpha-2 code such as 'FR'"
        )
    return region


def _per_value_code(text: str | None, region: str) -> tuple[str | None, int]:
    """libphonenumber on one text: ``(e164 or None, reason code)``."""
    if text is None or _is_blank(text):
        return None, EMPTY
    try:
        number = phonenumbers.parse(text, region)
    except NumberParseException as exc:
        return None, _PARSE_ERROR_CODES[exc.error_type]
    if not phonenumbers.is_valid_number(number):
        return None, INVALID_NUMBER
    return phonenumbers.format_number(number, PhoneNumberFormat.E164), VALID


# ---------------------------------------------------------------------------------------------
# Input handling.
# ---------------------------------------------------------------------------------------------


def _as_input(values: Any) -> tuple[np.ndarray | pd.Series, pd.Index]:
    """Validate the container; return the values (array or Series) and the output index."""
    if isinstance(values, str | bytes):
        raise TypeError("values must be a list, tuple, numpy array or pandas Series of numbers, not a string")
    if isinstance(values, pd.DataFrame):
        raise TypeError("values must be one column (a pandas Series), not a DataFrame")
    if isinstance(values, pd.Series):
        return values, values.index
    if isinstance(values, pd.Index):
        return values.to_series(index=pd.RangeIndex(len(values))), pd.RangeIndex(len(values))
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"values must be one-dimensional, got an array of shape {values.shape}")
        return values, pd.RangeIndex(len(values))
    if not isinstance(values, Iterable):
        raise TypeError("values must be a list, tuple, numpy array or pandas Series")
    items = values if isinstance(values, Sequence) else list(values)
    # fromiter keeps each element as one object (np.array would turn nested sequences into 2-D).
    array = np.fromiter(items, dtype=object, count=len(items))
    return array, pd.RangeIndex(len(items))


def _object_values(values: np.ndarray | pd.Series) -> np.ndarray:
    if isinstance(values, pd.Series):
        return values.to_numpy(dtype=object)
    return values.astype(object) if values.dtype != object else values


def _texts(values: np.ndarray | pd.Series) -> tuple[np.ndarray, Any]:
    """Convert to text once and de-duplicate: ``(codes, unique texts)``; code -1 = missing.

    The unique texts come back as an Arrow string array (see ``_fast_path.columns.to_arrow``).
    """
    dtype = values.dtype
    if isinstance(dtype, pd.StringDtype):
        # Already text (pyarrow or python storage): no Python-level conversion at all.
        return factorize(to_arrow(pd.Series(values, copy=False).array))
    raw = values.to_numpy() if isinstance(values, pd.Series) and dtype.kind in "iuf" else values
    if isinstance(raw, np.ndarray) and raw.dtype.kind in "iu":
        # str(int) is numpy's integer-to-text conversion; factorize the numbers first (cheaper).
        codes, unique_numbers = pd.factorize(raw)
        return np.asarray(codes), to_arrow(np.asarray(unique_numbers).astype(str).astype(object))
    if isinstance(raw, np.ndarray) and raw.dtype.kind == "f":
        number_codes, unique_numbers = pd.factorize(raw)  # NaN -> -1
        # Distinct floats can share a text (-0.0 and 0.0): de-duplicate the texts again.
        text_codes, unique_texts = pd.factorize(_float_texts(np.asarray(unique_numbers)))
        codes = np.where(number_codes >= 0, np.asarray(text_codes)[np.maximum(number_codes, 0)], -1)
        return codes, to_arrow(np.asarray(unique_texts, dtype=object))
    objects = _object_values(values)
    if pd.api.types.infer_dtype(objects, skipna=True) in ("string", "empty"):
        # Only str and missing values (None, NaN, pd.NA): phone_text would change nothing.
        return factorize(to_arrow(objects))
    # The hot loop: most cells are already str, so test the exact type before calling phone_text.
    converted = [v if v.__class__ is str else _CONVERTERS.get(v.__class__, phone_text)(v) for v in objects]
    return factorize(to_arrow(converted))


def _float_texts(numbers: np.ndarray) -> np.ndarray:
    """``phone_text`` over a float array, vectorised for the integral values below 2**63."""
    numbers = numbers.astype(np.float64)
    texts = np.empty(len(numbers), dtype=object)
    integral = np.isfinite(numbers) & (np.floor(numbers) == numbers) & (np.abs(numbers) < _INT64_LIMIT)
    texts[integral] = numbers[integral].astype(np.int64).astype(str)
    for i in np.flatnonzero(~integral):
        texts[i] = phone_text(float(numbers[i]))
    return texts


def _parse_the_rest(result: FastResult, uniques: Any, region: str) -> None:
    """Hand the texts the fast path could not decide to ``phonenumbers.parse``, one by one."""
    undecided = np.flatnonzero(result.reason == UNDECIDED)
    if not len(undecided):
        return
    positions: list[int] = []
    e164_values: list[str] = []
    for position, text in zip(undecided.tolist(), texts_at(uniques, undecided), strict=True):
        e164, code = _per_value_code(text, region)
        result.reason[position] = code
        if e164 is not None:
            positions.append(position)
            e164_values.append(e164)
    if positions:
        result.set_valid(np.asarray(positions, dtype=np.int64), to_arrow(e164_values))


# ---------------------------------------------------------------------------------------------
# Public API.
# ---------------------------------------------------------------------------------------------


def _encodable(text: str | None) -> bool:
    try:
        text is None or text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _normalize_with_unencodable(data: np.ndarray | pd.Series, index: pd.Index, region: str) -> pd.DataFrame:
    """:func:`normalize_phone_numbers` for values of which some do not encode as UTF-8.

    The encodable values take the fast path; the others are judged by libphonenumber one by one
    (which never raises on them), so every value still gets an E.164 number or a reason.
    """
    objects = _object_values(data)
    texts = [phone_text(value) for value in objects]
    odd = np.array([not _encodable(text) for text in texts], dtype=bool)
    e164 = pd.array([pd.NA] * len(objects), dtype=_STRING_DTYPE)
    reasons = pd.array([pd.NA] * len(objects), dtype=_STRING_DTYPE)
    regular = np.flatnonzero(~odd)
    if len(regular):
        decided = normalize_phone_numbers(objects[regular], region)
        e164[regular] = decided["phone_e164"].array
        reasons[regular] = decided["reason"].array
    for position in np.flatnonzero(odd).tolist():
        number, code = _per_value_code(texts[position], region)
        e164[position] = number if number is not None else pd.NA
        reasons[position] = pd.NA if code == VALID else REASONS[code - 1]
    return pd.DataFrame(
        {
            "input": pd.Series(objects, index=index, dtype=object, copy=False),
            "phone_e164": pd.Series(e164, index=index),
            "reason": pd.Series(reasons, index=index),
        },
        index=index,
    )


def normalize_phone_numbers(values: Any, default_region: str = "FR") -> pd.DataFrame:
    """Normalise phone numbers to E.164, exactly as libphonenumber would, but column-wise.

    Each value is converted to text with :func:`phone_text`, then judged like
    ``phonenumbers.parse(text, default_region)`` followed by ``is_valid_number``.

    :param values: a list, tuple, numpy array or pandas Series of any dtype (str, int, float,
        object with ``None`` / NaN / ``pd.NA``).
    :param default_region: region used for numbers written without an international prefix
        (case-insensitive ISO 3166-1 alpha-2 code, default ``"FR"``).
    :return: a DataFrame with one row per input, in input order, indexed like the Series (or a
        RangeIndex for other containers), with columns:

        * ``input``: the original values (object dtype);
        * ``phone_e164``: the E.164 number (``string`` dtype), ``<NA>`` when invalid;
        * ``reason``: ``<NA>`` when valid, otherwise one of ``empty``, ``not_a_number``,
          ``too_short``, ``too_long``, ``invalid_country_code``, ``invalid_number``.
    :raises TypeError: if ``values`` is a single string or not a one-column container.
    :raises ValueError: if ``default_region`` is unknown to libphonenumber or ``values`` is not
        one-dimensional.
    """
    region = _check_region(default_region)
    data, index = _as_input(values)
    try:
        codes, uniques = _texts(data)
    except UnicodeEncodeError:
        # Arrow holds UTF-8 only; a Python string may not encode (a lone surrogate such as
        # "\ud83d" from a badly decoded file). Rare: those values take the per-value path.
        return _normalize_with_unencodable(data, index, region)
    result = fast_normalize(uniques, region)

    _parse_the_rest(result, uniques, region)

    # Map the per-text results back to the rows without materialising Python strings.
    e164_values, slot = e164_strings(result, len(uniques))
    missing = codes < 0
    safe_codes = np.where(missing, 0, codes)
    row_slot = np.where(missing, -1, slot[safe_codes] if len(slot) else -1)
    row_reason = np.where(missing, EMPTY, result.reason[safe_codes] if len(slot) else EMPTY)
    return pd.DataFrame(
        {
            "input": pd.Series(_object_values(data), index=index, dtype=object, copy=False),
            "phone_e164": pd.Series(e164_values.take(row_slot, allow_fill=True), index=index),
            "reason": pd.Series(
                _REASON_LABELS.take(row_reason.astype(np.int64) - 1, allow_fill=True), index=index
            ),
        },
        index=index,
    )


def hash_phone_numbers(values: Any, key: str | bytes, default_region: str = "FR") -> pd.DataFrame:
    """Normalise phone numbers to E.164, then replace each by its keyed hash (``phone_hash``).

    ``phone_hash`` = HMAC-SHA256(key, the E.164 text's UTF-8 bytes) in 64 lowercase hex digits,
    i.e. ``hmac.new(key, "+33612345678".encode(), hashlib.sha256).hexdigest()``: the same number,
    however it was written, gets the same hash under the same key (see :mod:`.hashing`).

    :param values: as for :func:`normalize_phone_numbers`.
    :param key: the secret; ``str`` is taken as its UTF-8 bytes, ``bytes`` as given.
    :param default_region: as for :func:`normalize_phone_numbers`.
    :return: a DataFrame with one row per input, in input order, indexed like
        :func:`normalize_phone_numbers`'s, with columns ``input`` (the original values),
        ``phone_hash`` (``string`` dtype, ``<NA>`` when the number is invalid) and ``reason``
        (``<NA>`` when valid, else the reason code of :func:`normalize_phone_numbers`).
    :raises TypeError: as :func:`normalize_phone_numbers`, or if ``key`` is neither text nor bytes.
    :raises ValueError: as :func:`normalize_phone_numbers`, or if ``key`` is empty.
    """
    raw_key = key_bytes(key)  # a bad key fails before the numbers are normalised
    normalized = normalize_phone_numbers(values, default_region=default_region)
    return pd.DataFrame(
        {
            "input": normalized["input"],
            "phone_hash": hash_e164(normalized["phone_e164"], raw_key),
            "reason": normalized["reason"],
        },
        index=normalized.index,
    )


_STOP_LIST_REQUIRED = ("stop_id", "phone_number", "created_at")


def flag_stopped(
    contacts: pd.DataFrame,
    stop_list: pd.DataFrame,
    phone_column: str,
    default_region: str = "FR",
) -> pd.DataFrame:
    """Flag the contacts whose phone number is on the stop list, comparing E.164 to E.164.

    :param contacts: the contact table; its index and row order are kept.
    :param stop_list: the stop list, with columns ``stop_id``, ``phone_number``, ``created_at``
        and optionally ``phone_e164``, used as given (when absent, or missing for a row,
        ``phone_number`` is normalised with ``default_region``). ``created_at`` holds datetimes
        or ISO 8601 strings; naive values are read as UTC.
    :param phone_column: the column of ``contacts`` that holds the phone numbers.
    :param default_region: region for numbers written without an international prefix.
    :return: a copy of ``contacts`` with added (or replaced) columns ``phone_e164`` (``string``,
        ``<NA>`` when the contact's number is invalid), ``is_stopped`` (bool), ``stop_id``
        (``Int64``) and ``stopped_at`` (UTC datetime, ``NaT`` when not stopped). When a number is
        on the stop list several times, the earliest ``created_at`` wins (then the smallest
        ``stop_id``); stop-list rows whose number is invalid match nothing.
    :raises ValueError: if ``phone_column`` is not a column of ``contacts``, if the stop list
        lacks a required column, or if ``default_region`` is unknown.
    """
    if phone_column not in contacts.columns:
        raise ValueError(
            f"phone_column {phone_column!r} is not a column of contacts; "
            f"available columns: {[str(c) for c in contacts.columns]}"
        )
    missing = [c for c in _STOP_LIST_REQUIRED if c not in stop_list.columns]
    if missing:
        raise ValueError(
            f"stop_list lacks column(s) {missing}; it needs {list(_STOP_LIST_REQUIRED)} "
            f"(and optionally 'phone_e164'); available columns: {[str(c) for c in stop_list.columns]}"
        )
    contact_e164 = normalize_phone_numbers(
        contacts[phone_column].reset_index(drop=True), default_region=default_region
    )["phone_e164"].array

    stops = _stop_entries(stop_list, default_region)
    lookup = pd.Index(stops["phone_e164"].array)
    # Missing contact numbers must never match: the lookup holds no missing values, and
    # get_indexer returns -1 for <NA>.
    position = lookup.get_indexer(contact_e164) if len(lookup) else np.full(len(contact_e164), -1)
    position = np.asarray(position, dtype=np.int64)

    result = contacts.copy()
    # Plain arrays, assigned by position: the contacts' index may hold duplicates.
    result["phone_e164"] = contact_e164
    result["is_stopped"] = position >= 0
    result["stop_id"] = stops["stop_id"].array.take(position, allow_fill=True)
    result["stopped_at"] = stops["created_at"].array.take(position, allow_fill=True)
    return result


def _utc_datetimes(values: pd.Series) -> pd.Series:
    """Datetimes in UTC; naive values (or strings without offset) are taken as UTC."""
    if isinstance(values.dtype, pd.DatetimeTZDtype) or values.dtype.kind == "M":
        return pd.to_datetime(values, utc=True)
    try:
        return pd.to_datetime(values, utc=True, format="ISO8601")
    except (TypeError, ValueError) as exc:
        raise ValueError(
            f"stop_list column 'created_at' must hold datetimes or ISO 8601 strings: {exc}"
        ) from exc


def _stop_entries(stop_list: pd.DataFrame, default_region: str) -> pd.DataFrame:
    """One row per E.164 number of the stop list (earliest ``created_at``), without invalid ones."""
    stop_list = stop_list.reset_index(drop=True)
    if "phone_e164" in stop_list.columns:
        e164 = pd.Series(stop_list["phone_e164"], dtype=_STRING_DTYPE)
        missing = np.flatnonzero(np.asarray(e164.isna()))
        if len(missing):
            # Fill gaps from phone_number rather than silently losing an opt-out.
            filled = normalize_phone_numbers(stop_list["phone_number"].iloc[missing], default_region)
            e164.iloc[missing] = filled["phone_e164"].array
    else:
        e164 = normalize_phone_numbers(stop_list["phone_number"], default_region)["phone_e164"].reset_index(
            drop=True
        )
    try:
        stop_id = stop_list["stop_id"].astype("Int64").array
    except (TypeError, ValueError) as exc:
        raise ValueError(f"stop_list column 'stop_id' must hold integers: {exc}") from exc
    created_at = _utc_datetimes(stop_list["created_at"])
    entries = pd.DataFrame(
        {"phone_e164": e164.array, "stop_id": stop_id, "created_at": created_at.array},
    )
    entries = entries[entries["phone_e164"].notna()]
    entries = entries.sort_values(["created_at", "stop_id"], kind="stable", na_position="last")
    return entries.drop_duplicates("phone_e164", keep="first").reset_index(drop=True)


#: A plain ``+digits`` E.164 shape (what the stop list sends).
E164_SHAPE = r"\+[1-9][0-9]{6,14}"


def stop_list_e164(phone_numbers: pd.Series, default_region: str = "FR") -> pd.Series:
    """E.164 form of the numbers of a stop list, for joins against contacts.

    A number on the stop list must never drop out of a join: invisible characters (controls,
    format characters, separators: :func:`~.list_numbers.clean_list_numbers`) are removed first,
    and when libphonenumber does not know the range (new allocations, metadata lag) but the number
    is a plain E.164 string, it is kept as is. Missing only where the API sent something unusable.

    :param phone_numbers: The stop list's ``phone_number`` column, as the API sent it.
    :return: pandas' default text dtype (``str``, missing = NaN), same index.
    """
    phone_numbers, _ = clean_list_numbers(phone_numbers)
    e164 = normalize_phone_numbers(phone_numbers, default_region=default_region)["phone_e164"]
    # pandas 3's "str" holds a missing value as NaN (no copy from Arrow-backed "string");
    # pandas 2's astype("str") would write "<NA>": objects there, None for missing.
    if pd.__version__ >= "3":
        text = e164.astype("str")
    else:
        text = e164.astype(object)
        text = text.where(text.notna(), None)
    # Only the numbers libphonenumber could not read are looked at again (a regex per value).
    unread = np.flatnonzero(e164.isna().to_numpy(dtype=bool))
    if len(unread):
        candidates = phone_numbers.iloc[unread].astype(object)
        plain = candidates.str.fullmatch(E164_SHAPE).fillna(False).to_numpy(dtype=bool)
        if plain.any():
            text.iloc[unread[plain]] = candidates[plain].array
    return text
