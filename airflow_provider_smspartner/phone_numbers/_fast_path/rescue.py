r"""Step 2 of the fast path: the rescue of unusual ASCII texts ("Tel: 06…", "… ext. 12", letters).

libphonenumber's own first parsing steps, column-wise, reduce such a text to "+digits" / "digits"
for a second vectorised pass.

phonenumbers.parse(text) checks the length, extracts the number from the text (skips what
precedes the first "+" or digit, drops trailing punctuation, cuts a second number, handles
RFC 3966), checks the result is viable, strips an extension, and from then on only uses
(a) whether the rest starts with "+" and (b) its normalised digits (vanity letters mapped to
digits). So parse(text) and parse(candidate) agree, with candidate = "+" + digits or digits.

These steps run in RE2 with libphonenumber's own viability and extension patterns (private
names, see ``PRIVATE_HELPERS`` in the package; if a release renames them, the rescue is skipped
and every such text goes through phonenumbers.parse). On ASCII texts without a newline, Python's
"\d" and "\w" are ASCII-only like RE2's, "." and "$" behave the same, case-insensitive matching of
ASCII letters agrees, and a leftmost search (Python) is a leftmost match (RE2), so the patterns
give the same answers in pyarrow.

Left to phonenumbers.parse, because these steps are not reproduced here (they are rare, and
reproducing them bought under 5 % of the benchmark's time; see benchmarks/README.md): texts that
are still non-ASCII after step 1 (:mod:`.scan`), texts with a newline, texts over
``MAX_FAST_TEXT_LENGTH`` characters, RFC 3966 texts with a phone-context or isub parameter, and
texts where an "x" follows a "/" or "\" with no digit in between (libphonenumber cuts a second
number at "/ x").
"""

from __future__ import annotations

import string

import numpy as np
import phonenumbers
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_smspartner.phone_numbers._fast_path.columns import (
    prefix_match,
    starts_with,
    take,
    to_numpy,
)
from airflow_provider_smspartner.phone_numbers._fast_path.result import EMPTY, NOT_A_NUMBER, UNDECIDED
from airflow_provider_smspartner.phone_numbers._fast_path.scan import MAX_FAST_TEXT_LENGTH

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
        to_numpy(pc.string_is_ascii(texts))
        & (to_numpy(pc.binary_length(texts)) <= MAX_FAST_TEXT_LENGTH)
        & ~to_numpy(pc.match_substring_regex(texts, _NOT_RESCUED))
    )
    reasons = np.full(n, UNDECIDED, dtype=np.int8)
    if not len(idx):
        return reasons, np.zeros(0, dtype=np.int64), []
    sub_reasons, sub_positions, candidates = _rescue_ascii(take(texts, idx))
    reasons[idx] = sub_reasons
    return reasons, idx[sub_positions], candidates


def _rescue_ascii(texts: pa.Array) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """:func:`rescue_many` on ASCII texts of at most ``MAX_FAST_TEXT_LENGTH`` characters that it
    reproduces: ``(reasons, candidate_positions, candidates)``."""
    n = len(texts)
    reasons = np.full(n, UNDECIDED, dtype=np.int8)
    blank = to_numpy(pc.match_substring_regex(texts, _BLANK_ASCII))
    reasons[blank] = EMPTY
    # _extract_possible_number: from the first "+" or digit, without trailing punctuation (no
    # second number: those texts were left to phonenumbers.parse).
    number = pc.replace_substring_regex(texts, _LEADING_JUNK, "", max_replacements=1)
    number = pc.replace_substring_regex(number, _TRAILING_JUNK, "", max_replacements=1)
    viable = _viable(number)
    reasons[~blank & ~viable] = NOT_A_NUMBER
    idx = np.flatnonzero(~blank & viable)
    number = take(number, idx)
    # _maybe_strip_extension: the leftmost extension, kept only if what precedes it is viable.
    base = pc.replace_substring_regex(
        number, f"(?i)(?:{_EXTN_PATTERNS_FOR_PARSING})$", "", max_replacements=1
    )
    stripped = to_numpy(pc.binary_length(base)) < to_numpy(pc.binary_length(number))
    use_base = np.zeros(len(idx), dtype=bool)
    rows = np.flatnonzero(stripped)
    use_base[rows] = _viable(take(base, rows))
    number = pc.if_else(pa.array(use_base), base, number)
    # _maybe_strip_i18n_prefix_and_normalize: leading "+" signs, then the digits, with the
    # letters of vanity numbers mapped to digits first.
    plus = starts_with(number, "+")
    rest = pc.replace_substring_regex(number, "^\\++", "", max_replacements=1)
    vanity = prefix_match(rest, _VANITY)
    if vanity.any():
        mapped = [text.translate(_KEYPAD) for text in take(rest, np.flatnonzero(vanity)).to_pylist()]
        rest = pc.replace_with_mask(rest, pa.array(vanity), pa.array(mapped, type=pa.large_string()))
    digits = pc.replace_substring_regex(rest, _NOT_DIGIT, "").to_pylist()
    candidates = [("+" + d) if p else d for d, p in zip(digits, plus.tolist(), strict=True)]
    return reasons, idx, candidates


def _viable(numbers: pa.Array) -> np.ndarray:
    """``_is_viable_phone_number``: at least 2 characters and the viable-number pattern."""
    if len(numbers) == 0:
        return np.zeros(0, dtype=bool)
    pattern = f"^(?:{_VALID_PHONE_NUMBER_PATTERN.pattern})$"
    return (to_numpy(pc.binary_length(numbers)) >= 2) & to_numpy(
        pc.match_substring_regex(numbers, pattern, ignore_case=True)
    )
