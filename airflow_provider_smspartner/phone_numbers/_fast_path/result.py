"""What the fast path decided: a reason code per unique text, and the E.164 strings of the valid ones."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pyarrow as pa

# Reason codes, shared with phone_numbers/__init__.py (REASONS[code - 1] is the label).
# VALID means "phone_e164 is set, reason is NA".
UNDECIDED = -1
VALID = 0
EMPTY = 1
NOT_A_NUMBER = 2
TOO_SHORT = 3
TOO_LONG = 4
INVALID_COUNTRY_CODE = 5
INVALID_NUMBER = 6


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
        """Record the texts at ``positions`` as valid, with their E.164 strings ``values``."""
        if len(positions):
            self.reason[positions] = VALID
            with self._lock:
                self.e164_positions.append(positions)
                self.e164_values.append(values)


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
