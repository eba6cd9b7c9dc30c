"""The results table of the bulk operators: one row per input per try of a task instance.

Key: (``dag_id``, ``run_id``, ``task_id``, ``map_index``, ``try_number``, ``input_row``). A try
inserts its rows while it runs and updates them in place: inputs settled without a call first,
then each call's input as ``pending`` before the call is sent (the write-ahead row), then its
outcome. So a later try of the same task instance finds what an earlier one may have applied.
:func:`final_outcomes_sql` gives one final outcome per input.

Every value is made storable on SQLite, PostgreSQL and MySQL/MariaDB before it is sent: NUL
characters and unpaired surrogates become U+FFFD, and text longer than its column is cut with a
visible ``...[truncated: N characters]`` marker. The identifiers are Airflow's (at most 250
characters, never cut: they are the key).

The table's shape is :func:`~airflow_provider_smspartner.sql.tables.results_table_spec`; it is
created and written through the provider's one writer
(:class:`~airflow_provider_smspartner.sql.writer.SqlTableWriter`, any ``DbApiHook``): created
when missing, tolerating a concurrent creator (mapped tasks start together), and checked, with a
rolled-back probe row, before the first API call of a run. What is here is the results table's
own: its rows, its reads and the final-outcome query.

With ``hash_key_conn_id`` the table is hashed (``hashed_results_table_spec``): ``phone_hash``
and ``hash_key_id`` in place of ``input_value`` and ``phone_e164`` (:mod:`.numbers`); a table of
the other mode, or hashed under another key, is refused before any API call.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlalchemy.schema import CreateIndex

from airflow_provider_smspartner.bulk.numbers import (
    RowNumbers,
    earlier_numbers,
    hash_mode_problem,
    storable_text,
)
from airflow_provider_smspartner.bulk.outcomes import APPLIED_STATUSES, PENDING
from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.sql.ddl import TableShapeError
from airflow_provider_smspartner.sql.names import TableName
from airflow_provider_smspartner.sql.tables import (
    HASH_LENGTH,
    ID_LENGTH,
    INPUT_LENGTH,
    KEY_ID_LENGTH,
    MESSAGE_LENGTH,
    NOTE_LENGTH,
    PHONE_LENGTH,
    RESULT_KEY,
    STATUS_LENGTH,
    hashed_results_table_spec,
    results_table_spec,
)
from airflow_provider_smspartner.sql.types import MYSQL, timestamp_param, timestamp_values
from airflow_provider_smspartner.sql.writer import SqlTableWriter

if TYPE_CHECKING:
    from airflow_provider_smspartner.utils.hash_key import HashKey

log = logging.getLogger(__name__)

#: Rows per statement of a write (executemany chunk, ``IN`` list).
WRITE_CHUNK = 1000
#: Outcome rows buffered before a write, and seconds between two writes at most (see the recorder).
DEFAULT_FLUSH_ROWS = 500
DEFAULT_FLUSH_SECONDS = 2.0
#: Inputs recorded ``pending`` per write-ahead block.
DEFAULT_BLOCK_ROWS = 500
_INT32 = 2**31
_INT64 = 2**63


class ResultsTableError(RuntimeError):
    """The results table cannot be created, is not the expected shape, or cannot be written."""


@dataclass(frozen=True)
class TaskIdentity:
    """Which task instance (and try) a run's rows belong to.

    :param try_number: ``None`` when the context has none (a test calling ``execute``): the run
        then takes the try after the highest one recorded for the task instance.
    """

    dag_id: str = ""
    run_id: str = ""
    task_id: str = ""
    map_index: int = -1
    try_number: int | None = None

    def check(self) -> None:
        """:raises ValueError: an id longer than the key column (Airflow's own limit)."""
        for name in ("dag_id", "run_id", "task_id"):
            value = getattr(self, name)
            if len(value) > ID_LENGTH:
                raise ValueError(
                    f"{name} is {len(value)} characters long; the results table keys on it and holds at "
                    f"most {ID_LENGTH} (Airflow's own limit): {value[:60]!r}..."
                )

    def describe(self) -> str:
        map_part = "" if self.map_index < 0 else f"[{self.map_index}]"
        return f"{self.dag_id}.{self.task_id}{map_part} run {self.run_id!r} try {self.try_number}"


# ------------------------------------------------------------------------------------- values
def _storable_int(value: Any, bound: int) -> int | None:
    """An integer within ``[-bound, bound)``, or ``None`` (missing, or too big for the column)."""
    if value is None or value is pd.NA:
        return None
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if -bound <= number < bound else None


def _cells(series: pd.Series) -> list[Any]:
    """A column's values with ``None`` for every kind of missing value."""
    return [None if v is None or v is pd.NA or v is pd.NaT else v for v in series.astype(object)]


# ------------------------------------------------------------------------------------- views
def final_outcomes_sql(table: str, hashed: bool = False) -> str:
    """One final outcome per input of every task instance in results table ``table``.

    Per (task instance, ``input_row``): the row of the latest try that recorded the input, except
    that an input whose number any try of the task instance recorded ``added`` (or ``removed``)
    shows that status, with that try's stop id, try (``decided_by_try``) and time. ``latest_try``
    is the try the row comes from. Plain SQL for SQLite, PostgreSQL and MySQL/MariaDB; use it as
    a query or a view (``CREATE VIEW ... AS``).

    :param hashed: The table is hashed (``hash_key_conn_id``): numbers match on ``phone_hash``,
        and ``phone_hash, hash_key_id`` are selected instead of ``input_value, phone_e164``.
    """
    t = str(TableName.parse(table))
    first, second = ("phone_hash", "hash_key_id") if hashed else ("input_value", "phone_e164")
    number = "phone_hash" if hashed else "phone_e164"
    applied = ", ".join(f"'{s}'" for s in APPLIED_STATUSES)
    same_ti = "{a}.dag_id = r.dag_id AND {a}.run_id = r.run_id AND {a}.task_id = r.task_id AND {a}.map_index = r.map_index"
    return f"""SELECT r.dag_id, r.run_id, r.task_id, r.map_index, r.input_row, r.{first}, r.{second},
       CASE WHEN d.status IS NULL THEN r.status ELSE d.status END AS status,
       CASE WHEN d.status IS NULL THEN r.stop_id ELSE d.stop_id END AS stop_id,
       CASE WHEN d.status IS NULL THEN r.try_number ELSE d.try_number END AS decided_by_try,
       CASE WHEN d.status IS NULL THEN r.decided_at ELSE d.decided_at END AS decided_at,
       r.try_number AS latest_try, r.error_code, r.error_message, r.note
FROM {t} r
JOIN (SELECT dag_id, run_id, task_id, map_index, input_row, MAX(try_number) AS try_number
      FROM {t} GROUP BY dag_id, run_id, task_id, map_index, input_row) l
  ON {same_ti.format(a="l")} AND l.input_row = r.input_row AND l.try_number = r.try_number
LEFT JOIN (SELECT dag_id, run_id, task_id, map_index, {number}, MAX(status) AS status,
                  MAX(stop_id) AS stop_id, MAX(try_number) AS try_number, MAX(decided_at) AS decided_at
           FROM {t} WHERE status IN ({applied})
           GROUP BY dag_id, run_id, task_id, map_index, {number}) d
  ON {same_ti.format(a="d")} AND d.{number} = r.{number}
 AND r.status NOT IN ('invalid', 'duplicate', {applied})"""


# ------------------------------------------------------------------------------------- table
@dataclass(frozen=True)
class ResultsTable:
    """Where a bulk run records its outcomes, and how often.

    :param conn_id: Connection of the database (any ``DbApiHook``).
    :param table: ``name`` or ``schema.name``; created on first use.
    :param flush_rows: Outcomes buffered before they are written.
    :param flush_seconds: Longest wait before buffered outcomes are written.
    :param block_rows: Inputs recorded ``pending`` per write-ahead block.
    :param hash_key: Keyed-hash mode: the key (``utils.hash_key``) the table's ``phone_hash``
        values are made with; ``None`` in clear.
    """

    conn_id: str
    table: str
    flush_rows: int = DEFAULT_FLUSH_ROWS
    flush_seconds: float = DEFAULT_FLUSH_SECONDS
    block_rows: int = DEFAULT_BLOCK_ROWS
    hash_key: HashKey | None = None

    def __post_init__(self) -> None:
        TableName.parse(self.table)  # a bad name fails before anything else

    def prepare(self, identity: TaskIdentity) -> TryResults:
        """Everything before the first API call: create the table or check its shape, prove a row can
        be inserted, updated and deleted (rolled back), settle the try number, read what earlier
        tries of the task instance left.

        :raises ValueError: an id longer than the key allows.
        :raises ResultsTableError: the table cannot be created, has another shape or another hash
            mode or key, or cannot be written (missing schema, no privilege...); nothing has been
            sent to the API.
        """
        identity.check()
        store = TryResults(self, identity)
        store.connect()
        return store


@dataclass
class TryResults:
    """The rows of one try in a results table: created/checked, then read and written.

    Built by :meth:`ResultsTable.prepare`. ``identity.try_number`` is settled by then, and
    ``earlier`` holds what earlier tries of the task instance left that a new try must know:
    their ``pending``, ``added`` and ``removed`` rows (``try_number``, ``input_row``,
    ``phone_e164``, or ``phone_hash`` in keyed-hash mode, ``status``, ``stop_id``).
    """

    config: ResultsTable
    identity: TaskIdentity
    earlier: pd.DataFrame = field(default_factory=pd.DataFrame)
    created: bool = False

    @property
    def table(self) -> str:
        return self.config.table

    @property
    def conn_id(self) -> str:
        return self.config.conn_id

    @property
    def try_number(self) -> int:
        return int(self.identity.try_number or 0)

    @property
    def hash_key(self) -> HashKey | None:
        return self.config.hash_key

    @cached_property
    def name(self) -> TableName:
        return TableName.parse(self.config.table)

    @cached_property
    def writer(self) -> SqlTableWriter:
        """The table's writer: its engine (no pool: a run writes every few seconds at most, and
        each write stands alone), its ``Table``, its inserts."""
        spec = results_table_spec() if self.hash_key is None else hashed_results_table_spec()
        return SqlTableWriter(
            resolve_dbapi_hook(self.config.conn_id), self.name, spec, chunk_size=WRITE_CHUNK
        )

    @property
    def engine(self) -> Engine:
        return self.writer.engine

    @property
    def sql_table(self) -> sa.Table:
        return self.writer.sql_table

    @property
    def dialect(self) -> str:
        return str(self.engine.dialect.name)

    def describe(self) -> str:
        return f"results table {self.name} (connection {self.conn_id!r})"

    def row_numbers(self, outcomes: pd.DataFrame) -> RowNumbers:
        """What this table's rows hold of each input's number (hashed with :attr:`hash_key`)."""
        return RowNumbers.of(outcomes, self.hash_key)

    def earlier_e164(self, known: pd.Series) -> pd.DataFrame:
        """:attr:`earlier` with ``phone_e164``: in keyed-hash mode each hash is matched back to
        the number of ``known`` (E.164 numbers: the run's inputs and the list's) it is the hash
        of, in memory (:func:`~.numbers.earlier_numbers`)."""
        if self.hash_key is None or self.earlier.empty:
            return self.earlier
        return earlier_numbers(self.earlier, known, self.hash_key.key)

    # ------------------------------------------------------------------ preflight
    def connect(self) -> None:
        """Create or check the table, probe a write, settle the try, read the earlier tries."""
        try:
            self._check_hash_mode()
            try:
                self.created = self.writer.ensure_table()
                missing: list[str] = []
                if self.created:
                    log.info("Created %s", self.describe())
            except TableShapeError as exc:
                missing = exc.missing
            self._check_shape(missing)
            self._ensure_index()
            self._settle_try()
            self._probe()
            self.earlier = self._read_earlier()
        except ResultsTableError:
            raise
        except sa.exc.SQLAlchemyError as exc:
            raise ResultsTableError(
                f"Cannot use {self.describe()}: {db_error(exc)}. Nothing was sent to SMS Partner; fix the "
                "table, its schema or the connection's privileges (it needs CREATE the first time, then "
                "SELECT, INSERT, UPDATE and DELETE)."
            ) from exc

    def _check_shape(self, missing: list[str]) -> None:
        """Refuse a table lacking the ``missing`` columns, or keyed otherwise than :data:`RESULT_KEY`."""
        with self.engine.connect() as conn:
            key = sa.inspect(conn).get_pk_constraint(self.name.name, schema=self.name.schema)
        key_columns = sorted(str(c).lower() for c in key.get("constrained_columns") or ())
        problems = []
        if missing:
            problems.append(f"lacks column(s) {missing}")
        if key_columns != sorted(RESULT_KEY):
            problems.append(f"has the key {key_columns or 'none'} instead of {list(RESULT_KEY)}")
        if problems:
            raise ResultsTableError(
                f"{self.describe()} exists with another shape: it {' and '.join(problems)}. It may come from "
                "an older version of the provider or another tool; rename or drop it, or choose another "
                "results_table. Nothing was sent to SMS Partner."
            )

    def _check_hash_mode(self) -> None:
        """Refuse a table of the other mode, or hashed under another key (:func:`hash_mode_problem`)."""
        with self.engine.connect() as conn:
            problem = hash_mode_problem(conn, self.name, self.hash_key)
        if problem:
            raise ResultsTableError(f"{self.describe()} {problem}. Nothing was sent to SMS Partner.")

    def _ensure_index(self) -> None:
        (index,) = self.sql_table.indexes
        column = self.writer.spec.indexes[0]
        with self.engine.connect() as conn:
            indexes = sa.inspect(conn).get_indexes(self.name.name, schema=self.name.schema)
        if any([str(c).lower() for c in ix["column_names"] if c] == [column] for ix in indexes):
            return
        try:
            with self.engine.begin() as conn:
                # MySQL (not MariaDB) has no CREATE INDEX IF NOT EXISTS.
                plain_mysql = conn.dialect.name in MYSQL and not getattr(conn.dialect, "is_mariadb", False)
                conn.execute(CreateIndex(index, if_not_exists=not plain_mysql))
        except sa.exc.DBAPIError as exc:
            # Lookups by number get slower without it; the outcomes are recorded all the same.
            log.warning("Could not index %s on %s: %s", self.describe(), column, db_error(exc))

    def _where_task_instance(self, table: sa.Table | None = None) -> sa.ColumnElement[bool]:
        t = self.sql_table if table is None else table
        ident = self.identity
        return sa.and_(
            t.c.dag_id == ident.dag_id,
            t.c.run_id == ident.run_id,
            t.c.task_id == ident.task_id,
            t.c.map_index == ident.map_index,
        )

    def _settle_try(self) -> None:
        t = self.sql_table
        with self.engine.connect() as conn:
            if self.identity.try_number is None:
                highest = conn.execute(
                    sa.select(sa.func.max(t.c.try_number)).where(self._where_task_instance())
                ).scalar()
                self.identity = replace(self.identity, try_number=int(highest or 0) + 1)
                return
            taken = conn.execute(
                sa.select(sa.func.count())
                .select_from(t)
                .where(self._where_task_instance(), t.c.try_number == self.identity.try_number)
            ).scalar_one()
        if taken:
            raise ResultsTableError(
                f"{self.describe()} already holds {taken} rows of {self.identity.describe()}: a try records "
                "its outcomes once. Clear the task (Airflow gives the next try a new number) or choose "
                "another results_table. Nothing was sent to SMS Partner."
            )

    def _probe(self) -> None:
        """Insert, update and delete a row at the columns' full width, then roll back: a table too
        narrow, a missing privilege or a read-only database fails here, before any API call."""
        t = self.sql_table
        wide = "\U0001f4f5"  # four bytes in UTF-8, refused by utf8mb3 and latin1 columns
        clear = (wide * INPUT_LENGTH, "+" + "9" * (PHONE_LENGTH - 1))
        number = clear if self.hash_key is None else ("f" * HASH_LENGTH, "~" * KEY_ID_LENGTH)
        probe: dict[str, Any] = {
            "input_row": -1,
            "stored_input": number[0],
            "stored_phone": number[1],
            "status": "p" * STATUS_LENGTH,
            "stop_id": _INT64 - 1,
            "error_code": _INT32 - 1,
            "error_message": wide * MESSAGE_LENGTH,
            "note": wide * NOTE_LENGTH,
            "decided_at": datetime.now(timezone.utc),
        }
        key = sa.and_(self._where_task_instance(), t.c.try_number == self.try_number, t.c.input_row == -1)
        with self.engine.connect() as conn:
            transaction = conn.begin()
            try:
                self.writer.insert_driver_rows(conn, [self._row_tuple(**probe)])
                conn.execute(sa.update(t).where(key).values(status=PENDING))
                conn.execute(sa.delete(t).where(key))
            finally:
                transaction.rollback()

    def _read_earlier(self) -> pd.DataFrame:
        t = self.sql_table
        number = "phone_e164" if self.hash_key is None else "phone_hash"
        columns = ["try_number", "input_row", number, "status", "stop_id"]
        query = sa.select(*(t.c[c] for c in columns)).where(
            self._where_task_instance(),
            t.c.try_number < self.try_number,
            t.c.status.in_([PENDING, *APPLIED_STATUSES]),
        )
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        frame = pd.DataFrame([tuple(r) for r in rows], columns=columns)
        return frame.astype(
            {
                "try_number": "int64",
                "input_row": "int64",
                number: "string",
                "status": "string",
                "stop_id": "Int64",
            }
        )

    # ------------------------------------------------------------------ rows
    def _row_tuple(
        self,
        input_row: int,
        stored_input: str | None,
        stored_phone: Any,
        status: str,
        stop_id: Any,
        error_code: Any,
        error_message: Any,
        note: Any,
        decided_at: Any,
        *,
        stamp_ready: bool = False,
    ) -> tuple[Any, ...]:
        """One row of this try, every value storable and in the form the driver takes.

        :param stored_input: ``input_value``, or ``phone_hash`` in keyed-hash mode.
        :param stored_phone: ``phone_e164``, or ``hash_key_id`` in keyed-hash mode.
        :param stamp_ready: ``decided_at`` is already in the driver's form (:func:`timestamp_values`).
        """
        ident = self.identity
        limits = (INPUT_LENGTH, PHONE_LENGTH) if self.hash_key is None else (HASH_LENGTH, KEY_ID_LENGTH)
        return (
            ident.dag_id,
            ident.run_id,
            ident.task_id,
            int(ident.map_index),
            self.try_number,
            int(input_row),
            storable_text(stored_input, limits[0]),
            storable_text(stored_phone, limits[1]),
            storable_text(status, STATUS_LENGTH),
            _storable_int(stop_id, _INT64),
            _storable_int(error_code, _INT32),
            storable_text(error_message, MESSAGE_LENGTH),
            storable_text(note, NOTE_LENGTH),
            decided_at if stamp_ready else timestamp_param(decided_at, self.dialect, self._stamp_format),
        )

    def rows(
        self, outcomes: pd.DataFrame, positions: Sequence[int] | np.ndarray, numbers: RowNumbers
    ) -> list[tuple[Any, ...]]:
        """Rows for ``positions`` of the outcome table (``outcomes.OUTCOME_COLUMNS``).

        :param numbers: What the rows hold of each input's number (:meth:`row_numbers`).
        """
        positions = np.asarray(positions, dtype=np.int64)
        if len(positions) == 0:
            return []
        part = outcomes.iloc[positions]
        columns = [_cells(part[c]) for c in ("status", "stop_id", "error_code", "error_message", "note")]
        stamps = timestamp_values(part["decided_at"], self.dialect, self._stamp_format)
        return [
            self._row_tuple(
                row,
                *numbers.columns(row),
                status,
                stop,
                code,
                numbers.text(row, message),
                numbers.text(row, note),
                stamp,
                stamp_ready=True,
            )
            for row, status, stop, code, message, note, stamp in zip(
                positions.tolist(), *columns, stamps, strict=True
            )
        ]

    @property
    def _stamp_format(self) -> str:
        return self.writer.spec.sqlite_timestamp_format

    # ------------------------------------------------------------------ writes
    def _chunks(self, rows: Sequence[tuple[Any, ...]]) -> Iterator[Sequence[tuple[Any, ...]]]:
        for start in range(0, len(rows), WRITE_CHUNK):
            yield rows[start : start + WRITE_CHUNK]

    def insert(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Insert rows of this try (from :meth:`rows`), in one transaction."""
        if not rows:
            return
        with self.engine.begin() as conn:
            self.writer.insert_driver_rows(conn, rows)

    def replace(self, rows: Sequence[tuple[Any, ...]]) -> None:
        """Write rows of this try over the ones with the same key (a ``pending`` row becomes its
        outcome), in one transaction: a delete by key and an insert, fast on every database, and
        safe to repeat."""
        if not rows:
            return
        t = self.sql_table
        with self.engine.begin() as conn:
            for chunk in self._chunks(rows):
                keys = [row[5] for row in chunk]
                conn.execute(
                    sa.delete(t).where(
                        self._where_task_instance(),
                        t.c.try_number == self.try_number,
                        # The range lets the key index find the rows; ``IN`` alone is a filter
                        # on every row of the try for PostgreSQL's planner.
                        t.c.input_row.between(min(keys), max(keys)),
                        t.c.input_row.in_(keys),
                    )
                )
                self.writer.insert_driver_rows(conn, chunk)

    def update_earlier(self, updates: pd.DataFrame) -> None:
        """Settle rows of earlier tries: ``updates`` has ``try_number``, ``input_row``, ``status``,
        ``stop_id`` and ``note``; the other columns (``decided_at`` included) stay as written."""
        if updates.empty:
            return
        t = self.sql_table
        statement = (
            sa.update(t)
            .where(
                self._where_task_instance(),
                t.c.try_number == sa.bindparam("b_try"),
                t.c.input_row == sa.bindparam("b_row"),
            )
            .values(
                status=sa.bindparam("b_status"), stop_id=sa.bindparam("b_stop"), note=sa.bindparam("b_note")
            )
        )
        params = [
            {
                "b_try": int(tn),
                "b_row": int(row),
                "b_status": storable_text(status, STATUS_LENGTH),
                "b_stop": _storable_int(stop, _INT64),
                "b_note": storable_text(note, NOTE_LENGTH),
            }
            for tn, row, status, stop, note in zip(
                updates["try_number"],
                updates["input_row"],
                _cells(updates["status"]),
                _cells(updates["stop_id"]),
                _cells(updates["note"]),
                strict=True,
            )
        ]
        with self.engine.begin() as conn:
            conn.execute(statement, params)

    # ------------------------------------------------------------------ reads (tests, reports)
    def read(self, all_tries: bool = False) -> pd.DataFrame:
        """This try's rows (or every try's of the task instance), ordered by try and input row."""
        t = self.sql_table
        query = sa.select(t).where(self._where_task_instance())
        if not all_tries:
            query = query.where(t.c.try_number == self.try_number)
        with self.engine.connect() as conn:
            rows = conn.execute(query.order_by(t.c.try_number, t.c.input_row)).all()
        return pd.DataFrame([tuple(r) for r in rows], columns=self.writer.spec.names)

    def close(self) -> None:
        if "writer" in self.__dict__ and "engine" in self.writer.__dict__:
            self.engine.dispose()


def db_error(exc: BaseException) -> str:
    """The database's own message, without SQLAlchemy's statement and parameters."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
