"""The reference oracle: libphonenumber called once per value, the way a user would write it.

The oracle of the exactness tests of the fast path and the baseline of
``benchmarks/bench_phone_numbers.py``; a test helper, so it stays out of the wheel.
"""

from __future__ import annotations

from typing import Any

import pandas as pd

from airflow_provider_smspartner.phone_numbers import (
    _STRING_DTYPE,
    REASONS,
    _as_input,
    _check_region,
    _object_values,
    _per_value_code,
    phone_text,
)
from airflow_provider_smspartner.phone_numbers._fast_path.result import VALID


def reference_normalize(values: Any, default_region: str = "FR") -> pd.DataFrame:
    """The plain per-value libphonenumber loop: the baseline and the oracle of the fast path.

    Same arguments, result and errors as :func:`normalize_phone_numbers`; one
    ``phonenumbers.parse`` call per value, no de-duplication, no vectorisation.
    """
    region = _check_region(default_region)
    data, index = _as_input(values)
    objects = _object_values(data)
    e164: list[str | None] = []
    reasons: list[str | None] = []
    for value in objects:
        number, code = _per_value_code(phone_text(value), region)
        e164.append(number)
        reasons.append(None if code == VALID else REASONS[code - 1])
    return pd.DataFrame(
        {
            "input": pd.Series(objects, index=index, dtype=object, copy=False),
            "phone_e164": pd.Series(pd.array(e164, dtype=_STRING_DTYPE), index=index),
            "reason": pd.Series(pd.array(reasons, dtype=_STRING_DTYPE), index=index),
        },
        index=index,
    )
