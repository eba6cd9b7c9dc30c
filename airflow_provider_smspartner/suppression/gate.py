"""One run of the gate: targets checked, the live list fetched and guarded, the audience checked.

:class:`~airflow_provider_smspartner.operators.smspartner.SmsPartnerSuppressAudienceOperator` takes
and checks the arguments; :class:`Gate` receives them resolved (connections filled in, templates
rendered) and runs the steps in the order that keeps the gate closed on failure: every place and
column is checked and the audit table created before any API call, nothing is written before the
list passed the guard, and a refused list leaves only a ``refused`` audit row.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from airflow_provider_smspartner.exceptions import StopListGuardError
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.sql.tables import DEFAULT_RUN_LOG_TABLE
from airflow_provider_smspartner.suppression.audit import AuditLog
from airflow_provider_smspartner.suppression.engine import (
    CLEAR,
    ChunkSink,
    StopListSnapshot,
    SuppressionResult,
    fetch_stop_list,
    suppress_audience,
)
from airflow_provider_smspartner.suppression.guard import check_live_list
from airflow_provider_smspartner.suppression.matching import (
    REASON_COLUMN,
    ClearMatching,
    HashedMatching,
    check_excluded_columns,
)
from airflow_provider_smspartner.suppression.sinks import FileSink, TableSink
from airflow_provider_smspartner.suppression.targets import (
    Place,
    check_distinct,
    file_place,
    query_places,
    table_place,
)
from airflow_provider_smspartner.utils.stop_list import describe_stop_ids
from airflow_provider_smspartner.utils.storage import FileFormat, file_format

if TYPE_CHECKING:
    from airflow_provider_smspartner.bulk.sources import PhoneSource
    from airflow_provider_smspartner.sql.list_checks import ListCheck


def utc_now() -> datetime:
    """When the list is fetched (the audit row's ``checked_at``)."""
    return datetime.now(timezone.utc)


@dataclass
class Gate:
    """The gate's arguments, resolved, and its run (:meth:`run`).

    The arguments are the operator's (see its docstring), with the connections resolved:
    ``output_conn_id``, ``audit_conn_id`` and ``stop_list_conn_id`` are the ones to use.

    :param identity: The task's ``dag_id``, ``run_id``, ``task_id``, ``map_index``, ``try_number``.
    :param source: The audience.
    :param log: Where the run logs (the operator's logger).
    """

    identity: dict[str, Any]
    source: PhoneSource
    mode: str
    smspartner_conn_id: str
    default_region: str
    chunk_size: int
    output_conn_id: str | None = None
    output_table: str | None = None
    output_path: str | None = None
    output_format: str | None = None
    excluded_table: str | None = None
    excluded_path: str | None = None
    audit_table: str | None = None
    audit_conn_id: str | None = None
    stop_list_table: str | None = None
    stop_list_conn_id: str | None = None
    stop_list_run_log_table: str = DEFAULT_RUN_LOG_TABLE
    max_removed_fraction: float | None = 0.2
    allow_empty_list: bool = False
    on_unreadable_list_row: str = "fail"
    hash_key_conn_id: str | None = None
    #: The source's column holds ``phone_hash`` values (the operator's ``phone_hash_column``).
    given_hashes: bool = False
    excluded_columns: tuple[str, ...] = ()
    #: What the audience is matched on: set by :meth:`run` (keyed hash with ``hash_key_conn_id``).
    matching: ClearMatching | HashedMatching = field(default=CLEAR, init=False)
    #: The operator's logger (the task SDK's, which is not a ``logging.Logger``).
    log: Any = field(default_factory=lambda: logging.getLogger(__name__))
    #: What :meth:`run` returns, also set when check mode fails (for the lineage).
    summary: dict[str, Any] | None = field(default=None, init=False)

    def run(self) -> dict[str, Any]:
        """Check the outputs, open the source, fetch and guard the list, check the audience.

        :return: the counts, the list's ``rows_in_list``, ``matched`` and ``unreadable``, and
            ``output`` (the table or path written, ``None`` in check mode).
        :raises ValueError: on unusable arguments or data, before any API call.
        :raises StopListGuardError: when the live list is refused (nothing written but the audit row).
        :raises AirflowException: in check mode when audience numbers are on the list.
        """
        # Before any API call: the hash key, bad names, extensions, connections, clashes and the
        # audit table fail here.
        self.matching = self.resolve_matching()
        self.check_targets()
        kept, excluded = self.sinks()
        audit = AuditLog(str(self.audit_conn_id), self.audit_table) if self.audit_table else None
        if audit is not None:
            audit.prepare()
        reference = self.guard_reference(audit)
        with self.source.open_rows(self.chunk_size) as rows:
            self.log.info(
                "Reading the audience from %s (phone column %r, %d columns) in chunks of %d rows",
                self.source.describe(),
                rows.column,
                len(rows.columns),
                self.chunk_size,
            )
            self.check_output_columns(rows.columns, rows.column)
            checked_at, stop_list = self.fetch_checked_list(audit, reference)
            result = suppress_audience(
                rows,
                stop_list,
                default_region=self.default_region,
                kept=kept,
                excluded=excluded,
                matching=self.matching,
            )
        return self.report(checked_at, stop_list, result, kept, excluded, audit)

    def resolve_matching(self) -> ClearMatching | HashedMatching:
        """Clear mode, or keyed-hash mode with the key of ``hash_key_conn_id`` (read and checked).

        :raises SmsPartnerConfigError: a missing connection or a short key (before any API call).
        """
        if not self.hash_key_conn_id:
            return CLEAR
        from airflow_provider_smspartner.utils.hash_key import resolve_hash_key

        hash_key = resolve_hash_key(self.hash_key_conn_id)
        self.log.info(
            "Keyed-hash mode: the audience is matched on phone_hash under key %r (connection %r)",
            hash_key.key_id,
            hash_key.conn_id,
        )
        return HashedMatching(hash_key, self.given_hashes, tuple(self.excluded_columns))

    def check_targets(self) -> None:
        """Every output, the audit table and what is read must be distinct places.

        :raises ValueError: naming the two arguments that name one place (before any API call).
        """
        output_conn = str(self.output_conn_id)
        places: list[Place] = []
        for argument in ("output_path", "excluded_path"):
            if path := getattr(self, argument):
                places.append(file_place(argument, path))
        if self.source.source_path:
            places.append(file_place("source_path", self.source.source_path, written=False))
        for argument in ("output_table", "excluded_table"):
            if table := getattr(self, argument):
                places.append(table_place(argument, output_conn, table))
        if self.audit_table:
            places.append(table_place("audit_table", str(self.audit_conn_id), self.audit_table))
        if self.stop_list_table:
            places.append(
                table_place(
                    "stop_list_table", str(self.stop_list_conn_id), self.stop_list_table, written=False
                )
            )
        if self.source.sql and any(place.identity[0] == "table" for place in places):
            places.extend(query_places(str(self.source.sql_conn_id), self.source.sql))
        check_distinct(places)

    def _file_format(self, path: str, argument: str) -> FileFormat:
        return self.output_format or file_format(path, argument)  # type: ignore[return-value]

    def sinks(self) -> tuple[ChunkSink | None, ChunkSink | None]:
        """The kept and excluded outputs, checked (names, extensions, connections); nothing is
        written until the audience is checked."""
        output_conn = str(self.output_conn_id)
        column = self.matching.column
        kept: ChunkSink | None = None
        excluded: ChunkSink | None = None
        if self.output_path:
            kept = FileSink(self.output_path, self._file_format(self.output_path, "output_path"))
        elif self.output_table:
            kept = TableSink(output_conn, self.output_table, key=column, chunk_size=self.chunk_size)
        if self.excluded_path:
            excluded = FileSink(self.excluded_path, self._file_format(self.excluded_path, "excluded_path"))
        elif self.excluded_table:
            # Spilled to a local file, loaded once the kept rows are in: one writer at a time.
            excluded = TableSink(
                output_conn,
                self.excluded_table,
                indexes=(column,),
                chunk_size=self.chunk_size,
                spill=True,
            )
        return kept, excluded

    def check_output_columns(self, columns: Any, phone_column: str) -> None:
        """The output tables' columns (the audience's, plus ``phone_e164`` or ``phone_hash``, plus
        ``reason`` for the excluded rows) must be names the database stores as given, and the
        ``excluded_columns`` of hashed mode audience columns other than raw numbers: checked
        before any API call.

        :raises ValueError: naming the columns, the database and the rule.
        """
        from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
        from airflow_provider_smspartner.sql.names import check_column_names

        names = [str(column) for column in columns]
        if isinstance(self.matching, HashedMatching):
            check_excluded_columns(self.excluded_columns, names, phone_column, self.given_hashes)
        key = self.matching.column
        for table, added in (
            (self.output_table, (key,)),
            (self.excluded_table, (key, REASON_COLUMN)),
        ):
            if table:
                dialect = resolve_dbapi_hook(str(self.output_conn_id)).dialect_name
                check_column_names(list(dict.fromkeys([*names, *added])), dialect, table=table)

    def guard_reference(self, audit: AuditLog | None) -> ListCheck | None:
        """What the live list is compared with: the last accepted check of this task in the audit
        table, else the extract's last applied run of ``stop_list_table``, else nothing."""
        from airflow_provider_smspartner.sql.list_checks import last_applied_run

        identity = self.identity
        reference = audit.latest_accepted(identity["dag_id"], identity["task_id"]) if audit else None
        if reference is None and self.stop_list_table:
            reference = last_applied_run(
                str(self.stop_list_conn_id), self.stop_list_table, self.stop_list_run_log_table
            )
        if reference is None:
            self.log.info(
                "Guard: no earlier check or extract to compare the list with; only an empty list is refused"
            )
        else:
            self.log.info(
                "Guard: the list is compared with %s: %d stops", reference.source, reference.rows_in_list
            )
        return reference

    def fetch_checked_list(
        self, audit: AuditLog | None, reference: ListCheck | None
    ) -> tuple[datetime, StopListSnapshot]:
        """Fetch the live list and pass it through the guard; a refused list leaves a ``refused``
        audit row and raises :class:`StopListGuardError`."""
        hook = SmsPartnerHook(smspartner_conn_id=self.smspartner_conn_id)
        try:
            checked_at = utc_now()
            stop_list = fetch_stop_list(
                hook, match_unreadable_digits=self.on_unreadable_list_row == "warn", matching=self.matching
            )
        finally:
            hook.close()
        self.log.info(
            "Fetched the stop list: %d stops, %d matched by E.164, %d unreadable (list_sha256 %s)",
            stop_list.rows_in_list,
            stop_list.matched,
            stop_list.unreadable,
            stop_list.list_sha256,
        )
        try:
            check_live_list(
                stop_list,
                reference,
                max_removed_fraction=self.max_removed_fraction,
                allow_empty_list=self.allow_empty_list,
                on_unreadable_list_row=self.on_unreadable_list_row,
            )
        except StopListGuardError as refused:
            if audit is not None:
                audit.append(self.audit_row(checked_at, stop_list, "refused") | {"reason": str(refused)})
                self.log.info("Refused list recorded in %s", audit.table)
            raise
        if stop_list.unreadable:
            self.log.warning(
                "%d stop(s) with no E.164 are matched on their digits (stop ids %s)",
                stop_list.unreadable,
                describe_stop_ids(stop_list.unreadable_stop_ids),
            )
        return checked_at, stop_list

    def audit_row(self, checked_at: datetime, stop_list: StopListSnapshot, status: str) -> dict[str, Any]:
        """The audit columns every row has (the counts and ``output`` come with accepted lists)."""
        return {
            **self.identity,
            "checked_at": checked_at,
            "mode": self.mode,
            "status": status,
            "rows_in_list": stop_list.rows_in_list,
            "matched": stop_list.matched,
            "unreadable": stop_list.unreadable,
            "list_sha256": stop_list.list_sha256,
        }

    def report(
        self,
        checked_at: datetime,
        stop_list: StopListSnapshot,
        result: SuppressionResult,
        kept: ChunkSink | None,
        excluded: ChunkSink | None,
        audit: AuditLog | None,
    ) -> dict[str, Any]:
        """Log, audit and return the run; in check mode, fail when audience numbers are listed."""
        from airflow.exceptions import AirflowException

        counts = result.counts.as_dict()
        output = kept.target if kept is not None else None
        listed = {
            "rows_in_list": stop_list.rows_in_list,
            "matched": stop_list.matched,
            "unreadable": stop_list.unreadable,
        }
        self.summary = {**counts, **listed, "output": output}
        self.log.info(
            "Audience %s: %s%s",
            self.mode,
            ", ".join(f"{key}={value}" for key, value in counts.items()),
            f"; safe audience written to {output}" if output else "",
        )
        if excluded is not None:
            self.log.info("Excluded rows written to %s", excluded.target)
        if audit is not None:
            audit.append(self.audit_row(checked_at, stop_list, "accepted") | counts | {"output": output})
            self.log.info("Audit row appended to %s", audit.table)
        if self.mode == "check" and counts["stopped"]:
            examples = ", ".join(self.matching.example(number) for number in result.stopped_numbers)
            raise AirflowException(
                f"{counts['stopped']} of {counts['audience']} audience rows ({result.stopped_distinct} "
                f"distinct numbers) are on the SMS Partner stop list of {stop_list.rows_in_list} stops "
                f"(list_sha256 {stop_list.list_sha256}); e.g. {examples}. Counts: "
                + ", ".join(f"{key}={value}" for key, value in counts.items())
                + ". Filter the audience (mode='filter') before texting it."
            )
        return self.summary
