"""Portable column types as SQLAlchemy types, and values in the form each driver binds them.

One copy of each: the per-database types of a :class:`~.tables.Column` (:func:`sql_type`), the
timestamp conversions (:func:`utc`, :func:`naive_utc`, :func:`timestamp_param` for one value,
:func:`timestamp_values` for a column) and the driver form of a DataFrame chunk
(:func:`driver_columns`), used by the writer, the COPY encoders and the results table alike.

Timestamps are UTC instants everywhere: ``timestamptz`` on PostgreSQL, ``DATETIME(6)`` holding
naive UTC on MySQL/MariaDB (``TIMESTAMP`` ends in 2038), ISO-8601 text on SQLite (no timestamp
type; the spec's ``sqlite_timestamp_format``, which sorts chronologically).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.dialects import mysql
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from airflow_provider_smspartner.sql.tables import ISO_FORMAT, TEXT_TYPES, Column, TableSpec

#: SQLAlchemy's names for MySQL and MariaDB.
MYSQL = ("mysql", "mariadb")


# ---------------------------------------------------------------------------------- instants
def utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime; naive values are taken to be UTC already."""
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def naive_utc(values: Any) -> np.ndarray:
    """Instants (any form ``pandas.to_datetime`` reads; naive ones taken as UTC) as naive UTC
    ``datetime64[us]``, NaT for missing: the form the COPY encoders and the writer compare."""
    return pd.to_datetime(pd.Series(values), utc=True).dt.tz_convert(None).to_numpy("datetime64[us]")


def timestamp_param(value: Any, dialect_name: str, sqlite_format: str = ISO_FORMAT) -> Any:
    """One UTC instant as a timestamp column of ``dialect_name`` binds it; None for missing.

    Naive values are taken as UTC; a pandas ``Timestamp`` is cut to the microsecond (what every
    database keeps). SQLite: text in ``sqlite_format``; MySQL/MariaDB: a naive UTC datetime;
    elsewhere an aware one.
    """
    if value is None or value is pd.NaT or value is pd.NA:
        return None
    if isinstance(value, pd.Timestamp) or not isinstance(value, datetime):
        value = pd.Timestamp(value).floor("us").to_pydatetime()
    moment = utc(value)
    if dialect_name == "sqlite":
        return moment.strftime(sqlite_format)
    return moment.replace(tzinfo=None) if dialect_name in MYSQL else moment


def timestamp_values(series: pd.Series, dialect_name: str, sqlite_format: str = ISO_FORMAT) -> list[Any]:
    """A column of UTC instants as :func:`timestamp_param` binds each, None for missing; made for
    the whole column at once."""
    if dialect_name == "sqlite":
        stamps = pd.to_datetime(series, utc=True)
        text = stamps.dt.strftime(sqlite_format)
        return [None if missing else v for v, missing in zip(text.tolist(), stamps.isna(), strict=True)]
    # numpy turns datetime64[us] into datetime objects and NaT into None.
    naive = naive_utc(series).astype(object).tolist()
    if dialect_name in MYSQL:
        return naive
    return [None if v is None else v.replace(tzinfo=timezone.utc) for v in naive]


# ---------------------------------------------------------------------------------- types
class IsoUtcText(TypeDecorator[datetime]):
    """SQLite's timestamps: UTC instants as ISO-8601 text in ``stamp_format``."""

    impl = sa.Text
    cache_ok = True

    def __init__(self, stamp_format: str = ISO_FORMAT) -> None:
        super().__init__()
        self.stamp_format = stamp_format

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> str | None:
        return timestamp_param(value, "sqlite", self.stamp_format)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        # fromisoformat takes "Z" only from Python 3.11 on.
        return utc(datetime.fromisoformat(str(value).replace("Z", "+00:00")))


class NaiveUtcDatetime(TypeDecorator[datetime]):
    """MySQL/MariaDB timestamps: ``DATETIME(6)`` holding naive UTC (``TIMESTAMP`` ends in 2038)."""

    impl = mysql.DATETIME
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return timestamp_param(value, "mysql")

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=timezone.utc)


def sql_type(column: Column, spec: TableSpec) -> TypeEngine[Any]:
    """The SQLAlchemy type of ``column`` of ``spec``, with its per-database variants."""
    kind = column.type
    if kind in TEXT_TYPES and column.length is not None:
        return sa.String(column.length)
    if kind == "bigint":
        # SQLite: only a column declared INTEGER PRIMARY KEY becomes the rowid (no separate index).
        return sa.BigInteger().with_variant(sa.Integer(), "sqlite")
    if kind == "int":
        return sa.Integer()
    if kind == "double":
        return sa.Double()  # DOUBLE PRECISION, DOUBLE, REAL: 8-byte floats everywhere
    if kind == "bool":
        return sa.Boolean()
    if kind == "short_text":
        return sa.String(64)
    if kind == "text":
        # TEXT is not portable (CLOB on some databases); the generic path keeps a bounded VARCHAR.
        return sa.String(2000).with_variant(sa.Text(), "postgresql", *MYSQL, "sqlite")
    if kind == "long_text":
        # Whatever length a source may send: MySQL's TEXT stops at 64 KiB, LONGTEXT at 4 GiB.
        return (
            sa.String(2000)
            .with_variant(sa.Text(), "postgresql", "sqlite")
            .with_variant(mysql.LONGTEXT(), *MYSQL)
        )
    return (
        sa.DateTime(timezone=True)
        .with_variant(NaiveUtcDatetime(fsp=6), *MYSQL)
        .with_variant(IsoUtcText(spec.sqlite_timestamp_format), "sqlite")
    )


# ---------------------------------------------------------------------------------- driver values
#: How the driver paths bind the non-text, non-timestamp types.
_PYTHON_TYPES: dict[str, Callable[[Any], Any]] = {"bigint": int, "int": int, "double": float, "bool": bool}


def driver_columns(chunk: pd.DataFrame, spec: TableSpec, dialect_name: str) -> list[list[Any]]:
    """The chunk's columns of ``spec``, in its order, as the driver of ``dialect_name`` (the
    engine's) takes them, None for missing; timestamps as their column type binds them
    (:func:`timestamp_values`), made for the whole column at once."""
    columns = []
    for column in spec.columns:
        series = chunk[column.name]
        convert = _PYTHON_TYPES.get(column.type)
        if column.type == "timestamp":
            columns.append(timestamp_values(series, dialect_name, spec.sqlite_timestamp_format))
        elif convert is not None:
            columns.append([None if pd.isna(v) else convert(v) for v in series.astype(object)])
        else:
            columns.append([None if _missing(v) else str(v) for v in series])
    return columns


def _missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and value != value)
