"""PhoneNumbersToSqlOperator: the phone numbers of a SQL query, normalised to E.164, into a table.

Import-light (parsed with every DAG): pandas, phonenumbers and the warehouse writer load inside
``execute``.

The suppression step's first half: a contact table's numbers, in whatever form people typed
them, become one keyed table of ``phone_e164`` values (or the reason there is none) that joins
against the stop list with an equality on an indexed column. Named after common-sql's
``GenericTransfer``: a query on one connection, a table on another (or the same).

The query is read in chunks of ``chunk_size`` rows from a streaming cursor (a server-side cursor
on PostgreSQL, an unbuffered one on MySQL/MariaDB; SQLite's cursor streams anyway), each chunk
normalised by :func:`~airflow_provider_smspartner.phone_numbers.normalize_phone_numbers` and
loaded into the writer's staging table (:meth:`SqlTableWriter.write_chunks`; a table the run
creates is loaded directly), the next chunks read and normalised in a thread while the database
takes the current one. Memory holds three chunks at most, whatever the size of the contact table; the
destination changes in one transaction at the end.

In keyed-hash mode (``hash_key_conn_id``) each chunk's ``phone_e164`` is replaced by its
``phone_hash`` (:func:`~airflow_provider_smspartner.phone_numbers.hashing.hash_e164`) before it
leaves the thread, so no number reaches the destination, staging table included, in clear; the
table then joins the extract's hashed stop list on ``phone_hash``.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_smspartner.sql.hash_mode import HashModeRules
from airflow_provider_smspartner.sql.stream import stream_query
from airflow_provider_smspartner.utils.arguments import (
    DEFAULT_CHUNK_SIZE,
    check_choice,
    check_count,
    pick_column,
)

if TYPE_CHECKING:
    import pandas as pd
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from airflow_provider_smspartner.sql.apply import WriteSummary
    from airflow_provider_smspartner.sql.writer import SqlTableWriter
    from airflow_provider_smspartner.utils.hash_key import HashKey

#: How the operator writes its table: the whole result (``replace``) or merged into it (``upsert``).
PHONE_WRITE_MODES = ("replace", "upsert")
#: The columns the operator writes besides the key column.
OUTPUT_COLUMNS = ("phone_e164", "reason")
#: What ``key_column`` may not be called, whatever the mode: the columns the operator writes in
#: either mode (keyed-hash mode writes ``phone_hash`` and ``hash_key_id`` instead of ``phone_e164``).
RESERVED_COLUMNS = ("phone_e164", "phone_hash", "hash_key_id", "reason")
#: Keyed-hash mode of the destination (:func:`~airflow_provider_smspartner.sql.hash_mode.check_hash_mode`):
#: ``phone_e164`` marks a table in clear; only ``replace`` may change the key.
HASH_MODE_RULES = HashModeRules(
    clear_column="phone_e164",
    why_no_rekey=(
        "the rows it keeps (keys absent from the query) would stay hashed under the old key and "
        "match nothing hashed under the new one"
    ),
)


class PhoneNumbersToSqlOperator(BaseOperator):
    """Normalise the phone numbers of a SQL query to E.164 and write them to a table, keyed.

    Runs ``sql`` on ``source_conn_id`` (any ``DbApiHook`` database) and writes, for each row of
    its result, the ``key_column`` value (under its own name, as the table's key), ``phone_e164``
    (the E.164 number of ``phone_column``, NULL when it is not a valid number; indexed) and
    ``reason`` (NULL when valid, else ``empty``, ``not_a_number``, ``too_short``, ``too_long``,
    ``invalid_country_code`` or ``invalid_number``) to ``destination_table`` on
    ``destination_conn_id``. Numbers are judged exactly as libphonenumber's ``parse`` +
    ``is_valid_number`` + ``format_number(E164)`` would, those written without an international
    prefix in ``default_region``.

    The result is streamed: read in chunks of ``chunk_size`` rows (a server-side cursor on
    PostgreSQL, an unbuffered one on MySQL/MariaDB), each chunk normalised and loaded into a
    staging table (the next ones read in a thread meanwhile), so memory holds three chunks at most,
    whatever the size of the result. The table is created when missing (key column typed
    from the data: ``bigint`` for integers, text up to 64 characters otherwise) and changes in
    one transaction, under a per-table lock, so a failure (the query, a repeated key, the
    database) leaves it as it was.

    :param sql: The query whose result holds the keys and the phone numbers (a ``.sql`` file
        works too). (templated)
    :param source_conn_id: Connection the query runs on (postgres, mysql, sqlite, any DbApiHook).
        (templated)
    :param key_column: The column of the result that identifies a contact (unique, not NULL);
        matched case-insensitively when no column has exactly that name.
    :param phone_column: The column of the result that holds the phone numbers (any form).
    :param destination_table: Destination table, ``name`` or ``schema.name``. (templated)
    :param destination_conn_id: Connection of the destination database; defaults to
        ``source_conn_id``. (templated)
    :param mode: ``replace`` (default): the table holds exactly the query's rows. ``upsert``: new
        keys inserted, rows whose number changed updated, keys absent from the query kept.
        (templated)
    :param default_region: ISO 3166-1 region of numbers written without an international prefix.
    :param chunk_size: Rows read, normalised and loaded at a time.
    :param hash_key_conn_id: Keyed-hash mode: the connection whose password is the HMAC key
        (``utils.hash_key``). The table then holds the key column, ``phone_hash`` (HMAC-SHA256 of
        the E.164 number, NULL when it is not a valid number; indexed), ``hash_key_id`` and
        ``reason``, and no number in clear (the staging table neither), so it joins the
        extract's hashed stop list on ``phone_hash``. The key is checked before the query runs;
        a table made in the other mode, or ``upsert`` into a table hashed under another key, is
        refused before it; ``replace`` rebuilds a table hashed under another key in one
        transaction. The keys are checked again under the table's lock before the commit: a
        table another run wrote under another key meanwhile rolls the change back. See
        docs/privacy.md. (templated)
    :return: ``{"rows", "valid", "invalid", "table", "mode"}``, and ``hash_key_id`` in keyed-hash
        mode.
    :raises ValueError: before anything is written: an unknown mode or region, an invalid table
        name, a key or phone column the result lacks (naming the available ones), a key column
        called ``phone_e164``, ``phone_hash``, ``hash_key_id`` or ``reason``, an empty key, or a
        key repeated in the result (naming it).
    :raises SmsPartnerConfigError: before the query runs: a missing or unfit key connection
        (naming it), a destination table of the other mode, or ``upsert`` under another key;
        before the commit (rolled back): another key found in the table once the change is made.
    """

    template_fields: Sequence[str] = (
        "sql",
        "source_conn_id",
        "destination_conn_id",
        "destination_table",
        "mode",
        "hash_key_conn_id",
    )
    template_ext: Sequence[str] = (".sql",)
    template_fields_renderers = {"sql": "sql"}
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        sql: str,
        source_conn_id: str,
        key_column: str,
        phone_column: str,
        destination_table: str,
        destination_conn_id: str | None = None,
        mode: str = "replace",
        default_region: str = "FR",
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        hash_key_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sql = sql
        self.source_conn_id = source_conn_id
        self.key_column = key_column
        self.phone_column = phone_column
        self.destination_table = destination_table
        self.destination_conn_id = destination_conn_id
        self.mode = mode
        self.default_region = default_region
        self.chunk_size = chunk_size
        self.hash_key_conn_id = hash_key_conn_id
        self._written: dict[str, Any] = {}  # what execute wrote, for the lineage
        check_count("chunk_size", chunk_size, minimum=1)
        for name, value in (("key_column", key_column), ("phone_column", phone_column)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a column name (a non-empty string); got {value!r}.")
        if key_column.lower() in RESERVED_COLUMNS:
            raise ValueError(
                f"key_column {key_column!r} clashes with a column the operator writes "
                f"({', '.join(RESERVED_COLUMNS)}); alias it in the query (SELECT ... AS contact_id)."
            )

    def execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smspartner.phone_numbers import normalize_phone_numbers
        from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
        from airflow_provider_smspartner.sql.hash_mode import check_hash_mode, hash_key_recheck
        from airflow_provider_smspartner.sql.names import TableName
        from airflow_provider_smspartner.sql.tables import table_spec_for
        from airflow_provider_smspartner.sql.writer import SqlTableWriter
        from airflow_provider_smspartner.utils.hash_key import resolve_hash_key

        # Templated arguments, checked once rendered and before any I/O.
        check_choice("mode", self.mode, PHONE_WRITE_MODES)
        table = TableName.parse(self.destination_table)
        normalize_phone_numbers([], default_region=self.default_region)  # an unknown region fails here
        # Keyed-hash mode: a missing or short key fails here, before the query runs.
        key = None if self.hash_key_conn_id is None else resolve_hash_key(self.hash_key_conn_id)
        source = resolve_dbapi_hook(self.source_conn_id)
        destination = resolve_dbapi_hook(self.destination_conn_id or self.source_conn_id)
        check_hash_mode(destination, table, key, self.mode, HASH_MODE_RULES, log=self.log)

        counts = {"rows": 0, "valid": 0, "invalid": 0, "chunks": 0}
        number = "phone_e164" if key is None else "phone_hash"
        # Read and normalised in a thread, a chunk ahead of the one being loaded: the database
        # loads a chunk while the next one is read and normalised.
        with _read_ahead(lambda: self._frames(source, normalize_phone_numbers, counts, key)) as chunks:
            key_name, first = next(chunks)  # the key's name and type come from the data
            writer = SqlTableWriter(
                destination,
                table,
                table_spec_for(first, key=key_name, indexes=(number,)),
                chunk_size=self.chunk_size,
            )
            frames = (frame for _, frame in chunks)
            written = writer.write_chunks(
                _chained(first, frames),
                self.mode,  # type: ignore[arg-type]
                # Under the table's lock, after the change: another run may have re-keyed the
                # table since the check above.
                before_commit=hash_key_recheck(table, key, self.mode, HASH_MODE_RULES),
            )
        return self._report(writer, written, counts, key)

    def _report(
        self, writer: SqlTableWriter, written: WriteSummary, counts: dict[str, int], key: HashKey | None
    ) -> dict[str, Any]:
        """Log the run, keep what the lineage needs, return the summary."""
        counts["invalid"] = counts["rows"] - counts["valid"]
        self.log.info(
            "%s %s (%s%s): %d rows read from %r in %d chunk(s); %d valid, %d invalid; "
            "%d inserted, %d updated, %d removed%s",
            self.mode,
            writer.table,
            writer.dialect_name,
            "" if key is None else f", keyed hash, key id {key.key_id}",
            counts["rows"],
            self.source_conn_id,
            counts["chunks"],
            counts["valid"],
            counts["invalid"],
            written.inserted,
            written.updated,
            written.removed,
            " (table created)" if written.created_table else "",
        )
        self._written = {
            "rows": counts["rows"],
            "columns": {column.name: column.type for column in writer.spec.columns},
        }
        summary: dict[str, Any] = {
            "rows": counts["rows"],
            "valid": counts["valid"],
            "invalid": counts["invalid"],
            "table": str(writer.table),
            "mode": self.mode,
        }
        if key is not None:
            summary["hash_key_id"] = key.key_id
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """OpenLineage: the tables of the query in; the destination table out (rows, schema)."""
        from airflow_provider_smspartner.utils.lineage import phone_numbers_to_sql_lineage

        return phone_numbers_to_sql_lineage(
            self.sql,
            self.source_conn_id,
            self.destination_conn_id or self.source_conn_id,
            self.destination_table,
            self._written.get("rows"),
            self._written.get("columns"),
        )

    def _frames(
        self, source: Any, normalize: Any, counts: dict[str, int], hash_key: HashKey | None = None
    ) -> Iterator[tuple[str, pd.DataFrame]]:
        """The query's rows as the table's, a chunk at a time, each with the key column's name;
        at least one (empty when the result is). Counts rows, valid numbers and chunks."""
        with stream_query(source, self.sql, self.chunk_size, self.source_conn_id) as (names, batches):
            where = f"the result of the sql query on {self.source_conn_id!r}"
            key = str(pick_column(names, self.key_column, where, argument="key_column", holds="contact keys"))
            phone = str(pick_column(names, self.phone_column, where, argument="phone_column"))
            positions = (names.index(key), names.index(phone))
            for rows in batches:
                frame = self._normalised(rows, positions, key, normalize, hash_key)
                counts["rows"] += len(frame)
                counts["valid"] += int(frame["reason"].isna().sum())
                counts["chunks"] += 1
                yield key, frame

    def _normalised(
        self,
        rows: Sequence[Any],
        positions: tuple[int, int],
        key: str,
        normalize: Any,
        hash_key: HashKey | None = None,
    ) -> pd.DataFrame:
        """One chunk of result rows as the table's rows: key, ``phone_e164``, ``reason``; or, with
        ``hash_key``, key, ``phone_hash``, ``hash_key_id``, ``reason`` (no number in clear)."""
        import pandas as pd

        key_at, phone_at = positions
        keys = pd.Series([row[key_at] for row in rows])
        if keys.isna().any():
            raise ValueError(
                f"key_column {key!r} is empty (NULL) in {int(keys.isna().sum())} row(s) of the query "
                f"on {self.source_conn_id!r}; every row needs a key. Nothing was written."
            )
        phones = pd.Series([row[phone_at] for row in rows], dtype=object)
        normalised = normalize(phones, default_region=self.default_region)
        if hash_key is None:
            numbers = {"phone_e164": normalised["phone_e164"]}
        else:
            from airflow_provider_smspartner.phone_numbers.hashing import hash_e164

            hashes = hash_e164(normalised["phone_e164"], hash_key.key)
            numbers = {"phone_hash": hashes, "hash_key_id": pd.Series(hash_key.key_id, index=hashes.index)}
        return pd.DataFrame({key: keys, **numbers, "reason": normalised["reason"]})


def _chained(first: pd.DataFrame, rest: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
    """``first``, then ``rest``; an empty ``first`` (an empty result) is skipped."""
    if len(first):
        yield first
    yield from rest


_END = object()


@contextmanager
def _read_ahead(produce: Callable[[], Iterator[Any]]) -> Iterator[Iterator[Any]]:
    """``produce()``'s items, made in a thread one item ahead of the consumer (a queue of one).

    The whole iterator runs in that thread (a SQLite connection opened there is used there
    only). Whatever it raises is raised to the consumer; when the consumer stops early, the
    thread stops at its next item and is waited for.
    """
    handoff: queue.Queue[Any] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for item in produce():
                if not put(item):
                    return
            put(_END)
        except BaseException as exc:
            put(exc)

    def items() -> Iterator[Any]:
        while (item := handoff.get()) is not _END:
            if isinstance(item, BaseException):
                raise item
            yield item

    thread = threading.Thread(target=run, name="smspartner-read-ahead", daemon=True)
    thread.start()
    try:
        yield items()
    finally:
        stop.set()
        thread.join()
