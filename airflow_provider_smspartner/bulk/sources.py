"""Reads the phone numbers of a bulk operator from its one source: values, an SQL query or a file.

Whatever the source, the result is one pandas Series of raw values (one per input row, in order,
``RangeIndex``): normalisation, de-duplication and reporting happen downstream, on all sources alike.
Only the phone column is kept while reading, so memory holds one column, not the whole table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from airflow_provider_smspartner.utils.arguments import DEFAULT_CHUNK_SIZE, check_one_source
from airflow_provider_smspartner.utils.sql_writer import resolve_dbapi_hook
from airflow_provider_smspartner.utils.storage import file_format, to_storage_path

_NESTED = (list, tuple, set, frozenset, np.ndarray, pd.Series, pd.DataFrame)


def pick_column(columns: Sequence[Any], phone_column: str | None, where: str) -> Any:
    """Return the column of ``columns`` that holds the phone numbers.

    Without ``phone_column`` a single column is taken as is. A name that differs only by case
    matches too (databases fold unquoted identifiers to lower or upper case).

    :param where: Names the data in error messages (``"the query result"``...).
    :raises ValueError: naming the available columns when the choice is missing or wrong.
    """
    names = [str(c) for c in columns]
    if not names:
        raise ValueError(f"{where} has no columns; it must hold a column of phone numbers.")
    if phone_column is None:
        if len(names) == 1:
            return columns[0]
        raise ValueError(
            f"{where} has {len(names)} columns {names}; set phone_column to the one that holds the "
            "phone numbers."
        )
    if phone_column in names:
        return columns[names.index(phone_column)]
    folded = [i for i, name in enumerate(names) if name.lower() == str(phone_column).lower()]
    if len(folded) == 1:
        return columns[folded[0]]
    raise ValueError(f"phone_column {phone_column!r} is not a column of {where}; available columns: {names}.")


def values_from_object(value: Any, phone_column: str | None) -> pd.Series:
    """Phone values from an in-memory value: a list/tuple/array/Series of numbers, a DataFrame, or
    a list of dicts (a row per dict); ``phone_column`` picks the column of the tabular shapes.

    :raises ValueError: on a string, a dict, nested lists or mixed rows, naming what to pass instead.
    """
    if isinstance(value, str | bytes):
        raise ValueError(
            "phone_numbers is a single string; pass a list of numbers (from a template, render it "
            "as a native object: render_template_as_native_obj=True, or pass the XComArg itself)."
        )
    if isinstance(value, pd.DataFrame):
        return value[
            pick_column(list(value.columns), phone_column, "the phone_numbers DataFrame")
        ].reset_index(drop=True)
    if isinstance(value, pd.Series):
        return value.reset_index(drop=True)
    if isinstance(value, Mapping):
        raise ValueError(
            "phone_numbers is a dict; pass a list of numbers, a DataFrame or a list of dicts (one per row)."
        )
    if isinstance(value, np.ndarray) and value.ndim != 1:
        raise ValueError(f"phone_numbers must be one-dimensional; got an array of shape {value.shape}.")
    try:
        items = list(value)
    except TypeError:
        raise ValueError(
            f"phone_numbers must be a list of numbers, a DataFrame or a list of dicts; got {type(value).__name__}."
        ) from None
    rows = [isinstance(item, Mapping) for item in items]
    if any(rows):
        if not all(rows):
            first = rows.index(not rows[0])
            raise ValueError(
                f"phone_numbers mixes dicts and plain values (item {first} differs from item 0); "
                "pass either numbers or one dict per row."
            )
        keys = list(dict.fromkeys(key for item in items for key in item))
        column = pick_column(keys, phone_column, "the phone_numbers rows (dicts)")
        items = [item.get(column) for item in items]
    else:
        nested = next((i for i, item in enumerate(items) if isinstance(item, _NESTED)), None)
        if nested is not None:
            raise ValueError(
                f"phone_numbers[{nested}] is a {type(items[nested]).__name__}, not a phone number; with "
                ".expand(), pass a list of lists so that each mapped task gets one flat list."
            )
    array = np.empty(len(items), dtype=object)
    array[:] = items
    return pd.Series(array, dtype=object)


def values_from_sql(sql: str, sql_conn_id: str, phone_column: str | None, chunk_size: int) -> pd.Series:
    """Run ``sql`` on connection ``sql_conn_id`` (any DbApiHook) and return its phone column.

    Rows come in ``fetchmany`` chunks of which only the phone column is kept.

    :raises ValueError: when the query returns no rows set or the phone column is ambiguous or absent.
    """
    hook = resolve_dbapi_hook(sql_conn_id)
    conn = hook.get_conn()
    cursor = conn.cursor()
    try:
        cursor.execute(sql)
        if not cursor.description:
            raise ValueError(f"The sql query on {sql_conn_id!r} returned no result set; it must be a SELECT.")
        names = [d[0] for d in cursor.description]
        position = names.index(
            pick_column(names, phone_column, f"the result of the sql query on {sql_conn_id!r}")
        )
        values: list[Any] = []
        while rows := cursor.fetchmany(chunk_size):
            values.extend(row[position] for row in rows)
    finally:
        cursor.close()
        conn.close()
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return pd.Series(array, dtype=object)


def values_from_file(source_path: str, phone_column: str | None, chunk_size: int) -> pd.Series:
    """The phone column of a CSV or Parquet file (local path or ObjectStoragePath URI), read in chunks.

    CSV cells are read as text, exactly as written (leading zeros kept; an empty cell stays empty).
    """
    kind = file_format(source_path)
    target = to_storage_path(source_path)
    where = f"file {source_path!r}"
    with target.open("rb") as handle:
        if kind == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(handle)
            column = pick_column(parquet.schema_arrow.names, phone_column, where)
            pieces = [
                batch.column(0).to_pandas()
                for batch in parquet.iter_batches(batch_size=chunk_size, columns=[column])
            ]
        else:
            compression: Literal["gzip"] | None = "gzip" if source_path.lower().endswith(".gz") else None
            header = pd.read_csv(handle, nrows=0, compression=compression)
            column = pick_column(list(header.columns), phone_column, where)
            handle.seek(0)
            reader = pd.read_csv(
                handle,
                usecols=[column],
                dtype=str,
                keep_default_na=False,
                chunksize=chunk_size,
                compression=compression,
            )
            pieces = [chunk[column] for chunk in reader]
    if not pieces:
        return pd.Series([], dtype=object)
    return pd.concat(pieces, ignore_index=True)


@dataclass(frozen=True)
class PhoneSource:
    """The one source of a bulk operator's phone numbers.

    :param phone_numbers: In-memory values (see :func:`values_from_object`).
    :param sql: A query whose result holds the numbers (with ``sql_conn_id``).
    :param sql_conn_id: Connection the query runs on.
    :param source_path: A CSV or Parquet file, local or ObjectStoragePath URI.
    :param phone_column: The column holding the numbers when the source has several.
    """

    phone_numbers: Any = None
    sql: str | None = None
    sql_conn_id: str | None = None
    source_path: str | None = None
    phone_column: str | None = None

    def check(self) -> None:
        """Check the arguments alone (no I/O).

        :raises ValueError: when not exactly one source is given, or ``sql`` lacks its connection.
        """
        check_one_source(self.phone_numbers, self.sql, self.sql_conn_id, self.source_path)

    def describe(self) -> str:
        """A short description of the source for log lines."""
        if self.sql is not None:
            return f"sql on {self.sql_conn_id!r}"
        if self.source_path is not None:
            return f"file {self.source_path!r}"
        return "phone_numbers"

    def read(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> pd.Series:
        """Read the raw values, one per input row, in order (``RangeIndex``).

        :raises ValueError: on unusable arguments or data (see :meth:`check` and the readers).
        """
        self.check()
        if self.sql is not None:
            return values_from_sql(self.sql, str(self.sql_conn_id), self.phone_column, chunk_size)
        if self.source_path is not None:
            return values_from_file(self.source_path, self.phone_column, chunk_size)
        return values_from_object(self.phone_numbers, self.phone_column)
