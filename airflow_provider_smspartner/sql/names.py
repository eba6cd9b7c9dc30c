"""Table and column names: the one table-name parser (:class:`TableName`), the one rule that
shortens an identifier (:func:`fit_identifier`), and the column names each database can store as
given (:func:`check_column_names`). Plain text rules: no SQLAlchemy, no database.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

#: PostgreSQL's limit, in UTF-8 bytes (NAMEDATALEN - 1): it cuts a longer name silently.
MAX_IDENTIFIER = 63
_MYSQL_MAX_NAME = 64  # characters
_IDENTIFIER = re.compile(rf"^[A-Za-z_][A-Za-z0-9_]{{0,{MAX_IDENTIFIER - 1}}}$")


def fit_identifier(name: str, suffix: str = "") -> str:
    """``name + suffix`` within :data:`MAX_IDENTIFIER` characters. A name too long for it is cut
    and given 8 hex digits of its hash, so two long names that share a prefix stay apart."""
    if len(name) + len(suffix) <= MAX_IDENTIFIER:
        return name + suffix
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    keep = MAX_IDENTIFIER - len(suffix) - len(digest) - 1
    return f"{name[:keep]}_{digest}{suffix}"


def _parts(table: str) -> list[str]:
    """The dotted parts of a table name as written: the one place a table name is split."""
    return table.strip().split(".")


@dataclass(frozen=True)
class TableName:
    """A validated, optionally schema-qualified table name."""

    name: str
    schema: str | None = None

    @classmethod
    def parse(cls, table: str | TableName) -> TableName:
        """Validate ``table`` (``name`` or ``schema.name``); identifiers only, so no SQL can slip in.
        A ``TableName`` is returned as it is (it was validated when made).

        :raises ValueError: naming the table and the rule it breaks.
        """
        if isinstance(table, TableName):
            return table
        if not isinstance(table, str) or not table.strip():
            raise ValueError(f"Table name must be a non-empty string, got {table!r}.")
        parts = _parts(table)
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


def fit_table_name(table: str) -> str:
    """``table`` with its last part (the table's own name) within :data:`MAX_IDENTIFIER`
    characters (:func:`fit_identifier`), the parts before it as written; not validated (a name
    made from a template: :class:`TableName` checks it where it is used)."""
    *schema, name = _parts(table)
    return ".".join([*schema, fit_identifier(name)])


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
