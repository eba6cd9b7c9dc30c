"""Where the gate's kept and excluded rows go, chunk by chunk (:class:`~.engine.ChunkSink`).

A Parquet file (``ParquetWriter``, one row group per chunk), a CSV file (appended chunk by chunk)
or a table (``SqlTableWriter.write_chunks`` in ``replace`` mode, fed from a thread: one
transaction, so the table changes at once or not at all).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime
from glob import escape as glob_escape
from pathlib import Path
from typing import Any

import pandas as pd

from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.sql.writer import SqlTableWriter
from airflow_provider_smspartner.utils.arguments import DEFAULT_CHUNK_SIZE
from airflow_provider_smspartner.utils.storage import FileFormat, to_storage_path

log = logging.getLogger(__name__)


class FileSink:
    """Rows to a Parquet or CSV file, local or any ObjectStoragePath URI, written as they come.

    Parquet: one ``ParquetWriter`` row group per chunk, the schema taken from the first chunk
    (a column that is empty there is typed text) and later chunks cast to it. CSV: a header, then
    the chunks appended. The file is opened (and its folder created) by the first chunk.

    Atomic on a local disk (a path or ``file://``): the rows go to a temporary sibling
    (``.<name>.<random>.smspartner-tmp``), renamed over the target by :meth:`commit` once the run
    is complete, so a failed or killed run leaves the previous file, or none, never a partial one;
    a run removes the temporary files a killed run left beside its target. Object stores (S3,
    GCS, Azure Blob) need no temporary key: an upload becomes visible whole when it completes.

    :param atomic: ``False`` writes the target directly (a private scratch file).
    """

    def __init__(self, path: str, file_format: FileFormat, atomic: bool = True) -> None:
        self.path = to_storage_path(path)
        self.format = file_format
        self.target = str(self.path)
        self.rows = 0
        self._local = Path(self.path.path) if self.path.protocol in ("file", "local") else None
        self._temporary: Path | None = None
        if atomic and self._local is not None:
            remove_temporary_files(self._local)
            self._temporary = self._local.with_name(
                f".{self._local.name}.{uuid.uuid4().hex[:12]}{TEMPORARY_SUFFIX}"
            )
        self._handle: Any = None
        self._writer: Any = None
        self._schema: Any = None

    def write(self, frame: pd.DataFrame) -> None:
        if self._handle is None:
            self._handle = self._open()
        elif frame.empty:
            return
        if self.format == "csv":
            frame.to_csv(self._handle, index=False, header=self._writer is None)
            self._writer = True
        else:
            self._write_parquet(frame)
        self.rows += len(frame)

    def _open(self) -> Any:
        if self._temporary is not None:
            self._temporary.parent.mkdir(parents=True, exist_ok=True)
            return self._temporary.open("wb")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self.path.open("wb")

    def _write_parquet(self, frame: pd.DataFrame) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False).replace_schema_metadata(None)
        if self._writer is None:
            fields = [f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]
            self._schema = pa.schema(fields)
            self._writer = pq.ParquetWriter(self._handle, self._schema)
        if not table.schema.equals(self._schema):
            try:
                table = table.cast(self._schema)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                raise ValueError(
                    f"The audience's column types change between chunks ({table.schema} after "
                    f"{self._schema}); {exc}"
                ) from exc
        if table.num_rows:
            self._writer.write_table(table)

    def close(self) -> None:
        if self._handle is None:
            return
        try:
            if self.format == "parquet" and self._writer is not None:
                self._writer.close()
            if self._temporary is not None:
                self._handle.flush()
                os.fsync(self._handle.fileno())
        finally:
            self._handle.close()

    def commit(self) -> None:
        """Put the complete file in place of the target (a rename: readers see the old file or
        the new one)."""
        if self._temporary is not None and self._handle is not None:
            assert self._local is not None
            os.replace(self._temporary, self._local)

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
        if self._handle is None:
            return
        # Only what this run created goes: its temporary file, or a direct write's partial file.
        with contextlib.suppress(Exception):
            if self._temporary is not None:
                self._temporary.unlink(missing_ok=True)
            else:
                self.path.unlink(missing_ok=True)


#: The end of the name of a temporary file written beside a target (see :class:`FileSink`).
TEMPORARY_SUFFIX = ".smspartner-tmp"


def remove_temporary_files(target: Path) -> list[Path]:
    """Remove the temporary files that runs killed while writing ``target`` left beside it.

    Two runs writing one file at once are not supported: the second would remove the first's
    temporary file, whose run then fails at its rename (never leaving a partial file).
    """
    removed = []
    if target.parent.is_dir():
        for leftover in target.parent.glob(f".{glob_escape(target.name)}.*{TEMPORARY_SUFFIX}"):
            with contextlib.suppress(OSError):
                leftover.unlink()
                removed.append(leftover)
                log.info("Removed %s, left by a run that was killed while writing %s", leftover, target)
    return removed


_END = object()


class _Abort(Exception):
    """Ends the chunks a table writer is reading: its transaction rolls back."""


class TableSink:
    """Rows to a table, replaced in one transaction by ``SqlTableWriter.write_chunks`` (mode
    ``replace``, table created when missing): the table changes only when every row is in.

    Streamed (default): the writer runs in a thread and reads the chunks from a small queue, so
    memory holds about two chunks. Spilled (``spill=True``): the rows go to a temporary local
    Parquet file first, loaded chunk by chunk by :meth:`close`; for a second table of the same run
    (written after the first commits: SQLite takes one writer at a time) and for SQLite outputs
    (whose commit would wait for a read of the same file still going on).

    :param conn_id: Any DbApiHook connection.
    :param table: ``name`` or ``schema.name`` (validated on construction).
    :param key: A column unique in every row written (the kept rows' ``phone_e164``), or ``None``.
    :param indexes: Columns indexed when the table is created.
    """

    def __init__(
        self,
        conn_id: str,
        table: str,
        key: str | None = None,
        indexes: tuple[str, ...] = (),
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        now: datetime | None = None,
        spill: bool | None = None,
    ) -> None:
        from airflow_provider_smspartner.sql.names import TableName

        self.table = TableName.parse(table)
        self.target = str(self.table)
        self.hook = resolve_dbapi_hook(conn_id)
        self.key = key
        self.indexes = indexes
        self.chunk_size = chunk_size
        self.now = now
        self.spill = self.hook.dialect_name == "sqlite" if spill is None else spill
        self.summary: Any = None
        self._spilled: FileSink | None = None
        self._spill_name = ""
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=2)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def _writer(self, first: pd.DataFrame) -> SqlTableWriter:
        from airflow_provider_smspartner.sql.tables import table_spec_for

        spec = table_spec_for(first, key=self.key, indexes=self.indexes)
        return SqlTableWriter(self.hook, self.table, spec, self.chunk_size)

    def write(self, frame: pd.DataFrame) -> None:
        if self.spill:
            if self._spilled is None:
                import tempfile

                handle, name = tempfile.mkstemp(prefix="smspartner-suppression-", suffix=".parquet")
                os.close(handle)
                self._spill_name = name
                self._spilled = FileSink(name, "parquet", atomic=False)
            self._spilled.write(frame)
            return
        if self._thread is None:
            self._start(frame)
        self._put(frame)

    def _start(self, first: pd.DataFrame) -> None:
        writer = self._writer(first)

        def run() -> None:
            try:
                self.summary = writer.write_chunks(self._chunks(), "replace", now=self.now)
            except _Abort:
                pass
            except BaseException as exc:
                self._error = exc

        self._thread = threading.Thread(target=run, name=f"smspartner-write-{self.target}", daemon=True)
        self._thread.start()

    def _chunks(self) -> Iterator[pd.DataFrame]:
        while True:
            item = self._queue.get()
            if item is _END:
                return
            if isinstance(item, _Abort):
                raise item
            yield item

    def _put(self, item: Any) -> None:
        assert self._thread is not None
        while True:
            if self._error is not None:
                raise self._error
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                if not self._thread.is_alive():
                    if self._error is not None:
                        raise self._error from None
                    raise RuntimeError(f"The writer of table {self.target} stopped early.") from None

    def close(self) -> None:
        if self._spilled is not None:
            self._load_spilled(self._spilled)
            return
        if self._thread is None:
            return
        self._put(_END)
        self._thread.join()
        if self._error is not None:
            raise self._error

    def commit(self) -> None:
        """Nothing to do: :meth:`close` committed the table's transaction."""

    def _load_spilled(self, spilled: FileSink) -> None:
        from airflow_provider_smspartner.bulk.sources import rows_from_file

        try:
            spilled.close()
            # Any column of the spilled rows serves as the reader's "phone column": it only reads.
            with rows_from_file(
                self._spill_name, self.indexes[0] if self.indexes else self.key, self.chunk_size
            ) as rows:
                first = next(rows.chunks)
                writer = self._writer(first)

                def chunks() -> Iterator[pd.DataFrame]:
                    yield first
                    yield from rows.chunks

                self.summary = writer.write_chunks(chunks(), "replace", now=self.now)
        finally:
            self._remove_spilled()

    def _remove_spilled(self) -> None:
        if self._spilled is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._spill_name)

    def abort(self) -> None:
        if self._spilled is not None:
            with contextlib.suppress(Exception):
                self._spilled.close()
            self._remove_spilled()
            return
        if self._thread is None:
            return
        # Make room, then end the writer's chunks with an error: its transaction rolls back.
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        with contextlib.suppress(queue.Full):
            self._queue.put(_Abort(), timeout=5)
        self._thread.join(timeout=60)
