"""Reads the phone numbers of a bulk operator from its one source: values, an SQL query or a file.

Whatever the source, the result is one pandas Series of raw values (one per input row, in order,
``RangeIndex``): normalisation, de-duplication and reporting happen downstream, on all sources alike.
Only the phone column is kept while reading, so memory holds one column, not the whole table.

The suppression operator keeps every column of its audience instead, so the same sources are also
read as whole rows, streamed in chunks (:func:`rows_from_object`, :func:`rows_from_sql`,
:func:`rows_from_file`, or :meth:`PhoneSource.open_rows`): memory then holds one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.sql.stream import stream_query
from airflow_provider_smspartner.utils.arguments import DEFAULT_CHUNK_SIZE, check_one_source, pick_column
from airflow_provider_smspartner.utils.storage import file_format, to_storage_path

_NESTED = (list, tuple, set, frozenset, np.ndarray, pd.Series, pd.DataFrame)
#: The column that holds the values of a plain list (or an unnamed Series) as audience rows.
PLAIN_VALUES_COLUMN = "phone_number"


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

    The rows come from the same streaming cursor as :func:`rows_from_sql`, ``chunk_size`` at a
    time, of which only the phone column is kept.

    :raises ValueError: when the query returns no result set or the phone column is ambiguous or absent.
    """
    with stream_query(resolve_dbapi_hook(sql_conn_id), sql, chunk_size, sql_conn_id) as (names, batches):
        where = f"the result of the sql query on {sql_conn_id!r}"
        position = names.index(pick_column(names, phone_column, where))
        values = [row[position] for rows in batches for row in rows]
    array = np.empty(len(values), dtype=object)
    array[:] = values
    return pd.Series(array, dtype=object)


def values_from_file(source_path: str, phone_column: str | None, chunk_size: int) -> pd.Series:
    """The phone column of a CSV or Parquet file (local path or ObjectStoragePath URI), read in chunks.

    Read as :func:`rows_from_file` reads, but only the phone column. CSV cells are read as text,
    exactly as written (leading zeros kept; an empty cell stays empty).
    """
    with rows_from_file(source_path, phone_column, chunk_size, phone_only=True) as rows:
        values = pd.concat([chunk[rows.column] for chunk in rows.chunks], ignore_index=True)
    return values if len(values) else pd.Series([], dtype=object)


@dataclass
class RowChunks:
    """An open source of whole rows, read in chunks.

    :param column: The column that holds the phone numbers (as named in the chunks).
    :param columns: Every column, in order.
    :param chunks: DataFrames of every column, ``RangeIndex`` from 0 each, in source order; at
        least one (empty when the source holds no rows), so a consumer always sees the columns.
    """

    column: str
    columns: list[str]
    chunks: Iterator[pd.DataFrame]


def _unique_names(names: Sequence[Any], where: str) -> list[str]:
    """``names`` as text; :raises ValueError: when one repeats (the rows could not be written)."""
    texts = [str(name) for name in names]
    repeated = sorted({name for name in texts if texts.count(name) > 1})
    if repeated:
        raise ValueError(f"{where} has repeated column names {repeated}; give each column its own name.")
    return texts


def _with_empty_chunk(chunks: Iterator[pd.DataFrame], empty: pd.DataFrame) -> Iterator[pd.DataFrame]:
    """``chunks``, or ``empty`` alone when there are none."""
    seen = False
    for chunk in chunks:
        seen = True
        yield chunk
    if not seen:
        yield empty


def _slices(frame: pd.DataFrame, chunk_size: int) -> Iterator[pd.DataFrame]:
    for start in range(0, len(frame), chunk_size):
        yield frame.iloc[start : start + chunk_size].reset_index(drop=True)


@contextmanager
def rows_from_object(value: Any, phone_column: str | None, chunk_size: int) -> Iterator[RowChunks]:
    """Whole rows of an in-memory value, in chunks of ``chunk_size`` rows.

    A DataFrame or a list of dicts keeps its columns (``phone_column`` picks the phone column, as
    in :func:`values_from_object`); a plain list, tuple, array or Series becomes one column, named
    after the Series or :data:`PLAIN_VALUES_COLUMN`.

    :raises ValueError: as :func:`values_from_object`, or when a column name repeats.
    """
    values = values_from_object(value, phone_column)  # checks the shape and the phone column
    if isinstance(value, pd.DataFrame):
        frame = value
        where = "the phone_numbers DataFrame"
    elif (
        not isinstance(value, pd.Series | np.ndarray)
        and (items := list(value))
        and isinstance(items[0], Mapping)
    ):
        keys = list(dict.fromkeys(key for item in items for key in item))
        frame = pd.DataFrame.from_records(items, columns=keys)
        where = "the phone_numbers rows (dicts)"
    else:
        name = value.name if isinstance(value, pd.Series) and value.name is not None else PLAIN_VALUES_COLUMN
        frame = pd.DataFrame({name: values})
        where = "phone_numbers"
    names = _unique_names(list(frame.columns), where)
    frame = frame.set_axis(names, axis=1).reset_index(drop=True)
    column = str(pick_column(names, phone_column if len(names) > 1 else None, where))
    yield RowChunks(column, names, _with_empty_chunk(_slices(frame, chunk_size), frame.iloc[:0]))


@contextmanager
def rows_from_sql(
    sql: str, sql_conn_id: str, phone_column: str | None, chunk_size: int
) -> Iterator[RowChunks]:
    """Whole rows of ``sql`` on connection ``sql_conn_id`` (any DbApiHook), ``chunk_size`` at a time.

    The rows come from a streaming cursor (:func:`~airflow_provider_smspartner.sql.stream.stream_query`:
    server-side on PostgreSQL, unbuffered on MySQL/MariaDB), so memory holds one chunk. The
    query runs (and the phone column is checked) when the context is entered; the connection
    stays open until it exits.

    :raises ValueError: when the query returns no result set, the phone column is ambiguous or
        absent, or a column name repeats.
    """
    with stream_query(resolve_dbapi_hook(sql_conn_id), sql, chunk_size, sql_conn_id) as (columns, batches):
        where = f"the result of the sql query on {sql_conn_id!r}"
        names = _unique_names(columns, where)
        column = str(pick_column(names, phone_column, where))
        frames = (pd.DataFrame.from_records(rows, columns=names, coerce_float=False) for rows in batches)
        yield RowChunks(column, names, frames)


@contextmanager
def rows_from_file(
    source_path: str, phone_column: str | None, chunk_size: int, phone_only: bool = False
) -> Iterator[RowChunks]:
    """Whole rows of a CSV or Parquet file (local path or ObjectStoragePath URI), in chunks.

    Parquet is read by row batches (``iter_batches``) with its own column types; CSV by pandas
    ``chunksize``, every cell as text, exactly as written (leading zeros kept; an empty cell stays
    empty). The file is opened and its columns checked when the context is entered.

    :param phone_only: Read the phone column alone (the other columns are neither read nor
        checked for repeated names).
    :raises ValueError: on an unknown extension, an ambiguous or absent phone column, or a
        repeated column name.
    """
    kind = file_format(source_path)
    target = to_storage_path(source_path)
    where = f"file {source_path!r}"
    with target.open("rb") as handle:
        if kind == "parquet":
            import pyarrow.parquet as pq

            parquet = pq.ParquetFile(handle)
            names = [str(name) for name in parquet.schema_arrow.names]
            if not phone_only:
                names = _unique_names(names, where)
            column = str(pick_column(names, phone_column, where))
            read = [column] if phone_only else None
            batches = (
                batch.to_pandas()
                for batch in parquet.iter_batches(batch_size=chunk_size, columns=read, use_threads=True)
            )
            empty = parquet.schema_arrow.empty_table().to_pandas()
            empty = empty[[column]] if phone_only else empty
            yield RowChunks(column, read or names, _with_empty_chunk(batches, empty))
        else:
            compression: Literal["gzip"] | None = "gzip" if source_path.lower().endswith(".gz") else None
            header = pd.read_csv(handle, nrows=0, compression=compression, dtype=str)
            names = list(header.columns) if phone_only else _unique_names(list(header.columns), where)
            column = str(pick_column(names, phone_column, where))
            read = [column] if phone_only else None
            handle.seek(0)
            reader = pd.read_csv(
                handle,
                usecols=read,
                dtype=str,
                keep_default_na=False,
                chunksize=chunk_size,
                compression=compression,
            )
            with reader:
                chunks = (chunk.reset_index(drop=True) for chunk in reader)
                yield RowChunks(column, read or names, _with_empty_chunk(chunks, header[read or names]))


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

    @contextmanager
    def open_rows(self, chunk_size: int = DEFAULT_CHUNK_SIZE) -> Iterator[RowChunks]:
        """Open the source for whole rows, streamed in chunks (see :class:`RowChunks`).

        The query runs, or the file is opened, and the phone column is checked on entering.

        :raises ValueError: on unusable arguments or data (see :meth:`check` and the readers).
        """
        self.check()
        if self.sql is not None:
            opened = rows_from_sql(self.sql, str(self.sql_conn_id), self.phone_column, chunk_size)
        elif self.source_path is not None:
            opened = rows_from_file(self.source_path, self.phone_column, chunk_size)
        else:
            opened = rows_from_object(self.phone_numbers, self.phone_column, chunk_size)
        with opened as rows:
            yield rows
