"""What a results row holds of its input's number, in clear or in keyed-hash mode.

In clear a row holds ``input_value`` (the text that was normalised) and ``phone_e164``. With
``hash_key_conn_id`` it holds ``phone_hash`` (HMAC-SHA256 of the E.164 number,
``phone_numbers.hashing``) and ``hash_key_id`` instead, and no number in clear: the messages
stored next to it (the API's errors, the notes) have the row's number masked out, and the
earlier tries' hashes are matched back to numbers in memory only, for the recovery.

Every value is made storable on SQLite, PostgreSQL and MySQL/MariaDB: NUL characters and
unpaired surrogates become U+FFFD, and text longer than its column is cut with a visible
``...[truncated: N characters]`` marker.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa

from airflow_provider_smspartner.phone_numbers import phone_text
from airflow_provider_smspartner.phone_numbers.hashing import hash_e164
from airflow_provider_smspartner.sql.hash_mode import HASHED_COLUMNS, stored_key_ids
from airflow_provider_smspartner.sql.tables import INPUT_LENGTH

if TYPE_CHECKING:
    from airflow_provider_smspartner.sql.names import TableName
    from airflow_provider_smspartner.utils.hash_key import HashKey

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
#: A run of digits, possibly grouped (``+33 (0)6 12.34-56/78``): how a number shows in a message.
_DIGIT_RUN = re.compile(r"\d(?:[\s.\-/()]{0,2}\d)*")
#: Trailing digits of a number that make a run of digits in a message count as that number.
_TAIL_DIGITS = 6
MASKED_NUMBER = "[number]"
#: What a results table refused by :func:`hash_mode_problem` leaves to do, whatever the reason.
_ELSEWHERE = "choose another results_table (a new name), or drop this one"


def storable_text(value: Any, limit: int) -> str | None:
    """``value`` as text every supported database stores as is, in at most ``limit`` characters.

    NUL (refused by PostgreSQL) and unpaired surrogates (not encodable in UTF-8) become U+FFFD;
    longer text is cut and ends with ``...[truncated: N characters]`` (N = the original length).
    """
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    text = value if isinstance(value, str) else str(value)
    text = _UNSTORABLE.sub("\ufffd", text)
    if len(text) > limit:
        marker = f"...[truncated: {len(text)} characters]"
        text = text[: max(limit - len(marker), 0)] + marker
    return text


def storable_inputs(values: Sequence[Any]) -> list[str | None]:
    """Input values as stored in ``input_value``: the text that was normalised, made storable."""
    return [storable_text(phone_text(value), INPUT_LENGTH) for value in values]


def mask_number(text: Any, e164: Any) -> Any:
    """``text`` with every run of digits that holds the last digits of ``e164`` replaced by
    ``[number]``: the number in any form a server may echo (E.164, with or without the plus or
    ``00``, national with its trunk 0, grouped). Masking a little more than the number (a run
    that merely ends alike) costs a message some digits; masking less would store the number."""
    if not isinstance(text, str) or not isinstance(e164, str):
        return text
    tail = e164.lstrip("+")[-_TAIL_DIGITS:]

    def hide(match: re.Match[str]) -> str:
        return MASKED_NUMBER if tail in re.sub(r"\D", "", match.group()) else match.group()

    return _DIGIT_RUN.sub(hide, text)


@dataclass(frozen=True)
class RowNumbers:
    """The number columns of every input row of a run, as a results row stores them.

    :param stored: Per input row, ``(input_value, phone_e164)`` in clear, ``(phone_hash,
        hash_key_id)`` in keyed-hash mode; storable.
    :param e164: Keyed-hash mode only: the rows' E.164 numbers, kept in memory to mask them out
        of the messages (:meth:`text`); ``None`` in clear.
    """

    stored: list[tuple[str | None, str | None]]
    e164: list[str | None] | None = None

    @classmethod
    def of(cls, outcomes: pd.DataFrame, hash_key: HashKey | None = None) -> RowNumbers:
        """The number columns of ``outcomes`` (``input_value``, ``phone_e164``) for a results
        table in clear (``hash_key`` ``None``) or hashed under ``hash_key``."""
        phones = outcomes["phone_e164"].astype(object).where(outcomes["phone_e164"].notna(), None).tolist()
        if hash_key is None:
            inputs = storable_inputs(outcomes["input_value"].tolist())
            return cls(list(zip(inputs, phones, strict=True)))
        hashes = hash_e164(outcomes["phone_e164"], hash_key.key)
        stored: list[tuple[str | None, str | None]] = [
            (None if h is pd.NA else str(h), hash_key.key_id) for h in hashes.tolist()
        ]
        return cls(stored, phones)

    def columns(self, row: int) -> tuple[str | None, str | None]:
        """The two number columns of input row ``row`` (:attr:`stored`)."""
        return self.stored[row]

    def text(self, row: int, value: Any) -> Any:
        """A message of input row ``row`` as it may be stored: with its number masked in
        keyed-hash mode (:func:`mask_number`)."""
        return value if self.e164 is None else mask_number(value, self.e164[row])


def earlier_numbers(earlier: pd.DataFrame, known: pd.Series, key: bytes) -> pd.DataFrame:
    """Earlier tries' rows read from a hashed table, with ``phone_e164`` in place of ``phone_hash``
    (in memory only), as the recovery reads them.

    A hash becomes the number of ``known`` (this try's inputs and the list's numbers) with that
    hash. A hash of no such number becomes a token that matches no number: its number is neither
    an input of this try nor on the list, which is all the recovery needs to know (an add left
    ``pending`` did not land; a remove did).

    :param known: E.164 numbers (missing values allowed).
    :param key: The HMAC key the table's hashes were made with.
    """
    numbers = pd.Series(known.dropna().astype(str).unique(), dtype="string")
    by_hash = dict(zip(hash_e164(numbers, key).tolist(), numbers.tolist(), strict=True))
    phones = [
        None if h is None or h is pd.NA else by_hash.get(str(h), f"phone_hash:{h}")
        for h in earlier["phone_hash"].astype(object).tolist()
    ]
    frame = earlier.drop(columns=["phone_hash"])
    position = list(earlier.columns).index("phone_hash")
    frame.insert(position, "phone_e164", pd.Series(phones, index=earlier.index, dtype="string"))
    return frame


def hash_mode_problem(conn: sa.Connection, table: TableName, key: HashKey | None) -> str | None:
    """What keeps an existing results table from taking a run of this mode, or ``None``.

    A table in clear (``input_value``, ``phone_e164``) refuses a hashed run and a hashed one
    (``phone_hash``, ``hash_key_id``) a run in clear; a hashed table holding another key's
    ``hash_key_id`` refuses a run under ``key``: one table would mix numbers in clear and hashes,
    or hashes no one key makes, and a retry could not match its earlier tries' rows. Unlike the
    extract's table (``sql.hash_mode.check_hash_mode``), no mode rebuilds a results table: each
    row records what a try did, which a new key cannot re-hash. A table of neither shape is left
    to the shape check, which names its missing columns.

    :return: The reason and what to do, to follow the table's name in an error (``"holds ..."``).
    """
    inspector = sa.inspect(conn)
    if not inspector.has_table(table.name, schema=table.schema):
        return None
    columns = {str(c["name"]).lower() for c in inspector.get_columns(table.name, schema=table.schema)}
    clear = bool({"input_value", "phone_e164"} & columns)
    if key is None:
        if not set(HASHED_COLUMNS) <= columns or clear:
            return None
        return (
            "holds hashed numbers (phone_hash): a run in clear would mix modes. Set hash_key_conn_id "
            f"to the key connection it was made with, {_ELSEWHERE}"
        )
    if clear:
        return (
            "holds numbers in clear (input_value, phone_e164): a hashed run "
            f"(hash_key_conn_id={key.conn_id!r}) cannot write it: {_ELSEWHERE}"
        )
    if not set(HASHED_COLUMNS) <= columns:
        return None
    others = sorted(stored_key_ids(conn, table) - {key.key_id})  # one scan per try, before any call
    if not others:
        return None
    return (
        f"is hashed with key id(s) {', '.join(others)}, not {key.key_id!r} (hash_key_conn_id="
        f"{key.conn_id!r}): its rows cannot be matched with this run's. Use the key it was made with, "
        f"{_ELSEWHERE}"
    )
