"""Table shapes: what a :class:`TableSpec` says, and every table the provider owns.

The four provider-owned tables live here, in one place: the extract's stop-list table
(:func:`stop_list_table_spec`) and its run log (:func:`run_log_table_spec`), the bulk operators'
results table (:func:`results_table_spec`; :func:`hashed_results_table_spec` in keyed-hash
mode) and the suppression operator's audit table (:func:`audit_table_spec`). The gate, the
event trigger and the lineage read what the extract writes, so none of these shapes belongs to
one operator. :func:`table_spec_for` types a table from a DataFrame (tables whose columns come
from the user's data).

Plain data, import-light (read at DAG-parse time): the writer (:mod:`.writer`, :mod:`.types`)
turns a spec into SQL for each database.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from airflow_provider_smspartner.sql.names import fit_table_name

if TYPE_CHECKING:
    import pandas as pd

ColumnType = Literal["bigint", "int", "double", "bool", "short_text", "text", "long_text", "timestamp"]
TEXT_TYPES: tuple[ColumnType, ...] = ("short_text", "text", "long_text")
#: How a ``timestamp`` column stores UTC instants on SQLite (it has no timestamp type): ISO text,
#: whole seconds, which sorts chronologically.
ISO_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
#: The same to the microsecond, for a table that orders rows written within one second.
ISO_FORMAT_MICROSECONDS = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class Column:
    """A column of a managed table: name, portable type, and whether it may be NULL.

    :param length: Text types only: at most this many characters, ``VARCHAR(length)`` on every
        database (a text column that is part of a key must be bounded on MySQL/MariaDB).
    """

    name: str
    type: ColumnType
    nullable: bool = True
    length: int | None = None


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
    :param composite_key: A primary key of several columns, for a table written row by row
        (``insert`` mode, ``SqlTableWriter.insert_driver_rows``): the keyed modes need ``key``.
    :param sqlite_timestamp_format: How SQLite stores this table's timestamps (:data:`ISO_FORMAT`).
    :param binary_text: MySQL/MariaDB compare this table's text byte for byte (``utf8mb4_bin``),
        as PostgreSQL and SQLite do by default: keys that differ only in case stay apart.

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
    composite_key: tuple[str, ...] = ()
    sqlite_timestamp_format: str = ISO_FORMAT
    binary_text: bool = False

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The primary key's columns: ``key``, else ``composite_key`` (empty: no primary key)."""
        return (self.key,) if self.key else self.composite_key


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


#: Which task wrote a log row (the run log's and the audit table's first columns).
_TASK_COLUMNS = (Column("dag_id", "text"), Column("run_id", "text"), Column("task_id", "text"))


# ------------------------------------------------------------------------------ the extract
#: ``run_log_table``'s default: ``{table}`` stands for the stop-list table (schema included).
DEFAULT_RUN_LOG_TABLE = "{table}_runs"


def stop_list_table_spec() -> TableSpec:
    """The warehouse stop-list table. ``removed_at`` keeps the opt-out history in upsert mode;
    ``first_seen_at`` is when the warehouse first saw the stop (set on insert, never updated,
    carried over by ``replace``).

    ``phone_number`` is unbounded text (``LONGTEXT`` on MySQL/MariaDB): the API may send any
    string, and a row the warehouse cannot take must not block the list.
    """
    return _stop_list_spec(
        (Column("phone_number", "long_text"), Column("phone_e164", "short_text")), "phone_e164"
    )


def hashed_stop_list_table_spec() -> TableSpec:
    """The warehouse stop-list table in keyed-hash mode (``hash_key_conn_id``): no number in clear.

    ``phone_hash`` is HMAC-SHA256 of the E.164 number under the key named ``hash_key_id`` (64
    lowercase hex digits; empty when the listed number has no E.164); the rest is as
    :func:`stop_list_table_spec`.
    """
    hashed = (Column("phone_hash", "short_text", length=64), Column("hash_key_id", "short_text", length=64))
    return _stop_list_spec(hashed, "phone_hash")


def _stop_list_spec(number: tuple[Column, ...], index: str) -> TableSpec:
    """The stop-list table: ``stop_id``, the ``number`` columns (compared by ``upsert``; ``index``,
    the one warehouses join on, indexed), then the times."""
    return TableSpec(
        columns=(
            Column("stop_id", "bigint", nullable=False),
            *number,
            Column("created_at", "timestamp"),
            Column("first_seen_at", "timestamp"),
            Column("extracted_at", "timestamp"),
            Column("removed_at", "timestamp"),
        ),
        key="stop_id",
        indexes=(index,),
        compared=(*(c.name for c in number), "created_at"),
        soft_delete="removed_at",
        first_seen="first_seen_at",
    )


def run_log_table_spec() -> TableSpec:
    """The run log: one row per extract run, applied or refused.

    ``status`` is ``applied`` (written in the change's transaction) or ``refused`` (the list was
    refused: ``reason`` holds the error; written on its own, the change rolled back). The counts
    are empty for a refused run, ``rows_in_list`` and ``list_sha256`` too when the answer itself
    was refused.
    """
    return TableSpec(
        columns=(
            *_TASK_COLUMNS,
            Column("try_number", "int"),
            Column("started_at", "timestamp"),
            Column("finished_at", "timestamp"),
            Column("mode", "short_text"),
            Column("status", "short_text"),
            Column("rows_in_list", "bigint"),
            Column("inserted", "bigint"),
            Column("updated", "bigint"),
            Column("removed", "bigint"),
            Column("list_sha256", "short_text"),
            Column("reason", "long_text"),
        )
    )


def run_log_table_name(table: str, run_log_table: str = DEFAULT_RUN_LOG_TABLE) -> str:
    """``run_log_table`` with ``{table}`` replaced by ``table``; a name part over 63 characters is
    cut and given a hash of the whole, as the staging tables are."""
    return fit_table_name(run_log_table.replace("{table}", table.strip()))


# ------------------------------------------------------------------------------ the gate
#: The counts of a suppression run, in the order they are reported;
#: ``audience = kept + invalid + duplicate + stopped``.
COUNT_KEYS = ("audience", "valid", "invalid", "duplicate", "stopped", "kept")
#: ``status`` of an audit row: the list was used (``accepted``), or the run stopped before the
#: audience was checked (``refused``: ``reason`` says why).
AUDIT_STATUSES = ("accepted", "refused")


def audit_table_spec() -> TableSpec:
    """The suppression operator's audit table: one row per run (filter or check), appended.

    The task instance and try, ``checked_at`` (UTC: when the list was fetched), ``mode``,
    ``status`` (:data:`AUDIT_STATUSES`) and ``reason`` (why a list was refused), the list
    (``rows_in_list``, of which ``matched`` by E.164 and ``unreadable``, and ``list_sha256``), the
    counts (:data:`COUNT_KEYS`) and ``output`` (the table or path written; empty in check mode
    and when refused).
    """
    return TableSpec(
        columns=(
            *_TASK_COLUMNS,
            Column("map_index", "int"),
            Column("try_number", "int"),
            Column("checked_at", "timestamp"),
            Column("mode", "short_text"),
            Column("status", "short_text"),
            Column("rows_in_list", "bigint"),
            Column("matched", "bigint"),
            Column("unreadable", "bigint"),
            Column("list_sha256", "short_text"),
            *(Column(key, "bigint") for key in COUNT_KEYS),
            Column("output", "long_text"),
            Column("reason", "long_text"),
        )
    )


# ------------------------------------------------------------------------------ the bulk operators
#: Airflow's limit for dag ids, task ids and run ids (``ID_LEN``).
ID_LENGTH = 250
#: Characters kept of an input value (longer ones are cut, with a marker).
INPUT_LENGTH = 255
PHONE_LENGTH = 32
STATUS_LENGTH = 32
#: Characters kept of an error message (the API's or a transport error's, redacted).
MESSAGE_LENGTH = 1000
NOTE_LENGTH = 500
#: ``phone_hash``: HMAC-SHA256 in lowercase hex; ``hash_key_id``: a key's name (``utils.hash_key``).
HASH_LENGTH = 64
KEY_ID_LENGTH = 64
#: The key of a results table: one row per input of each try of a task instance.
RESULT_KEY = ("dag_id", "run_id", "task_id", "map_index", "try_number", "input_row")


def results_table_spec() -> TableSpec:
    """The bulk operators' results table: one row per input per try of a task instance.

    Keyed by :data:`RESULT_KEY`; the other columns are a bulk run's outcome table. The ids are
    Airflow's (at most 250 characters, never cut: they are the key) and compare case-sensitively
    everywhere. With ``utf8mb4`` the key takes 3 x 250 x 4 + 16 = 3,016 bytes, under InnoDB's
    3,072-byte limit (``ROW_FORMAT=DYNAMIC``). ``decided_at`` keeps microseconds on SQLite too.
    """
    number = (
        Column("input_value", "short_text", length=INPUT_LENGTH),
        Column("phone_e164", "short_text", length=PHONE_LENGTH),
    )
    return _results_spec(number, "phone_e164")


def hashed_results_table_spec() -> TableSpec:
    """The results table in keyed-hash mode (``hash_key_conn_id``): no number in clear.

    ``phone_hash`` (HMAC-SHA256 of the input's E.164 number, 64 lowercase hex digits; empty when
    the input had no valid number) and ``hash_key_id`` (the key's name, on every row) take the
    place of ``input_value`` and ``phone_e164``; the rest is as :func:`results_table_spec`.
    """
    number = (
        Column("phone_hash", "short_text", length=HASH_LENGTH),
        Column("hash_key_id", "short_text", length=KEY_ID_LENGTH),
    )
    return _results_spec(number, "phone_hash")


def _results_spec(number: tuple[Column, Column], index: str) -> TableSpec:
    """The results table with the two ``number`` columns after ``input_row``; ``index``, the
    column the final-outcome query matches numbers on, indexed."""
    return TableSpec(
        columns=(
            Column("dag_id", "short_text", nullable=False, length=ID_LENGTH),
            Column("run_id", "short_text", nullable=False, length=ID_LENGTH),
            Column("task_id", "short_text", nullable=False, length=ID_LENGTH),
            Column("map_index", "int", nullable=False),
            Column("try_number", "int", nullable=False),
            Column("input_row", "bigint", nullable=False),
            *number,
            Column("status", "short_text", nullable=False, length=STATUS_LENGTH),
            Column("stop_id", "bigint"),
            Column("error_code", "int"),
            Column("error_message", "short_text", length=MESSAGE_LENGTH),
            Column("note", "short_text", length=NOTE_LENGTH),
            Column("decided_at", "timestamp", nullable=False),
        ),
        indexes=(index,),
        composite_key=RESULT_KEY,
        sqlite_timestamp_format=ISO_FORMAT_MICROSECONDS,
        binary_text=True,
    )


#: Every column of a results table, in table order.
RESULT_COLUMNS = tuple(results_table_spec().names)
