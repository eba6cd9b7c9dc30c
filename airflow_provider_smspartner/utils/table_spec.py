"""The shape of a table the provider manages: its columns and portable types, its key and
indexes, and a validated table name; and the column names each database can store as given
(:func:`check_column_names`). Plain data: the writer (:mod:`sql_writer`) turns it into SQL for
each database.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

ColumnType = Literal["bigint", "int", "double", "bool", "short_text", "text", "long_text", "timestamp"]
TEXT_TYPES: tuple[ColumnType, ...] = ("short_text", "text", "long_text")
#: PostgreSQL's limit, in UTF-8 bytes (NAMEDATALEN - 1): it cuts a longer name silently.
MAX_IDENTIFIER = 63
_MYSQL_MAX_NAME = 64  # characters
_IDENTIFIER = re.compile(rf"^[A-Za-z_][A-Za-z0-9_]{{0,{MAX_IDENTIFIER - 1}}}$")
#: How a ``timestamp`` column stores UTC instants on SQLite (it has no timestamp type): ISO text,
#: whole seconds, which sorts chronologically.
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def fit_identifier(name: str, suffix: str = "") -> str:
    """``name + suffix`` within :data:`MAX_IDENTIFIER` characters. A name too long for it is cut
    and given 8 hex digits of its hash, so two long names that share a prefix stay apart."""
    if len(name) + len(suffix) <= MAX_IDENTIFIER:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = MAX_IDENTIFIER - len(suffix) - len(digest) - 1
    return f"{name[:keep]}_{digest}{suffix}"


def check_column_names(names: Iterable[str], dialect_name: str, table: str | None = None) -> None:
    """Refuse column names that the database ``dialect_name`` (a hook's ``dialect_name``) cannot
    store as given, before anything is written: a name it would cut, change or reject, or that
    would work once and break every later run.

    Every database: an empty name, a NUL character, a name given twice. PostgreSQL: over 63 bytes
    in UTF-8 (cut silently), ``%`` (its drivers' parameter marker). MySQL/MariaDB (``mysql``,
    ``mariadb``): over 64 characters, a backtick, a trailing space, a character outside the Basic
    Multilingual Plane (an emoji), two names that differ only in case (its column names ignore
    case). SQLite: two names that differ only in ASCII case. PostgreSQL's quoted names keep their
    case, so ``Phone`` and ``phone`` are two columns there.

    :param names: The column names as the table will have them (``str`` of a frame's labels).
    :param dialect_name: ``postgresql``, ``mysql``, ``mariadb``, ``sqlite``; any other database
        gets the rules every database shares.
    :param table: The table, named in the message.
    :raises ValueError: naming each refused column, the database and the rule it breaks, and how
        to rename it.
    """
    names = [str(name) for name in names]
    database = _DATABASES.get(dialect_name, dialect_name)
    problems = [
        f"{name!r} {rule}"
        for name in dict.fromkeys(names)
        if (rule := _name_rule(name, dialect_name, database))
    ]
    fold = _CASE_FOLDS.get(dialect_name, str)
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(fold(name), []).append(name)
    for group in groups.values():
        distinct = list(dict.fromkeys(group))
        if len(distinct) > 1:
            spelled = " and ".join(repr(name) for name in distinct)
            problems.append(f"{spelled} differ only in case, and {database} column names ignore case")
        elif len(group) > 1:
            problems.append(f"{group[0]!r} appears {len(group)} times")
    if problems:
        where = f" for table {table}" if table else ""
        raise ValueError(
            f"Column name(s) that {database} cannot store as given{where}: {'; '.join(problems)}. "
            'Rename them in the source, e.g. with AS in the query (SELECT "long name" AS short_name) '
            "or in the file's header or the DataFrame; nothing was written."
        )


#: SQLite folds the case of ASCII letters only in names (É and é are two columns).
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
#: Display names of the databases whose rules :func:`check_column_names` knows.
_DATABASES = {
    "postgresql": "PostgreSQL",
    "mysql": "MySQL/MariaDB",
    "mariadb": "MySQL/MariaDB",
    "sqlite": "SQLite",
}
#: How a database compares column names (exact where missing). MariaDB folds Unicode case
#: (É/é are one column, ß/SS two, as ``str.lower``).
_CASE_FOLDS: dict[str, Callable[[str], str]] = {
    "mysql": str.lower,
    "mariadb": str.lower,
    "sqlite": lambda name: name.translate(_ASCII_LOWER),
}


def _name_rule(name: str, dialect_name: str, database: str) -> str | None:
    """The rule of :func:`check_column_names` that ``name`` breaks on its own, or None."""
    if not name:
        return f"is empty: {database} needs a name for each column"
    if "\x00" in name:
        return f"contains a NUL character, which {database} cannot store in a name"
    if dialect_name == "postgresql":
        size = len(name.encode())
        if size > MAX_IDENTIFIER:
            return (
                f"is {size} bytes in UTF-8, over PostgreSQL's limit of {MAX_IDENTIFIER}: "
                "PostgreSQL would cut it silently and the next run would not find the column"
            )
        if "%" in name:
            return "contains '%', which PostgreSQL's drivers take for a parameter marker"
    elif dialect_name in ("mysql", "mariadb"):
        if len(name) > _MYSQL_MAX_NAME:
            return f"is {len(name)} characters, over MySQL/MariaDB's limit of {_MYSQL_MAX_NAME}"
        if "`" in name:
            return (
                "contains a backtick (`): MySQL/MariaDB stores it, but the name read back from the "
                "table differs, so the next run would not find the column"
            )
        if name.endswith(" "):
            return "ends with a space, which MySQL/MariaDB refuses in a column name"
        wide = next((c for c in name if ord(c) > 0xFFFF), None)
        if wide is not None:
            return (
                f"contains {wide!r}, outside the Basic Multilingual Plane (e.g. an emoji), which "
                "MySQL/MariaDB refuses in a name"
            )
    return None


@dataclass(frozen=True)
class Column:
    """A column of a managed table: name, portable type, and whether it may be NULL."""

    name: str
    type: ColumnType
    nullable: bool = True


@dataclass(frozen=True)
class TableSpec:
    """The shape of a managed table.

    :param columns: Columns in order.
    :param key: Unique key column (required by ``replace``/``upsert``/``append``).
    :param indexes: Columns that get a secondary index when the table is created.
    :param compared: Columns whose change makes ``upsert`` update a row.
    :param soft_delete: Column set to the write time when a key leaves the source in ``upsert``,
        and cleared when it comes back.
    :param first_seen: Column set to the write time when a key is first inserted and never
        updated after: ``upsert`` leaves it alone, ``replace`` carries it over for keys still
        present. The frame may omit it (the writer fills it).

    On PostgreSQL, an index on a text column uses ``text_pattern_ops``: it compares bytes, which
    builds about twice as fast as the database's collation on a million values, and serves
    equality (joins, ``=``, ``IN``) and prefix ``LIKE``; the column keeps the database's collation,
    so joins and comparisons with other columns behave as everywhere else. (Not for ``<``/``>`` or
    ``ORDER BY`` under a linguistic collation, which nobody runs on phone numbers.)
    """

    columns: tuple[Column, ...]
    key: str | None = None
    indexes: tuple[str, ...] = ()
    compared: tuple[str, ...] = ()
    soft_delete: str | None = None
    first_seen: str | None = None

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]


@dataclass(frozen=True)
class TableName:
    """A validated, optionally schema-qualified table name."""

    name: str
    schema: str | None = None

    @classmethod
    def parse(cls, table: str) -> TableName:
        """Validate ``table`` (``name`` or ``schema.name``); identifiers only, so no SQL can slip in.

        :raises ValueError: naming the table and the rule it breaks.
        """
        if not isinstance(table, str) or not table.strip():
            raise ValueError(f"Table name must be a non-empty string, got {table!r}.")
        parts = table.strip().split(".")
        if len(parts) > 2 or not all(_IDENTIFIER.match(p) for p in parts):
            raise ValueError(
                f"Invalid table name {table!r}: use 'table' or 'schema.table' with letters, digits and "
                "underscores only (starting with a letter or underscore, at most 63 characters each)."
            )
        return cls(name=parts[-1], schema=parts[0] if len(parts) == 2 else None)

    def with_name(self, name: str) -> TableName:
        return TableName(name=name, schema=self.schema)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def table_spec_for(frame: pd.DataFrame, key: str | None = None, indexes: tuple[str, ...] = ()) -> TableSpec:
    """A spec for writing ``frame`` as it is: one column per frame column, typed from its dtype.

    Integers become ``bigint``, floats ``double``, booleans ``bool``, datetimes ``timestamp``
    (UTC; naive values taken as UTC), categoricals ``text``, anything else ``long_text``
    (unbounded). The ``key`` and the ``indexes`` must be indexable everywhere (MySQL indexes no
    ``LONGTEXT``): text there becomes ``short_text`` (up to 64 characters). Every column but the
    key is compared, so ``upsert`` updates a row when any value changed.

    :param key: The unique key column (not null; required by ``upsert``).
    :param indexes: Columns that get a secondary index when the table is created.
    :raises ValueError: naming a ``key`` or index column the frame lacks.
    """
    names = [str(name) for name in frame.columns]
    missing = [name for name in (key, *indexes) if name is not None and name not in names]
    if missing:
        raise ValueError(f"Column(s) {missing} are not in the frame; its columns are {names}.")
    indexed = {key, *indexes}
    # By position: a label the frame repeats is one column each (the writer refuses the repeat).
    columns = tuple(
        Column(name, _column_type(dtype, name in indexed), nullable=name != key)
        for name, dtype in zip(names, frame.dtypes, strict=True)
    )
    return TableSpec(
        columns=columns,
        key=key,
        indexes=tuple(indexes),
        compared=tuple(name for name in names if name != key),
    )


def _column_type(dtype: Any, indexed: bool) -> ColumnType:
    """The portable type of a pandas dtype (see :func:`table_spec_for`)."""
    import pandas as pd

    types = pd.api.types
    if types.is_bool_dtype(dtype):
        return "bool"
    if types.is_integer_dtype(dtype):
        return "bigint"
    if types.is_float_dtype(dtype):
        return "double"
    if types.is_datetime64_any_dtype(dtype):
        return "timestamp"
    if indexed:
        return "short_text"
    return "text" if isinstance(dtype, pd.CategoricalDtype) else "long_text"
