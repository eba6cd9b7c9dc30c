"""Tests of airflow_provider_smspartner.phone_numbers (pure: no Airflow, no network)."""

from __future__ import annotations

import math
import re
from decimal import Decimal

import numpy as np
import pandas as pd
import phonenumbers
import pytest
from phonenumbers import phonenumberutil

from airflow_provider_smspartner import phone_numbers as module
from airflow_provider_smspartner.phone_numbers import (
    REASONS,
    flag_stopped,
    normalize_phone_numbers,
    phone_text,
)
from airflow_provider_smspartner.phone_numbers._fast_path import rescue, scan
from benchmarks.phone_corpus import JUNK, distinct_ratio, generate_corpus
from tests.phone_numbers.reference import reference_normalize

CORPUS_SIZE = 200_000
CORPUS_SEED = 20240601


@pytest.fixture(scope="module")
def corpus() -> list[object]:
    return generate_corpus(CORPUS_SIZE, seed=CORPUS_SEED)


def one(value: object, region: str = "FR") -> tuple[object, object]:
    """(phone_e164, reason) of a single value, with NA as None."""
    row = normalize_phone_numbers([value], default_region=region).iloc[0]
    return (
        None if pd.isna(row["phone_e164"]) else row["phone_e164"],
        None if pd.isna(row["reason"]) else row["reason"],
    )


class TestPhoneText:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("06 12 34 56 78", "06 12 34 56 78"),
            ("", ""),
            (33612345678, "33612345678"),
            (np.int64(612345678), "612345678"),
            (33612345678.0, "33612345678"),
            (np.float64(612345678.0), "612345678"),
            (-0.0, "0"),
            (6.5, "6.5"),
            (float("inf"), "inf"),
            (float("nan"), None),
            (None, None),
            (pd.NA, None),
            (pd.NaT, None),
            (True, "True"),
            (np.bool_(False), "False"),
            (Decimal("33612345678"), "33612345678"),
        ],
        ids=[
            "str",
            "empty-str",
            "int",
            "numpy-int",
            "excel-float",
            "numpy-float",
            "negative-zero",
            "non-integral-float",
            "inf",
            "nan",
            "none",
            "pd-na",
            "pd-nat",
            "bool",
            "numpy-bool",
            "decimal",
        ],
    )
    def test_conversion(self, value, expected):
        assert phone_text(value) == expected


class TestNormalizePhoneNumbers:
    @pytest.mark.parametrize(
        ("value", "region", "expected"),
        [
            ("06 12 34 56 78", "FR", "+33612345678"),
            ("0612345678", "FR", "+33612345678"),
            ("+33 (0)6 12 34 56 78", "FR", "+33612345678"),
            ("+33 6 12 34 56 78", "FR", "+33612345678"),
            ("0033612345678", "FR", "+33612345678"),
            ("00 33 6 12 34 56 78", "FR", "+33612345678"),
            ("33612345678", "FR", "+33612345678"),
            ("6.12.34.56.78", "FR", "+33612345678"),
            ("06-12-34-56-78", "FR", "+33612345678"),
            ("06/12/34/56/78", "FR", "+33612345678"),
            ("(+33) 6 12 34 56 78", "FR", "+33612345678"),
            (33612345678.0, "FR", "+33612345678"),
            (33612345678, "FR", "+33612345678"),
            (612345678.0, "FR", "+33612345678"),
            ("01 42 68 53 00", "FR", "+33142685300"),
            ("+32 470 12 34 56", "FR", "+32470123456"),
            ("0470 12 34 56", "BE", "+32470123456"),
            ("+41 79 123 45 67", "FR", "+41791234567"),
            ("+49 151 23456789", "FR", "+4915123456789"),
            ("+212 6 12 34 56 78", "FR", "+212612345678"),
            ("+44 7400 123456", "FR", "+447400123456"),
            ("07400 123456", "GB", "+447400123456"),
            ("+1 (201) 555-0123", "FR", "+12015550123"),
            ("+39 06 6982 1234", "FR", "+390669821234"),
            ("+262 692 12 34 56", "FR", "+262692123456"),
            ("\u0660\u0666\u0661\u0662\u0663\u0664\u0665\u0666\u0667\u0668", "FR", "+33612345678"),
            ("\uff10\uff16\uff11\uff12\uff13\uff14\uff15\uff16\uff17\uff18", "FR", "+33612345678"),
            ("06\u00a012\u00a034\u00a056\u00a078", "FR", "+33612345678"),
            ("06 12 34 56 78 ext. 12", "FR", "+33612345678"),
            ("+1 201 555 0123 x12", "FR", "+12015550123"),
            ("+33612345678;ext=12", "FR", "+33612345678"),
            ("Tel: 06 12 34 56 78", "FR", "+33612345678"),
            ("tel:+33-6-12-34-56-78", "FR", "+33612345678"),
        ],
        ids=[
            "fr-national-spaced",
            "fr-national",
            "fr-trunk-zero-in-parentheses",
            "fr-international-spaced",
            "fr-00-idd",
            "fr-00-idd-spaced",
            "fr-bare-country-code",
            "fr-lost-trunk-zero-dots",
            "fr-dashes",
            "fr-slashes",
            "fr-plus-in-parentheses",
            "fr-excel-float",
            "fr-int",
            "fr-float-lost-zero",
            "fr-fixed-line",
            "be-international",
            "be-national-default-be",
            "ch-international",
            "de-international",
            "ma-international",
            "gb-international",
            "gb-national-default-gb",
            "us-international",
            "it-leading-zero",
            "re-shared-country-code",
            "arabic-indic-digits",
            "full-width-digits",
            "no-break-spaces",
            "extension-ext",
            "extension-x",
            "extension-rfc3966",
            "leading-text",
            "rfc3966-uri",
        ],
    )
    def test_valid_shapes(self, value, region, expected):
        assert one(value, region) == (expected, None)
        # The reference (libphonenumber itself) agrees.
        assert reference_normalize([value], region)["phone_e164"].iloc[0] == expected

    @pytest.mark.parametrize(
        ("value", "reason"),
        [
            (None, "empty"),
            (float("nan"), "empty"),
            (pd.NA, "empty"),
            ("", "empty"),
            ("   ", "empty"),
            ("\u00a0\t", "empty"),
            ("abc", "not_a_number"),
            ("N/A", "not_a_number"),
            (True, "not_a_number"),
            ("06\u200912\u200934\u200956\u200978", "not_a_number"),
            ("1", "not_a_number"),
            ("12", "invalid_number"),
            ("+33 6", "too_short"),
            ("001", "too_short"),
            ("+33 6 12 34 56 78 90 12 34 56 78 90", "too_long"),
            ("9" * 300, "too_long"),
            ("+999 612 345 678", "invalid_country_code"),
            ("00999612345678", "invalid_country_code"),
            ("+0612345678", "invalid_country_code"),
            ("06 12 34 56", "invalid_number"),
            ("1-800-FLOWERS", "invalid_number"),
            ("+33 6 12", "invalid_number"),
            ("0012345678", "invalid_number"),
        ],
        ids=[
            "none",
            "nan",
            "pd-na",
            "empty-string",
            "spaces",
            "unicode-whitespace",
            "letters",
            "n-slash-a",
            "bool",
            "thin-spaces-inside",
            "one-digit",
            "two-digits",
            "too-short-nsn",
            "too-short-after-idd",
            "too-long",
            "over-250-characters",
            "unknown-code-after-plus",
            "unknown-code-after-idd",
            "zero-after-plus",
            "fr-too-few-digits",
            "vanity-with-fr-region",
            "plus-too-few-digits",
            "idd-then-zero",
        ],
    )
    def test_reasons(self, value, reason):
        assert one(value) == (None, reason)
        assert reference_normalize([value])["reason"].iloc[0] == reason

    def test_reason_codes_are_the_documented_ones(self):
        assert REASONS == (
            "empty",
            "not_a_number",
            "too_short",
            "too_long",
            "invalid_country_code",
            "invalid_number",
        )

    def test_columns_dtypes_and_order(self):
        values = ["+33612345678", None, "junk", "06 12 34 56 78", 33612345678.0]
        result = normalize_phone_numbers(values)
        assert list(result.columns) == ["input", "phone_e164", "reason"]
        assert result["input"].dtype == object
        assert result["phone_e164"].dtype == pd.StringDtype()
        assert result["reason"].dtype == pd.StringDtype()
        assert isinstance(result.index, pd.RangeIndex)
        assert result["input"].tolist()[:1] == ["+33612345678"]
        assert result["input"].iloc[4] == 33612345678.0
        assert result["phone_e164"].isna().tolist() == [False, True, True, False, False]
        assert result["reason"].isna().tolist() == [True, False, False, True, True]

    @pytest.mark.parametrize(
        "make",
        [
            list,
            tuple,
            lambda v: np.array(v, dtype=object),
            lambda v: pd.Series(v, dtype=object),
            lambda v: pd.Series(v, dtype=object, index=[f"row{i}" for i in range(len(v))]),
            lambda v: pd.Index(v, dtype=object),
            iter,
        ],
        ids=["list", "tuple", "numpy-object", "series", "series-custom-index", "index", "iterator"],
    )
    def test_containers(self, make):
        values = ["06 12 34 56 78", None, 33612345678, float("nan"), pd.NA, "abc", 612345678.0]
        container = make(values)
        result = normalize_phone_numbers(container)
        expected_index = container.index if isinstance(container, pd.Series) else pd.RangeIndex(len(values))
        pd.testing.assert_index_equal(result.index, expected_index)
        assert result["phone_e164"].tolist() == [
            "+33612345678",
            pd.NA,
            "+33612345678",
            pd.NA,
            pd.NA,
            pd.NA,
            "+33612345678",
        ]
        assert result["reason"].tolist() == [
            pd.NA,
            "empty",
            pd.NA,
            "empty",
            "empty",
            "not_a_number",
            pd.NA,
        ]
        pd.testing.assert_frame_equal(result, reference_normalize(make(values)))

    @pytest.mark.parametrize(
        "series",
        [
            pd.Series([33612345678, 612345678, 0, -1], dtype="int64", index=[7, 5, 3, 1]),
            pd.Series([33612345678, 2**64 - 1], dtype="uint64"),
            pd.Series([33612345678.0, np.nan, 6.5, np.inf, -0.0, 1e20]),
            pd.Series([612345678.0, 1.5], dtype="float32"),
            pd.Series([33612345678, None, 612345678], dtype="Int64", index=list("abc")),
            pd.Series([33612345678.0, None, 6.5], dtype="Float64"),
            pd.Series(["06 12 34 56 78", None, "+33612345678"], dtype="string"),
            pd.Series(["06 12 34 56 78", None, "+33612345678"], dtype="str"),
            pd.Series(["0612345678", "0612345678", None], dtype="category"),
            pd.Series([True, False]),
            pd.Series(
                [
                    Decimal("33612345678"),
                    True,
                    np.int32(612345678),
                    2**70,
                    b"0612345678",
                    pd.NaT,
                    1,
                    1.0,
                    "1",
                ],
                dtype=object,
            ),
            pd.Series([], dtype=object),
        ],
        ids=[
            "int64-custom-index",
            "uint64",
            "float-with-nan",
            "float32",
            "nullable-int-with-na",
            "nullable-float-with-na",
            "string-dtype",
            "str-dtype",
            "categorical",
            "bool",
            "object-mixed-types",
            "empty",
        ],
    )
    def test_dtypes_match_the_reference(self, series):
        result = normalize_phone_numbers(series)
        pd.testing.assert_frame_equal(result, reference_normalize(series))
        pd.testing.assert_index_equal(result.index, series.index)
        pd.testing.assert_series_equal(result["input"], series.astype(object), check_names=False)

    def test_numpy_arrays_of_numbers(self):
        ints = np.array([33612345678, 612345678], dtype=np.int64)
        floats = np.array([33612345678.0, np.nan])
        assert normalize_phone_numbers(ints)["phone_e164"].tolist() == ["+33612345678", "+33612345678"]
        assert normalize_phone_numbers(floats)["reason"].tolist() == [pd.NA, "empty"]

    @pytest.mark.parametrize(
        "values",
        [["0612345678", ""], ["+33 6 12 34 56 78", "", ""], ["", "06 12 34 56 78", "   "]],
        ids=["empty-last", "two-empties-last", "blank-around"],
    )
    def test_empty_strings_next_to_numbers(self, values):
        # Regression: per-string byte counts once lost the last digit before trailing "".
        result = normalize_phone_numbers(values)
        assert result["phone_e164"].eq("+33612345678").any()
        pd.testing.assert_frame_equal(result, reference_normalize(values))

    def test_repeated_values_are_all_answered(self):
        values = ["06 12 34 56 78"] * 1000 + [None] * 10 + ["abc"] * 5
        result = normalize_phone_numbers(values)
        assert (result["phone_e164"].iloc[:1000] == "+33612345678").all()
        assert (result["reason"].iloc[1000:1010] == "empty").all()
        assert (result["reason"].iloc[1010:] == "not_a_number").all()

    def test_region_is_case_insensitive(self):
        assert one("0470 12 34 56", "be") == ("+32470123456", None)

    def test_unknown_region_raises(self):
        with pytest.raises(ValueError, match="default_region 'XX'"):
            normalize_phone_numbers(["0612345678"], default_region="XX")

    def test_a_single_string_is_rejected(self):
        with pytest.raises(TypeError, match="not a string"):
            normalize_phone_numbers("0612345678")

    def test_two_dimensional_arrays_are_rejected(self):
        with pytest.raises(ValueError, match="one-dimensional"):
            normalize_phone_numbers(np.array([["0612345678"]]))

    def test_dataframes_are_rejected(self):
        with pytest.raises(TypeError, match="one column"):
            normalize_phone_numbers(pd.DataFrame({"a": ["0612345678"]}))


class TestCorpus:
    def test_is_deterministic(self):
        # Compared through repr: NaN != NaN.
        first, second = generate_corpus(2_000, seed=7), generate_corpus(2_000, seed=7)
        assert [repr(v) for v in first] == [repr(v) for v in second]

    def test_mixes_the_required_shapes(self, corpus):
        texts = [v for v in corpus if isinstance(v, str)]
        joined = "\n".join(texts)
        assert len(corpus) >= 200_000
        assert 0.7 <= distinct_ratio(corpus) < 1.0  # repeats, but mostly distinct
        assert any(isinstance(v, float) and v.is_integer() and v > 1e8 for v in corpus)  # Excel floats
        assert any(type(v) is int for v in corpus)
        assert any(v is None for v in corpus) and any(v is pd.NA for v in corpus)
        assert any(isinstance(v, float) and math.isnan(v) for v in corpus)
        for marker in (
            "+33 (0)",
            "0033",
            "\u00a0",
            "\u2009",
            "\u0660",
            "\uff10",
            "ext. 12",
            " x12",
            ";ext=12",
            "1-800-FLOWERS",
        ):
            assert marker in joined, marker
        prefixes = {t.split()[0] for t in texts if t.startswith("+") and " " in t}
        assert {"+32", "+41", "+49", "+212", "+44", "+34", "+39", "+1", "+31", "+351"} <= prefixes
        assert set(JUNK) & set(v for v in corpus if isinstance(v, str))


def _mutated(values: list[object]) -> list[str]:
    """Each value's text with up to two random edits: a digit, a separator, an extension label, a
    prefix or non-ASCII digit inserted, or a character replaced (seeded: the same every run)."""
    rng = np.random.default_rng(3)
    pieces = [
        *"0123456789" * 3,
        *"+ ().-/xX#;,~*_eE\t",
        "\u00a0",
        "\u0663",
        "(0)",
        " ext. ",
        ";ext=",
        "00",
        "+",
    ]
    mutated = []
    for value in values:
        text = phone_text(value) or ""
        for _ in range(int(rng.integers(0, 3))):
            i = int(rng.integers(0, len(text) + 1))
            text = text[:i] + pieces[int(rng.integers(len(pieces)))] + text[i + int(rng.integers(0, 2)) :]
        mutated.append(text)
    return mutated


class TestExactness:
    """The fast path against the per-value libphonenumber loop, on every row.

    The full sweeps (the 200,000-value corpus, seven other default regions, mutated numbers: about
    50 s of libphonenumber calls) are in the slow tier (``make test-all``); ``make test`` keeps a
    sample of each kind, which a change to the fast path breaks first.
    """

    @pytest.mark.parametrize("region", ["FR", "US"])
    def test_a_sample_matches_libphonenumber(self, region):
        values = generate_corpus(10_000, seed=CORPUS_SEED + len(region))
        pd.testing.assert_frame_equal(
            normalize_phone_numbers(values, region), reference_normalize(values, region)
        )

    @pytest.mark.slow  # a 200,000-value sweep
    def test_corpus_matches_libphonenumber(self, corpus):
        result = normalize_phone_numbers(corpus, default_region="FR")
        pd.testing.assert_frame_equal(result, reference_normalize(corpus, default_region="FR"))

    @pytest.mark.slow  # seven 15,000-value sweeps
    @pytest.mark.parametrize("region", ["GB", "US", "DE", "BE", "IT", "GG", "AR"])
    def test_other_default_regions(self, region):
        values = generate_corpus(15_000, seed=sum(map(ord, region)))
        pd.testing.assert_frame_equal(
            normalize_phone_numbers(values, region), reference_normalize(values, region)
        )

    @pytest.mark.parametrize("count", [2_000, pytest.param(20_000, marks=pytest.mark.slow, id="20000-slow")])
    def test_mutated_numbers(self, count):
        values = _mutated(generate_corpus(count, seed=99))
        for region in ("FR", "US"):
            pd.testing.assert_frame_equal(
                normalize_phone_numbers(values, region), reference_normalize(values, region)
            )

    def test_libphonenumber_is_rarely_called_per_value(self, corpus, monkeypatch):
        """Guard the speed: almost every distinct value is decided column-wise.

        The fast path leaves a few kinds of text to ``phonenumbers.parse`` by design (reproducing
        them bought under 5 % of the benchmark's time): texts still non-ASCII after the Unicode
        rewriting, with a newline, over 100 characters, RFC 3966 parameters or "/ x". They are
        about 0.5 % of the distinct texts of this corpus; any other text is held to 0.1 %.
        """
        calls = []
        original = module._per_value_code

        def counting(text, region):
            calls.append(text)
            return original(text, region)

        monkeypatch.setattr(module, "_per_value_code", counting)
        normalize_phone_numbers(corpus)
        distinct = len({phone_text(v) for v in corpus})
        by_design = [
            text
            for text in calls
            if not text.isascii()
            or len(text) > scan.MAX_FAST_TEXT_LENGTH
            or re.search(rescue._NOT_RESCUED, text)
        ]
        assert len(calls) - len(by_design) < 0.001 * distinct
        assert len(calls) < 0.01 * distinct

    def test_unicode_separators_are_libphonenumber_punctuation(self):
        # The fast path rewrites these to spaces: that is only exact for characters that
        # libphonenumber treats as punctuation, and that are not extension labels.
        punctuation = phonenumberutil._SEPARATOR_PATTERN  # "[" + _VALID_PUNCTUATION + "]+"
        for char in scan.UNICODE_SEPARATORS:
            assert punctuation.fullmatch(char), hex(ord(char))
            assert (
                phonenumbers.parse(f"06{char}12{char}34{char}56{char}78", "FR").national_number == 612345678
            )


def stop_list(rows: list[tuple[int, str, str]], with_e164: list[str | None] | None = None) -> pd.DataFrame:
    frame = pd.DataFrame(rows, columns=["stop_id", "phone_number", "created_at"])
    frame["created_at"] = pd.to_datetime(frame["created_at"], utc=True)
    if with_e164 is not None:
        frame["phone_e164"] = pd.array(with_e164, dtype="string")
    return frame


class TestFlagStopped:
    @pytest.fixture
    def contacts(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "name": ["Ann", "Bob", "Cid", "Dee", "Eve", "Fay"],
                "mobile": [
                    "06 12 34 56 78",
                    "+32 470 12 34 56",
                    "junk",
                    None,
                    "0033612345678",
                    "07 81 22 33 44",
                ],
            },
            index=[50, 40, 30, 20, 10, 0],
        )

    def test_flags_matches_on_e164(self, contacts):
        stops = stop_list(
            [
                (1, "+33612345678", "2024-03-01 10:00:00"),
                (2, "0032470123456", "2024-01-05 08:30:00"),
                (3, "+33699999999", "2024-02-01 00:00:00"),
            ]
        )
        result = flag_stopped(contacts, stops, "mobile")
        assert result["is_stopped"].tolist() == [True, True, False, False, True, False]
        assert result["stop_id"].tolist() == [1, 2, pd.NA, pd.NA, 1, pd.NA]
        assert result["phone_e164"].tolist() == [
            "+33612345678",
            "+32470123456",
            pd.NA,
            pd.NA,
            "+33612345678",
            "+33781223344",
        ]
        assert result["stopped_at"].iloc[0] == pd.Timestamp("2024-03-01 10:00:00", tz="UTC")
        assert pd.isna(result["stopped_at"].iloc[2])

    def test_keeps_index_order_and_columns_and_sets_dtypes(self, contacts):
        result = flag_stopped(contacts, stop_list([(1, "+33612345678", "2024-03-01")]), "mobile")
        pd.testing.assert_index_equal(result.index, contacts.index)
        pd.testing.assert_frame_equal(result[["name", "mobile"]], contacts)
        assert list(result.columns) == ["name", "mobile", "phone_e164", "is_stopped", "stop_id", "stopped_at"]
        assert result["phone_e164"].dtype == pd.StringDtype()
        assert result["is_stopped"].dtype == bool
        assert result["stop_id"].dtype == pd.Int64Dtype()
        assert isinstance(result["stopped_at"].dtype, pd.DatetimeTZDtype)
        assert str(result["stopped_at"].dt.tz) == "UTC"

    def test_does_not_modify_the_contacts(self, contacts):
        before = contacts.copy()
        flag_stopped(contacts, stop_list([(1, "+33612345678", "2024-03-01")]), "mobile")
        pd.testing.assert_frame_equal(contacts, before)

    def test_earliest_created_at_wins(self, contacts):
        stops = stop_list(
            [
                (7, "+33612345678", "2024-05-01 00:00:00"),
                (5, "06 12 34 56 78", "2023-12-24 18:00:00"),
                (9, "0033612345678", "2024-01-01 00:00:00"),
            ]
        )
        result = flag_stopped(contacts, stops, "mobile")
        assert result.loc[50, "stop_id"] == 5
        assert result.loc[50, "stopped_at"] == pd.Timestamp("2023-12-24 18:00:00", tz="UTC")

    def test_invalid_numbers_are_never_stopped(self, contacts):
        # An invalid stop-list number must not match the invalid contacts (NA never equals NA).
        stops = stop_list([(1, "junk", "2024-01-01"), (2, "", "2024-01-02")])
        result = flag_stopped(contacts, stops, "mobile")
        assert not result["is_stopped"].any()
        assert result.loc[30, "phone_e164"] is pd.NA
        assert result.loc[20, "phone_e164"] is pd.NA

    def test_uses_given_phone_e164_and_fills_gaps(self, contacts):
        stops = stop_list(
            [(1, "something unparsable", "2024-01-01"), (2, "+32 470 12 34 56", "2024-01-02")],
            with_e164=["+33612345678", None],
        )
        result = flag_stopped(contacts, stops, "mobile")
        assert result.loc[50, "stop_id"] == 1  # from the given phone_e164
        assert result.loc[40, "stop_id"] == 2  # normalised from phone_number

    def test_naive_and_string_timestamps_are_utc(self, contacts):
        stops = pd.DataFrame(
            {
                "stop_id": [1, 2],
                "phone_number": ["+33612345678", "+32470123456"],
                "created_at": ["2024-03-01 10:00:00", "2024-02-01"],
            }
        )
        result = flag_stopped(contacts, stops, "mobile")
        assert result.loc[50, "stopped_at"] == pd.Timestamp("2024-03-01 10:00", tz="UTC")
        assert result.loc[40, "stopped_at"] == pd.Timestamp("2024-02-01", tz="UTC")

    def test_empty_stop_list(self, contacts):
        stops = pd.DataFrame({"stop_id": pd.Series([], dtype="int64"), "phone_number": [], "created_at": []})
        result = flag_stopped(contacts, stops, "mobile")
        assert not result["is_stopped"].any()
        assert result["stop_id"].isna().all() and result["stopped_at"].isna().all()

    def test_duplicate_index_labels(self):
        contacts = pd.DataFrame({"mobile": ["0612345678", "0699999999"]}, index=[1, 1])
        result = flag_stopped(contacts, stop_list([(4, "+33612345678", "2024-01-01")]), "mobile")
        assert result["is_stopped"].tolist() == [True, False]

    def test_other_default_region(self):
        contacts = pd.DataFrame({"mobile": ["0470 12 34 56"]})
        result = flag_stopped(
            contacts, stop_list([(4, "+32470123456", "2024-01-01")]), "mobile", default_region="BE"
        )
        assert result["is_stopped"].tolist() == [True]

    def test_missing_phone_column_names_it_and_lists_the_columns(self, contacts):
        with pytest.raises(ValueError, match=r"'phone'.*available columns: \['name', 'mobile'\]"):
            flag_stopped(contacts, stop_list([]), "phone")

    def test_stop_list_without_required_columns(self, contacts):
        with pytest.raises(ValueError, match=r"lacks column\(s\) \['created_at'\]"):
            flag_stopped(contacts, pd.DataFrame({"stop_id": [1], "phone_number": ["+33612345678"]}), "mobile")


class TestUnencodableText:
    """Any Python string gets an E.164 number or a reason, never an exception (fail-closed issue)."""

    NASTY = [
        "\ud83d",  # a lone high surrogate (a badly decoded emoji)
        "\udc00",
        "06 12 34 56 78\udc00",  # libphonenumber drops the trailing junk: valid
        "\ud83d\ude00",  # a surrogate pair as two code units
        "+33\ud83d612345678",
        "a\x00b",
        "\x00",
        "06\x0012\x0034\x0056\x0078",
        "\uffff",
        "+33612345678",
        None,
        612345678,
    ]

    @pytest.mark.parametrize(
        "container",
        [list, lambda v: pd.Series(v, dtype=object), lambda v: pd.Series(v, dtype="string[python]")],
        ids=["list", "object-series", "python-string-series"],
    )
    def test_agrees_with_libphonenumber_and_never_raises(self, container):
        values = (
            self.NASTY
            if container is list
            else [v if v is None or isinstance(v, str) else str(v) for v in self.NASTY]
        )
        result = normalize_phone_numbers(container(values))
        pd.testing.assert_frame_equal(result, reference_normalize(container(values)))
        assert result["phone_e164"].notna().sum() + result["reason"].notna().sum() == len(values)

    def test_lone_surrogate_is_not_a_number(self):
        assert normalize_phone_numbers(["\ud83d"])["reason"].iloc[0] == "not_a_number"
