"""The stop list as several parts see it: its fingerprint and how its stop ids are named in messages.

The hook reads the list (``api.list_body``); the extract's run log, the gate's audit and the event
trigger compare lists by :func:`list_sha256`, and every list reader names stop ids with
:func:`describe_stop_ids`.
"""

from __future__ import annotations

from typing import Any

#: How many stop ids a log line or an error names.
SHOWN_IDS = 10


def describe_stop_ids(stop_ids: Any) -> str:
    """Stop ids for a log line or an error: the first :data:`SHOWN_IDS` (sorted, distinct), then
    how many more."""
    distinct = sorted({int(i) for i in stop_ids})
    shown = ", ".join(str(i) for i in distinct[:SHOWN_IDS])
    more = len(distinct) - SHOWN_IDS
    return shown + (f" and {more} more" if more > 0 else "")


def list_sha256(stop_ids: Any, phone_numbers: Any) -> str:
    """The stop list's fingerprint: equal for every run that saw the same list.

    SHA-256 (hex) of the UTF-8 text ``"{stop_id}\\t{phone_number}\\n"`` per row, rows in integer
    ``stop_id`` order (a stop id listed twice: then by number, bytewise), ``phone_number`` exactly
    as the API sent it, so neither the answer's row order nor the phone metadata version changes
    it. The one definition, used by the run log and the suppression audit. Built column-wise with
    Arrow and hashed in one pass (about 0.2 s for a million rows); loads numpy and pyarrow when
    called, never at import.

    :param stop_ids: The list's ``id`` values, integers (sequence, array or Series).
    :param phone_numbers: Its ``phoneNumber`` values in the same order (a missing one hashes as "").
    :return: 64 lowercase hex digits.
    :raises ValueError: when the two lengths differ.
    """
    import hashlib

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    ids = pa.array(np.asarray(stop_ids, dtype=np.int64))
    phones = pa.array(phone_numbers, type=pa.large_string(), from_pandas=True)
    if isinstance(phones, pa.ChunkedArray):
        phones = phones.combine_chunks()
    if len(ids) != len(phones):
        raise ValueError(f"list_sha256: {len(ids)} stop ids but {len(phones)} phone numbers")
    phones = pc.fill_null(phones, "")
    raw = ids.to_numpy()
    if len(raw) > 1 and not (raw[1:] > raw[:-1]).all():  # usually already in order
        keys = [("i", "ascending"), ("p", "ascending")]
        order = pc.sort_indices(pa.table({"i": ids, "p": phones}), sort_keys=keys)
        ids, phones = ids.take(order), phones.take(order)
    text = [pa.scalar(s, pa.large_string()) for s in ("\t", "\n", "")]
    lines = pc.binary_join_element_wise(pc.cast(ids, pa.large_string()), text[0], phones, text[1], text[2])
    digest = hashlib.sha256()
    if len(lines):
        _, offsets, data = lines.buffers()
        bounds = np.frombuffer(offsets, dtype=np.int64)[[lines.offset, lines.offset + len(lines)]]
        digest.update(memoryview(data)[bounds[0] : bounds[1]])
    return digest.hexdigest()
