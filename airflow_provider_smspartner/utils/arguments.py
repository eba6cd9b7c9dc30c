"""Operator argument checks that need no data (run once, when the DAG is parsed), and shared defaults.

Import-light on purpose (no pandas): the operators module imports it at DAG-parse time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: Rows per round trip when reading a query or a file, and per load chunk when writing a table.
DEFAULT_CHUNK_SIZE = 50_000
#: How the stop-list transfer writes its table.
WRITE_MODES = ("replace", "upsert", "append")
#: The arguments that can hold the phone numbers; exactly one is given.
SOURCE_ARGUMENTS = ("phone_numbers", "sql", "source_path")


def check_count(name: str, value: Any, minimum: int) -> None:
    """:raises ValueError: unless ``value`` is an integer (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}.")


def check_one_source(
    phone_numbers: Any, sql: str | None, sql_conn_id: str | None, source_path: str | None
) -> None:
    """Check that exactly one source of phone numbers is given, and that ``sql`` has its connection.

    :raises ValueError: naming the sources given and the ones to choose from.
    """
    values = {"phone_numbers": phone_numbers, "sql": sql, "source_path": source_path}
    given = [name for name in SOURCE_ARGUMENTS if values[name] is not None]
    if len(given) != 1:
        got = f"got {' and '.join(given)}" if given else "got none"
        raise ValueError(
            f"Give exactly one source of phone numbers ({got}): phone_numbers (a list, or an upstream "
            "task's XCom), sql (with sql_conn_id) or source_path (a CSV or Parquet file)."
        )
    if sql is not None and not sql_conn_id:
        raise ValueError("sql needs sql_conn_id: the connection of the database to run the query on.")


def check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    """:raises ValueError: unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}.")


def check_fraction(name: str, value: Any, *, allow_none: bool = False) -> None:
    """:raises ValueError: unless ``value`` is a number from 0 to 1 (not a bool), or ``None`` when allowed."""
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        also = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a number from 0 to 1{also}; got {value!r}.")


def check_flag(name: str, value: Any) -> None:
    """:raises ValueError: unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False; got {value!r}.")


def pick_column(
    columns: Sequence[Any],
    phone_column: str | None,
    where: str,
    *,
    argument: str = "phone_column",
    holds: str = "phone numbers",
) -> Any:
    """Return the column of ``columns`` that holds the phone numbers (or what ``holds`` names).

    Without ``phone_column`` a single column is taken as is. A name that differs only by case
    matches too (databases fold unquoted identifiers to lower or upper case).

    :param where: Names the data in error messages (``"the query result"``...).
    :param argument: The operator argument that names the column, for the messages.
    :param holds: What the column holds, for the messages.
    :raises ValueError: naming the available columns when the choice is missing or wrong.
    """
    names = [str(c) for c in columns]
    if not names:
        raise ValueError(f"{where} has no columns; it must hold a column of {holds}.")
    if phone_column is None:
        if len(names) == 1:
            return columns[0]
        raise ValueError(
            f"{where} has {len(names)} columns {names}; set {argument} to the one that holds the {holds}."
        )
    if phone_column in names:
        return columns[names.index(phone_column)]
    folded = [i for i, name in enumerate(names) if name.lower() == str(phone_column).lower()]
    if len(folded) == 1:
        return columns[folded[0]]
    raise ValueError(f"{argument} {phone_column!r} is not a column of {where}; available columns: {names}.")
