"""Keyed hashing of E.164 numbers: ``phone_hash`` = HMAC-SHA256, 64 lowercase hex digits.

The one definition (what a warehouse recomputes to join against a hashed stop list)::

    hmac.new(key, e164.encode("utf-8"), hashlib.sha256).hexdigest()

with ``key`` the secret's UTF-8 bytes and ``e164`` the text libphonenumber writes
(``+33612345678``). :func:`hash_e164` is that definition over a column; the public entry point,
normalisation included, is :func:`airflow_provider_smspartner.phone_numbers.hash_phone_numbers`.

Speed: HMAC hashes ``key XOR ipad`` and ``key XOR opad``, one 64-byte block each, before any
message. Both states are computed once per call and copied per value, so a value costs two
``sha256`` copies, two updates and two digests (all C calls) and no Python-level HMAC object, and
repeated numbers are hashed once. On the 685,719 E.164 texts of benchmarks/bench_hashing.py's
1,000,000 values (2-CPU machine, median of 5): this function 0.54 s, ``hmac.new(key,
digestmod=sha256).copy()`` per value 0.81 s, a new ``hmac.new(...)`` per value 1.15 s; in a one-off
loop-only comparison, copying the C ``_hashlib.HMAC`` object behind ``hmac.HMAC`` was still ~20 %
slower than copying the two SHA-256 states.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from airflow_provider_smspartner.phone_numbers._fast_path.columns import factorize

__all__ = ["E164_TEXT", "hash_e164", "hash_stop_list_frame", "key_bytes"]

#: What :func:`hash_e164` accepts: a plus sign and 3 to 20 digits, the first not 0 (every E.164
#: text libphonenumber writes: a country code of 1 to 3 digits and a national number of 2 to 17).
E164_TEXT = r"^\+[1-9][0-9]{2,19}$"

_BLOCK_SIZE = hashlib.sha256().block_size  # 64 bytes
_IPAD = bytes(byte ^ 0x36 for byte in range(256))
_OPAD = bytes(byte ^ 0x5C for byte in range(256))
_STRING_DTYPE = pd.StringDtype()


def key_bytes(key: str | bytes) -> bytes:
    """The HMAC key: a ``str`` as its UTF-8 bytes, ``bytes`` (or ``bytearray``) as given.

    :raises TypeError: if ``key`` is neither text nor bytes.
    :raises ValueError: if ``key`` is empty or is text that does not encode as UTF-8 (a lone
        surrogate). The message never shows the key.
    """
    if isinstance(key, str):
        try:
            raw = key.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(
                "the hash key is text that does not encode as UTF-8 (a lone surrogate)"
            ) from None
    elif isinstance(key, bytes | bytearray | memoryview):
        raw = bytes(key)
    else:
        raise TypeError(f"the hash key must be str or bytes, not {type(key).__name__}")
    if not raw:
        raise ValueError("the hash key is empty")
    return raw


def _pads(key: bytes) -> tuple[Any, Any]:
    """HMAC-SHA256's inner and outer hash states after their key block (RFC 2104)."""
    if len(key) > _BLOCK_SIZE:
        key = hashlib.sha256(key).digest()
    key = key.ljust(_BLOCK_SIZE, b"\0")
    return hashlib.sha256(key.translate(_IPAD)), hashlib.sha256(key.translate(_OPAD))


def _hex_digests(messages: list[bytes], key: bytes) -> list[str]:
    """``hmac.new(key, message, sha256).hexdigest()`` for each message."""
    inner, outer = _pads(key)
    inner_copy, outer_copy = inner.copy, outer.copy
    digests: list[str] = []
    append = digests.append
    for message in messages:
        state = inner_copy()
        state.update(message)
        result = outer_copy()
        result.update(state.digest())
        append(result.hexdigest())
    return digests


def _as_texts(values: Any) -> pa.Array:
    """Any column of texts and missing values as one Arrow string array."""
    if isinstance(values, pd.Series | pd.Index):
        values = values.array
    if isinstance(values, str | bytes):
        raise TypeError("e164_values must be a column of E.164 texts, not a single string")
    try:
        if isinstance(values, pa.Array | pa.ChunkedArray):
            array = values.cast(pa.large_string())
        else:
            array = pa.array(values, type=pa.large_string(), from_pandas=True)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as exc:
        raise TypeError(f"e164_values must hold E.164 texts and missing values only: {exc}") from None
    return array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array


def hash_e164(e164_values: Any, key: str | bytes, repeats: bool = True) -> pd.Series:
    """HMAC-SHA256 of each E.164 text under ``key``, as 64 lowercase hex digits.

    The low-level half of :func:`~airflow_provider_smspartner.phone_numbers.hash_phone_numbers`:
    it hashes texts that are already E.164 (``+33612345678``) and normalises nothing.

    :param e164_values: a pandas Series or array, a pyarrow array, a numpy array or a list of
        E.164 texts; missing values (``None``, NaN, ``pd.NA``) are allowed.
    :param key: the secret; ``str`` is taken as its UTF-8 bytes, ``bytes`` as given.
    :param repeats: the values may repeat (contacts): each distinct value is hashed once. False
        for values that rarely do (a stop list: one number per stop), which skips the
        de-duplication pass (a fifth of the time on a million distinct values); same result.
    :return: a Series of pandas' ``string`` dtype, one hash per value, in order, ``<NA>`` where the
        value is missing; indexed like ``e164_values`` when it is a Series, else a RangeIndex.
    :raises TypeError: if the values are not texts, or the key is neither text nor bytes.
    :raises ValueError: if a value is not an E.164 text (the message gives its position, never
        the number), or the key is empty.
    """
    raw_key = key_bytes(key)
    index = e164_values.index if isinstance(e164_values, pd.Series) else None
    texts = _as_texts(e164_values)
    # codes: where each value's hash is among the hashed values (-1: missing); None: in order.
    codes: np.ndarray | None
    if repeats:
        codes, uniques = factorize(texts)
    elif texts.null_count:
        present = texts.is_valid().to_numpy(zero_copy_only=False)
        codes, uniques = np.where(present, np.cumsum(present) - 1, -1), texts.drop_null()
    else:
        codes, uniques = None, texts
    malformed = np.flatnonzero(~pc.match_substring_regex(uniques, E164_TEXT).to_numpy(zero_copy_only=False))
    if len(malformed):
        position = int(malformed[0] if codes is None else np.flatnonzero(codes == malformed[0])[0])
        raise ValueError(
            f"e164_values: the value at position {position} is not an E.164 text (a plus sign and 3 to 20 digits, as "
            "normalize_phone_numbers writes them); normalise the numbers before hashing them"
        )
    # The Arrow binary view gives the UTF-8 bytes directly.
    digests = pa.array(_hex_digests(uniques.cast(pa.large_binary()).to_pylist(), raw_key), pa.large_string())
    hashes = digests if codes is None else digests.take(pa.array(codes, mask=codes < 0))
    return pd.Series(
        pd.arrays.ArrowStringArray(hashes).astype(_STRING_DTYPE),
        index=index if index is not None else pd.RangeIndex(len(texts)),
        copy=False,
    )


def hash_stop_list_frame(frame: pd.DataFrame, key: str | bytes, key_id: str) -> pd.DataFrame:
    """A stop-list frame in keyed-hash mode: ``phone_hash`` and ``hash_key_id`` in place of
    ``phone_number`` and ``phone_e164``, so no number is left in clear.

    :param frame: A frame with ``phone_number`` and ``phone_e164`` (the hook's list frame).
    :param key: The secret (as :func:`hash_e164`).
    :param key_id: The key's name, stored next to every hash.
    :return: a new frame; ``phone_hash`` is :func:`hash_e164` of ``phone_e164`` (missing where
        it is missing), placed where ``phone_number`` was, ``hash_key_id`` after it.
    """
    hashes = hash_e164(frame["phone_e164"], key, repeats=False)  # a number per stop
    position = list(frame.columns).index("phone_number")
    hashed = frame.drop(columns=["phone_number", "phone_e164"])
    hashed.insert(position, "phone_hash", hashes)
    hashed.insert(position + 1, "hash_key_id", key_id)
    return hashed
