"""Vectorised fast path of :func:`airflow_provider_smspartner.phone_numbers.normalize_phone_numbers`.

Internal package. It reproduces, column-wise, the exact steps that ``phonenumbers.parse`` +
``is_valid_number`` + ``format_number(E164)`` take, with libphonenumber's own metadata (regexes,
possible lengths, prefixes) and, for string handling, libphonenumber's own patterns (see
``PRIVATE_HELPERS``). Rule: decide only what is certain. A text that needs a step not reproduced
here is left *undecided*, and the caller hands it to ``phonenumbers.parse``.

The steps mirror ``phonenumbers/phonenumberutil.py``, one module each:

* text -> number (``_build_national_number_for_parsing``, ``_is_viable_phone_number``,
  ``_maybe_strip_extension``, ``_normalize``): for texts made of digits, the ASCII separators of
  ``_VALID_PUNCTUATION`` and one leading ``+`` (most of the data), these steps reduce to "keep
  the digits" (:mod:`.scan`). Other ASCII texts run through the same steps in RE2 with
  libphonenumber's own patterns (:mod:`.rescue`); the rest goes to ``phonenumbers.parse``.
  From then on parse() only uses the digits and whether a "+" came first.
* ``_maybe_extract_country_code``: ``+`` / IDD stripping, shortest-prefix country-code lookup,
  the "starts with the default country code" heuristic, and the retry without "+"
  (:mod:`.country_code`).
* ``_maybe_strip_national_prefix_carrier_code`` and the ``_test_number_length`` check after it
  (:mod:`.national`).
* ``_region_code_for_number_from_list`` / ``is_valid_number_for_region`` / ``_number_type_helper``
  (:mod:`.metadata`, libphonenumber's metadata as tables and one pattern per length).

Strings are pyarrow arrays (pyarrow is what pandas' string dtype stores them in; it is a
dependency of the provider; helpers in :mod:`.columns`) and regexes run in pyarrow's RE2. The
metadata patterns contain no look-around or back-reference and are only applied to ASCII digit
strings, so RE2 and Python's ``re`` give the same answers: full match and "does a prefix match"
are properties of the regular language, not of the engine.

The corpus test (tests/phone_numbers/test_phone_numbers.py) compares every row with the
per-value loop.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa

from airflow_provider_smspartner.phone_numbers._fast_path.columns import take
from airflow_provider_smspartner.phone_numbers._fast_path.country_code import (
    from_default_region,
    from_international,
)
from airflow_provider_smspartner.phone_numbers._fast_path.national import (
    Group,
    finish_group,
    merge_small_groups,
)
from airflow_provider_smspartner.phone_numbers._fast_path.rescue import rescue_many
from airflow_provider_smspartner.phone_numbers._fast_path.result import UNDECIDED, FastResult
from airflow_provider_smspartner.phone_numbers._fast_path.scan import Batch, make_batch, shaped_batches

# Private names of phonenumbers.phonenumberutil that the fast path still uses, each because it
# buys 5 % or more of the 1,000,000-value benchmark's time (measured; see benchmarks/README.md):
# * _maybe_strip_national_prefix_carrier_code (national.py): national prefixes with carrier codes
#   or transform rules (AR, AU, BR, CN, JP, GG, ...), per number, instead of a whole
#   phonenumbers.parse;
# * _VALID_PHONE_NUMBER_PATTERN, _EXTN_PATTERNS_FOR_PARSING (rescue.py): the column-wise rescue of
#   ASCII texts with letters, extensions or leading text (rescue_many).
# Each import falls back to phonenumbers.parse (exact, slower) if a release renames it, and
# tests/phone_numbers/test_fast_path.py fails loudly when that happens. Private names may change
# in any release, so the dependency is pinned below the next major version (pyproject.toml),
# which is admitted only once the tests pass on it.
PRIVATE_HELPERS = (
    "_maybe_strip_national_prefix_carrier_code",
    "_VALID_PHONE_NUMBER_PATTERN",
    "_EXTN_PATTERNS_FOR_PARSING",
)

_FINISH_THREADS = min(4, os.cpu_count() or 1)


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
    # 1. The accepted shape.
    batches = shaped_batches(texts)
    placed = np.zeros(n, dtype=bool)
    for batch in batches:
        placed[batch.positions] = True
    # 2. Everything else.
    rest = np.flatnonzero(~placed)
    if len(rest):
        reasons, found, candidates = rescue_many(take(texts, rest))
        result.reason[rest] = reasons
        if candidates:
            batches.append(make_batch(rest[found], pa.array(candidates, type=pa.large_string())))
    # 3. Country calling code, national number, validity.
    _finish_groups(result, _country_code_groups(result, batches, region))
    return result


def _country_code_groups(result: FastResult, batches: list[Batch], region: str) -> list[Group]:
    """The numbers of ``batches`` grouped by country calling code (reasons of the others in ``result``)."""
    groups: list[Group] = []
    for batch in batches:
        plus = np.flatnonzero(batch.has_plus)
        if len(plus):
            from_international(
                result, batch.positions[plus], take(batch.digits, plus), region, groups, after_idd=False
            )
        national = np.flatnonzero(~batch.has_plus)
        if len(national):
            from_default_region(
                result, batch.positions[national], take(batch.digits, national), region, groups, retry=False
            )
    return groups


def _finish_groups(result: FastResult, groups: list[Group]) -> None:
    """Validity and E.164 of every group, into ``result``."""
    # Groups touch disjoint positions and spend their time in Arrow's regex kernels, which release
    # the GIL: finishing them on a few threads uses the other cores.
    merged = merge_small_groups(groups)
    if len(merged) > 1 and _FINISH_THREADS > 1:
        with ThreadPoolExecutor(max_workers=_FINISH_THREADS) as pool:
            for _ in pool.map(lambda group: finish_group(result, group), merged):
                pass
    else:
        for group in merged:
            finish_group(result, group)
