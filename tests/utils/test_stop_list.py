"""``list_sha256``: the stop list's fingerprint, one definition for the run log and the audit."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from airflow_provider_smspartner.utils.stop_list import list_sha256


def _reference(stop_ids, phone_numbers) -> str:
    """The definition, row by row: ``"{stop_id}\\t{phone_number}\\n"`` in integer stop_id order."""
    rows = sorted(
        zip((int(i) for i in stop_ids), ("" if p is None else p for p in phone_numbers), strict=True),
        key=lambda row: (row[0], row[1].encode()),
    )
    return hashlib.sha256("".join(f"{i}\t{p}\n" for i, p in rows).encode()).hexdigest()


class TestListSha256:
    def test_known_value(self):
        text = "2\t+33612345678\n10\t06 12 34 56 79\n"
        assert (
            list_sha256([10, 2], ["06 12 34 56 79", "+33612345678"])
            == hashlib.sha256(text.encode()).hexdigest()
        )

    def test_empty_list(self):
        assert list_sha256([], []) == hashlib.sha256(b"").hexdigest()

    @pytest.mark.parametrize(
        ("stop_ids", "phone_numbers"),
        [
            ([1, 2, 3], ["+33612345601", "+33612345602", "+33612345603"]),
            ([3, 1, 2], ["c", "a", "b"]),
            ([9, 10, 100, 11], ["x", "y", "z", "w"]),  # integer order, not text order
            ([7, 7, 1], ["b", "a", "z"]),  # a stop id listed twice
            ([5, 4], ["+33 6 12 \u260e", "\U0001f600\x00"]),  # any text, as sent
            ([2, 1], ["x", None]),
            ([2**63 - 1, 1], ["max", "min"]),
        ],
        ids=["sorted", "shuffled", "integer-order", "repeated-id", "non-ascii", "missing", "largest-id"],
    )
    def test_matches_the_definition(self, stop_ids, phone_numbers):
        assert list_sha256(stop_ids, phone_numbers) == _reference(stop_ids, phone_numbers)

    def test_same_list_same_hash_whatever_the_order_or_container(self):
        rng = random.Random(3)
        ids = rng.sample(range(1, 10**9), 5000)
        phones = [f"+336{rng.randrange(10**8):08d}" for _ in ids]
        expected = _reference(ids, phones)
        frame = pd.DataFrame({"stop_id": ids, "phone_number": pd.Series(phones, dtype="str")})
        shuffled = frame.sample(frac=1, random_state=1)
        assert list_sha256(frame["stop_id"], frame["phone_number"]) == expected
        assert list_sha256(shuffled["stop_id"].to_numpy(), shuffled["phone_number"]) == expected
        assert list_sha256(np.asarray(ids), phones) == expected
        assert list_sha256(ids[:-1], phones[:-1]) != expected

    def test_phone_number_as_sent_not_normalised(self):
        assert list_sha256([1], ["06 12 34 56 78"]) != list_sha256([1], ["+33612345678"])

    def test_lengths_must_match(self):
        with pytest.raises(ValueError, match="2 stop ids but 1 phone numbers"):
            list_sha256([1, 2], ["a"])

    def test_a_million_rows(self):
        ids = np.arange(1, 1_000_001)
        phones = pd.Series([f"+3361{i:07d}" for i in range(1_000_000)], dtype="str")
        assert list_sha256(ids, phones) == _reference(ids.tolist(), phones.tolist())

    @pytest.mark.slow  # a child interpreter
    def test_importing_the_module_loads_no_heavy_library(self):
        code = (
            "import sys; import airflow_provider_smspartner.utils.stop_list; "
            "print(sorted(m for m in ('pandas', 'numpy', 'pyarrow') if m in sys.modules))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip().splitlines()[-1] == "[]"
