"""Every SMS Partner operator: extract the stop list, bulk add or remove numbers, and suppress an audience.

Import-light: the DAG processor imports this module on every parse, so pandas, pyarrow,
phonenumbers and the bulk engine load inside ``execute``, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.operators.base import PhoneSourceOperator, task_identity
from airflow_provider_smspartner.operators.bulk import BulkStopsOperator
from airflow_provider_smspartner.sql.tables import DEFAULT_RUN_LOG_TABLE
from airflow_provider_smspartner.utils.arguments import (
    DEFAULT_CHUNK_SIZE,
    check_choice,
)

if TYPE_CHECKING:
    import pandas as pd
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from airflow_provider_smspartner.bulk.pipeline import BulkOptions, BulkResult
    from airflow_provider_smspartner.bulk.results import TryResults


class SmsPartnerStopListOperator(BaseOperator):
    """Fetch the SMS Partner stop list.

    Without ``output_path`` the task returns the list as a DataFrame (XCom; columns ``stop_id``,
    ``phone_number``, ``phone_e164``, ``created_at`` in UTC). Large lists belong in a file: with
    ``output_path`` it writes Parquet (default) or CSV there and returns the path.

    :param smspartner_conn_id: The ``smspartner`` connection. (templated)
    :param output_path: Local path or ObjectStoragePath URI (``file://``, ``s3://``...). (templated)
    :param output_format: ``parquet`` or ``csv``. (templated)
    :param hash_key_conn_id: Keyed-hash mode: the connection whose password is the HMAC key. The
        frame or file then has ``phone_hash`` and ``hash_key_id`` instead of ``phone_number`` and
        ``phone_e164`` (columns ``stop_id``, ``phone_hash``, ``hash_key_id``, ``created_at``); no
        number leaves the task in clear. A short or missing key fails before any API call. See
        docs/privacy.md. (templated)
    """

    template_fields: Sequence[str] = (
        "smspartner_conn_id",
        "output_path",
        "output_format",
        "hash_key_conn_id",
    )
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        smspartner_conn_id: str = SmsPartnerHook.default_conn_name,
        output_path: str | None = None,
        output_format: str = "parquet",
        hash_key_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.smspartner_conn_id = smspartner_conn_id
        self.hash_key_conn_id = hash_key_conn_id
        self.output_path = output_path
        self.output_format = output_format
        self._rows_fetched: int | None = None  # for the lineage

    def execute(self, context: Context) -> pd.DataFrame | str:
        if self.output_path:
            from airflow_provider_smspartner.suppression.arguments import OUTPUT_FORMATS

            check_choice("output_format", self.output_format, OUTPUT_FORMATS)
        key = None
        if self.hash_key_conn_id is not None:  # before any API call: a bad key stops the task here
            from airflow_provider_smspartner.utils.hash_key import resolve_hash_key

            key = resolve_hash_key(self.hash_key_conn_id)
        frame = SmsPartnerHook(smspartner_conn_id=self.smspartner_conn_id).get_stop_list_df()
        self._rows_fetched = len(frame)
        self.log.info("Fetched %d stops from SMS Partner", len(frame))
        if key is not None:
            from airflow_provider_smspartner.phone_numbers.hashing import hash_stop_list_frame

            frame = hash_stop_list_frame(frame, key.key, key.key_id)
            self.log.info("Hashed the numbers with key id %s (phone_hash)", key.key_id)
        if not self.output_path:
            if len(frame) > 100_000:  # ~60 bytes a stop in the metadata database, every run
                try:
                    from airflow.sdk.bases.xcom import BaseXCom
                    from airflow.sdk.execution_time.xcom import resolve_xcom_backend

                    in_database = resolve_xcom_backend() is BaseXCom
                except ImportError:  # another SDK layout: assume the default, the database
                    in_database = True
                if in_database:
                    self.log.warning(
                        "Returning %d stops as a DataFrame through XCom: the database XCom backend "
                        "stores them in Airflow's metadata database (about %.0f MB per run). Set "
                        "output_path to write the list to a Parquet or CSV file (local or object "
                        "storage) and return its path, or configure Airflow's object-storage XCom "
                        "backend ([core] xcom_backend = airflow.providers.common.io.xcom.backend."
                        "XComObjectStorageBackend, with [common.io] xcom_objectstorage_path).",
                        len(frame),
                        len(frame) * 60 / 1e6,
                    )
            return frame
        from airflow_provider_smspartner.utils.storage import to_storage_path

        target = to_storage_path(self.output_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as handle:
            if self.output_format == "parquet":
                frame.to_parquet(handle, index=False)
            else:
                frame.to_csv(handle, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
        self.log.info("Wrote %d stops to %s (%s)", len(frame), target, self.output_format)
        return str(target)

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """OpenLineage: the stop list in; the file out when ``output_path`` is set."""
        from airflow_provider_smspartner.utils.lineage import stop_list_operator_lineage

        return stop_list_operator_lineage(self.smspartner_conn_id, self._rows_fetched, self.output_path)


class SmsPartnerAddStopsOperator(BulkStopsOperator):
    """Add phone numbers to the SMS Partner stop list, in bulk, reporting every input value.

    Pipeline: read the one source -> normalise to E.164 (``default_region`` for national numbers) ->
    invalid values are reported, never sent -> repeats of an earlier input (same E.164) are
    ``duplicate`` -> unless ``skip_existing=False``, the current list is fetched once and numbers on
    it are ``skipped_existing`` -> ``dry_run`` stops here (``would_add``) -> the rest is sent in E.164
    form by ``max_workers`` threads sharing one hook (its throttle and retries are shared).

    Every input ends in exactly one status: ``invalid``, ``duplicate``, ``skipped_existing``,
    ``added``, ``already_present`` (API code 3), ``failed`` (after the hook's retries; code and
    message kept) or, in a dry run, ``would_add``. Re-running the same input sends no add for
    numbers already added. A call whose answer was lost (timeout, dropped connection, 5xx, or a
    code 3 to the retry of such a call) is checked against one fresh list fetch at the end of the
    run: on the list means ``added`` (stop id from the list, with a note), so no number on the list
    when the run ends is reported ``failed``.

    **Results table** (``results_table``): one row per input per try, written while the run goes
    (each call's input ``pending`` before it is sent, outcomes in batches); a try stopped by
    ``execution_timeout``, SIGTERM or an exception records every input on its way out, and the next
    try settles what a SIGKILL left ``pending`` against the list. A refused API key, or a
    ``Retry-After`` longer than ``max_retry_after``, stops the run at once (the inputs never tried
    are ``not_processed``); otherwise the task fails only after every number is recorded, when more
    than ``max_failed`` failed. Columns, guarantees and the fleet-wide rate budget (Redis), with a
    mapped example: ``docs/bulk.md`` and ``docs/scale-out.md``.

    Exactly one source:

    :param phone_numbers: A list/tuple of numbers, or (through an upstream task's XCom) a list,
        a DataFrame or a list of dicts (``phone_column`` picks the column). (templated)
    :param sql: A query whose result holds the numbers, read in chunks; needs ``sql_conn_id``. (templated)
    :param source_path: A CSV or Parquet file (by extension), local path or ObjectStoragePath URI. (templated)

    Options:

    :param sql_conn_id: Connection for ``sql``, and the default ``results_conn_id``. (templated)
    :param phone_column: The column with the numbers, needed when the source has several. (templated)
    :param default_region: Region of numbers without an international prefix. (templated)
    :param skip_existing: Diff against the current list first (one list call) and skip listed numbers.
    :param dry_run: Report what would be added (``would_add``), add nothing.
    :param max_workers: Threads sending adds. The throttle still caps the rate; the threads hide the
        latency (about latency x rate calls are in flight at full speed).
    :param results_table: Table recording one row per input value per try (created when missing;
        see above). (templated)
    :param results_conn_id: Connection of ``results_table`` (default ``sql_conn_id``). (templated)
    :param max_failed: Failed numbers tolerated before the task fails.
    :param hash_key_conn_id: Keyed-hash mode (``docs/privacy.md``): the connection whose password
        is the HMAC key. The results table then holds ``phone_hash`` (of the input's E.164 number;
        empty without one) and ``hash_key_id`` instead of ``input_value`` and ``phone_e164``, and
        no log line names a number; a table of the other mode or key is refused. A short or
        missing key fails before any API call. (templated)
    :param smspartner_conn_id: The ``smspartner`` connection. (templated)
    :return: ``{"total", "invalid", "duplicate", "skipped_existing", "added", "already_present",
        "failed", "would_add"}`` (all present; they sum to ``total``), plus ``"results_table"``.
    :raises ValueError: on bad arguments (no or two sources, a missing or unknown ``phone_column``,
        ``results_table`` without a connection...), raised before any API call.
    :raises ResultsTableError: when the results table cannot be used, before any API call.
    :raises SmsPartnerAuthError: when the API refuses the key (outcomes recorded first).
    :raises AirflowException: when more than ``max_failed`` numbers failed (outcomes recorded first).
    """

    def __init__(self, *, skip_existing: bool = True, **kwargs: Any) -> None:
        self.skip_existing = skip_existing
        super().__init__(**kwargs)

    def _options(self) -> BulkOptions:
        from dataclasses import replace

        return replace(super()._options(), skip_existing=self.skip_existing)

    def _run(
        self, values: pd.Series, hook: SmsPartnerHook, options: BulkOptions, results: TryResults | None
    ) -> BulkResult:
        from airflow_provider_smspartner.bulk.pipeline import add_stops

        return add_stops(values, hook, options, logger=self.log, results=results)


class SmsPartnerRemoveStopsOperator(BulkStopsOperator):
    """Remove phone numbers from the SMS Partner stop list, in bulk, reporting every input value.

    Takes the same sources and options as :class:`SmsPartnerAddStopsOperator` (except
    ``skip_existing``) and scales out the same way (mapped tasks sharing a Pool). The numbers are
    normalised, de-duplicated and mapped to stop ids through one list call (E.164 on both sides; a
    number listed under several stop ids has all of them removed), then deleted concurrently with
    the same workers, throttle and progress lines as the add.

    Every input ends in exactly one status: ``invalid``, ``duplicate``, ``not_on_list`` (also when
    the stop id vanished before its delete: API code 4), ``removed``, ``failed`` or, in a dry run,
    ``would_remove``. A delete whose answer was lost counts as ``removed`` when its retry answers
    code 4 or the stop id is gone from the list at the end of the run. Same results table (recorded
    as it goes, recovered by the next try; hashed with ``hash_key_conn_id``), ``max_failed`` rule
    and auth-error stop as the add.

    :return: ``{"total", "invalid", "duplicate", "not_on_list", "removed", "failed",
        "would_remove"}`` (all present; they sum to ``total``), plus ``"results_table"``.
    :raises ValueError: on bad arguments, before any API call.
    :raises ResultsTableError: when the results table cannot be used, before any API call.
    :raises SmsPartnerAuthError: when the API refuses the key (outcomes recorded first).
    :raises AirflowException: when more than ``max_failed`` numbers failed (outcomes recorded first).
    """

    def _run(
        self, values: pd.Series, hook: SmsPartnerHook, options: BulkOptions, results: TryResults | None
    ) -> BulkResult:
        from airflow_provider_smspartner.bulk.pipeline import remove_stops

        return remove_stops(values, hook, options, logger=self.log, results=results)


class SmsPartnerSuppressAudienceOperator(PhoneSourceOperator):
    """Check a campaign audience against the live SMS Partner stop list, and keep only the rows safe to text.

    Pipeline: open the one source (the query runs, the file opens, the phone column is checked) ->
    fetch the list once (``rows_in_list`` and its ``list_sha256``, the same fingerprint as the
    extract's run log) -> stream the audience in chunks of ``chunk_size`` rows, normalising every
    number to E.164 (``default_region`` for national numbers). Each row ends in exactly one
    outcome: ``invalid`` (no valid number), ``stopped`` (on the list: every row of it), ``duplicate``
    (the number was kept from an earlier row: the first row wins) or kept. Memory holds the list's
    numbers, the numbers kept so far and one chunk, whatever the audience's size.

    - ``mode="filter"`` (default): the kept rows, with **all** their columns plus ``phone_e164``,
      go to exactly one of ``output_table`` (on ``output_conn_id``; replaced in one transaction:
      it holds exactly this run's safe audience, or, on failure, what it held before) or
      ``output_path`` (Parquet or CSV, local or ObjectStoragePath URI, written chunk by chunk).
      Optionally the excluded rows, with a ``reason`` column (``stopped``, ``invalid``,
      ``duplicate``), go to ``excluded_table`` or ``excluded_path`` the same way.
    - ``mode="check"``: writes no output; the task fails (``AirflowException``) when any audience
      number is on the list, with the counts and at most five masked numbers
      (``+33 6•• •• 56 78``).

    Either way, with ``audit_table`` one row is appended (created when missing, before any API
    call): the task instance, ``checked_at``, ``mode``, ``status`` (``accepted``/``refused``),
    ``reason``, the list's ``rows_in_list``/``matched``/``unreadable``/``list_sha256``, the counts
    and ``output``; in check mode before the task fails.

    It fails closed, as the extract does: every output, the audit table and what is read must be
    distinct places (checked before any call); the live list is refused
    (:class:`~airflow_provider_smspartner.exceptions.StopListGuardError`, a ``refused`` audit row,
    nothing else written) when empty, when it holds fewer than ``(1 - max_removed_fraction)`` of
    the reference's stops (the last accepted check of this ``dag_id``/``task_id`` in
    ``audit_table``, else the last applied run of ``stop_list_table``, else none), or, by default,
    when a row has no E.164; files are renamed into place once complete. See
    ``docs/suppression.md``.

    Exactly one source:

    :param phone_numbers: A list/tuple of numbers, or (through an upstream task's XCom) a list,
        a DataFrame or a list of dicts (``phone_column`` picks the column). (templated)
    :param sql: A query returning the audience, every column kept, read in chunks; needs
        ``sql_conn_id``. (templated)
    :param source_path: A CSV or Parquet file (by extension), local path or ObjectStoragePath URI;
        CSV cells are read as text. (templated)

    Options:

    :param sql_conn_id: Connection for ``sql``; the default ``output_conn_id``. (templated)
    :param phone_column: The column with the numbers, needed when the source has several. (templated)
    :param default_region: Region of numbers without an international prefix. (templated)
    :param mode: ``filter`` or ``check``.
    :param output_table: Table of the kept rows, replaced on every run (created when missing). (templated)
    :param output_conn_id: Connection of the output tables (default ``sql_conn_id``). (templated)
    :param output_path: File of the kept rows. (templated)
    :param output_format: ``parquet`` or ``csv`` for the files; by default taken from each path's
        extension (``.parquet``/``.pq``, ``.csv``/``.csv.gz``). (templated)
    :param excluded_table: Table of the excluded rows with their ``reason``, replaced on every run. (templated)
    :param excluded_path: File of the excluded rows with their ``reason``. (templated)
    :param audit_table: Table with one row per run, appended. (templated)
    :param audit_conn_id: Connection of ``audit_table`` (default ``output_conn_id``, else
        ``sql_conn_id``). (templated)
    :param stop_list_table: The warehouse stop-list table the extract keeps: its run log's last
        applied run is the guard's reference when the audit table has none. (templated)
    :param stop_list_conn_id: Connection of ``stop_list_table`` (default ``output_conn_id``, else
        ``sql_conn_id``, else ``audit_conn_id``). (templated)
    :param stop_list_run_log_table: Its run log, as the extract's ``run_log_table`` (default
        ``{table}_runs``). (templated)
    :param max_removed_fraction: Largest share (0 to 1) of the reference's stops that may be gone
        from the live list; ``None`` disables the check. Default 0.2, as the extract.
    :param allow_empty_list: Accept an empty live list (every audience number then passes).
    :param on_unreadable_list_row: ``fail`` (default): refuse a list with a row that holds no
        number readable as E.164. ``warn``: match such a row on the digits of its number (as
        ``+digits``) and log its stop id.
    :param hash_key_conn_id: Keyed-hash mode (``docs/privacy.md``): the connection whose password
        is the key. The audience is matched on ``phone_hash`` (HMAC-SHA256 of the E.164 number);
        kept rows get ``phone_hash`` (last) instead of ``phone_e164``; the excluded ``stopped``
        rows keep only ``phone_hash``, ``reason`` and ``excluded_columns``; a failed check quotes
        hash prefixes. A short key fails before any API call. (templated)
    :param phone_hash_column: In keyed-hash mode, the audience column holding ``phone_hash``
        values already (64 hex digits, made with the same key) instead of numbers; anything else
        in it is ``invalid``. Replaces ``phone_column``. (templated)
    :param excluded_columns: In keyed-hash mode, the audience columns the excluded ``stopped``
        rows keep (e.g. a customer id); never the column of raw numbers.
    :param chunk_size: Audience rows read, checked and written at a time.
    :param smspartner_conn_id: The ``smspartner`` connection. (templated)
    :return: ``{"audience", "valid", "invalid", "duplicate", "stopped", "kept", "rows_in_list",
        "matched", "unreadable", "output"}`` (``audience = kept + invalid + duplicate + stopped``;
        ``valid = audience - invalid``; ``rows_in_list = matched + unreadable``; ``output`` is the
        table or path written, ``None`` in check mode).
    :raises ValueError: on bad arguments (no or two sources, filter without exactly one output,
        check with an output, a bad table name or file extension, a missing or unknown
        ``phone_column``...), raised before any API call.
    :raises StopListGuardError: when the guard refuses the live list (audit row written first).
    :raises AirflowException: in check mode, when any audience number is on the list (audit row
        written first).
    """

    template_fields: Sequence[str] = (
        *PhoneSourceOperator.source_template_fields,
        "default_region",
        "output_table",
        "output_conn_id",
        "output_path",
        "output_format",
        "excluded_table",
        "excluded_path",
        "audit_table",
        "audit_conn_id",
        "stop_list_table",
        "stop_list_conn_id",
        "stop_list_run_log_table",
        "hash_key_conn_id",
        "phone_hash_column",
        "smspartner_conn_id",
    )

    def __init__(
        self,
        *,
        mode: str = "filter",
        output_table: str | None = None,
        output_conn_id: str | None = None,
        output_path: str | None = None,
        output_format: str | None = None,
        excluded_table: str | None = None,
        excluded_path: str | None = None,
        audit_table: str | None = None,
        audit_conn_id: str | None = None,
        stop_list_table: str | None = None,
        stop_list_conn_id: str | None = None,
        stop_list_run_log_table: str = DEFAULT_RUN_LOG_TABLE,
        max_removed_fraction: float | None = 0.2,
        allow_empty_list: bool = False,
        on_unreadable_list_row: str = "fail",
        hash_key_conn_id: str | None = None,
        phone_hash_column: str | None = None,
        excluded_columns: Sequence[str] = (),
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.hash_key_conn_id = hash_key_conn_id
        self.phone_hash_column = phone_hash_column
        self.excluded_columns = excluded_columns
        self.stop_list_table = stop_list_table
        self.stop_list_conn_id = stop_list_conn_id
        self.stop_list_run_log_table = stop_list_run_log_table
        self.max_removed_fraction = max_removed_fraction
        self.allow_empty_list = allow_empty_list
        self.on_unreadable_list_row = on_unreadable_list_row
        self.mode = mode
        self.output_table = output_table
        self.output_conn_id = output_conn_id
        self.output_path = output_path
        self.output_format = output_format
        self.excluded_table = excluded_table
        self.excluded_path = excluded_path
        self.audit_table = audit_table
        self.audit_conn_id = audit_conn_id
        self.chunk_size = chunk_size
        self._lineage: dict[str, Any] = {}  # what execute learnt, for the lineage
        self._check_arguments()

    @property
    def _output_conn(self) -> str | None:
        return self.output_conn_id or self.sql_conn_id

    @property
    def _audit_conn(self) -> str | None:
        return self.audit_conn_id or self.output_conn_id or self.sql_conn_id

    @property
    def _stop_list_conn(self) -> str | None:
        return self.stop_list_conn_id or self._output_conn or self._audit_conn

    def _check_arguments(self) -> None:
        """The checks that need no data (at parse time, and again once the templates are rendered).

        :raises ValueError: naming the argument.
        """
        from airflow_provider_smspartner.suppression.arguments import check_gate_arguments

        check_gate_arguments(self)

    def execute(self, context: Context) -> dict[str, Any]:
        """Check the arguments, then run the gate
        (:class:`~airflow_provider_smspartner.suppression.gate.Gate`): check the outputs, open the
        source, fetch and guard the list, check the audience.

        :return: the counts, the list's ``rows_in_list``, ``matched`` and ``unreadable``, and
            ``output`` (see the class docstring).
        :raises ValueError: on unusable arguments or data, before any API call.
        :raises StopListGuardError: when the live list is refused (nothing written but the audit row).
        :raises AirflowException: in check mode when audience numbers are on the list.
        """
        from airflow_provider_smspartner.bulk.sources import PhoneSource
        from airflow_provider_smspartner.suppression.gate import Gate

        self._check_arguments()  # templated values, rendered
        gate = Gate(
            identity=task_identity(context, self.task_id),
            source=PhoneSource(**self._source(), phone_column=self.phone_hash_column or self.phone_column),
            mode=self.mode,
            smspartner_conn_id=self.smspartner_conn_id,
            default_region=self.default_region,
            chunk_size=self.chunk_size,
            output_conn_id=self._output_conn,
            output_table=self.output_table,
            output_path=self.output_path,
            output_format=self.output_format,
            excluded_table=self.excluded_table,
            excluded_path=self.excluded_path,
            audit_table=self.audit_table,
            audit_conn_id=self._audit_conn,
            stop_list_table=self.stop_list_table,
            stop_list_conn_id=self._stop_list_conn,
            stop_list_run_log_table=self.stop_list_run_log_table,
            max_removed_fraction=self.max_removed_fraction,
            allow_empty_list=self.allow_empty_list,
            on_unreadable_list_row=self.on_unreadable_list_row,
            hash_key_conn_id=self.hash_key_conn_id,
            given_hashes=bool(self.phone_hash_column),
            excluded_columns=tuple(self.excluded_columns),
            log=self.log,
        )
        try:
            return gate.run()
        finally:
            if gate.summary is not None:  # also when check mode fails: the lineage has the counts
                self._lineage = {"counts": gate.summary, "rows_in_list": gate.summary["rows_in_list"]}

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """OpenLineage: the audience and the stop list in; the safe audience, the excluded rows
        and the audit table out."""
        from airflow_provider_smspartner.utils.lineage import suppression_lineage

        return suppression_lineage(
            self.smspartner_conn_id,
            self._source(),
            output_table=self.output_table,
            output_conn_id=self._output_conn,
            output_path=self.output_path,
            excluded_table=self.excluded_table,
            excluded_path=self.excluded_path,
            audit_table=self.audit_table,
            audit_conn_id=self._audit_conn,
            counts=self._lineage.get("counts"),
            rows_in_list=self._lineage.get("rows_in_list"),
        )
