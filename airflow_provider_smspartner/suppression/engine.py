"""The engine of the gate: an audience checked against the live stop list.

The list is fetched once (:func:`fetch_stop_list`) and kept as the set of its E.164 numbers (int64
keys in a :class:`NumberSet`), with its size and
:func:`~airflow_provider_smspartner.utils.stop_list.list_sha256`. The audience streams through
:func:`suppress_audience` one chunk at a time (:class:`~airflow_provider_smspartner.bulk.sources.RowChunks`):
every number is normalised (:func:`~airflow_provider_smspartner.phone_numbers.normalize_phone_numbers`)
and each row gets exactly one outcome, in this order of precedence:

* ``invalid``: no valid number (empty, junk, unknown range...);
* ``stopped``: the number is on the list (every row of it, repeats included);
* ``duplicate``: the number was already kept from an earlier row (the first row wins);
* kept: safe to text.

Memory holds the list's numbers, the numbers kept so far and one chunk. Kept and excluded rows go
to :class:`ChunkSink` objects as they come (:mod:`~airflow_provider_smspartner.suppression.sinks`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import pandas as pd

from airflow_provider_smspartner.phone_numbers import normalize_phone_numbers, phone_text
from airflow_provider_smspartner.sql.tables import COUNT_KEYS
from airflow_provider_smspartner.utils.stop_list import list_sha256

if TYPE_CHECKING:
    from airflow_provider_smspartner.bulk.sources import RowChunks

log = logging.getLogger(__name__)

#: Stopped numbers quoted (masked) in a failed check.
MAX_EXAMPLES = 5
#: The column the normalised number is written to (it replaces an audience column of that name).
E164_COLUMN = "phone_e164"
#: The column of the excluded rows that says why (it replaces an audience column of that name).
REASON_COLUMN = "reason"

_KEPT, _STOPPED, _INVALID, _DUPLICATE = 0, 1, 2, 3
_REASON_LABELS = np.array([None, "stopped", "invalid", "duplicate"], dtype=object)
_MASK = "\u2022"  # •


# ------------------------------------------------------------------------------------ the list
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


class NumberSet:
    """A growing set of E.164 keys (:func:`e164_keys`): a sorted int64 array, searched with
    ``searchsorted`` and merged with each batch added (8 bytes a number)."""

    def __init__(self, keys: np.ndarray | None = None) -> None:
        self.keys = np.empty(0, dtype=np.int64)
        if keys is not None and len(keys):
            ordered = np.sort(np.asarray(keys, dtype=np.int64))  # np.unique hashes: slower on a million
            self.keys = ordered[np.concatenate([[True], ordered[1:] != ordered[:-1]])]

    def __len__(self) -> int:
        return len(self.keys)

    def contains(self, keys: np.ndarray) -> np.ndarray:
        if not len(self.keys) or not len(keys):
            return np.zeros(len(keys), dtype=bool)
        position = np.searchsorted(self.keys, keys).clip(max=len(self.keys) - 1)
        return np.asarray(self.keys[position] == keys)

    def add(self, keys: np.ndarray) -> None:
        """Add ``keys``, which must be distinct and not in the set yet."""
        if len(keys):
            # Two sorted runs: the stable sort (timsort) merges them in linear time.
            self.keys = np.sort(np.concatenate([self.keys, np.sort(keys)]), kind="stable")


@dataclass(frozen=True)
class StopListSnapshot:
    """The live list as the audience is checked against it.

    :param numbers: The keys the audience is matched against: the E.164 numbers of the list's
        readable rows (the hook's ``phone_e164``), and, when asked, the digits of its unreadable
        ones.
    :param rows_in_list: Its rows, as the API sent them.
    :param list_sha256: Its fingerprint (:func:`~airflow_provider_smspartner.utils.stop_list.list_sha256`,
        the same definition as the extract's run log).
    :param matched: Its rows matched by E.164 (``rows_in_list = matched + unreadable``).
    :param unreadable_stop_ids: The stop ids of the rows with no E.164, sorted.
    """

    numbers: NumberSet
    rows_in_list: int
    list_sha256: str
    matched: int = 0
    unreadable_stop_ids: tuple[int, ...] = ()

    @property
    def unreadable(self) -> int:
        return len(self.unreadable_stop_ids)

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, match_unreadable_digits: bool = False) -> StopListSnapshot:
        """From the hook's stop-list frame (``stop_id``, ``phone_number``, ``phone_e164``...).

        :param match_unreadable_digits: Also match the rows with no E.164 on the digits of their
            cleaned number (``+`` and digits, as an E.164 key); otherwise they match nothing.
        """
        from airflow_provider_smspartner.phone_numbers.list_numbers import (
            clean_list_numbers,
            list_number_digits,
        )

        keys = e164_keys(frame["phone_e164"])
        unreadable = keys < 0
        digest = list_sha256(frame["stop_id"].to_numpy(), frame["phone_number"])
        matching = keys[~unreadable]
        if match_unreadable_digits and unreadable.any():
            cleaned, _ = clean_list_numbers(frame["phone_number"][unreadable])
            digits = list_number_digits(cleaned)
            matching = np.concatenate([matching, digits[digits >= 0]])
        return cls(
            numbers=NumberSet(matching),
            rows_in_list=len(frame),
            list_sha256=digest,
            matched=int((~unreadable).sum()),
            unreadable_stop_ids=tuple(sorted(int(i) for i in frame["stop_id"].to_numpy()[unreadable])),
        )


def fetch_stop_list(hook: Any, match_unreadable_digits: bool = False) -> StopListSnapshot:
    """Fetch the list once through ``hook`` (an ``SmsPartnerHook``, the one list reader) and keep
    what the check needs."""
    return StopListSnapshot.from_frame(hook.get_stop_list_df(), match_unreadable_digits)


# ------------------------------------------------------------------------------------ results
@dataclass
class SuppressionCounts:
    """Rows of the audience by outcome; ``valid`` is every row with a valid number."""

    audience: int = 0
    invalid: int = 0
    duplicate: int = 0
    stopped: int = 0
    kept: int = 0

    @property
    def valid(self) -> int:
        return self.audience - self.invalid

    def as_dict(self) -> dict[str, int]:
        """``{"audience", "valid", "invalid", "duplicate", "stopped", "kept"}``."""
        return {key: int(getattr(self, key)) for key in COUNT_KEYS}


@dataclass
class SuppressionResult:
    """What :func:`suppress_audience` found.

    :param counts: Rows by outcome.
    :param stopped_numbers: Distinct E.164 numbers of the audience found on the list, in order
        of appearance (at most ``max_examples``).
    :param stopped_distinct: How many distinct audience numbers are on the list.
    """

    counts: SuppressionCounts = field(default_factory=SuppressionCounts)
    stopped_numbers: list[str] = field(default_factory=list)
    stopped_distinct: int = 0


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


# ------------------------------------------------------------------------------------ chunks
def storable(frame: pd.DataFrame, text_columns: tuple[str, ...] = ()) -> pd.DataFrame:
    """``frame`` with the object columns a file or table could not type as text.

    The ``text_columns`` of object dtype (the phone column: a list often mixes ``"06..."`` and
    ``33612345678``) always become text, and so does any other object column mixing kinds (text
    and numbers); each value as :func:`~airflow_provider_smspartner.phone_numbers.phone_text`
    gives it (an integral float without ``.0``), missing values stay missing.
    """
    changed: dict[str, pd.Series] = {}
    for name in frame.columns:
        column = frame[name]
        if column.dtype != object:
            continue
        kind = pd.api.types.infer_dtype(column, skipna=True)
        if kind in ("string", "empty") or (name not in text_columns and not kind.startswith("mixed")):
            continue
        texts = [v if v.__class__ is str else phone_text(v) for v in column.tolist()]
        changed[name] = pd.Series(texts, index=frame.index, dtype=object)
    return frame.assign(**changed) if changed else frame


def classify(
    values: pd.Series, stops: NumberSet, seen: NumberSet, default_region: str
) -> tuple[np.ndarray, pd.Series, np.ndarray]:
    """Decide each row of a chunk: ``(codes, phone_e164, keys)``.

    ``seen`` (the numbers kept by earlier chunks) gets the numbers this chunk keeps.
    """
    e164 = normalize_phone_numbers(values.reset_index(drop=True), default_region)["phone_e164"]
    keys = e164_keys(e164)
    codes = np.full(len(keys), _INVALID, dtype=np.int8)
    valid = np.flatnonzero(keys >= 0)
    candidates = keys[valid]
    listed = stops.contains(candidates)
    codes[valid[listed]] = _STOPPED
    free, free_keys = valid[~listed], candidates[~listed]
    repeated = pd.Series(free_keys).duplicated().to_numpy(copy=True)
    repeated |= seen.contains(free_keys)
    codes[free[repeated]] = _DUPLICATE
    codes[free[~repeated]] = _KEPT
    seen.add(free_keys[~repeated])
    return codes, e164, keys


def _rows(chunk: pd.DataFrame, e164: pd.Series, mask: np.ndarray, reasons: np.ndarray | None) -> pd.DataFrame:
    """The rows of ``chunk`` under ``mask`` with ``phone_e164`` (and ``reason``) set."""
    rows = chunk[mask].reset_index(drop=True)
    rows[E164_COLUMN] = e164.array[mask]
    if reasons is not None:
        rows[REASON_COLUMN] = pd.array(reasons[mask], dtype="string")
    return rows


# ------------------------------------------------------------------------------------ sinks
class ChunkSink(Protocol):
    """Where kept or excluded rows go, chunk by chunk."""

    #: Where the rows went, for the audit row and the log (a table name or a path).
    target: str

    def write(self, frame: pd.DataFrame) -> None: ...

    def close(self) -> None:
        """Finish: the output is complete (flushed; a table committed)."""

    def commit(self) -> None:
        """Put a complete output in place (a file's rename), once every sink is closed."""

    def abort(self) -> None:
        """Give up after an error: leave no partial output passing for a complete one."""


# ------------------------------------------------------------------------------------ the run
def suppress_audience(
    rows: RowChunks,
    stop_list: StopListSnapshot,
    default_region: str = "FR",
    kept: ChunkSink | None = None,
    excluded: ChunkSink | None = None,
    max_examples: int = MAX_EXAMPLES,
) -> SuppressionResult:
    """Check every row of ``rows`` against ``stop_list``; send kept and excluded rows to the sinks.

    Kept rows carry every audience column plus ``phone_e164``; excluded rows also ``reason``
    (``stopped``, ``invalid`` or ``duplicate``). The sinks are closed when every chunk is in, and
    aborted (no partial table, no partial file) when anything fails on the way.

    :return: the counts, and the first ``max_examples`` distinct stopped numbers.
    """
    result = SuppressionResult()
    counts = result.counts
    seen = NumberSet()
    stopped_seen = NumberSet()
    sinks = [sink for sink in (kept, excluded) if sink is not None]
    text_columns = (rows.column,)
    try:
        for chunk in rows.chunks:
            codes, e164, keys = classify(chunk[rows.column], stop_list.numbers, seen, default_region)
            tally = np.bincount(codes, minlength=4)
            counts.audience += len(codes)
            counts.kept += int(tally[_KEPT])
            counts.stopped += int(tally[_STOPPED])
            counts.invalid += int(tally[_INVALID])
            counts.duplicate += int(tally[_DUPLICATE])
            if tally[_STOPPED]:
                stopped = np.flatnonzero(codes == _STOPPED)
                first = stopped[~pd.Series(keys[stopped]).duplicated().to_numpy()]
                first = first[~stopped_seen.contains(keys[first])]
                stopped_seen.add(keys[first])
                room = max_examples - len(result.stopped_numbers)
                result.stopped_numbers += [str(e164.iloc[i]) for i in first[:room]]
            if not sinks:
                continue
            chunk = storable(chunk, text_columns)
            if kept is not None:
                kept.write(_rows(chunk, e164, codes == _KEPT, None))
            if excluded is not None:
                excluded.write(_rows(chunk, e164, codes != _KEPT, _REASON_LABELS[codes]))
        for sink in sinks:
            sink.close()
        # Files go in place as a pair, once both are complete.
        for sink in sinks:
            sink.commit()
    except BaseException:
        for sink in sinks:
            try:
                sink.abort()
            except Exception:
                log.warning("Could not clean up %s", sink.target, exc_info=True)
        raise
    result.stopped_distinct = len(stopped_seen)
    return result
