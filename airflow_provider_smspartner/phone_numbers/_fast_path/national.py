r"""Step 3, second half: from a number whose country calling code is known to validity and E.164.

Numbers come in :class:`Group`\ s (one country calling code, one parsing metadata). For each group,
as ``phonenumbers.parse`` then ``is_valid_number`` do: the national prefix is stripped
(``_maybe_strip_national_prefix_carrier_code``, kept only when the length stays plausible), the
national significant number's length is checked, then its validity, by metadata.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import PhoneMetadata, ValidationResult

from airflow_provider_smspartner.phone_numbers._fast_path.columns import (
    byte_lengths,
    drop_first,
    fullmatch,
    prefix_match,
    starts_with,
    take,
)
from airflow_provider_smspartner.phone_numbers._fast_path.metadata import (
    MAX_LENGTH_FOR_NSN,
    MIN_LENGTH_FOR_NSN,
    general_pattern,
    is_valid_number,
    metadata_for,
    number_length_check,
    region_metadata,
)
from airflow_provider_smspartner.phone_numbers._fast_path.result import (
    INVALID_NUMBER,
    TOO_LONG,
    TOO_SHORT,
    FastResult,
)

_LITERAL_ALTERNATION = re.compile(r"\d+(?:\|\d+)*")
_BAD_LENGTH = np.array(
    [ValidationResult.TOO_SHORT, ValidationResult.IS_POSSIBLE_LOCAL_ONLY, ValidationResult.INVALID_LENGTH]
)


try:
    from phonenumbers.phonenumberutil import (  # type: ignore[attr-defined]
        _maybe_strip_national_prefix_carrier_code as _STRIP_NATIONAL_PREFIX,
    )
except ImportError:  # pragma: no cover - depends on the phonenumbers release
    _STRIP_NATIONAL_PREFIX = None  # type: ignore[assignment]


@dataclass
class Stripped:
    """Result of :func:`strip_national_prefix` for an array of numbers."""

    numbers: pa.Array  # the numbers after (possible) stripping
    undecided: np.ndarray  # numbers the national prefix regex is not reproduced for
    general: np.ndarray  # general-desc pattern full match of ``numbers``
    general_before: np.ndarray  # same, of the numbers given


def strip_national_prefix(array: pa.Array, metadata: PhoneMetadata) -> Stripped:
    """``_maybe_strip_national_prefix_carrier_code(n, metadata)[1]`` for each number.

    Exact for a national prefix that is a digit literal or an alternation of digit literals with
    no transform rule (FR "0", US "1", GB "0|180020", ...). With any other prefix regex, the
    numbers it matches are marked undecided (carrier codes, transforms).
    Also returns the general-desc full matches, which the callers need next.
    """
    pattern = general_pattern(metadata)
    general_before = fullmatch(array, pattern)
    undecided = np.zeros(len(array), dtype=bool)
    prefix = metadata.national_prefix_for_parsing
    unchanged = Stripped(array, undecided, general_before, general_before)
    if not prefix or len(array) == 0:
        return unchanged
    if metadata.national_prefix_transform_rule or not _LITERAL_ALTERNATION.fullmatch(prefix):
        # Carrier codes and transform rules (AR, BR, AU, CN, JP, GG, ...): libphonenumber's own
        # function, one number at a time, for the numbers its prefix regex matches.
        matched = np.flatnonzero(prefix_match(array, prefix))
        if not len(matched):
            return unchanged
        if _STRIP_NATIONAL_PREFIX is None:  # pragma: no cover - depends on the phonenumbers release
            unchanged.undecided[matched] = True
            return unchanged
        values = [_STRIP_NATIONAL_PREFIX(v, metadata)[1] for v in take(array, matched).to_pylist()]
        mask = np.zeros(len(array), dtype=bool)
        mask[matched] = True
        replacement = pa.array(values, type=pa.large_string())
        numbers = pc.replace_with_mask(array.cast(pa.large_string()), pa.array(mask), replacement)
        general = general_before.copy()
        general[matched] = fullmatch(replacement, pattern)
        return Stripped(numbers, undecided, general, general_before)
    # re.match on "a|b|c" takes the first alternative that is a prefix.
    cut = np.zeros(len(array), dtype=np.int64)
    for alternative in prefix.split("|"):
        cut[(cut == 0) & starts_with(array, alternative)] = len(alternative)
    matched = np.flatnonzero(cut)
    if not len(matched):
        return unchanged
    stripped = array
    for size in np.unique(cut[matched]).tolist():
        stripped = pc.if_else(pa.array(cut == size), drop_first(array, size), stripped)
    general_after = fullmatch(take(stripped, matched), pattern)
    # The original is kept when it was viable and the stripped number is not.
    use = general_after | ~general_before[matched]
    replace = np.zeros(len(array), dtype=bool)
    replace[matched[use]] = True
    general = general_before.copy()
    general[matched[use]] = general_after[use]
    return Stripped(pc.if_else(pa.array(replace), stripped, array), undecided, general, general_before)


@dataclass
class Group:
    """Numbers whose country calling code and parsing metadata are known."""

    positions: np.ndarray
    nsn: pa.Array
    country_code: int
    metadata_region: str


# Groups below this size that share a country code and metadata are processed together: the
# per-group overhead then dominates, and concatenating them is cheap.
_SMALL_GROUP = 20_000


def merge_small_groups(groups: list[Group]) -> list[Group]:
    """``groups`` without the empty ones, the small ones of the same code and metadata merged."""
    merged: dict[tuple[int, str], list[Group]] = {}
    out = []
    for group in groups:
        if not len(group.positions):
            continue
        if len(group.positions) >= _SMALL_GROUP:
            out.append(group)
        else:
            merged.setdefault((group.country_code, group.metadata_region), []).append(group)
    for (country_code, metadata_region), parts in merged.items():
        out.append(
            parts[0]
            if len(parts) == 1
            else Group(
                positions=np.concatenate([p.positions for p in parts]),
                nsn=pa.concat_arrays([p.nsn.cast(pa.large_string()) for p in parts]),
                country_code=country_code,
                metadata_region=metadata_region,
            )
        )
    return out


def finish_group(result: FastResult, group: Group) -> None:
    """From the number after country-code extraction to validity and the E.164 string."""
    if group.metadata_region == "001":
        metadata = metadata_for(group.country_code, "001")
    else:
        metadata = region_metadata(group.metadata_region)
    if metadata is None or not len(group.positions):
        return
    positions, nsn = group.positions, group.nsn
    short = byte_lengths(nsn) < MIN_LENGTH_FOR_NSN
    if short.any():
        result.reason[positions[short]] = TOO_SHORT
        keep = np.flatnonzero(~short)
        positions, nsn = positions[keep], take(nsn, keep)
        if not len(positions):
            return
    stripped = strip_national_prefix(nsn, metadata)
    # parse() keeps the stripped number only if its length is plausible for the region.
    use_stripped = ~np.isin(number_length_check(byte_lengths(stripped.numbers), metadata), _BAD_LENGTH)
    if stripped.numbers is nsn or use_stripped.all():
        final = stripped.numbers
    else:
        final = pc.if_else(pa.array(use_stripped), stripped.numbers, nsn)
    general = np.where(use_stripped, stripped.general, stripped.general_before)
    lengths = byte_lengths(final)
    too_long = ~stripped.undecided & (lengths > MAX_LENGTH_FOR_NSN)
    result.reason[positions[too_long]] = TOO_LONG
    # The post-strip TOO_SHORT_NSN check cannot fire (stripping needs a plausible length); stay
    # safe and leave such values undecided anyway.
    keep = np.flatnonzero(~stripped.undecided & ~too_long & (lengths >= MIN_LENGTH_FOR_NSN))
    positions, final, lengths, general = positions[keep], take(final, keep), lengths[keep], general[keep]
    if not len(positions):
        return
    # national_significant_number() rebuilds these digits exactly, leading zeros included.
    valid = is_valid_number(final, lengths, group.country_code, metadata, general)
    result.reason[positions[~valid]] = INVALID_NUMBER
    rows = np.flatnonzero(valid)
    prefix = pa.scalar(f"+{group.country_code}", type=pa.large_string())
    separator = pa.scalar("", type=pa.large_string())
    e164 = pc.binary_join_element_wise(prefix, take(final, rows).cast(pa.large_string()), separator)
    result.set_valid(positions[rows], e164)
