"""The engine of the gate: an audience checked against the live stop list.

The list is fetched once (:func:`fetch_stop_list`) and kept as the set of its E.164 numbers (int64
keys in a :class:`NumberSet`, :mod:`~airflow_provider_smspartner.suppression.matching`), with its size and
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

from airflow_provider_smspartner.phone_numbers import phone_text
from airflow_provider_smspartner.sql.tables import COUNT_KEYS
from airflow_provider_smspartner.suppression.matching import (
    E164_COLUMN,
    REASON_COLUMN,
    ClearMatching,
    HashedMatching,
)
from airflow_provider_smspartner.utils.stop_list import list_sha256

if TYPE_CHECKING:
    from airflow_provider_smspartner.bulk.sources import RowChunks

log = logging.getLogger(__name__)

#: Stopped numbers quoted (masked) in a failed check.
MAX_EXAMPLES = 5
#: Clear mode, the default: matched on E.164, ``phone_e164`` written.
CLEAR = ClearMatching()

_KEPT, _STOPPED, _INVALID, _DUPLICATE = 0, 1, 2, 3
_REASON_LABELS = np.array([None, "stopped", "invalid", "duplicate"], dtype=object)


# ------------------------------------------------------------------------------------ the list
class NumberSet:
    """A growing set of keys (:func:`~airflow_provider_smspartner.suppression.matching.e164_keys`
    or :func:`~airflow_provider_smspartner.suppression.matching.hash_keys`): a sorted int64 array, searched with
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
    def from_frame(
        cls,
        frame: pd.DataFrame,
        match_unreadable_digits: bool = False,
        matching: ClearMatching | HashedMatching = CLEAR,
    ) -> StopListSnapshot:
        """From the hook's stop-list frame (``stop_id``, ``phone_number``, ``phone_e164``...).

        :param match_unreadable_digits: Also match the rows with no E.164 on the digits of their
            cleaned number (``+`` and digits, as an E.164 key); otherwise they match nothing.
        :param matching: What the keys are made of (E.164 or keyed hash).
        """
        from airflow_provider_smspartner.phone_numbers.list_numbers import (
            clean_list_numbers,
            list_number_digits,
        )

        keys = matching.list_keys(frame["phone_e164"])
        unreadable = keys < 0
        digest = list_sha256(frame["stop_id"].to_numpy(), frame["phone_number"])
        listed = keys[~unreadable]
        if match_unreadable_digits and unreadable.any():
            cleaned, _ = clean_list_numbers(frame["phone_number"][unreadable])
            digits = matching.digits_keys(list_number_digits(cleaned))
            listed = np.concatenate([listed, digits[digits >= 0]])
        return cls(
            numbers=NumberSet(listed),
            rows_in_list=len(frame),
            list_sha256=digest,
            matched=int((~unreadable).sum()),
            unreadable_stop_ids=tuple(sorted(int(i) for i in frame["stop_id"].to_numpy()[unreadable])),
        )


def fetch_stop_list(
    hook: Any, match_unreadable_digits: bool = False, matching: ClearMatching | HashedMatching = CLEAR
) -> StopListSnapshot:
    """Fetch the list once through ``hook`` (an ``SmsPartnerHook``, the one list reader) and keep
    what the check needs."""
    return StopListSnapshot.from_frame(hook.get_stop_list_df(), match_unreadable_digits, matching)


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
    :param stopped_numbers: Distinct E.164 numbers (hashed mode: ``phone_hash`` values) of the
        audience found on the list, in order of appearance (at most ``max_examples``).
    :param stopped_distinct: How many distinct audience numbers are on the list.
    """

    counts: SuppressionCounts = field(default_factory=SuppressionCounts)
    stopped_numbers: list[str] = field(default_factory=list)
    stopped_distinct: int = 0


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
    values: pd.Series,
    stops: NumberSet,
    seen: NumberSet,
    default_region: str,
    matching: ClearMatching | HashedMatching = CLEAR,
) -> tuple[np.ndarray, pd.Series, np.ndarray]:
    """Decide each row of a chunk: ``(codes, phone_e164 or phone_hash, keys)``.

    ``seen`` (the numbers kept by earlier chunks) gets the numbers this chunk keeps.
    """
    e164, keys = matching.audience(values, default_region)
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


def _rows(
    chunk: pd.DataFrame,
    e164: pd.Series,
    mask: np.ndarray,
    reasons: np.ndarray | None,
    column: str = E164_COLUMN,
) -> pd.DataFrame:
    """The rows of ``chunk`` under ``mask`` with ``column`` (``phone_e164`` or ``phone_hash``, from
    ``e164``) and ``reason`` set."""
    rows = chunk[mask].reset_index(drop=True)
    rows[column] = e164.array[mask]
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
def _tally(
    result: SuppressionResult,
    codes: np.ndarray,
    e164: pd.Series,
    keys: np.ndarray,
    stopped_seen: NumberSet,
    max_examples: int,
) -> None:
    """Add a chunk's outcomes to ``result``: the counts, and its first distinct stopped numbers
    (``stopped_seen`` gets them) while fewer than ``max_examples`` are quoted."""
    counts = result.counts
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


def suppress_audience(
    rows: RowChunks,
    stop_list: StopListSnapshot,
    default_region: str = "FR",
    kept: ChunkSink | None = None,
    excluded: ChunkSink | None = None,
    max_examples: int = MAX_EXAMPLES,
    matching: ClearMatching | HashedMatching = CLEAR,
) -> SuppressionResult:
    """Check every row of ``rows`` against ``stop_list``; send kept and excluded rows to the sinks.

    Kept rows carry every audience column plus ``phone_e164`` (hashed mode: ``phone_hash``);
    excluded rows also ``reason`` (``stopped``, ``invalid`` or ``duplicate``); in hashed mode the
    ``stopped`` ones keep only ``phone_hash``, ``reason`` and ``matching.excluded_columns``. The
    sinks are closed when every chunk is in, and aborted (no partial table, no partial file) when
    anything fails on the way.

    :return: the counts, and the first ``max_examples`` distinct stopped numbers.
    """
    result = SuppressionResult()
    seen = NumberSet()
    stopped_seen = NumberSet()
    sinks = [sink for sink in (kept, excluded) if sink is not None]
    text_columns = (rows.column,)
    try:
        for chunk in rows.chunks:
            codes, e164, keys = classify(
                chunk[rows.column], stop_list.numbers, seen, default_region, matching
            )
            _tally(result, codes, e164, keys, stopped_seen, max_examples)
            if not sinks:
                continue
            chunk = storable(chunk, text_columns)
            if kept is not None:
                kept.write(_rows(chunk, e164, codes == _KEPT, None, matching.column))
            if excluded is not None:
                out = codes != _KEPT
                rows_out = _rows(chunk, e164, out, _REASON_LABELS[codes], matching.column)
                excluded.write(matching.hide_stopped(rows_out, codes[out] == _STOPPED))
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
