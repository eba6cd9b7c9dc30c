"""What the gate matches an audience on: E.164 numbers (clear mode) or their keyed hashes.

Both modes turn each number into an int64 key, so one engine
(:mod:`~airflow_provider_smspartner.suppression.engine`) compares, sorts and de-duplicates
integers whatever the mode:

* :class:`ClearMatching`: the key is the E.164 number's digits (exact: 15 digits fit);
* :class:`HashedMatching`: the key is the first 63 bits of ``phone_hash`` (HMAC-SHA256 of the
  E.164 text, :mod:`~airflow_provider_smspartner.phone_numbers.hashing`). Two different hashes
  share a key with probability about ``n**2 / 2**64`` (under 1e-6 for a list of a million and an
  audience of ten million); when they do, the gate excludes the second row (as ``stopped`` or
  ``duplicate``): a collision can drop a row it would have kept, never keep a listed number.

The key column written next to the rows is ``phone_e164`` or ``phone_hash``. In hashed mode the
excluded rows of people on the list (reason ``stopped``) keep only ``phone_hash``, ``reason`` and
the columns the user names (``excluded_columns``): the other columns would tell who opted out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from airflow_provider_smspartner.phone_numbers import normalize_phone_numbers
from airflow_provider_smspartner.phone_numbers.hashing import hash_e164

if TYPE_CHECKING:
    from airflow_provider_smspartner.utils.hash_key import HashKey

#: The column the normalised number is written to in clear mode.
E164_COLUMN = "phone_e164"
#: The column the number's keyed hash is written to in hashed mode.
HASH_COLUMN = "phone_hash"
#: The column of the excluded rows that says why (it replaces an audience column of that name).
REASON_COLUMN = "reason"
#: A ``phone_hash`` as an audience may give it (``phone_hash_column``): 64 hex digits, any case.
HASH_TEXT = r"^[0-9a-fA-F]{64}$"
#: Hex digits of a hash that make its key: 16 (64 bits), shifted right by one to stay >= 0.
_KEY_HEX_DIGITS = 16
_HEX_VALUES = np.full(256, 0, dtype=np.uint64)
_HEX_VALUES[np.frombuffer(b"0123456789", dtype=np.uint8)] = np.arange(10, dtype=np.uint64)
_HEX_VALUES[np.frombuffer(b"abcdef", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint64)
#: Nullable pandas types for the numpy kinds that cannot hold a missing value.
_NULLABLE: dict[str, Any] = {"i": "Int64", "u": "UInt64", "b": "boolean"}
_MASK = "\u2022"  # •


def e164_keys(values: pd.Series) -> np.ndarray:
    """E.164 numbers as int64 keys (the digits after ``+``; 15 digits at most, so they fit), -1
    where a value is missing or not ``+`` and digits. Vectorised in Arrow: comparing, sorting
    and de-duplicating integers is much cheaper than Python strings, and they take 8 bytes each."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = pa.array(values, from_pandas=True)
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    if not (pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type)):
        texts = texts.cast(pa.large_string())
    digits = pc.utf8_slice_codeunits(texts, 1)
    try:
        keys = pc.cast(digits, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        shaped = pc.match_substring_regex(texts, r"^\+[0-9]{1,18}$")
        keys = pc.cast(pc.if_else(shaped, digits, pa.scalar(None, digits.type)), pa.int64())
    return np.asarray(pc.fill_null(keys, -1).to_numpy(zero_copy_only=False), dtype=np.int64)


def hash_keys(hashes: pd.Series) -> np.ndarray:
    """``phone_hash`` values (64 lowercase hex digits, or missing) as int64 keys: their first 16
    hex digits shifted right by one bit (so every key is >= 0); -1 where a value is missing."""
    import pyarrow as pa
    import pyarrow.compute as pc

    texts = pa.array(hashes, type=pa.large_string(), from_pandas=True)
    if isinstance(texts, pa.ChunkedArray):
        texts = texts.combine_chunks()
    present = pc.is_valid(texts).to_numpy(zero_copy_only=False)
    keys = np.full(len(texts), -1, dtype=np.int64)
    if not present.any():
        return keys
    heads = pc.utf8_slice_codeunits(texts.filter(pa.array(present)), 0, _KEY_HEX_DIGITS)
    offsets = np.frombuffer(heads.buffers()[1], dtype=np.int64)[heads.offset : heads.offset + len(heads)]
    data = np.frombuffer(heads.buffers()[2], dtype=np.uint8)
    digits = _HEX_VALUES[data[offsets[:, None] + np.arange(_KEY_HEX_DIGITS)]]
    shifts = np.arange(4 * (_KEY_HEX_DIGITS - 1), -1, -4, dtype=np.uint64)
    keys[present] = (np.bitwise_or.reduce(digits << shifts, axis=1) >> np.uint64(1)).astype(np.int64)
    return keys


def mask_phone_number(e164: str) -> str:
    """An E.164 number fit for a log line: country code, first national digit and last 4 digits.

    The national number is grouped in pairs from the end (an odd first digit joins the first
    pair): ``+33612345678`` -> ``+33 6•• •• 56 78``. A number too short to hide anything keeps
    only its last 2 digits.
    """
    import phonenumbers

    try:
        code = str(phonenumbers.parse(e164, None).country_code)
    except phonenumbers.NumberParseException:
        code = ""
    digits = e164.lstrip("+")
    national = digits[len(code) :] if code and digits.startswith(code) else digits
    if len(national) >= 6:
        shown = national[0] + _MASK * (len(national) - 5) + national[-4:]
    else:
        shown = _MASK * max(len(national) - 2, 0) + national[-2:]
    groups: list[str] = []
    rest = shown
    while len(rest) > 3:
        groups.insert(0, rest[-2:])
        rest = rest[:-2]
    groups.insert(0, rest)
    return f"+{code} " + " ".join(groups) if code else "+" + " ".join(groups)


@dataclass(frozen=True)
class ClearMatching:
    """Clear mode: match on E.164; every column of every row is written as it is."""

    column: str = E164_COLUMN

    def list_keys(self, e164: pd.Series) -> np.ndarray:
        """Keys of the list's E.164 numbers (-1 where missing)."""
        return e164_keys(e164)

    def digits_keys(self, digits: np.ndarray) -> np.ndarray:
        """Keys of the digits of unreadable list rows (``+digits`` as an E.164 key), -1 kept."""
        return digits

    def audience(self, values: pd.Series, default_region: str) -> tuple[pd.Series, np.ndarray]:
        """``(phone_e164, keys)`` of a chunk's phone column; missing / -1 where not valid."""
        e164 = normalize_phone_numbers(values.reset_index(drop=True), default_region)["phone_e164"]
        return e164, e164_keys(e164)

    def example(self, text: str) -> str:
        """A stopped number as the check-mode error quotes it: masked."""
        return mask_phone_number(text)

    def hide_stopped(self, rows: pd.DataFrame, stopped: np.ndarray) -> pd.DataFrame:
        """The excluded rows as written: unchanged in clear mode."""
        return rows


@dataclass(frozen=True)
class HashedMatching:
    """Keyed-hash mode: match on ``phone_hash``; no number from the list is written in clear.

    :param hash_key: The key (:func:`~airflow_provider_smspartner.utils.hash_key.resolve_hash_key`).
    :param given_hashes: The audience's column already holds ``phone_hash`` values
        (``phone_hash_column``): they are checked (64 hex digits, any case, surrounding spaces
        ignored) and lower-cased; anything else is ``invalid``. Otherwise the column holds
        numbers, normalised and hashed here with the same key.
    :param excluded_columns: Audience columns kept in the excluded ``stopped`` rows.
    """

    hash_key: HashKey = field(repr=False)
    given_hashes: bool = False
    excluded_columns: tuple[str, ...] = ()
    column: str = HASH_COLUMN

    def _hash(self, e164: pd.Series) -> pd.Series:
        present = e164.notna().to_numpy(dtype=bool)
        hashes = pd.Series(pd.NA, index=e164.index, dtype="string")
        if present.any():
            hashes[present] = hash_e164(e164[present], self.hash_key.key).to_numpy()
        return hashes

    def list_keys(self, e164: pd.Series) -> np.ndarray:
        return hash_keys(self._hash(e164))

    def digits_keys(self, digits: np.ndarray) -> np.ndarray:
        # Digits with 3 or more figures (the shortest E.164 text) are hashed as "+digits".
        texts = pd.Series([f"+{value}" if value >= 100 else None for value in digits.tolist()], dtype=object)
        return hash_keys(self._hash(texts))

    def audience(self, values: pd.Series, default_region: str) -> tuple[pd.Series, np.ndarray]:
        """``(phone_hash, keys)`` of a chunk's phone (or hash) column."""
        values = values.reset_index(drop=True)
        if self.given_hashes:
            texts = values.astype("string").str.strip()
            shaped = texts.str.fullmatch(HASH_TEXT).fillna(False).to_numpy(dtype=bool)
            hashes = texts.str.lower()
            hashes[~shaped] = None
        else:
            e164 = normalize_phone_numbers(values, default_region)["phone_e164"]
            hashes = self._hash(e164)
        return hashes, hash_keys(hashes)

    def example(self, text: str) -> str:
        """A stopped number as the check-mode error quotes it: the start of its hash."""
        return f"phone_hash {text[:12]}…"

    def hide_stopped(self, rows: pd.DataFrame, stopped: np.ndarray) -> pd.DataFrame:
        """Excluded rows with every column emptied but ``phone_hash``, ``reason`` and
        ``excluded_columns`` on the ``stopped`` ones: they are the people on the list.

        Integer and boolean columns become their nullable pandas types in every chunk (emptied
        or not), so each chunk of a file or table has the same column types.
        """
        keep = {self.column, REASON_COLUMN, *self.excluded_columns}
        hidden: dict[str, pd.Series] = {}
        for name in rows.columns:
            if name in keep:
                continue
            column = rows[name]
            if column.dtype.kind in _NULLABLE:
                column = column.astype(_NULLABLE[column.dtype.kind])
            hidden[name] = column.mask(stopped) if stopped.any() else column
        return rows.assign(**hidden) if hidden else rows


def check_excluded_columns(
    excluded_columns: Sequence[str], columns: Sequence[str], phone_column: str, given_hashes: bool
) -> None:
    """``excluded_columns`` must be audience columns, and not the phone column of raw numbers.

    :raises ValueError: naming the column and what to change.
    """
    missing = [name for name in excluded_columns if name not in columns]
    if missing:
        raise ValueError(
            f"excluded_columns {missing} are not columns of the audience; it has {list(columns)}."
        )
    if not given_hashes and phone_column in excluded_columns:
        raise ValueError(
            f"excluded_columns names the phone column {phone_column!r}: in keyed-hash mode the "
            "excluded rows of people on the stop list never hold their number in clear; leave it "
            "out (the rows hold phone_hash)."
        )
