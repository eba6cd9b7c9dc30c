"""Column helpers of the fast path: pyarrow string arrays in, numpy masks and arrays out.

The matching helpers are only applied to ASCII digit strings (national significant numbers and
the like), where bytes are characters and RE2 answers as Python's ``re`` does.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def to_numpy(array: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """The values of an Arrow array as a numpy array (copied when Arrow cannot share them)."""
    return np.asarray(array.to_numpy(zero_copy_only=False))


def take(array: pa.Array, idx: np.ndarray) -> pa.Array:
    """The rows ``idx`` of ``array``; ``array`` itself when ``idx`` keeps every row in order."""
    # Most index arrays come from np.flatnonzero; when one keeps every row, skip the copy.
    n = len(idx)
    if n == len(array) and (n < 2 or (idx[0] == 0 and idx[-1] == n - 1 and bool(np.all(idx[1:] > idx[:-1])))):
        return array
    return array.take(pa.array(idx, type=pa.int64()))


def byte_lengths(array: pa.Array) -> np.ndarray:
    """The length of each string, in bytes (= characters on the ASCII strings it is used on)."""
    # Reading the offsets is much cheaper than counting UTF-8 code points.
    return to_numpy(pc.binary_length(array)).astype(np.int64)


def fullmatch(array: pa.Array, pattern: str | None) -> np.ndarray:
    """``_match_national_number(n, desc, False)``: full match; False when there is no pattern."""
    if not pattern or len(array) == 0:
        return np.zeros(len(array), dtype=bool)
    return to_numpy(pc.match_substring_regex(array, f"^(?:{pattern})$"))


def prefix_match(array: pa.Array, pattern: str) -> np.ndarray:
    """``re.match(pattern, n) is not None``."""
    if len(array) == 0:
        return np.zeros(0, dtype=bool)
    return to_numpy(pc.match_substring_regex(array, f"^(?:{pattern})"))


def starts_with(array: pa.Array, prefix: str) -> np.ndarray:
    """``n.startswith(prefix)`` for each string."""
    if len(array) == 0:
        return np.zeros(0, dtype=bool)
    return to_numpy(pc.starts_with(array, pattern=prefix))


def drop_first(array: pa.Array, count: int) -> pa.Array:
    """Each string without its first ``count`` characters."""
    return pc.utf8_slice_codeunits(array, start=count)


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
    return take(texts, positions).to_pylist()
