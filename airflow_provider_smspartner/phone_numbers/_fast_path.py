"""Vectorised fast path of :func:`airflow_provider_smspartner.phone_numbers.normalize_phone_numbers`.

Internal module. It reproduces, column-wise, the exact steps that ``phonenumbers.parse`` +
``is_valid_number`` + ``format_number(E164)`` take, with libphonenumber's own metadata (regexes,
possible lengths, prefixes) and, for string handling, libphonenumber's own patterns (see
``PRIVATE_HELPERS``). Rule: decide only what is certain. A text that needs a step not reproduced
here is left *undecided*, and the caller hands it to ``phonenumbers.parse``.

The steps mirror ``phonenumbers/phonenumberutil.py``:

* text -> number (``_build_national_number_for_parsing``, ``_is_viable_phone_number``,
  ``_maybe_strip_extension``, ``_normalize``): for texts made of digits, the ASCII separators of
  ``_VALID_PUNCTUATION`` and one leading ``+`` (most of the data), these steps reduce to "keep
  the digits"; no extension, second number or RFC 3966 part can be present, since their markers
  are not in that alphabet. Other ASCII texts run through the same steps in RE2 with
  libphonenumber's own patterns (:func:`rescue_many`); the rest goes to ``phonenumbers.parse``.
  From then on parse() only uses the digits and whether a "+" came first.
* ``_maybe_extract_country_code``: ``+`` / IDD stripping, shortest-prefix country-code lookup,
  the "starts with the default country code" heuristic, and the retry without "+".
* ``_maybe_strip_national_prefix_carrier_code`` and the ``_test_number_length`` check after it.
* ``_region_code_for_number_from_list`` / ``is_valid_number_for_region`` / ``_number_type_helper``.

Strings are pyarrow arrays (pyarrow is what pandas' string dtype stores them in; it is a
dependency of the provider) and regexes run in pyarrow's RE2. The metadata patterns contain no
look-around or back-reference and are only applied to ASCII digit strings, so RE2 and Python's
``re`` give the same answers: full match and "does a prefix match" are properties of the
regular language, not of the engine.

The corpus test (tests/phone_numbers/test_phone_numbers.py) compares every row with the
per-value loop.
"""

from __future__ import annotations

import os
import re
import string
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc
from phonenumbers import PhoneMetadata, PhoneNumberDesc, ValidationResult
from phonenumbers.phonenumberutil import COUNTRY_CODE_TO_REGION_CODE

# Private names of phonenumbers.phonenumberutil that the fast path still uses, each because it
# buys 5 % or more of the 1,000,000-value benchmark's time (measured; see benchmarks/README.md):
# * _maybe_strip_national_prefix_carrier_code: national prefixes with carrier codes or transform
#   rules (AR, AU, BR, CN, JP, GG, ...), per number, instead of a whole phonenumbers.parse;
# * _VALID_PHONE_NUMBER_PATTERN, _EXTN_PATTERNS_FOR_PARSING: the column-wise rescue of ASCII texts
#   with letters, extensions or leading text (rescue_many).
# Each import falls back to phonenumbers.parse (exact, slower) if a release renames it, and
# tests/phone_numbers/test_fast_path.py fails loudly when that happens. Private names may change
# in any release, so the dependency is pinned below the next major version (pyproject.toml),
# which is admitted only once the tests pass on it.
PRIVATE_HELPERS = (
    "_maybe_strip_national_prefix_carrier_code",
    "_VALID_PHONE_NUMBER_PATTERN",
    "_EXTN_PATTERNS_FOR_PARSING",
)

# Reason codes, shared with phone_numbers.py. VALID means "phone_e164 is set, reason is NA".
UNDECIDED = -1
VALID = 0
EMPTY = 1
NOT_A_NUMBER = 2
TOO_SHORT = 3
TOO_LONG = 4
INVALID_COUNTRY_CODE = 5
INVALID_NUMBER = 6

# Constants of libphonenumber (phonenumberutil.py) that the fast path relies on.
_MIN_LENGTH_FOR_NSN = 2
_MAX_LENGTH_FOR_NSN = 17
_MAX_LENGTH_COUNTRY_CODE = 3
# libphonenumber rejects inputs over 250 characters (_MAX_INPUT_STRING_LENGTH) before anything
# else; texts over 100 characters are simply left to it, so that check never matters here.
_MAX_FAST_TEXT_LENGTH = 100

# Non-ASCII characters that can be rewritten to ASCII without changing what libphonenumber does:
# * separators listed in _VALID_PUNCTUATION: they behave exactly like a space (skipped before
#   the number, allowed inside it, dropped after it). "x" and the tildes are excluded because
#   they also act as extension labels;
# * the full-width plus, which is in _PLUS_CHARS just like "+";
# * decimal digits (category Nd: matched by "\d", converted by normalize_digits_only) of the
#   scripts met in contact data.
UNICODE_SEPARATORS = (
    "\u00a0\u00ad\u200b\u2060\u3000"  # no-break space, soft hyphen, zero-width space, word joiner
    "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\u30fc"  # hyphens, dashes, minus, prolonged sound
    "\uff08\uff09\uff0d\uff0e\uff0f\uff3b\uff3d"  # full-width ( ) - . / [ ]
)
_DIGIT_BLOCK_STARTS = (0x0660, 0x06F0, 0x0966, 0x09E6, 0xFF10)  # Arabic-Indic, Persian,
# Devanagari, Bengali, full-width.


def _build_translation() -> dict[int, str]:
    table: dict[int, str] = {ord(c): " " for c in UNICODE_SEPARATORS}
    table[0xFF0B] = "+"
    for start in _DIGIT_BLOCK_STARTS:
        for offset in range(10):
            char = chr(start + offset)
            # Only real decimal digits, which Python's "\d" matches and unicodedata maps to a value.
            if unicodedata.category(char) == "Nd" and re.match(r"\d", char):
                table[ord(char)] = str(unicodedata.digit(char))
    return table


TRANSLATION = _build_translation()

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
_FINISH_THREADS = min(4, os.cpu_count() or 1)
_LITERAL_DIGITS = re.compile(r"\d+")
_LITERAL_ALTERNATION = re.compile(r"\d+(?:\|\d+)*")
_BAD_LENGTH = np.array(
    [ValidationResult.TOO_SHORT, ValidationResult.IS_POSSIBLE_LOCAL_ONLY, ValidationResult.INVALID_LENGTH]
)


@dataclass
class FastResult:
    """Outcome of the fast path over an array of unique texts.

    ``reason`` holds one code per text (``UNDECIDED`` for the texts left to libphonenumber);
    ``e164_positions`` / ``e164_values`` hold the E.164 string of every ``VALID`` text.
    """

    reason: np.ndarray
    e164_positions: list[np.ndarray] = field(default_factory=list)
    e164_values: list[pa.Array] = field(default_factory=list)
    # Groups are finished on several threads: positions and values must be appended as a pair.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def set_valid(self, positions: np.ndarray, values: pa.Array) -> None:
        if len(positions):
            self.reason[positions] = VALID
            with self._lock:
                self.e164_positions.append(positions)
                self.e164_values.append(values)


# ---------------------------------------------------------------------------------------------
# Metadata helpers. PhoneMetadata objects are loaded once and never change, but are not
# hashable: caches are keyed by (region id, country code).
# ---------------------------------------------------------------------------------------------

_METADATA: dict[tuple[int, str], PhoneMetadata | None] = {}
_LENGTH_TABLES: dict[tuple[str, int], np.ndarray] = {}
_TYPE_PATTERNS: dict[tuple[str, int, int], str | None] = {}


def _metadata(country_code: int, region: str) -> PhoneMetadata | None:
    """``metadata_for_region_or_calling_code`` (non-geographic entities use region "001")."""
    key = (country_code, region)
    if key not in _METADATA:
        _METADATA[key] = PhoneMetadata.metadata_for_region_or_calling_code(country_code, region)
    return _METADATA[key]


def _region_metadata(region: str) -> PhoneMetadata | None:
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


def _general_pattern(metadata: PhoneMetadata) -> str | None:
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


def _test_number_length(lengths: np.ndarray, metadata: PhoneMetadata) -> np.ndarray:
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


# ---------------------------------------------------------------------------------------------
# Column helpers over pyarrow arrays of ASCII digit strings.
# ---------------------------------------------------------------------------------------------


def _np(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    return np.asarray(array.to_numpy(zero_copy_only=False))


def _take(array: pa.Array, idx: np.ndarray) -> pa.Array:
    # Most index arrays come from np.flatnonzero; when one keeps every row, skip the copy.
    n = len(idx)
    if n == len(array) and (n < 2 or (idx[0] == 0 and idx[-1] == n - 1 and bool(np.all(idx[1:] > idx[:-1])))):
        return array
    return array.take(pa.array(idx, type=pa.int64()))


def _lengths(array: pa.Array) -> np.ndarray:
    # Only used on ASCII digit strings, where bytes are characters (and reading the offsets is
    # much cheaper than counting UTF-8 code points).
    return _np(pc.binary_length(array)).astype(np.int64)


def _fullmatch(array: pa.Array, pattern: str | None) -> np.ndarray:
    """``_match_national_number(n, desc, False)``: full match; False when there is no pattern."""
    if not pattern or len(array) == 0:
        return np.zeros(len(array), dtype=bool)
    return _np(pc.match_substring_regex(array, f"^(?:{pattern})$"))


def _prefix_match(array: pa.Array, pattern: str) -> np.ndarray:
    """``re.match(pattern, n) is not None``."""
    if len(array) == 0:
        return np.zeros(0, dtype=bool)
    return _np(pc.match_substring_regex(array, f"^(?:{pattern})"))


def _starts_with(array: pa.Array, prefix: str) -> np.ndarray:
    if len(array) == 0:
        return np.zeros(0, dtype=bool)
    return _np(pc.starts_with(array, pattern=prefix))


def _drop(array: pa.Array, count: int) -> pa.Array:
    return pc.utf8_slice_codeunits(array, start=count)


# Byte tables for _scan_ascii. The accepted alphabet is the digits, the ASCII separators of
# libphonenumber's _VALID_PUNCTUATION, and "+".
_SEPARATORS = b" ().-/"
_DIGIT_BYTES = b"0123456789"
_DIGIT_FLAGS = bytes(1 if byte in _DIGIT_BYTES else 0 for byte in range(256))
_NOT_DIGIT_BYTES = bytes(byte for byte in range(256) if byte not in _DIGIT_BYTES)
_PLUS_FLAG, _OTHER_FLAG = 1, 2
_SHAPE_FLAGS = bytes(
    0 if byte in _DIGIT_BYTES or byte in _SEPARATORS else _PLUS_FLAG if byte == ord("+") else _OTHER_FLAG
    for byte in range(256)
)
_PLUS_SHAPE = r"^[ ().\-/]*\+[0-9 ().\-/]*$"


def _scan_ascii(array: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Array, np.ndarray]:
    r"""One numpy pass over the bytes of short ASCII strings (at most 255 bytes each).

    :return: per string, whether it has the accepted shape ``[sep]* "+"? [digit|sep]*``
        (regex ``^[ ().\-/]*\+?[0-9 ().\-/]*$``), whether it has a "+", its digits only (an
        Arrow array) and how many digits it has.
    """
    array = array.cast(pa.large_string())
    n = len(array)
    if array.null_count:  # pragma: no cover - the fast path never holds nulls
        raise ValueError("unexpected missing value")
    _, offsets_buffer, data_buffer = array.buffers()
    offsets = np.frombuffer(offsets_buffer, dtype=np.int64)[array.offset : array.offset + n + 1]
    data = np.frombuffer(data_buffer, dtype=np.uint8) if data_buffer is not None else np.zeros(0, np.uint8)
    segment = data[offsets[0] : offsets[-1]]
    starts = offsets[:-1] - offsets[0]
    sizes = offsets[1:] - offsets[:-1]
    if n and int(sizes.max()) > 255:  # pragma: no cover - callers pass short strings only
        raise ValueError("_scan_ascii counts in uint8: strings must be at most 255 bytes")
    raw = segment.tobytes()
    # bytes.translate is a C-speed 256-entry lookup (numpy fancy indexing would widen the
    # indices to 64 bits first): one pass for digit flags, one for other/"+" flags.
    digit = np.frombuffer(raw.translate(_DIGIT_FLAGS), dtype=np.uint8)
    flags = np.frombuffer(raw.translate(_SHAPE_FLAGS), dtype=np.uint8)
    nonempty = np.flatnonzero(sizes)
    nonempty_starts = starts[nonempty]
    # Per-string reductions with reduceat over the non-empty strings (their starts strictly
    # increase, so each range ends where the next non-empty string begins). The digit count
    # stays in uint8 (strings are at most 255 bytes) to keep the temporaries byte-sized.
    digit_count = np.zeros(n, dtype=np.int64)
    string_flags = np.zeros(n, dtype=np.uint8)
    if len(nonempty):
        digit_count[nonempty] = np.add.reduceat(digit, nonempty_starts, dtype=np.uint8)
        string_flags[nonempty] = np.bitwise_or.reduceat(flags, nonempty_starts)
    has_plus = (string_flags & _PLUS_FLAG) > 0
    shape_ok = (string_flags & _OTHER_FLAG) == 0
    new_offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(digit_count, out=new_offsets[1:])
    digits = pa.LargeStringArray.from_buffers(
        n, pa.py_buffer(new_offsets), pa.py_buffer(raw.translate(None, _NOT_DIGIT_BYTES))
    )
    # With a "+": it must be the only one, and come before the first digit.
    with_plus = np.flatnonzero(shape_ok & has_plus)
    if len(with_plus):
        shape_ok[with_plus] = _np(pc.match_substring_regex(_take(array, with_plus), _PLUS_SHAPE))
    return shape_ok, has_plus, digits, digit_count


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
        general_ok[idx] = _fullmatch(_take(array, idx), general.national_number_pattern)
    for length in np.unique(lengths[general_ok]):
        pattern = _type_pattern(metadata, int(length))
        if pattern is None:
            continue
        rows = np.flatnonzero(general_ok & (lengths == length))
        valid[rows] = _np(pc.match_substring_regex(_take(array, rows), pattern))
    return valid


def _is_valid_number(
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
        metadata = _metadata(country_code, regions[0])
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
        metadata = _region_metadata(region.upper())
        if metadata is None:
            continue
        sub = _take(array, remaining)
        if metadata.leading_digits is not None:
            hit = _prefix_match(sub, metadata.leading_digits)
            owned = remaining[hit]
            check = _metadata(country_code, region.upper())
            if len(owned) and check is not None:
                valid[owned] = _is_valid_for_metadata(_take(array, owned), lengths[owned], check)
        else:
            hit = _is_valid_for_metadata(sub, lengths[remaining], metadata)
            valid[remaining[hit]] = True
        remaining = remaining[~hit]
    return valid


try:
    from phonenumbers.phonenumberutil import (  # type: ignore[attr-defined]
        _maybe_strip_national_prefix_carrier_code as _STRIP_NATIONAL_PREFIX,
    )
except ImportError:  # pragma: no cover - depends on the phonenumbers release
    _STRIP_NATIONAL_PREFIX = None  # type: ignore[assignment]


@dataclass
class _Stripped:
    """Result of :func:`_strip_national_prefix` for an array of numbers."""

    numbers: pa.Array  # the numbers after (possible) stripping
    undecided: np.ndarray  # numbers the national prefix regex is not reproduced for
    general: np.ndarray  # general-desc pattern full match of ``numbers``
    general_before: np.ndarray  # same, of the numbers given


def _strip_national_prefix(array: pa.Array, metadata: PhoneMetadata) -> _Stripped:
    """``_maybe_strip_national_prefix_carrier_code(n, metadata)[1]`` for each number.

    Exact for a national prefix that is a digit literal or an alternation of digit literals with
    no transform rule (FR "0", US "1", GB "0|180020", ...). With any other prefix regex, the
    numbers it matches are marked undecided (carrier codes, transforms).
    Also returns the general-desc full matches, which the callers need next.
    """
    general_pattern = _general_pattern(metadata)
    general_before = _fullmatch(array, general_pattern)
    undecided = np.zeros(len(array), dtype=bool)
    prefix = metadata.national_prefix_for_parsing
    unchanged = _Stripped(array, undecided, general_before, general_before)
    if not prefix or len(array) == 0:
        return unchanged
    if metadata.national_prefix_transform_rule or not _LITERAL_ALTERNATION.fullmatch(prefix):
        # Carrier codes and transform rules (AR, BR, AU, CN, JP, GG, ...): libphonenumber's own
        # function, one number at a time, for the numbers its prefix regex matches.
        matched = np.flatnonzero(_prefix_match(array, prefix))
        if not len(matched):
            return unchanged
        if _STRIP_NATIONAL_PREFIX is None:  # pragma: no cover - depends on the phonenumbers release
            unchanged.undecided[matched] = True
            return unchanged
        values = [_STRIP_NATIONAL_PREFIX(v, metadata)[1] for v in _take(array, matched).to_pylist()]
        mask = np.zeros(len(array), dtype=bool)
        mask[matched] = True
        replacement = pa.array(values, type=pa.large_string())
        numbers = pc.replace_with_mask(array.cast(pa.large_string()), pa.array(mask), replacement)
        general = general_before.copy()
        general[matched] = _fullmatch(replacement, general_pattern)
        return _Stripped(numbers, undecided, general, general_before)
    # re.match on "a|b|c" takes the first alternative that is a prefix.
    cut = np.zeros(len(array), dtype=np.int64)
    for alternative in prefix.split("|"):
        cut[(cut == 0) & _starts_with(array, alternative)] = len(alternative)
    matched = np.flatnonzero(cut)
    if not len(matched):
        return unchanged
    stripped = array
    for size in np.unique(cut[matched]).tolist():
        stripped = pc.if_else(pa.array(cut == size), _drop(array, size), stripped)
    general_after = _fullmatch(_take(stripped, matched), general_pattern)
    # The original is kept when it was viable and the stripped number is not.
    use = general_after | ~general_before[matched]
    replace = np.zeros(len(array), dtype=bool)
    replace[matched[use]] = True
    general = general_before.copy()
    general[matched[use]] = general_after[use]
    return _Stripped(pc.if_else(pa.array(replace), stripped, array), undecided, general, general_before)


# ---------------------------------------------------------------------------------------------
# Rescue: libphonenumber's own first parsing steps, column-wise, to reduce an unusual ASCII text
# ("Tel: 06…", "… ext. 12", letters) to "+digits" / "digits" for a second vectorised pass.
#
# phonenumbers.parse(text) checks the length, extracts the number from the text (skips what
# precedes the first "+" or digit, drops trailing punctuation, cuts a second number, handles
# RFC 3966), checks the result is viable, strips an extension, and from then on only uses
# (a) whether the rest starts with "+" and (b) its normalised digits (vanity letters mapped to
# digits). So parse(text) and parse(candidate) agree, with candidate = "+" + digits or digits.
#
# These steps run in RE2 with libphonenumber's own viability and extension patterns (private
# names, see PRIVATE_HELPERS; if a release renames them, the rescue is skipped and every such
# text goes through phonenumbers.parse). On ASCII texts without a newline, Python's "\d" and
# "\w" are ASCII-only like RE2's, "." and "$" behave the same, case-insensitive matching of ASCII
# letters agrees, and a leftmost search (Python) is a leftmost match (RE2), so the patterns give
# the same answers in pyarrow.
#
# Left to phonenumbers.parse, because these steps are not reproduced here (they are rare, and
# reproducing them bought under 5 % of the benchmark's time; see benchmarks/README.md): texts
# that are still non-ASCII after step 1 of fast_normalize, texts with a newline, texts over
# _MAX_FAST_TEXT_LENGTH characters, RFC 3966 texts with a phone-context or isub parameter, and
# texts where an "x" follows a "/" or "\" with no digit in between (libphonenumber cuts a second
# number at "/ x").
# ---------------------------------------------------------------------------------------------
try:
    from phonenumbers.phonenumberutil import (  # type: ignore[attr-defined]
        _EXTN_PATTERNS_FOR_PARSING,
        _VALID_PHONE_NUMBER_PATTERN,
    )

    _RESCUE = True
except ImportError:  # pragma: no cover - depends on the phonenumbers release
    _RESCUE = False

# A superset of the texts the rescue does not reproduce (see above); RE2 syntax.
_NOT_RESCUED = r"\n|(?i:phone-context|isub)|[/\\][^0-9]*(?i:x)"
_BLANK_ASCII = "^[ \t\x0b\x0c\r\x1c-\x1f]*$"  # what str.strip() removes, in ASCII
_LEADING_JUNK = "^[^+0-9]*"  # before _VALID_START_CHAR ("[+\uFF0B\d]": plus signs, digits)
_TRAILING_JUNK = "[^#A-Za-z0-9]+$"  # _UNWANTED_END_CHARS ("(?:_|[^#\w])+$") in ASCII
_NOT_DIGIT = "[^0-9]"
_VANITY = "(?:.*?[A-Za-z]){3}"  # _VALID_ALPHA_PHONE_PATTERN: 3 letters or more
# Vanity numbers: libphonenumber maps each letter to its keypad digit (the public
# convert_alpha_characters_in_number does the same mapping, one letter at a time).
_KEYPAD = str.maketrans({c: phonenumbers.convert_alpha_characters_in_number(c) for c in string.ascii_letters})


def rescue_many(texts: pa.Array) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """libphonenumber's string-level steps on many texts (blank texts included: reason ``EMPTY``).

    :return: ``(reasons, candidate_positions, candidates)``: one reason per text (``UNDECIDED``
        when there is a candidate or when only ``phonenumbers.parse`` can tell), and the
        candidates with their positions.
    """
    n = len(texts)
    if not _RESCUE or n == 0:
        return np.full(n, UNDECIDED, dtype=np.int8), np.zeros(0, dtype=np.int64), []
    texts = texts.cast(pa.large_string())
    idx = np.flatnonzero(
        _np(pc.string_is_ascii(texts))
        & (_np(pc.binary_length(texts)) <= _MAX_FAST_TEXT_LENGTH)
        & ~_np(pc.match_substring_regex(texts, _NOT_RESCUED))
    )
    reasons = np.full(n, UNDECIDED, dtype=np.int8)
    if not len(idx):
        return reasons, np.zeros(0, dtype=np.int64), []
    sub_reasons, sub_positions, candidates = _rescue_ascii(_take(texts, idx))
    reasons[idx] = sub_reasons
    return reasons, idx[sub_positions], candidates


def _rescue_ascii(texts: pa.Array) -> tuple[np.ndarray, np.ndarray, list[str]]:
    n = len(texts)
    reasons = np.full(n, UNDECIDED, dtype=np.int8)
    blank = _np(pc.match_substring_regex(texts, _BLANK_ASCII))
    reasons[blank] = EMPTY
    # _extract_possible_number: from the first "+" or digit, without trailing punctuation (no
    # second number: those texts were left to phonenumbers.parse).
    number = pc.replace_substring_regex(texts, _LEADING_JUNK, "", max_replacements=1)
    number = pc.replace_substring_regex(number, _TRAILING_JUNK, "", max_replacements=1)
    viable = _viable(number)
    reasons[~blank & ~viable] = NOT_A_NUMBER
    idx = np.flatnonzero(~blank & viable)
    number = _take(number, idx)
    # _maybe_strip_extension: the leftmost extension, kept only if what precedes it is viable.
    base = pc.replace_substring_regex(
        number, f"(?i)(?:{_EXTN_PATTERNS_FOR_PARSING})$", "", max_replacements=1
    )
    stripped = _np(pc.binary_length(base)) < _np(pc.binary_length(number))
    use_base = np.zeros(len(idx), dtype=bool)
    rows = np.flatnonzero(stripped)
    use_base[rows] = _viable(_take(base, rows))
    number = pc.if_else(pa.array(use_base), base, number)
    # _maybe_strip_i18n_prefix_and_normalize: leading "+" signs, then the digits, with the
    # letters of vanity numbers mapped to digits first.
    plus = _starts_with(number, "+")
    rest = pc.replace_substring_regex(number, "^\\++", "", max_replacements=1)
    vanity = _prefix_match(rest, _VANITY)
    if vanity.any():
        mapped = [text.translate(_KEYPAD) for text in _take(rest, np.flatnonzero(vanity)).to_pylist()]
        rest = pc.replace_with_mask(rest, pa.array(vanity), pa.array(mapped, type=pa.large_string()))
    digits = pc.replace_substring_regex(rest, _NOT_DIGIT, "").to_pylist()
    candidates = [("+" + d) if p else d for d, p in zip(digits, plus.tolist(), strict=True)]
    return reasons, idx, candidates


def _viable(numbers: pa.Array) -> np.ndarray:
    """``_is_viable_phone_number``: at least 2 characters and the viable-number pattern."""
    if len(numbers) == 0:
        return np.zeros(0, dtype=bool)
    pattern = f"^(?:{_VALID_PHONE_NUMBER_PATTERN.pattern})$"
    return (_np(pc.binary_length(numbers)) >= 2) & _np(
        pc.match_substring_regex(numbers, pattern, ignore_case=True)
    )


# ---------------------------------------------------------------------------------------------
# Main entry point.
# ---------------------------------------------------------------------------------------------


def fast_normalize(texts: pa.Array, region: str) -> FastResult:
    """Decide as many ``texts`` as possible exactly like libphonenumber.

    1. Texts made of digits, ASCII separators and a leading "+" (after rewriting harmless
       Unicode digits and separators) are reduced to their digits at once.
    2. The other texts go through libphonenumber's string-level steps (:func:`rescue_many`),
       which reduce most of them to "+digits" / "digits" as well, or decide them (blank, not a
       number); the few it does not reproduce are left undecided.
    3. All digit strings then go through country-code extraction, national-prefix stripping and
       validation, column-wise, grouped by country calling code.

    :param texts: unique, non-null strings.
    :param region: a validated, upper-case default region.
    :return: a :class:`FastResult`; texts whose reason is ``UNDECIDED`` must go to libphonenumber.
    """
    n = len(texts)
    result = FastResult(reason=np.full(n, UNDECIDED, dtype=np.int8))
    if n == 0:
        return result
    texts = texts.cast(pa.large_string())
    placed = np.zeros(n, dtype=bool)
    batches: list[_Batch] = []

    # 1. Byte length bounds the character length; long texts go to step 2.
    short = np.flatnonzero(_np(pc.binary_length(texts)) <= _MAX_FAST_TEXT_LENGTH)
    s = _take(texts, short)
    batches.append(_batch(short, s))
    non_ascii = np.flatnonzero(~_np(pc.string_is_ascii(s)))
    if len(non_ascii):
        translated = pa.array(
            [t.translate(TRANSLATION) for t in _take(s, non_ascii).to_pylist()], type=pa.large_string()
        )
        now_ascii = np.flatnonzero(_np(pc.string_is_ascii(translated)))
        batches.append(_batch(short[non_ascii[now_ascii]], _take(translated, now_ascii)))
    for batch in batches:
        placed[batch.positions] = True

    # 2. Everything else.
    rest = np.flatnonzero(~placed)
    if len(rest):
        reasons, found, candidates = rescue_many(_take(texts, rest))
        result.reason[rest] = reasons
        if candidates:
            batches.append(_batch(rest[found], pa.array(candidates, type=pa.large_string())))

    # 3. Country calling code, national number, validity.
    groups: list[_Group] = []
    for batch in batches:
        plus = np.flatnonzero(batch.has_plus)
        if len(plus):
            _from_international(
                result, batch.positions[plus], _take(batch.digits, plus), region, groups, after_idd=False
            )
        national = np.flatnonzero(~batch.has_plus)
        if len(national):
            _from_default_region(
                result, batch.positions[national], _take(batch.digits, national), region, groups, retry=False
            )
    # Groups touch disjoint positions and spend their time in Arrow's regex kernels, which release
    # the GIL: finishing them on a few threads uses the other cores.
    merged = _merge_small_groups(groups)
    if len(merged) > 1 and _FINISH_THREADS > 1:
        with ThreadPoolExecutor(max_workers=_FINISH_THREADS) as pool:
            for _ in pool.map(lambda group: _finish(result, group), merged):
                pass
    else:
        for group in merged:
            _finish(result, group)
    return result


@dataclass
class _Batch:
    """Texts of the accepted shape: their positions, whether they have a "+", their digits."""

    positions: np.ndarray
    has_plus: np.ndarray
    digits: pa.Array


def _batch(positions: np.ndarray, texts: pa.Array) -> _Batch:
    shape_ok, has_plus, digits, digit_count = _scan_ascii(texts)
    # Fewer than 3 digits: viability (two bare digits, or 3+ digits with punctuation) needs a
    # closer look, in step 2.
    keep = np.flatnonzero(shape_ok & (digit_count >= 3))
    return _Batch(positions[keep], has_plus[keep], _take(digits, keep))


@dataclass
class _Group:
    """Numbers whose country calling code and parsing metadata are known."""

    positions: np.ndarray
    nsn: pa.Array
    country_code: int
    metadata_region: str


# Groups below this size that share a country code and metadata are processed together: the
# per-group overhead then dominates, and concatenating them is cheap.
_SMALL_GROUP = 20_000


def _merge_small_groups(groups: list[_Group]) -> list[_Group]:
    merged: dict[tuple[int, str], list[_Group]] = {}
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
            else _Group(
                positions=np.concatenate([p.positions for p in parts]),
                nsn=pa.concat_arrays([p.nsn.cast(pa.large_string()) for p in parts]),
                country_code=country_code,
                metadata_region=metadata_region,
            )
        )
    return out


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


def _from_international(
    result: FastResult,
    positions: np.ndarray,
    digits: pa.Array,
    region: str,
    groups: list[_Group],
    after_idd: bool,
) -> None:
    """Digits that followed a "+" (or the default region's IDD): extract the country code."""
    if after_idd:
        # _maybe_extract_country_code: TOO_SHORT_AFTER_IDD when 2 digits or fewer remain.
        short = _lengths(digits) <= _MIN_LENGTH_FOR_NSN
        result.reason[positions[short]] = TOO_SHORT
        keep = np.flatnonzero(~short)
        positions, digits = positions[keep], _take(digits, keep)
    if not len(positions):
        return
    # _extract_country_code: the shortest known prefix of 1 to 3 digits; no code starts with 0.
    first = _leading_digits(digits, _MAX_LENGTH_COUNTRY_CODE)
    one = first[:, 0]
    two = one * 10 + first[:, 1]
    three = two * 10 + first[:, 2]
    cc_len = np.select(
        [one == 0, _IS_COUNTRY_CODE[one], _IS_COUNTRY_CODE[two], _IS_COUNTRY_CODE[three]], [0, 1, 2, 3], 0
    )
    country_code = np.select([cc_len == 1, cc_len == 2, cc_len == 3], [one, two, three], 0)
    unknown = np.flatnonzero(cc_len == 0)
    if len(unknown):
        if after_idd:
            # (An IDD followed by 0 never gets here: the IDD is then not stripped.)
            result.reason[positions[unknown]] = INVALID_COUNTRY_CODE
        else:
            # parse() catches INVALID_COUNTRY_CODE after a "+" and retries without the "+".
            _from_default_region(
                result, positions[unknown], _take(digits, unknown), region, groups, retry=True
            )
    known = np.flatnonzero(cc_len > 0)
    if not len(known):
        return
    # Sort by country code once; each code's numbers are then a zero-copy slice.
    order = known[np.argsort(country_code[known], kind="stable")]
    codes = country_code[order]
    sorted_digits = _take(digits, order)
    sorted_positions = positions[order]
    boundaries = np.flatnonzero(np.diff(codes)) + 1
    for start, stop in zip(
        np.concatenate(([0], boundaries)).tolist(),
        np.concatenate((boundaries, [len(codes)])).tolist(),
        strict=True,
    ):
        cc = int(codes[start])
        groups.append(
            _Group(
                positions=sorted_positions[start:stop],
                nsn=_drop(sorted_digits.slice(start, stop - start), len(str(cc))),
                country_code=cc,
                # parse() switches to the metadata of the code's main region.
                metadata_region=COUNTRY_CODE_TO_REGION_CODE[cc][0],
            )
        )


def _from_default_region(
    result: FastResult,
    positions: np.ndarray,
    digits: pa.Array,
    region: str,
    groups: list[_Group],
    retry: bool,
) -> None:
    """Digits written without "+": IDD, default-country-code heuristic, or national number.

    With ``retry``, these are the digits after a "+" whose country code was not recognised:
    parse() runs the same extraction on them once more, and raises INVALID_COUNTRY_CODE if it
    finds no country code this time either.
    """
    metadata = _region_metadata(region)
    if metadata is None:  # pragma: no cover - the caller validates the region
        return
    # Rows still to place; each test below takes only the rows it needs from ``digits``.
    national = np.ones(len(digits), dtype=bool)
    idd = metadata.international_prefix
    if idd:
        if _LITERAL_DIGITS.fullmatch(idd):
            idx = np.flatnonzero(_starts_with(digits, idd))
            after = _drop(_take(digits, idx), len(idd))
            # _parse_prefix_as_idd does not strip the IDD when the next digit is 0: those numbers
            # carry on below, IDD included, as numbers of the default region.
            real = np.flatnonzero(~_starts_with(after, "0"))
            _from_international(
                result, positions[idx[real]], _take(after, real), region, groups, after_idd=True
            )
            national[idx[real]] = False
        else:
            # A regex IDD: its match length is not reproduced here; left undecided.
            national &= ~_prefix_match(digits, idd)
    country_code = int(metadata.country_code or 0)
    cc_text = str(country_code)
    idx = np.flatnonzero(national & _starts_with(digits, cc_text))
    if len(idx):
        # _maybe_extract_country_code: strip the default country code when the number was not
        # viable with it and is without it, or when it was too long with it.
        full = _take(digits, idx)
        stripped = _strip_national_prefix(_drop(full, len(cc_text)), metadata)
        general = _general_pattern(metadata)
        take_it = (~_fullmatch(full, general) & stripped.general) | (
            _test_number_length(_lengths(full), metadata) == ValidationResult.TOO_LONG
        )
        chosen = np.flatnonzero(take_it & ~stripped.undecided)
        national[idx[stripped.undecided | take_it]] = False
        groups.append(
            _Group(
                positions=positions[idx[chosen]],
                nsn=_take(stripped.numbers, chosen),
                country_code=country_code,
                metadata_region=COUNTRY_CODE_TO_REGION_CODE[country_code][0],
            )
        )
    rows = np.flatnonzero(national)
    if retry:
        # No country code found on the second attempt either.
        result.reason[positions[rows]] = INVALID_COUNTRY_CODE
        return
    groups.append(
        _Group(
            positions=positions[rows],
            nsn=_take(digits, rows),
            country_code=country_code,
            metadata_region=region,
        )
    )


def _finish(result: FastResult, group: _Group) -> None:
    """From the number after country-code extraction to validity and the E.164 string."""
    if group.metadata_region == "001":
        metadata = _metadata(group.country_code, "001")
    else:
        metadata = _region_metadata(group.metadata_region)
    if metadata is None or not len(group.positions):
        return
    positions, nsn = group.positions, group.nsn
    short = _lengths(nsn) < _MIN_LENGTH_FOR_NSN
    if short.any():
        result.reason[positions[short]] = TOO_SHORT
        keep = np.flatnonzero(~short)
        positions, nsn = positions[keep], _take(nsn, keep)
        if not len(positions):
            return
    stripped = _strip_national_prefix(nsn, metadata)
    # parse() keeps the stripped number only if its length is plausible for the region.
    use_stripped = ~np.isin(_test_number_length(_lengths(stripped.numbers), metadata), _BAD_LENGTH)
    if stripped.numbers is nsn or use_stripped.all():
        final = stripped.numbers
    else:
        final = pc.if_else(pa.array(use_stripped), stripped.numbers, nsn)
    general = np.where(use_stripped, stripped.general, stripped.general_before)
    lengths = _lengths(final)
    too_long = ~stripped.undecided & (lengths > _MAX_LENGTH_FOR_NSN)
    result.reason[positions[too_long]] = TOO_LONG
    # The post-strip TOO_SHORT_NSN check cannot fire (stripping needs a plausible length); stay
    # safe and leave such values undecided anyway.
    keep = np.flatnonzero(~stripped.undecided & ~too_long & (lengths >= _MIN_LENGTH_FOR_NSN))
    positions, final, lengths, general = positions[keep], _take(final, keep), lengths[keep], general[keep]
    if not len(positions):
        return
    # national_significant_number() rebuilds these digits exactly, leading zeros included.
    valid = _is_valid_number(final, lengths, group.country_code, metadata, general)
    result.reason[positions[~valid]] = INVALID_NUMBER
    rows = np.flatnonzero(valid)
    prefix = pa.scalar(f"+{group.country_code}", type=pa.large_string())
    separator = pa.scalar("", type=pa.large_string())
    e164 = pc.binary_join_element_wise(prefix, _take(final, rows).cast(pa.large_string()), separator)
    result.set_valid(positions[rows], e164)


def to_arrow(values: object) -> pa.Array:
    """Unique texts (object ndarray of str, or a pandas string array) as a pyarrow string array."""
    array = pa.array(values, type=pa.large_string(), from_pandas=True)
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def factorize(texts: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """De-duplicate texts: ``(code of each text, unique texts)``; missing texts get code -1."""
    # 32-bit offsets hash a little faster; fall back to 64-bit ones beyond 2 GiB of text.
    if texts.type == pa.large_string() and texts.nbytes < 2**31 - 1:
        texts = texts.cast(pa.string())
    encoded = pc.dictionary_encode(texts)
    codes = encoded.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, encoded.dictionary.cast(pa.large_string())


def texts_at(texts: pa.Array, positions: np.ndarray) -> list[str]:
    """The Python strings at ``positions`` (for the per-value fallback)."""
    return _take(texts, positions).to_pylist()


def collect_e164(result: FastResult, n: int) -> tuple[pa.Array, np.ndarray]:
    """All E.164 strings of ``result`` in one array, and the slot of each of the ``n`` texts in
    it (-1 when the text has none)."""
    slot = np.full(n, -1, dtype=np.int64)
    if not result.e164_positions:
        return pa.array([], type=pa.large_string()), slot
    values = pa.concat_arrays([v.cast(pa.large_string()) for v in result.e164_values])
    slot[np.concatenate(result.e164_positions)] = np.arange(len(values))
    return values, slot


def e164_strings(result: FastResult, n: int) -> tuple[pd.api.extensions.ExtensionArray, np.ndarray]:
    """Like :func:`collect_e164`, with the strings as a pandas ``string`` array."""
    values, slot = collect_e164(result, n)
    return pd.arrays.ArrowStringArray(values).astype(pd.StringDtype()), slot


def supported_region(region: str) -> bool:
    """Whether libphonenumber has metadata for ``region`` (an upper-case region code)."""
    return region in phonenumbers.SUPPORTED_REGIONS
