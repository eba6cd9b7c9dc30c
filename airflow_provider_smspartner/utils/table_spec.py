"""The shape of a table the provider manages: its columns and portable types, its key and
indexes, and a validated table name. Plain data: the writer (:mod:`sql_writer`) turns it into
SQL for each database.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import pandas as pd

ColumnType = Literal["bigint", "int", "double", "bool", "short_text", "text", "long_text", "timestamp"]
TEXT_TYPES: tuple[ColumnType, ...] = ("short_text", "text", "long_text")
MAX_IDENTIFIER = 63  # PostgreSQL's limit (MySQL's is 64)
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
    columns = tuple(
        Column(name, _column_type(frame[name].dtype, name in indexed), nullable=name != key) for name in names
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
