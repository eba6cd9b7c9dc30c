"""Tests of keyed hashing: phone_numbers.hash_phone_numbers and phone_numbers.hashing.hash_e164.

The oracle is written out here: libphonenumber's E.164 (``tests.helpers.oracle_e164``) hashed by
Python's own ``hmac.new(key, e164.encode(), sha256).hexdigest()``, one value at a time.
"""

from __future__ import annotations

import hashlib
import hmac

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from airflow_provider_smspartner.phone_numbers import hash_phone_numbers, normalize_phone_numbers
from airflow_provider_smspartner.phone_numbers.hashing import hash_e164
from benchmarks.phone_corpus import generate_corpus
from tests.helpers import oracle_e164

KEY = "smspartner-test-hash-key-0123456789"
NON_ASCII_KEY = "clé-très-secrète-日本語-0123456789abcdef"

#: Every shape a contact table holds: national, international, 00-prefixed, spaced, other regions,
#: ints and Excel floats, junk, blanks and missing values, the same number several ways.
MIXED = [
    "06 12 34 56 78",
    "+33 6 12 34 56 78",
    "0033612345678",
    "0612345678",
    "+33 (0)6 12 34 56 78",
    "6.12.34.56.78",
    33612345678,
    612345678,
    33612345678.0,
    np.int64(33698765432),
    "+41 79 123 45 67",
    "+1 650-253-0000",
    "+44 20 7946 0958",
    "+81 3-1234-5678",
    "+32 470 12 34 56",
    "+6834002",
    "\uff10\uff16\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18",  # full-width digits
    "06 12 34 56 78 ext. 12",
    "abc",
    "",
    "   ",
    None,
    float("nan"),
    pd.NA,
    True,
    "+999 123",
    "061234",
    "0612345678901234567890",
    "06\ud83d12345678",  # a lone surrogate: does not encode as UTF-8
]


def expected_hash(value: object, key: str | bytes, region: str = "FR") -> str | None:
    e164 = oracle_e164(value, region)
    if e164 is None:
        return None
    raw = key.encode() if isinstance(key, str) else key
    return hmac.new(raw, e164.encode(), hashlib.sha256).hexdigest()


def hashes(frame: pd.DataFrame) -> list[str | None]:
    return [None if pd.isna(h) else h for h in frame["phone_hash"]]


class TestHashPhoneNumbers:
    def test_known_answer(self):
        # Computed with OpenSSL: printf '+33612345678' | openssl dgst -sha256 -hmac "$KEY"
        frame = hash_phone_numbers(["06 12 34 56 78"], KEY)
        assert frame["phone_hash"].tolist() == [
            "a5709788e395a1d1b45408d32c403e038e68b5cca67290aaefe77bf0d4113bc0"
        ]

    def test_mixed_values_match_hmac_over_libphonenumber(self):
        frame = hash_phone_numbers(MIXED, KEY)
        assert hashes(frame) == [expected_hash(v, KEY) for v in MIXED]

    def test_corpus_matches_hmac_over_libphonenumber(self):
        values = generate_corpus(20_000, seed=22)
        frame = hash_phone_numbers(values, KEY)
        assert hashes(frame) == [expected_hash(v, KEY) for v in values]

    @pytest.mark.parametrize(
        ("region", "values"),
        [
            ("BE", ["0470 12 34 56", "+33 6 12 34 56 78", "0032 470 12 34 56"]),
            ("US", ["(650) 253-0000", "650.253.0000", "011 33 6 12 34 56 78"]),
            ("gb", ["020 7946 0958", "07400 123456", "+44 7400 123456"]),
        ],
        ids=["BE", "US", "gb-lower-case"],
    )
    def test_other_default_regions(self, region, values):
        frame = hash_phone_numbers(values, KEY, default_region=region)
        assert hashes(frame) == [expected_hash(v, KEY, region.upper()) for v in values]
        assert frame["phone_hash"].notna().all()

    def test_same_number_any_spelling_same_hash(self):
        frame = hash_phone_numbers(["06 12 34 56 78", "+33612345678", "0033 6 12 34 56 78", 33612345678], KEY)
        assert frame["phone_hash"].nunique() == 1

    def test_output_shape(self):
        frame = hash_phone_numbers(MIXED, KEY)
        assert list(frame.columns) == ["input", "phone_hash", "reason"]
        assert frame["phone_hash"].dtype == pd.StringDtype()
        valid = frame["phone_hash"].dropna()
        assert len(valid) > 10
        assert valid.str.fullmatch(r"[0-9a-f]{64}").all()

    def test_reason_and_input_as_normalize_phone_numbers(self):
        frame = hash_phone_numbers(MIXED, KEY)
        normalized = normalize_phone_numbers(MIXED)
        pd.testing.assert_series_equal(frame["reason"], normalized["reason"])
        pd.testing.assert_series_equal(frame["input"], normalized["input"])
        assert (frame["phone_hash"].isna() == normalized["phone_e164"].isna()).all()

    def test_order_and_index_kept(self):
        index = pd.Index(["z", "a", "a", "m", "b"])
        values = pd.Series(["+41 79 123 45 67", None, "06 12 34 56 78", "junk", "0698765432"], index=index)
        frame = hash_phone_numbers(values, KEY)
        assert frame.index.equals(index)
        assert frame["input"].tolist() == values.tolist()
        assert hashes(frame) == [expected_hash(v, KEY) for v in values]

    def test_str_and_bytes_keys_agree(self):
        by_text = hash_phone_numbers(MIXED, NON_ASCII_KEY)
        by_bytes = hash_phone_numbers(MIXED, NON_ASCII_KEY.encode("utf-8"))
        pd.testing.assert_frame_equal(by_text, by_bytes)

    def test_non_ascii_key_is_its_utf8_bytes(self):
        # Computed with OpenSSL: -mac HMAC -macopt hexkey:<the key's UTF-8 bytes in hex>
        frame = hash_phone_numbers(["+33612345678"], NON_ASCII_KEY)
        assert frame["phone_hash"].tolist() == [
            "3c68c5b57a058c32e49390193f9963a8809748ec529cb12e7c2dedf2e0a1e3dc"
        ]
        assert hashes(hash_phone_numbers(MIXED, NON_ASCII_KEY)) == [
            expected_hash(v, NON_ASCII_KEY) for v in MIXED
        ]

    @pytest.mark.parametrize("size", [1, 63, 64, 65, 200], ids=lambda s: f"{s}-byte-key")
    def test_keys_around_the_block_size(self, size):
        # HMAC hashes keys longer than SHA-256's 64-byte block first and pads shorter ones.
        key = bytes(range(256))[:size]
        assert hashes(hash_phone_numbers(MIXED, key)) == [expected_hash(v, key) for v in MIXED]

    def test_different_keys_different_hashes(self):
        one = hash_phone_numbers(["0612345678"], KEY)["phone_hash"].iloc[0]
        other = hash_phone_numbers(["0612345678"], KEY + "x")["phone_hash"].iloc[0]
        assert one != other

    @pytest.mark.parametrize(
        ("key", "error", "match"),
        [
            ("", ValueError, "empty"),
            (b"", ValueError, "empty"),
            (12345, TypeError, "str or bytes"),
            ("key-\ud800-0123456789", ValueError, "UTF-8"),
        ],
        ids=["empty-str", "empty-bytes", "int", "lone-surrogate"],
    )
    def test_bad_key_refused(self, key, error, match):
        with pytest.raises(error, match=match):
            hash_phone_numbers(["0612345678"], key)

    def test_region_checked_as_normalize_phone_numbers(self):
        with pytest.raises(ValueError, match="default_region"):
            hash_phone_numbers(["0612345678"], KEY, default_region="XX")


class TestHashE164:
    """Every case both ways: de-duplicated (``repeats``, the default) or hashed value by value."""

    @pytest.fixture(params=[True, False], ids=["repeats", "distinct"])
    def repeats(self, request) -> bool:
        return request.param

    def test_missing_in_missing_out(self, repeats):
        result = hash_e164(["+33612345678", None, float("nan"), pd.NA], KEY, repeats=repeats)
        assert result.iloc[0] == expected_hash("+33612345678", KEY)
        assert result.iloc[1:].isna().all()
        assert result.index.equals(pd.RangeIndex(4))

    @pytest.mark.parametrize(
        "values",
        [
            pd.Series(["+33612345678", None, "+41791234567"], dtype="string"),
            pd.Series(["+33612345678", None, "+41791234567"], dtype=object),
            np.array(["+33612345678", None, "+41791234567"], dtype=object),
            pa.chunked_array([["+33612345678"], [None, "+41791234567"]]),
            ("+33612345678", None, "+41791234567"),
        ],
        ids=["string-series", "object-series", "ndarray", "arrow-chunked", "tuple"],
    )
    def test_containers(self, repeats, values):
        result = hash_e164(values, KEY, repeats=repeats)
        assert result.dtype == pd.StringDtype()
        assert [None if pd.isna(h) else h for h in result] == [
            expected_hash("+33612345678", KEY),
            None,
            expected_hash("+41791234567", KEY),
        ]

    def test_series_index_kept_and_repeats_hashed_alike(self, repeats):
        values = pd.Series(["+33612345678", "+33612345678", None, "+33698765432"], index=[7, 3, 3, 0])
        result = hash_e164(values, KEY, repeats=repeats)
        assert result.index.equals(values.index)
        assert result.iloc[0] == result.iloc[1] == expected_hash("+33612345678", KEY)
        assert result.iloc[3] == expected_hash("+33698765432", KEY)

    def test_empty(self, repeats):
        assert len(hash_e164([], KEY, repeats=repeats)) == 0

    @pytest.mark.parametrize("text", ["0612345678", "+33 6 12 34 56 78", "33612345678", "+0612345678", ""])
    def test_text_not_e164_refused_without_echo(self, repeats, text):
        with pytest.raises(ValueError, match=r"position 1 is not an E\.164 text") as excinfo:
            hash_e164(["+33612345678", text], KEY, repeats=repeats)
        with pytest.raises(ValueError, match=r"position 2 is not an E\.164 text"):  # after a gap
            hash_e164(["+33612345678", None, text, "+33612345678"], KEY, repeats=repeats)
        assert text == "" or text not in str(excinfo.value)

    def test_not_text_refused(self):
        with pytest.raises(TypeError, match=r"E\.164 texts"):
            hash_e164([33612345678], KEY)
        with pytest.raises(TypeError, match="not a single string"):
            hash_e164("+33612345678", KEY)
