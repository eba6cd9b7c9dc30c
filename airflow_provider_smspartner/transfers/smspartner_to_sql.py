"""SmsPartnerStopListToSqlOperator: lands the SMS Partner stop list in a table of any SQL database.

Import-light (parsed with every DAG): pandas and the warehouse writer load inside ``execute``.

The table fails closed: it is what stands between an opted-out person and the next campaign, so
``replace`` and ``upsert`` refuse a list that would empty it or remove too much of it (the
guard, :func:`check_removals`), and an odd row never blocks the list (:func:`prepare_stop_list`).

It is also evidence: ``first_seen_at`` says when the warehouse first saw each stop (upsert keeps
the rows that left the list, so :func:`stop_list_as_of_sql` answers "was this number stopped at
time T"), the run log (:func:`run_log_table_spec`) keeps one row per run, written with the change
or, for a refused list, on its own, and the task's Asset events carry what changed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from functools import partial
from typing import TYPE_CHECKING, Any

from airflow.sdk import AssetAlias, BaseOperator

from airflow_provider_smspartner.exceptions import (
    DuplicateStopIdError,
    SmsPartnerResponseError,
    StopListGuardError,
)
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.sql.hash_mode import HashModeRules
from airflow_provider_smspartner.sql.tables import (
    DEFAULT_RUN_LOG_TABLE,
    TableSpec,
    hashed_stop_list_table_spec,
    run_log_table_name,
    run_log_table_spec,
    stop_list_table_spec,
)
from airflow_provider_smspartner.utils.arguments import (
    DEFAULT_CHUNK_SIZE,
    WRITE_MODES,
    check_choice,
    check_count,
    check_flag,
    check_fraction,
)

if TYPE_CHECKING:
    import logging

    import pandas as pd
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context
    from sqlalchemy.engine import Connection

    from airflow_provider_smspartner.sql.apply import RemovalCounts, WriteSummary
    from airflow_provider_smspartner.sql.writer import SqlTableWriter
    from airflow_provider_smspartner.utils.hash_key import HashKey

#: Characters removed from ``phoneNumber``: C0 controls (NUL included), DEL and C1 controls.
#: PostgreSQL cannot store NUL in text, and none of them belongs in a phone number.
CONTROL_CHARACTERS = r"[\x00-\x1f\x7f-\x9f]"
#: Keys of the extra of the task's Asset events (and of its return value).
CHANGE_KEYS = ("rows_in_list", "inserted", "updated", "removed", "list_sha256")
#: Keyed-hash mode of the stop-list table (:func:`~airflow_provider_smspartner.sql.hash_mode.check_hash_mode`):
#: ``phone_number`` marks a table in clear; only ``replace`` may change the key.
HASH_MODE_RULES = HashModeRules(
    clear_column="phone_number",
    why_no_rekey=(
        "the rows that left the list cannot be re-hashed without their numbers (a rebuild from the "
        "live list loses that removal history)"
    ),
)


def stop_list_as_of_sql(table: str, at: datetime, dialect: str, hashed: bool = False) -> str:
    """SQL selecting the stops that were on the list at ``at``, as far as the warehouse knew.

    A row counts from its ``first_seen_at`` (the run that first saw it) until its ``removed_at``
    (the run that saw it gone), excluded: ``first_seen_at <= at AND (removed_at IS NULL OR
    removed_at > at)``. Only ``upsert`` keeps the rows that left the list, so only an upserted
    table answers for the past. A number added again gets a new stop id, hence a row of its own.

    :param table: The stop-list table, ``name`` or ``schema.name``.
    :param at: The instant (a naive value is taken as UTC).
    :param dialect: ``hook.dialect_name``: ``postgresql``, ``mysql``/``mariadb``, ``sqlite``
        (others get ANSI SQL).
    :param hashed: The table was written in keyed-hash mode (``hash_key_conn_id``): select
        ``phone_hash, hash_key_id`` instead of ``phone_number, phone_e164``.
    :return: ``SELECT stop_id, phone_number, phone_e164, created_at, first_seen_at, removed_at``
        with ``at`` written in as a literal of the column type (no parameters to bind).
    :raises ValueError: an invalid table name.
    """
    from airflow_provider_smspartner.sql.names import TableName
    from airflow_provider_smspartner.sql.tables import ISO_FORMAT

    name = TableName.parse(table)
    parts = [name.schema, name.name] if name.schema else [name.name]
    at = at.replace(tzinfo=timezone.utc) if at.tzinfo is None else at.astimezone(timezone.utc)
    if dialect in ("mysql", "mariadb"):
        quoted = ".".join(f"`{p}`" for p in parts)
        instant = f"CAST('{at:%Y-%m-%d %H:%M:%S.%f}' AS DATETIME(6))"  # naive UTC, as stored
    elif dialect == "sqlite":
        quoted = ".".join(f'"{p}"' for p in parts)
        instant = f"'{at.strftime(ISO_FORMAT)}'"  # ISO text, whole seconds, as stored: sorts as time
    else:
        quoted = ".".join(f'"{p}"' for p in parts)
        instant = f"CAST('{at:%Y-%m-%d %H:%M:%S.%f}+00:00' AS TIMESTAMP WITH TIME ZONE)"
    numbers = "phone_hash, hash_key_id" if hashed else "phone_number, phone_e164"
    return (
        f"SELECT stop_id, {numbers}, created_at, first_seen_at, removed_at\n"
        f"FROM {quoted}\n"
        f"WHERE first_seen_at <= {instant} AND (removed_at IS NULL OR removed_at > {instant})"
    )


def task_identity(context: Mapping[str, Any], operator: BaseOperator) -> dict[str, Any]:
    """``dag_id``, ``run_id``, ``task_id``, ``try_number`` of the running task, from ``context['ti']``;
    with a minimal context (a test's ``{}``), what the operator knows and None for the rest."""
    ti = context.get("ti") or context.get("task_instance")
    dag = context.get("dag") or (operator.get_dag() if operator.has_dag() else None)
    try_number = getattr(ti, "try_number", None)
    return {
        "dag_id": getattr(ti, "dag_id", None) or getattr(dag, "dag_id", None),
        "run_id": getattr(ti, "run_id", None) or context.get("run_id"),
        "task_id": getattr(ti, "task_id", None) or operator.task_id,
        "try_number": try_number if isinstance(try_number, int) else None,
    }


def prepare_stop_list(frame: pd.DataFrame, log: logging.Logger | Any) -> pd.DataFrame:
    """Make every row of the list one the warehouse takes, the same way on every database.

    - Control characters (NUL included) are removed from ``phone_number`` (``phone_e164`` was
      already made from the number without them by the hook's list reader); logged with the ids.
    - A stop id listed twice with the same number is kept once, with the earliest ``created_at``;
      logged with the ids.
    - A stop id listed twice with different numbers is refused: which number the id stands for is
      unknown, and a key can hold one.

    :param frame: ``SmsPartnerHook.get_stop_list_df()``'s frame.
    :return: the frame to write (a new one when a row changed).
    :raises DuplicateStopIdError: naming the stop ids listed with different numbers.
    """
    from airflow_provider_smspartner.phone_numbers.list_numbers import may_hold_invisible_characters

    if may_hold_invisible_characters(frame["phone_number"]):
        frame = _remove_control_characters(frame, log)
    if not frame["stop_id"].is_unique:
        frame = _merge_repeated_stop_ids(frame, log)
    return frame


def _remove_control_characters(frame: pd.DataFrame, log: logging.Logger | Any) -> pd.DataFrame:
    from airflow_provider_smspartner.utils.stop_list import describe_stop_ids

    dirty = frame["phone_number"].str.contains(CONTROL_CHARACTERS, regex=True)
    if dirty.any():
        frame = frame.copy()
        cleaned = frame.loc[dirty, "phone_number"].str.replace(CONTROL_CHARACTERS, "", regex=True)
        frame.loc[dirty, "phone_number"] = cleaned
        log.warning(
            "%d row(s) had control characters in phoneNumber, removed before writing (stop ids %s)",
            int(dirty.sum()),
            describe_stop_ids(frame.loc[dirty, "stop_id"]),
        )
    return frame


def _merge_repeated_stop_ids(frame: pd.DataFrame, log: logging.Logger | Any) -> pd.DataFrame:
    from airflow_provider_smspartner.utils.stop_list import describe_stop_ids

    rows = frame.loc[frame["stop_id"].duplicated(keep=False), ["stop_id", "phone_number", "created_at"]]
    numbers = rows.groupby("stop_id")["phone_number"].nunique()
    conflicting = numbers.index[numbers > 1]
    if len(conflicting):
        raise DuplicateStopIdError(
            f"SMS Partner listed {len(conflicting)} stop id(s) more than once with different numbers: "
            f"{describe_stop_ids(conflicting)}. A stop id stands for one number, so the list cannot be written; "
            "nothing was written. Ask SMS Partner support to fix these stops."
        )
    earliest = rows.groupby("stop_id")["created_at"].min()
    log.warning(
        "%d stop id(s) listed more than once with the same number, kept once with the earliest "
        "createdAt (stop ids %s)",
        len(earliest),
        describe_stop_ids(earliest.index),
    )
    frame = frame[~frame["stop_id"].duplicated(keep="first")].reset_index(drop=True)
    merged = frame["stop_id"].isin(earliest.index)
    frame.loc[merged, "created_at"] = frame.loc[merged, "stop_id"].map(earliest).to_numpy()
    return frame


def stop_list_spec(hashed: bool) -> TableSpec:
    """The stop-list table's shape: keyed-hash (``phone_hash``, ``hash_key_id``) or in clear."""
    return hashed_stop_list_table_spec() if hashed else stop_list_table_spec()


def _hashing(key: HashKey | None) -> Callable[[pd.DataFrame], pd.DataFrame] | None:
    """The writer's ``prepare_chunk`` in keyed-hash mode: each chunk of the list with its numbers
    replaced by their hashes as the writer loads it
    (:func:`~airflow_provider_smspartner.phone_numbers.hashing.hash_stop_list_frame`). On
    PostgreSQL that is on the thread encoding the ``COPY``, so the hashing (~1 s of Python per
    million stops) overlaps the database taking the previous chunk instead of adding to it.
    None in clear mode."""
    if key is None:
        return None
    from airflow_provider_smspartner.phone_numbers.hashing import hash_stop_list_frame

    return partial(hash_stop_list_frame, key=key.key, key_id=key.key_id)


def check_removals(
    counts: RemovalCounts,
    *,
    table: str,
    max_removed_fraction: float | None,
    allow_empty_list: bool,
) -> None:
    """The guard: refuse a list that empties the table, or removes too much of it.

    Called by the writer inside the write's transaction, under the table's lock, before anything
    changes. Counts are of stops on the list (``removed_at IS NULL``).

    :raises StopListGuardError: with the counts and the parameter that overrides the check.
    """
    live, removed, incoming = counts.live, counts.removed, counts.incoming
    if live == 0:
        return
    if incoming == 0:
        if allow_empty_list:
            return
        raise StopListGuardError(
            f"Refusing an empty stop list for table {table}: it holds {live:,} stop(s) on the list "
            "(removed_at IS NULL), which an empty answer would remove; nothing was written. If the "
            "SMS Partner list really is empty, run with allow_empty_list=True."
        )
    # A share, as the user wrote it: 57 of 100 is not more than 0.57 (57 > 0.57 * 100 would be).
    if max_removed_fraction is not None and removed / live > max_removed_fraction:
        raise StopListGuardError(
            f"Refusing the stop list for table {table}: it would remove {removed:,} of the {live:,} "
            f"stops on the list ({removed / live:.1%}; the new list has {incoming:,}), more than "
            f"max_removed_fraction={max_removed_fraction:g} allows; nothing was written. If that many "
            "stops really left the list, run with a higher max_removed_fraction (None disables the check)."
        )


class SmsPartnerStopListToSqlOperator(BaseOperator):
    """Extract the SMS Partner stop list into a table of any ``DbApiHook`` database.

    The table is created when missing (``stop_id`` key, index on ``phone_e164``, or ``phone_hash``
    with ``hash_key_conn_id``, UTC timestamps;
    ISO-8601 text on SQLite). The whole list is fetched and checked complete before the table
    changes, and it changes in one transaction, under a per-table lock, so a failure leaves it as
    it was and two runs into one table apply one after the other. ``first_seen_at`` is set when a
    stop id is first written and kept by every mode.

    ``replace`` and ``upsert`` fail closed: they refuse (:class:`StopListGuardError`, nothing
    written) an empty list while the table holds stops on the list (``removed_at IS NULL``), and a
    list that would remove more than ``max_removed_fraction`` of them. Control characters are
    removed from numbers; a stop id listed twice is kept once, or refused
    (:class:`DuplicateStopIdError`) when its numbers differ.

    Each run adds a row to the run log (``run_log_table``): task identity, times, mode, the
    counts and the list's :func:`~airflow_provider_smspartner.utils.stop_list.list_sha256`, in the same
    transaction as the change; a refused list (guard, repeated stop id, an answer that breaks the
    API contract) leaves a ``refused`` row with the reason, on its own. With Asset ``outlets``, the
    task's events carry ``rows_in_list``, ``inserted``, ``updated``, ``removed`` and
    ``list_sha256`` as their extra.

    :param sql_conn_id: Connection of the destination database (postgres, mysql, sqlite, any DbApiHook).
    :param table: Destination table, ``name`` or ``schema.name``. (templated)
    :param mode: ``replace`` (default): the table holds exactly the current list. ``upsert``: new stop
        ids inserted, changed rows updated, ids no longer on the list kept with ``removed_at`` set
        (cleared if they come back). ``append``: only stop ids not yet in the table (no guard:
        it removes nothing). On PostgreSQL ``replace`` truncates and reloads the table under an
        ``ACCESS EXCLUSIVE`` lock: readers wait for the load and index build (2-3 s for a
        million stops on a small server) instead of reading the old rows.
    :param max_removed_fraction: Largest share (0 to 1) of the stops on the list that one run may
        remove; ``None`` disables the check. Default 0.2.
    :param allow_empty_list: Apply an empty list even when the table holds stops on the list.
    :param run_log_table: The run log table, created when missing; ``{table}`` stands for
        ``table`` (default ``<table>_runs``, same schema); ``None`` keeps no run log. (templated)
    :param smspartner_conn_id: The ``smspartner`` connection. (templated)
    :param chunk_size: Rows per load chunk.
    :param hash_key_conn_id: Keyed-hash mode: the connection whose password is the HMAC key
        (``utils.hash_key``). The table then holds ``phone_hash`` and ``hash_key_id`` instead of
        ``phone_number`` and ``phone_e164``; no number is written in clear. A table made in the
        other mode, or (``upsert``, ``append``) under another key, is refused before any API call;
        ``replace`` rebuilds a table hashed under another key. The keys are checked again under
        the table's lock before the commit: a table another run wrote under another key
        meanwhile rolls the change back. See docs/privacy.md. (templated)
    :return: ``{"rows_in_list", "inserted", "updated", "removed", "list_sha256", "table", "mode"}``.
    """

    template_fields: Sequence[str] = (
        "sql_conn_id",
        "table",
        "mode",
        "run_log_table",
        "smspartner_conn_id",
        "hash_key_conn_id",
    )
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        sql_conn_id: str,
        table: str,
        mode: str = "replace",
        max_removed_fraction: float | None = 0.2,
        allow_empty_list: bool = False,
        run_log_table: str | None = DEFAULT_RUN_LOG_TABLE,
        smspartner_conn_id: str = SmsPartnerHook.default_conn_name,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        hash_key_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.sql_conn_id = sql_conn_id
        self.hash_key_conn_id = hash_key_conn_id
        self.table = table
        self.mode = mode
        self.max_removed_fraction = max_removed_fraction
        self.allow_empty_list = allow_empty_list
        self.run_log_table = run_log_table
        self.smspartner_conn_id = smspartner_conn_id
        self.chunk_size = chunk_size
        #: What the lineage needs from the run, set by execute (``rows_in_list``, ``run_log_table``).
        self._lineage_counts: dict[str, Any] = {}
        check_count("chunk_size", chunk_size, minimum=1)
        check_fraction("max_removed_fraction", max_removed_fraction, allow_none=True)
        check_flag("allow_empty_list", allow_empty_list)

    def execute(self, context: Context) -> dict[str, Any]:
        """Fetch the list, check it, write it in one transaction with its run-log row.

        :return: ``{"rows_in_list", "inserted", "updated", "removed", "list_sha256", "table", "mode"}``.
        :raises StopListGuardError: the guard refused the list (a ``refused`` run-log row written).
        """
        import pandas as pd

        from airflow_provider_smspartner.sql.apply import chain_before_commit
        from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
        from airflow_provider_smspartner.sql.hash_mode import check_hash_mode, hash_key_recheck
        from airflow_provider_smspartner.sql.writer import SqlTableWriter

        started_at = datetime.now(timezone.utc)
        check_choice("mode", self.mode, WRITE_MODES)  # templated: checked once rendered
        # A bad key, bad table names and a table of the other mode or key fail here, before the
        # API is called.
        key = self._hash_key()
        hook = resolve_dbapi_hook(self.sql_conn_id)
        writer = SqlTableWriter(
            hook, self.table, stop_list_spec(key is not None), self.chunk_size, prepare_chunk=_hashing(key)
        )
        check_hash_mode(hook, writer.table, key, self.mode, HASH_MODE_RULES, log=self.log)
        run_log = None
        if self.run_log_table is not None:
            name = run_log_table_name(self.table, self.run_log_table)
            run_log = SqlTableWriter(hook, name, run_log_table_spec())
            run_log.ensure_table()
        self._lineage_counts = {
            "rows_in_list": None,
            "run_log_table": None if run_log is None else str(run_log.table),
        }
        entry: dict[str, Any] = {
            **task_identity(context, self),
            "started_at": started_at,
            "mode": self.mode,
            "rows_in_list": None,
            "list_sha256": None,
        }
        # When the list was asked for: the run's extracted_at, and first_seen_at of new stops.
        extracted_at = pd.Timestamp.now(tz="UTC").floor("s")
        try:
            written = writer.write(
                partial(self._fetch, entry, extracted_at),
                self.mode,  # type: ignore[arg-type]
                now=extracted_at.to_pydatetime(),  # also the new stops' first_seen_at
                guard=self._guard(str(writer.table)),
                # Under the table's lock, after the change: the key again (another run may have
                # re-keyed the table since the check above), then the run-log row.
                before_commit=chain_before_commit(
                    hash_key_recheck(writer.table, key, self.mode, HASH_MODE_RULES),
                    None if run_log is None else partial(self._log_applied, run_log, entry),
                ),
            )
        except (StopListGuardError, SmsPartnerResponseError) as refused:
            if run_log is not None:
                self._log_refused(run_log, entry, refused)
            raise
        return self._report(context, writer, entry, written)

    def _hash_key(self) -> HashKey | None:
        """The hash key of ``hash_key_conn_id`` (checked), or None in clear mode."""
        if self.hash_key_conn_id is None:
            return None
        from airflow_provider_smspartner.utils.hash_key import resolve_hash_key

        return resolve_hash_key(self.hash_key_conn_id)

    def _fetch(self, entry: dict[str, Any], extracted_at: pd.Timestamp) -> pd.DataFrame:
        """The list, checked and ready to write (in clear: keyed-hash mode hashes it chunk by
        chunk as the writer loads it, :func:`_hashing`); run by the writer in a thread while it
        connects, takes the table's lock and reads the table. Fills ``entry``'s list fields."""
        import pandas as pd

        from airflow_provider_smspartner.utils.stop_list import list_sha256

        frame = SmsPartnerHook(smspartner_conn_id=self.smspartner_conn_id).get_stop_list_df()
        # nbData: the response contract guarantees nbData == len(data), one row per item.
        entry["rows_in_list"] = self._lineage_counts["rows_in_list"] = len(frame)
        # Of the numbers as the API sent them, before any cleaning below.
        entry["list_sha256"] = list_sha256(frame["stop_id"].to_numpy(), frame["phone_number"])
        self.log.info("Fetched %d stops from SMS Partner (list_sha256 %s)", len(frame), entry["list_sha256"])
        frame = prepare_stop_list(frame, self.log)
        frame["extracted_at"] = extracted_at
        frame["removed_at"] = pd.Series(pd.NaT, index=frame.index, dtype="datetime64[us, UTC]")
        return frame

    def _guard(self, table: str) -> Any:
        """The guard of ``replace`` and ``upsert`` (:func:`check_removals`); ``append`` removes nothing."""
        if self.mode == "append":
            return None
        return partial(
            check_removals,
            table=table,
            max_removed_fraction=self.max_removed_fraction,
            allow_empty_list=self.allow_empty_list,
        )

    def _report(
        self, context: Context, writer: SqlTableWriter, entry: dict[str, Any], written: WriteSummary
    ) -> dict[str, Any]:
        """Log the run, put what changed on the Asset events, return the summary."""
        summary = {
            "rows_in_list": entry["rows_in_list"],
            "inserted": written.inserted,
            "updated": written.updated,
            "removed": written.removed,
            "list_sha256": entry["list_sha256"],
            "table": str(writer.table),
            "mode": self.mode,
        }
        self.log.info(
            "%s %s (%s): %d stops in the list; %d inserted, %d updated, %d removed%s",
            self.mode,
            writer.table,
            writer.dialect_name,
            summary["rows_in_list"],
            summary["inserted"],
            summary["updated"],
            summary["removed"],
            " (table created)" if written.created_table else "",
        )
        self._publish_changes(context, {key: summary[key] for key in CHANGE_KEYS})
        return summary

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """OpenLineage: the stop list in (``rows_in_list`` stops); the table out (as many rows, its
        schema), and the run log (one row) when kept. Called by Airflow's OpenLineage provider;
        counts unknown (a run that failed before the list came) are left out."""
        from airflow_provider_smspartner.utils.lineage import (
            operator_lineage,
            sql_table_dataset,
            stop_list_dataset,
        )

        rows = self._lineage_counts.get("rows_in_list")
        spec = stop_list_spec(self.hash_key_conn_id is not None)
        outputs = [
            sql_table_dataset(self.sql_conn_id, self.table, rows, {c.name: c.type for c in spec.columns})
        ]
        if run_log := self._lineage_counts.get("run_log_table"):
            columns = {c.name: c.type for c in run_log_table_spec().columns}
            outputs.append(sql_table_dataset(self.sql_conn_id, run_log, None if rows is None else 1, columns))
        return operator_lineage([stop_list_dataset(self.smspartner_conn_id, rows)], outputs)

    @staticmethod
    def _log_applied(
        run_log: SqlTableWriter, entry: dict[str, Any], conn: Connection, written: WriteSummary
    ) -> None:
        """The run's row, on the write's connection: it commits with the change, or not at all."""
        run_log.insert_row(
            conn,
            entry
            | {
                "finished_at": datetime.now(timezone.utc),
                "status": "applied",
                "inserted": written.inserted,
                "updated": written.updated,
                "removed": written.removed,
            },
        )

    def _log_refused(self, run_log: SqlTableWriter, entry: dict[str, Any], refused: Exception) -> None:
        """A refused run's row, in a transaction of its own (the change was rolled back). A failure
        here is logged: the refusal is what the task must report."""
        row = entry | {"finished_at": datetime.now(timezone.utc), "status": "refused", "reason": str(refused)}
        try:
            with run_log.engine.begin() as conn:
                run_log.insert_row(conn, row)
        except Exception:
            self.log.warning("Could not write the refused run to %s", run_log.table, exc_info=True)

    def _publish_changes(self, context: Mapping[str, Any], changes: dict[str, Any]) -> None:
        """Put ``changes`` in the extra of this task's event for each Asset outlet (not aliases:
        their events name their own asset), so downstream DAGs can tell what changed."""
        outlet_events = context.get("outlet_events")
        if outlet_events is None:
            return
        for outlet in self.outlets:
            if not isinstance(outlet, AssetAlias):
                outlet_events[outlet].extra.update(changes)
