"""Deterministic corpus of messy phone-number cells, shared by the tests and the benchmark.

``generate_corpus(n, seed)`` mixes what contact tables really hold: French numbers in every
habit (``06 12 34 56 78``, ``+33 (0)6…``, ``0033…``, ``33612345678``, ``6.12.34.56.78``, dashes,
Excel floats and ints), numbers from many regions in national and international forms (built
from libphonenumber's example numbers with random digit mutations, so some are valid and some
not), and junk: letters, blanks, ``None``/NaN/``pd.NA``, Unicode digits and spaces, extensions,
vanity numbers, too short / too long, unknown country codes. A share of the values repeats
earlier ones, as contact tables do.
"""

from __future__ import annotations

import math
import random
from decimal import Decimal
from functools import cache
from typing import Any

import pandas as pd
import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberType

# (region, weight): France dominates, as in a French marketing contact table.
REGION_WEIGHTS: tuple[tuple[str, float], ...] = (
    ("FR", 50.0),
    ("BE", 5.0),
    ("CH", 4.0),
    ("DE", 4.0),
    ("MA", 3.0),
    ("GB", 3.0),
    ("ES", 3.0),
    ("IT", 3.0),
    ("US", 3.0),
    ("NL", 2.0),
    ("PT", 2.0),
    ("LU", 1.0),
    ("CA", 1.0),
    ("RE", 1.0),
    ("GP", 1.0),
    ("DZ", 1.0),
    ("TN", 1.0),
    ("SN", 1.0),
    ("CI", 1.0),
    ("PL", 0.5),
    ("IE", 0.5),
    ("AT", 0.5),
    ("SE", 0.5),
    ("NO", 0.5),
    ("FI", 0.5),
    ("DK", 0.5),
    ("GG", 0.3),
    ("JE", 0.3),
    ("IM", 0.3),
    ("YT", 0.3),
    ("MF", 0.2),
    ("VA", 0.2),
    ("EH", 0.2),
    ("AX", 0.2),
    ("RU", 0.5),
    ("KZ", 0.2),
    ("AU", 0.5),
    ("BR", 0.5),
    ("AR", 0.3),
    ("MX", 0.3),
    ("CN", 0.5),
    ("JP", 0.3),
    ("IN", 0.5),
    ("JM", 0.2),
    ("PR", 0.2),
)

_TYPES: tuple[tuple[int, float], ...] = (
    (PhoneNumberType.MOBILE, 62.0),
    (PhoneNumberType.FIXED_LINE, 28.0),
    (PhoneNumberType.TOLL_FREE, 3.0),
    (PhoneNumberType.VOIP, 2.0),
    (PhoneNumberType.PREMIUM_RATE, 1.5),
    (PhoneNumberType.SHARED_COST, 1.0),
    (PhoneNumberType.PERSONAL_NUMBER, 1.0),
    (PhoneNumberType.UAN, 1.0),
    (PhoneNumberType.PAGER, 0.3),
    (PhoneNumberType.VOICEMAIL, 0.2),
)

# Fixed junk cells, as found in exports and web forms.
JUNK: tuple[Any, ...] = (
    "",
    " ",
    "   ",
    "\t",
    "\u00a0",
    None,
    float("nan"),
    pd.NA,
    "abc",
    "N/A",
    "n/a",
    "none",
    "null",
    "-",
    "?",
    "0",
    "00",
    "12",
    "123",
    "+",
    "+3",
    "+33",
    "++33612345678",
    "tel:+33612345678",
    "tel:0612345678;phone-context=+33",
    "TEL: 06 12 34 56 78",
    "Tél : 06 12 34 56 78",
    "06 12 34 56 78 / 06 98 76 54 32",
    "06 12 34 56 78 x12",
    "+1 201 555 0123 ext. 12",
    "+33612345678;ext=12",
    "1-800-FLOWERS",
    "+1 800 FLOWERS",
    "0800 PIZZA",
    "jean.dupont@example.com",
    True,
    False,
    6.5,
    -612345678,
    float("inf"),
    Decimal("33612345678"),
    "+0612345678",
    "00 0612345678",
    "+999 612 345 678",
    "00999612345678",
    "+800 1234 5678",
    "+882 1234 5678",
    "+33 6 12",
    "+33 6 12 34 56 78 90 12 34 56 78 90",
    "9" * 300,
    "06 12 34 56 78\n",
    "06_12_34_56_78",
    "06*12*34*56*78",
    "+33 6 12 34 56 78 #",
)

_SEPARATORS = (" ", " ", " ", ".", "-", "", "/")
_UNICODE_DIGITS = (0x0660, 0x06F0, 0xFF10, 0x0966)  # Arabic-Indic, Persian, full-width, Devanagari
_UNICODE_SPACES = ("\u00a0", "\u2009", "\u202f", "\u3000", "\u200b", "\u2011")
_EXTENSIONS = (" ext. 12", " x12", ";ext=12", " #12", ",,12", " poste 12", " ext 1234", "#")


@cache
def _templates() -> dict[str, list[tuple[int, list[tuple[int, str]]]]]:
    """Per region: the example national significant numbers of each type, with their weights."""
    out: dict[str, list[tuple[int, list[tuple[int, str]]]]] = {}
    for region, _ in REGION_WEIGHTS:
        by_type: list[tuple[int, list[tuple[int, str]]]] = []
        for num_type, _weight in _TYPES:
            example = phonenumbers.example_number_for_type(region, num_type)
            if example is None:
                continue
            nsn = phonenumbers.national_significant_number(example)
            by_type.append((num_type, [(example.country_code, nsn)]))
        out[region] = by_type
    return out


@cache
def _national_prefix(region: str) -> str:
    metadata = PhoneMetadata.metadata_for_region(region)
    return (metadata.national_prefix or "") if metadata is not None else ""


def _mutate(rng: random.Random, nsn: str) -> str:
    """Keep the leading digits of an example number and randomise the rest (realistic numbers)."""
    keep = rng.randint(1, min(3, len(nsn)))
    digits = nsn[:keep] + "".join(rng.choice("0123456789") for _ in range(len(nsn) - keep))
    roll = rng.random()
    if roll < 0.04:  # one digit too few
        i = rng.randrange(len(digits))
        digits = digits[:i] + digits[i + 1 :]
    elif roll < 0.08:  # one digit too many
        i = rng.randrange(len(digits) + 1)
        digits = digits[:i] + rng.choice("0123456789") + digits[i:]
    elif roll < 0.11:  # wrong leading digit
        digits = rng.choice("0123456789") + digits[1:]
    return digits


def _group(rng: random.Random, digits: str, separator: str) -> str:
    if not separator:
        return digits
    size = rng.choice((2, 2, 3, 4))
    first = rng.choice((1, 2, size))
    parts = [digits[:first]] + [digits[i : i + size] for i in range(first, len(digits), size)]
    return separator.join(p for p in parts if p)


def _format(rng: random.Random, cc: int, nsn: str, region: str) -> Any:
    """Write one number the way people and spreadsheets do."""
    sep = rng.choice(_SEPARATORS)
    grouped = _group(rng, nsn, sep)
    trunk = _national_prefix(region)
    style = rng.random()
    if style < 0.22:  # national, e.g. 06 12 34 56 78
        return (trunk + (sep if sep and rng.random() < 0.1 else "")) + grouped if trunk else grouped
    if style < 0.40:  # +33612345678
        return f"+{cc}{nsn}"
    if style < 0.55:  # +33 6 12 34 56 78 / +33-6-12-34-56-78
        return f"+{cc}{sep or ' '}{grouped}"
    if style < 0.60:  # +33 (0)6 12 34 56 78
        return f"+{cc} ({trunk or '0'}){grouped}"
    if style < 0.65:  # (+33) 6 12 34 56 78
        return f"(+{cc}) {grouped}"
    if style < 0.72:  # 0033612345678 / 00 33 6 12 34 56 78
        return f"00{cc}{nsn}" if rng.random() < 0.5 else f"00 {cc} {grouped}"
    if style < 0.79:  # 33612345678 (webhook msisdn style, or a lost "+")
        return f"{cc}{nsn}"
    if style < 0.82:  # 6.12.34.56.78: trunk zero lost
        return grouped
    if style < 0.88:  # Excel float: 33612345678.0, or 612345678.0 when the zero was lost
        return float(int(f"{cc}{nsn}")) if rng.random() < 0.7 else float(int(nsn))
    if style < 0.93:  # integers from a numeric column
        return int(f"{cc}{nsn}") if rng.random() < 0.7 else int(nsn)
    if style < 0.96:  # +33 0 6 12 ... or 0033 0 6...: international with the trunk zero kept
        return f"+{cc} {trunk or '0'}{grouped}" if rng.random() < 0.5 else f"00{cc}0{nsn}"
    if style < 0.98:  # stray spaces around
        return f"  {trunk}{grouped} "
    return f"{cc}{trunk}{nsn}"  # 330612345678


def _unicode_variant(rng: random.Random, text: str) -> str:
    if rng.random() < 0.5:
        base = rng.choice(_UNICODE_DIGITS)
        text = "".join(chr(base + int(c)) if c.isdigit() and c.isascii() else c for c in text)
    if rng.random() < 0.6:
        space = rng.choice(_UNICODE_SPACES)
        text = text.replace(" ", space)
        if space not in text and len(text) > 4:
            text = text[:2] + space + text[2:]
    if rng.random() < 0.2:
        text = text.replace("+", "\uff0b")
    return text


def _junk(rng: random.Random, number: Any) -> Any:
    """Damage a well-formed number the way real data gets damaged."""
    text = number if isinstance(number, str) else str(number)
    roll = rng.random()
    if roll < 0.35:
        return _unicode_variant(rng, text)
    if roll < 0.50:
        return text + rng.choice(_EXTENSIONS)
    if roll < 0.60:  # too short
        digits = "".join(c for c in text if c.isdigit())
        return ("+" if rng.random() < 0.5 else "") + digits[: rng.randint(1, 5)]
    if roll < 0.70:  # too long
        return text + "".join(rng.choice("0123456789") for _ in range(rng.randint(5, 14)))
    if roll < 0.78:  # letters inside
        i = rng.randrange(len(text) + 1)
        return (
            text[:i]
            + "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZabc") for _ in range(rng.randint(1, 4)))
            + text[i:]
        )
    if roll < 0.84:  # prefix text
        return rng.choice(("Tel: ", "tél. ", "mobile ", "GSM:", "(", "+ ")) + text
    if roll < 0.90:  # unknown / odd international prefixes
        digits = "".join(c for c in text if c.isdigit())
        return rng.choice(("+999", "+0", "000", "00 0", "+00", "+8", "011 ", "+1 ")) + digits
    if roll < 0.95:  # odd separators
        return text.replace(" ", rng.choice(("_", "*", ",", ";", "\t", "  ", "--")))
    return rng.choice(JUNK)


def generate_corpus(n: int, seed: int = 0, repeat_rate: float = 0.2, junk_rate: float = 0.06) -> list[Any]:
    """Build ``n`` phone-number cells, deterministically from ``seed``.

    :param n: number of values.
    :param seed: random seed; the same (n, seed) always gives the same list.
    :param repeat_rate: share of values that repeat an earlier value (duplicates in a contact
        table); the distinct share stays above ``1 - repeat_rate - junk_rate``.
    :param junk_rate: share of damaged or junk values.
    :return: a list of str, int, float, bool, Decimal, None, NaN and pd.NA values.
    """
    rng = random.Random(seed)
    templates = _templates()
    regions = [r for r, _ in REGION_WEIGHTS]
    region_weights = [w for _, w in REGION_WEIGHTS]
    type_weight = dict(_TYPES)
    out: list[Any] = []
    for _ in range(n):
        if out and rng.random() < repeat_rate:
            out.append(out[rng.randrange(len(out))])
            continue
        region = rng.choices(regions, region_weights)[0]
        by_type = templates[region]
        entry = rng.choices(by_type, [type_weight[t] for t, _ in by_type])[0]
        cc, nsn = entry[1][0]
        value = _format(rng, cc, _mutate(rng, nsn), region)
        if rng.random() < junk_rate:
            value = _junk(rng, value)
        out.append(value)
    return out


def distinct_ratio(values: list[Any]) -> float:
    """Share of distinct values (by type and text, so 1 and 1.0 count as different)."""
    keys = {(type(v).__name__, "nan" if isinstance(v, float) and math.isnan(v) else repr(v)) for v in values}
    return len(keys) / len(values) if values else 1.0
