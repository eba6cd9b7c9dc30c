"""The list side of matching: stored numbers cleaned of invisible characters before normalising."""

from __future__ import annotations

import sys
import unicodedata

import pandas as pd
import pytest

from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.phone_numbers import normalize_phone_numbers, stop_list_e164
from airflow_provider_smspartner.phone_numbers.list_numbers import (
    INVISIBLE_CATEGORIES,
    clean_list_numbers,
    list_number_digits,
    may_hold_invisible_characters,
)
from airflow_provider_smspartner.utils.stop_list import list_sha256
from tests.helpers import serve_list_rows

#: Every character of the cleaned categories, as Python's Unicode database has them.
INVISIBLE = [
    chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c)) in INVISIBLE_CATEGORIES
]


def test_every_invisible_character_is_removed_wherever_it_stands():
    numbers = pd.Series(
        [f"+336{ch}12345678" if i % 2 else f"{ch}06 12 34 56 78{ch}" for i, ch in enumerate(INVISIBLE)]
    )
    assert len(INVISIBLE) > 200  # Cc, Cf, Zs, Zl, Zp: a few hundred characters
    assert set(stop_list_e164(numbers)) == {"+33612345678"}


def test_visible_text_is_left_alone():
    numbers = pd.Series(["+33612345678", "06.12.34.56.78", "+33 (0)6 12 34 56 78", "٠٦١٢٣٤٥٦٧٨", None])
    cleaned, changed = clean_list_numbers(numbers)
    assert cleaned is numbers and not changed.any()  # printable ASCII: not even looked at
    assert not may_hold_invisible_characters(pd.Series(numbers[:3].tolist()))
    assert may_hold_invisible_characters(numbers)  # the Arabic-Indic digits: looked at, kept


def test_the_audience_normaliser_is_unchanged():
    # Only the list side cleans: an audience number with a format character stays libphonenumber's.
    assert normalize_phone_numbers(pd.Series(["+336\u200e12345678"]))["phone_e164"].isna().all()


def test_digits_of_unreadable_rows():
    keys = list_number_digits(pd.Series(["+33699999999#", "abc", "1" * 19, None]))
    assert keys.tolist() == [33699999999, -1, -1, -1]


@pytest.mark.parametrize("ch", ["\x00", "\x01", "\x7f", "\x85", "\u200e", "\ufeff", "\u202f", "\u2028"])
def test_the_hooks_list_reader_cleans_and_keeps_the_number_as_sent(monkeypatch, api, ch):
    stored = f"+336{ch}12345678"
    serve_list_rows(monkeypatch, api, [(7, stored, "2026-01-05 10:00:00")])
    frame = SmsPartnerHook().get_stop_list_df()
    assert frame["phone_e164"].tolist() == ["+33612345678"]
    assert frame["phone_number"].tolist() == [stored]  # as sent: the fingerprint is of that
    assert list_sha256(frame["stop_id"].to_numpy(), frame["phone_number"]) == list_sha256([7], [stored])


def test_a_plain_e164_number_libphonenumber_cannot_read_is_kept_as_sent():
    numbers = pd.Series(
        ["06 12 34 56 78", "+99912345678", "junk", None, "+3361234567\u200b8", "+999123"],
        index=[5, 4, 3, 2, 1, 0],
    )
    e164 = stop_list_e164(numbers)
    assert e164.index.equals(numbers.index)
    # +999 is no country code: kept as sent, being a plain E.164 shape; "+999123" is too short.
    assert [None if pd.isna(v) else v for v in e164] == [
        "+33612345678",
        "+99912345678",
        None,
        None,
        "+33612345678",
        None,
    ]
