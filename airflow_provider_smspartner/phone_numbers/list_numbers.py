"""The list side of matching: a stop list's stored numbers, cleaned of what a person cannot see.

A number typed into SMS Partner's back office or imported from a spreadsheet may carry characters
nobody sees: a control character (NUL, DEL, NEL...), a format character (a left-to-right mark
U+200E, a byte-order mark U+FEFF, a zero-width space) or a separator (the narrow no-break space
U+202F that French typography puts between digit groups, a line separator). libphonenumber refuses
most of them, so such a stop would match no contact and the person behind it would be texted.
Every list reader (extract, gate, bulk) therefore cleans the stored number before normalising it.
Audience numbers are left alone (their normaliser's rules are libphonenumber's, unchanged), and
so is ``phone_number`` as the API sent it (the list's fingerprint is computed on that).
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pandas as pd

#: Unicode categories removed from a stored number: controls, format characters, separators.
INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Zs", "Zl", "Zp"})


def may_hold_invisible_characters(values: pd.Series) -> bool:
    """A pre-check over the raw UTF-8 bytes, much faster than looking at every character of a
    million numbers: ``False`` means every value is printable ASCII (spaces included) or missing.

    Any byte below 0x20, DEL (0x7F) or any non-ASCII byte makes it ``True``, which only means
    "look closer" (most non-ASCII characters are visible).
    """
    import pyarrow as pa

    # Typed as text: an empty object column would otherwise become a NullArray (pandas 2).
    array = pa.array(values, type=pa.large_string(), from_pandas=True)
    chunks = array.chunks if isinstance(array, pa.ChunkedArray) else [array]
    for chunk in chunks:
        data = chunk.buffers()[2]
        if data is None:
            continue
        raw = np.frombuffer(data, dtype=np.uint8)
        if ((raw < 0x20) | (raw >= 0x7F)).any():
            return True
    return False


def without_invisible_characters(text: str) -> str:
    """``text`` without its control, format and separator characters (categories Cc, Cf, Zs,
    Zl, Zp; the ASCII space included)."""
    return "".join(ch for ch in text if unicodedata.category(ch) not in INVISIBLE_CATEGORIES)


def clean_list_numbers(phone_numbers: pd.Series) -> tuple[pd.Series, pd.Series]:
    """The stored numbers of a stop list, cleaned for matching.

    :param phone_numbers: The list's ``phone_number`` column, as the API sent it.
    :return: ``(cleaned, changed)``: the numbers without invisible characters (same index;
        ``phone_numbers`` itself when no row changed) and a boolean mask of the rows changed.
    """
    changed = pd.Series(False, index=phone_numbers.index)
    if not len(phone_numbers) or not may_hold_invisible_characters(phone_numbers):
        return phone_numbers, changed
    values = phone_numbers.astype(object)
    # Only rows holding a byte outside printable ASCII are looked at character by character.
    odd = values.str.contains(r"[^\x20-\x7e]", regex=True, na=False).to_numpy(dtype=bool)
    if not odd.any():
        return phone_numbers, changed
    cleaned = values.copy()
    cleaned[odd] = [without_invisible_characters(text) for text in values[odd]]
    changed[odd] = (cleaned[odd] != values[odd]).to_numpy(dtype=bool)
    return (cleaned, changed) if changed.any() else (phone_numbers, changed)


def list_number_digits(phone_numbers: pd.Series) -> np.ndarray:
    """The digits of each (cleaned) stored number as an int64 key, as :func:`e164 keys
    <airflow_provider_smspartner.suppression.matching.e164_keys>` read ``+digits``; -1 where there are
    none or more than 18. What the gate matches a list row on when no E.164 could be made of it
    (``on_unreadable_list_row="warn"``)."""
    digits = phone_numbers.astype(object).fillna("").str.replace(r"[^0-9]", "", regex=True)
    usable = digits.str.len().between(1, 18)
    keys = np.full(len(digits), -1, dtype=np.int64)
    keys[usable.to_numpy(dtype=bool)] = digits[usable].astype("int64").to_numpy()
    return keys
