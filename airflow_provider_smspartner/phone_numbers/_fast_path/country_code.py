"""Step 3, first half: country calling code extraction, column-wise, as ``phonenumbers.parse`` does it.

``_maybe_extract_country_code``: "+" (or the default region's IDD) then the shortest known
country calling code; without either, the "starts with the default country code" heuristic, else a
national number of the default region; after a "+" with no known code, parse() retries without
the "+". The outcome is a list of :class:`~.national.Group`\\ s (numbers whose country calling code
and parsing metadata are known), or a reason code written into the result.
"""

from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
from phonenumbers import PhoneMetadata, ValidationResult
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

from airflow_provider_smspartner.phone_numbers._fast_path.columns import (
    byte_lengths,
    drop_first,
    fullmatch,
    prefix_match,
    starts_with,
    take,
)
from airflow_provider_smspartner.phone_numbers._fast_path.metadata import (
    MIN_LENGTH_FOR_NSN,
    general_pattern,
    number_length_check,
    region_metadata,
)
from airflow_provider_smspartner.phone_numbers._fast_path.national import Group, strip_national_prefix
from airflow_provider_smspartner.phone_numbers._fast_path.result import (
    INVALID_COUNTRY_CODE,
    TOO_SHORT,
    FastResult,
)

# libphonenumber's _MAX_LENGTH_COUNTRY_CODE.
_MAX_LENGTH_COUNTRY_CODE = 3
_LITERAL_DIGITS = re.compile(r"\d+")

# Country calling codes by value, for a numpy lookup of the first 1, 2 or 3 digits.
_IS_COUNTRY_CODE = np.zeros(1000, dtype=bool)
_IS_COUNTRY_CODE[list(COUNTRY_CODE_TO_REGION_CODE)] = True


def _leading_digits(array: pa.Array, count: int) -> np.ndarray:
    """The first ``count`` digits of each string (all have at least that many), as integers."""
    array = array.cast(pa.large_string())
    _, offsets_buffer, data_buffer = array.buffers()
    starts = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + len(array)]
    data = np.frombuffer(data_buffer, dtype=np.uint8)
    return data[starts[:, None] + np.arange(count)].astype(np.int64) - ord("0")


def _country_codes(digits: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """``_extract_country_code``: per digit string, ``(length of its code, 0 if none; the code)``.

    The code is the shortest known prefix of 1 to 3 digits; no code starts with 0.
    """
    first = _leading_digits(digits, _MAX_LENGTH_COUNTRY_CODE)
    one = first[:, 0]
    two = one * 10 + first[:, 1]
    three = two * 10 + first[:, 2]
    cc_len = np.select(
        [one == 0, _IS_COUNTRY_CODE[one], _IS_COUNTRY_CODE[two], _IS_COUNTRY_CODE[three]], [0, 1, 2, 3], 0
    )
    country_code = np.select([cc_len == 1, cc_len == 2, cc_len == 3], [one, two, three], 0)
    return cc_len, country_code


def _group_by_code(
    positions: np.ndarray, digits: pa.Array, country_code: np.ndarray, known: np.ndarray, groups: list[Group]
) -> None:
    """One group per country code for the rows ``known`` (those with a code), the code cut off."""
    # Sort by country code once; each code's numbers are then a zero-copy slice.
    order = known[np.argsort(country_code[known], kind="stable")]
    codes = country_code[order]
    sorted_digits = take(digits, order)
    sorted_positions = positions[order]
    boundaries = np.flatnonzero(np.diff(codes)) + 1
    for start, stop in zip(
        np.concatenate(([0], boundaries)).tolist(),
        np.concatenate((boundaries, [len(codes)])).tolist(),
        strict=True,
    ):
        cc = int(codes[start])
        groups.append(
            Group(
                positions=sorted_positions[start:stop],
                nsn=drop_first(sorted_digits.slice(start, stop - start), len(str(cc))),
                country_code=cc,
                # parse() switches to the metadata of the code's main region.
                metadata_region=COUNTRY_CODE_TO_REGION_CODE[cc][0],
            )
        )


def from_international(
    result: FastResult,
    positions: np.ndarray,
    digits: pa.Array,
    region: str,
    groups: list[Group],
    after_idd: bool,
) -> None:
    """Digits that followed a "+" (or the default region's IDD): extract the country code.

    Appends the numbers placed to ``groups``; writes the reason of those decided into ``result``.
    """
    if after_idd:
        # _maybe_extract_country_code: TOO_SHORT_AFTER_IDD when 2 digits or fewer remain.
        short = byte_lengths(digits) <= MIN_LENGTH_FOR_NSN
        result.reason[positions[short]] = TOO_SHORT
        keep = np.flatnonzero(~short)
        positions, digits = positions[keep], take(digits, keep)
    if not len(positions):
        return
    cc_len, country_code = _country_codes(digits)
    unknown = np.flatnonzero(cc_len == 0)
    if len(unknown):
        if after_idd:
            # (An IDD followed by 0 never gets here: the IDD is then not stripped.)
            result.reason[positions[unknown]] = INVALID_COUNTRY_CODE
        else:
            # parse() catches INVALID_COUNTRY_CODE after a "+" and retries without the "+".
            from_default_region(result, positions[unknown], take(digits, unknown), region, groups, retry=True)
    known = np.flatnonzero(cc_len > 0)
    if len(known):
        _group_by_code(positions, digits, country_code, known, groups)


def _after_idd(
    result: FastResult,
    positions: np.ndarray,
    digits: pa.Array,
    region: str,
    groups: list[Group],
    national: np.ndarray,
    idd: str,
) -> None:
    """The numbers that start with the default region's IDD ``idd``: placed as international ones
    (and unmarked in ``national``), or, for a regex IDD, left undecided."""
    if _LITERAL_DIGITS.fullmatch(idd):
        idx = np.flatnonzero(starts_with(digits, idd))
        after = drop_first(take(digits, idx), len(idd))
        # _parse_prefix_as_idd does not strip the IDD when the next digit is 0: those numbers
        # carry on below, IDD included, as numbers of the default region.
        real = np.flatnonzero(~starts_with(after, "0"))
        from_international(result, positions[idx[real]], take(after, real), region, groups, after_idd=True)
        national[idx[real]] = False
    else:
        # A regex IDD: its match length is not reproduced here; left undecided.
        national &= ~prefix_match(digits, idd)


def _with_default_country_code(
    positions: np.ndarray,
    digits: pa.Array,
    metadata: PhoneMetadata,
    groups: list[Group],
    national: np.ndarray,
) -> None:
    """The numbers (among ``national``) that start with the default country code: those that
    parse() reads with the code stripped are grouped (and unmarked in ``national``)."""
    country_code = int(metadata.country_code or 0)
    cc_text = str(country_code)
    idx = np.flatnonzero(national & starts_with(digits, cc_text))
    if not len(idx):
        return
    # _maybe_extract_country_code: strip the default country code when the number was not
    # viable with it and is without it, or when it was too long with it.
    full = take(digits, idx)
    stripped = strip_national_prefix(drop_first(full, len(cc_text)), metadata)
    general = general_pattern(metadata)
    take_it = (~fullmatch(full, general) & stripped.general) | (
        number_length_check(byte_lengths(full), metadata) == ValidationResult.TOO_LONG
    )
    chosen = np.flatnonzero(take_it & ~stripped.undecided)
    national[idx[stripped.undecided | take_it]] = False
    groups.append(
        Group(
            positions=positions[idx[chosen]],
            nsn=take(stripped.numbers, chosen),
            country_code=country_code,
            metadata_region=COUNTRY_CODE_TO_REGION_CODE[country_code][0],
        )
    )


def from_default_region(
    result: FastResult,
    positions: np.ndarray,
    digits: pa.Array,
    region: str,
    groups: list[Group],
    retry: bool,
) -> None:
    """Digits written without "+": IDD, default-country-code heuristic, or national number.

    With ``retry``, these are the digits after a "+" whose country code was not recognised:
    parse() runs the same extraction on them once more, and raises INVALID_COUNTRY_CODE if it
    finds no country code this time either.
    """
    metadata = region_metadata(region)
    if metadata is None:  # pragma: no cover - the caller validates the region
        return
    # Rows still to place; each test below takes only the rows it needs from ``digits``.
    national = np.ones(len(digits), dtype=bool)
    idd = metadata.international_prefix
    if idd:
        _after_idd(result, positions, digits, region, groups, national, idd)
    _with_default_country_code(positions, digits, metadata, groups, national)
    rows = np.flatnonzero(national)
    if retry:
        # No country code found on the second attempt either.
        result.reason[positions[rows]] = INVALID_COUNTRY_CODE
        return
    groups.append(
        Group(
            positions=positions[rows],
            nsn=take(digits, rows),
            country_code=int(metadata.country_code or 0),
            metadata_region=region,
        )
    )
