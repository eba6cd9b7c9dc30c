"""Step 1 of the fast path: the ASCII scan.

Texts made of digits, the ASCII separators of libphonenumber's ``_VALID_PUNCTUATION`` and one
leading ``+`` (most of the data) are reduced to their digits in one numpy pass over their bytes;
for them, libphonenumber's string-level steps reduce to "keep the digits" (no extension, second
number or RFC 3966 part can be present: their markers are not in that alphabet). Harmless
non-ASCII digits and separators are rewritten to ASCII first (:data:`TRANSLATION`).
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_smspartner.phone_numbers._fast_path.columns import take, to_numpy

# libphonenumber rejects inputs over 250 characters (_MAX_INPUT_STRING_LENGTH) before anything
# else; texts over 100 characters are simply left to it, so that check never matters here.
MAX_FAST_TEXT_LENGTH = 100

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


# Byte tables for scan_ascii. The accepted alphabet is the digits, the ASCII separators of
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


def scan_ascii(array: pa.Array) -> tuple[np.ndarray, np.ndarray, pa.Array, np.ndarray]:
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
        raise ValueError("scan_ascii counts in uint8: strings must be at most 255 bytes")
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
        shape_ok[with_plus] = to_numpy(pc.match_substring_regex(take(array, with_plus), _PLUS_SHAPE))
    return shape_ok, has_plus, digits, digit_count


@dataclass
class Batch:
    """Texts of the accepted shape: their positions, whether they have a "+", their digits."""

    positions: np.ndarray
    has_plus: np.ndarray
    digits: pa.Array


def make_batch(positions: np.ndarray, texts: pa.Array) -> Batch:
    """The texts (at ``positions``) of the accepted shape with at least 3 digits, as a batch."""
    shape_ok, has_plus, digits, digit_count = scan_ascii(texts)
    # Fewer than 3 digits: viability (two bare digits, or 3+ digits with punctuation) needs a
    # closer look, in step 2.
    keep = np.flatnonzero(shape_ok & (digit_count >= 3))
    return Batch(positions[keep], has_plus[keep], take(digits, keep))


def shaped_batches(texts: pa.Array) -> list[Batch]:
    """The texts of the accepted shape, once harmless Unicode digits and separators are rewritten.

    :param texts: unique, non-null strings.
    :return: the batches of the texts placed; the others are for the rescue (step 2).
    """
    # Byte length bounds the character length; long texts go to step 2.
    short = np.flatnonzero(to_numpy(pc.binary_length(texts)) <= MAX_FAST_TEXT_LENGTH)
    s = take(texts, short)
    batches = [make_batch(short, s)]
    non_ascii = np.flatnonzero(~to_numpy(pc.string_is_ascii(s)))
    if len(non_ascii):
        translated = pa.array(
            [t.translate(TRANSLATION) for t in take(s, non_ascii).to_pylist()], type=pa.large_string()
        )
        now_ascii = np.flatnonzero(to_numpy(pc.string_is_ascii(translated)))
        batches.append(make_batch(short[non_ascii[now_ascii]], take(translated, now_ascii)))
    return batches
