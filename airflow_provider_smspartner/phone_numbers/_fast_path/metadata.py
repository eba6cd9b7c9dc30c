"""libphonenumber's metadata as tables and patterns for whole columns, and validity by metadata.

``PhoneMetadata`` objects are loaded once and never change, but are not hashable: the caches are
keyed by (region id, country code). Per metadata, ``_test_number_length`` becomes a table indexed
by length, and "some number type matches" one regex per length.
"""

from __future__ import annotations

import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import PhoneMetadata, PhoneNumberDesc, ValidationResult
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

from airflow_provider_smspartner.phone_numbers._fast_path.columns import (
    fullmatch,
    prefix_match,
    take,
    to_numpy,
)

# Constants of libphonenumber (phonenumberutil.py: _MIN_LENGTH_FOR_NSN, _MAX_LENGTH_FOR_NSN).
MIN_LENGTH_FOR_NSN = 2
MAX_LENGTH_FOR_NSN = 17

# Number types that make a number valid when they match (see _number_type_helper). Mobile is
# handled separately because it is only consulted when its pattern differs from fixed_line.
_TYPE_DESC_NAMES = (
    "fixed_line",
    "premium_rate",
    "toll_free",
    "shared_cost",
    "voip",
    "personal_number",
    "pager",
    "uan",
    "voicemail",
)

_METADATA: dict[tuple[int, str], PhoneMetadata | None] = {}
_LENGTH_TABLES: dict[tuple[str, int], np.ndarray] = {}
_TYPE_PATTERNS: dict[tuple[str, int, int], str | None] = {}


def metadata_for(country_code: int, region: str) -> PhoneMetadata | None:
    """``metadata_for_region_or_calling_code`` (non-geographic entities use region "001")."""
    key = (country_code, region)
    if key not in _METADATA:
        _METADATA[key] = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    return _METADATA[key]


def region_metadata(region: str) -> PhoneMetadata | None:
    """``PhoneMetadata.metadata_for_region(region, None)``."""
    key = (-1, region)
    if key not in _METADATA:
        _METADATA[key] = PhoneMetadata.metadata_for_region(region, None)
    return _METADATA[key]


def _key(metadata: PhoneMetadata) -> tuple[str, int]:
    return (str(metadata.id), int(metadata.country_code or 0))


def _general_desc(metadata: PhoneMetadata) -> PhoneNumberDesc:
    # Every region's metadata has one (libphonenumber itself relies on it).
    desc = metadata.general_desc
    if desc is None:  # pragma: no cover - never true in the shipped metadata
        raise ValueError(f"libphonenumber metadata {metadata.id} has no general description")
    return desc


def general_pattern(metadata: PhoneMetadata) -> str | None:
    """The general-desc national number pattern of ``metadata``."""
    return _general_desc(metadata).national_number_pattern


def _length_table(metadata: PhoneMetadata) -> np.ndarray:
    """``_test_number_length(n, metadata)`` (type UNKNOWN) for every length 0..63.

    The result depends only on the length of ``n``, so it can be tabulated.
    """
    key = _key(metadata)
    table = _LENGTH_TABLES.get(key)
    if table is not None:
        return table
    desc = _general_desc(metadata)
    possible = list(desc.possible_length)
    local = set(desc.possible_length_local_only)
    table = np.empty(64, dtype=np.int8)
    for length in range(64):
        if length in local:
            result = ValidationResult.IS_POSSIBLE_LOCAL_ONLY
        elif possible[0] == length:
            result = ValidationResult.IS_POSSIBLE
        elif possible[0] > length:
            result = ValidationResult.TOO_SHORT
        elif possible[-1] < length:
            result = ValidationResult.TOO_LONG
        elif length in possible[1:]:
            result = ValidationResult.IS_POSSIBLE
        else:
            result = ValidationResult.INVALID_LENGTH
        table[length] = result
    _LENGTH_TABLES[key] = table
    return table


def number_length_check(lengths: np.ndarray, metadata: PhoneMetadata) -> np.ndarray:
    """``_test_number_length(n, metadata)`` (type UNKNOWN) for numbers of these lengths."""
    # Lengths above 63 are all longer than any possible length: TOO_LONG, like length 63.
    return _length_table(metadata)[np.minimum(lengths, 63)]


def _type_pattern(metadata: PhoneMetadata, length: int) -> str | None:
    """One regex matching iff some number type of ``metadata`` matches a number of ``length``.

    ``_is_number_matching_desc`` = possible length (when listed) and full match of the pattern;
    for a fixed length, "any type matches" is a full match of the alternation of the patterns of
    the types that allow that length.
    """
    key = (*_key(metadata), length)
    if key in _TYPE_PATTERNS:
        return _TYPE_PATTERNS[key]
    descs = [getattr(metadata, name) for name in _TYPE_DESC_NAMES]
    if not metadata.same_mobile_and_fixed_line_pattern:
        # _number_type_helper only consults mobile when its pattern differs from fixed_line's.
        descs.append(metadata.mobile)
    patterns = []
    for desc in descs:
        if desc is None or not desc.national_number_pattern:
            continue
        if len(desc.possible_length) and length not in desc.possible_length:
            continue
        patterns.append(f"(?:{desc.national_number_pattern})")
    pattern = f"^(?:{'|'.join(patterns)})$" if patterns else None
    _TYPE_PATTERNS[key] = pattern
    return pattern


def _is_valid_for_metadata(
    array: pa.Array,
    lengths: np.ndarray,
    metadata: PhoneMetadata,
    general_match: np.ndarray | None = None,
) -> np.ndarray:
    """``_number_type_helper(nsn, metadata) != UNKNOWN``.

    ``general_match``, when known, is the full match of the general-desc pattern.
    """
    general = metadata.general_desc
    valid = np.zeros(len(array), dtype=bool)
    if general is None or not general.national_number_pattern or len(array) == 0:
        return valid
    candidates = np.isin(lengths, general.possible_length) if len(general.possible_length) else None
    idx = np.flatnonzero(candidates) if candidates is not None else np.arange(len(array))
    if not len(idx):
        return valid
    general_ok = np.zeros(len(array), dtype=bool)
    if general_match is not None:
        general_ok[idx] = general_match[idx]
    else:
        general_ok[idx] = fullmatch(take(array, idx), general.national_number_pattern)
    for length in np.unique(lengths[general_ok]):
        pattern = _type_pattern(metadata, int(length))
        if pattern is None:
            continue
        rows = np.flatnonzero(general_ok & (lengths == length))
        valid[rows] = to_numpy(pc.match_substring_regex(take(array, rows), pattern))
    return valid


def is_valid_number(
    array: pa.Array,
    lengths: np.ndarray,
    country_code: int,
    known: PhoneMetadata | None = None,
    general_match: np.ndarray | None = None,
) -> np.ndarray:
    """``is_valid_number`` for national significant numbers of one country calling code.

    ``general_match`` is the general-desc full match under the metadata ``known``; it is reused
    when that is also the metadata that decides validity.
    """
    regions = COUNTRY_CODE_TO_REGION_CODE[country_code]
    if len(regions) == 1:
        metadata = metadata_for(country_code, regions[0])
        if metadata is None:
            return np.zeros(len(array), dtype=bool)
        reuse = general_match if metadata is known else None
        return _is_valid_for_metadata(array, lengths, metadata, reuse)
    # _region_code_for_number_from_list: the first region whose leading digits match (or, when it
    # has none, for which the number is valid) owns the number; validity is then decided with that
    # region's metadata alone. No owner -> invalid.
    valid = np.zeros(len(array), dtype=bool)
    remaining = np.arange(len(array))
    for region in regions:
        if not len(remaining):
            break
        metadata = region_metadata(region.upper())
        if metadata is None:
            continue
        sub = take(array, remaining)
        if metadata.leading_digits is not None:
            hit = prefix_match(sub, metadata.leading_digits)
            owned = remaining[hit]
            check = metadata_for(country_code, region.upper())
            if len(owned) and check is not None:
                valid[owned] = _is_valid_for_metadata(take(array, owned), lengths[owned], check)
        else:
            hit = _is_valid_for_metadata(sub, lengths[remaining], metadata)
            valid[remaining[hit]] = True
        remaining = remaining[~hit]
    return valid


def supported_region(region: str) -> bool:
    """Whether libphonenumber has metadata for ``region`` (an upper-case region code)."""
    return region in phonenumbers.SUPPORTED_REGIONS
