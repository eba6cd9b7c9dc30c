"""Every SMS Partner operator: extract the stop list, and bulk add or remove numbers.

Import-light: the DAG processor imports this module on every parse, so pandas, pyarrow,
phonenumbers and the bulk engine load inside ``execute``, not here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.utils.arguments import check_choice, check_count, check_one_source

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context

    from airflow_provider_smspartner.bulk.pipeline import BulkOptions, BulkResult
    from airflow_provider_smspartner.bulk.results import TryResults

OUTPUT_FORMATS = ("parquet", "csv")


class SmsPartnerStopListOperator(BaseOperator):
    """Fetch the SMS Partner stop list.

    Without ``output_path`` the task returns the list as a DataFrame (XCom; columns ``stop_id``,
    ``phone_number``, ``phone_e164``, ``created_at`` in UTC). Large lists belong in a file: with
    ``output_path`` it writes Parquet (default) or CSV there and returns the path.

    :param smspartner_conn_id: The ``smspartner`` connection. (templated)
    :param output_path: Local path or ObjectStoragePath URI (``file://``, ``s3://``...). (templated)
    :param output_format: ``parquet`` or ``csv``. (templated)
    """

    template_fields: Sequence[str] = ("smspartner_conn_id", "output_path", "output_format")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        smspartner_conn_id: str = SmsPartnerHook.default_conn_name,
        output_path: str | None = None,
        output_format: str = "parquet",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.smspartner_conn_id = smspartner_conn_id
        self.output_path = output_path
        self.output_format = output_format

    def execute(self, context: Context) -> pd.DataFrame | str:
        if self.output_path:
            check_choice("output_format", self.output_format, OUTPUT_FORMATS)
        frame = SmsPartnerHook(smspartner_conn_id=self.smspartner_conn_id).get_stop_list_df()
        self.log.info("Fetched %d stops from SMS Partner", len(frame))
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


def run_identity(context: Context | Mapping[str, Any]) -> tuple[str | None, str | None]:
    """``(dag_id, run_id)`` of the running task, from a real context or a minimal test dict."""
    dag = context.get("dag")
    ti = context.get("ti") or context.get("task_instance")
    dag_id = getattr(dag, "dag_id", None) or getattr(ti, "dag_id", None)
    run_id = context.get("run_id") or getattr(ti, "run_id", None)
    return dag_id, run_id


def task_identity(context: Context | Mapping[str, Any], task_id: str) -> dict[str, Any]:
    """The task instance and try a bulk run records its outcomes under, from the context.

    A minimal test context gets ``""`` for missing ids, ``map_index`` -1 and no try number (the
    results table then takes the next one).

    :return: ``dag_id``, ``run_id``, ``task_id``, ``map_index``, ``try_number``.
    """
    ti = context.get("ti") or context.get("task_instance")
    dag_id, run_id = run_identity(context)
    map_index = getattr(ti, "map_index", None)
    try_number = getattr(ti, "try_number", None)
    return {
        "dag_id": str(dag_id or ""),
        "run_id": str(run_id or ""),
        "task_id": str(getattr(ti, "task_id", None) or task_id),
        "map_index": int(map_index) if isinstance(map_index, int) else -1,
        "try_number": int(try_number)
        if isinstance(try_number, int) and not isinstance(try_number, bool)
        else None,
    }


class _BulkStopsOperator(BaseOperator):
    """What the bulk add and remove operators share: sources, options, results table, reporting."""

    template_fields: Sequence[str] = (
        "phone_numbers",
        "sql",
        "sql_conn_id",
        "source_path",
        "phone_column",
        "results_table",
        "results_conn_id",
        "default_region",
        "smspartner_conn_id",
    )
    template_fields_renderers = {"sql": "sql"}
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        phone_numbers: Any = None,
        sql: str | None = None,
        sql_conn_id: str | None = None,
        source_path: str | None = None,
        phone_column: str | None = None,
        default_region: str = "FR",
        dry_run: bool = False,
        max_workers: int = 8,
        results_table: str | None = None,
        results_conn_id: str | None = None,
        max_failed: int = 0,
        smspartner_conn_id: str = SmsPartnerHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.phone_numbers = phone_numbers
        self.sql = sql
        self.sql_conn_id = sql_conn_id
        self.source_path = source_path
        self.phone_column = phone_column
        self.default_region = default_region
        # Not self.dry_run: that is a BaseOperator method (render the templates only).
        self.is_dry_run = dry_run
        self.max_workers = max_workers
        self.results_table = results_table
        self.results_conn_id = results_conn_id
        self.max_failed = max_failed
        self.smspartner_conn_id = smspartner_conn_id
        check_one_source(phone_numbers, sql, sql_conn_id, source_path)
        check_count("max_workers", max_workers, minimum=1)
        check_count("max_failed", max_failed, minimum=0)
        if results_table and not (results_conn_id or sql_conn_id):
            raise ValueError(
                f"results_table {results_table!r} needs a database: set results_conn_id (or sql_conn_id) "
                "to the connection to write it to."
            )

    def render_template(self, content: Any, context: Context, *args: Any, **kwargs: Any) -> Any:
        # A literal list of numbers would otherwise be compiled by Jinja one string at a time (slow
        # for big lists), and native rendering would turn "+33612345678" into an int. A string
        # without a brace cannot hold a template, so it is returned unchanged.
        if isinstance(content, str) and "{" not in content and not content.endswith(tuple(self.template_ext)):
            return content
        return super().render_template(content, context, *args, **kwargs)

    def _options(self) -> BulkOptions:
        from airflow_provider_smspartner.bulk.pipeline import BulkOptions

        return BulkOptions(
            default_region=self.default_region, dry_run=self.is_dry_run, max_workers=self.max_workers
        )

    def _run(
        self, values: pd.Series, hook: SmsPartnerHook, options: BulkOptions, results: TryResults | None
    ) -> BulkResult:
        raise NotImplementedError

    def execute(self, context: Context) -> dict[str, Any]:
        """Check the results table, read the numbers, run the bulk pipeline, return the summary.

        :return: ``total``, one count per status, and ``results_table`` when one is written.
        :raises ValueError: on unusable arguments or data (before any API call).
        :raises ResultsTableError: when the results table cannot be created, has another shape or
            cannot be written (before any API call).
        :raises SmsPartnerAuthError: when the API refuses the key (outcomes recorded first).
        :raises AirflowException: when more than ``max_failed`` inputs failed (outcomes recorded first).
        """
        from airflow_provider_smspartner.bulk.pipeline import conclude
        from airflow_provider_smspartner.bulk.results import ResultsTable, TaskIdentity
        from airflow_provider_smspartner.bulk.sources import PhoneSource

        options = self._options()
        results = None
        if self.results_table:
            # Before any API call: a bad name, a table of another shape, a missing schema or a
            # missing privilege fails here; earlier tries' rows are read for the recovery.
            table = ResultsTable(
                conn_id=str(self.results_conn_id or self.sql_conn_id), table=self.results_table
            )
            results = table.prepare(TaskIdentity(**task_identity(context, self.task_id)))
            self.log.info("Recording outcomes in %s as %s", results.describe(), results.identity.describe())
        try:
            source = PhoneSource(
                phone_numbers=self.phone_numbers,
                sql=self.sql,
                sql_conn_id=self.sql_conn_id,
                source_path=self.source_path,
                phone_column=self.phone_column,
            )
            values = source.read()
            self.log.info("Read %d values from %s", len(values), source.describe())
            hook = SmsPartnerHook(smspartner_conn_id=self.smspartner_conn_id)
            try:
                result = self._run(values, hook, options, results)
            finally:
                hook.close()
        finally:
            if results is not None:
                results.close()
        return conclude(result, max_failed=self.max_failed, logger=self.log)


class SmsPartnerAddStopsOperator(_BulkStopsOperator):
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

    **Results table** (``results_table``): checked or created before the first API call (a table of
    another shape, a missing schema or privilege fails the task before anything is sent), then
    written while the run goes: the inputs settled without a call first, each call's input as
    ``pending`` before the call is sent, outcomes in batches (every few seconds or few hundred
    outcomes). One row per input per try, keyed by ``dag_id``, ``run_id``, ``task_id``,
    ``map_index``, ``try_number``, ``input_row``; also ``input_value``, ``phone_e164``, ``status``,
    ``stop_id``, ``error_code``, ``error_message``, ``note`` and ``decided_at`` (UTC). A killed
    worker loses at most the last few seconds of outcomes, whose rows stay ``pending``; the next try
    of the task instance (an Airflow retry) checks them against the list and records them
    ``added`` under the try that sent them, so every add the API applied has exactly one ``added``
    row across the tries. ``bulk.results.final_outcomes_sql`` gives one final outcome per input.

    A refused API key stops the run at once (queued calls dropped; the inputs never tried are
    recorded as ``not_processed``). Otherwise every number is processed and recorded, and only then
    does the task fail if more than ``max_failed`` numbers failed. A progress line (done/total,
    rate, ETA) is logged every 10 s and at each 10 %.

    **Scale-out.** SMS Partner allows about 2000 requests/minute per IP for the whole fleet. With
    the connection extra ``rate_limit_redis_conn_id``, ``requests_per_second`` is one budget shared
    through Redis by every task and worker, and a Pool only bounds how many tasks run at once.
    Without it the throttle is per process: size the Pool so that ``pool slots x
    requests_per_second <= 2000 / 60`` (about 33/s), e.g. 1 slot at the default 25/s. To split a
    very large input, map the operator over chunks in that Pool::

        @task
        def chunks() -> list[list[str]]:
            numbers = read_opt_outs()
            return [numbers[i : i + 50_000] for i in range(0, len(numbers), 50_000)]

        SmsPartnerAddStopsOperator.partial(
            task_id="add_stops", pool="smspartner_api", results_table="stop_adds", results_conn_id="dwh"
        ).expand(phone_numbers=chunks())

    De-duplication is per task: a number in two chunks ends ``already_present`` (or
    ``skipped_existing``) in the later one, which is still idempotent. The same applies to
    :class:`SmsPartnerRemoveStopsOperator` (a number in two chunks ends ``not_on_list`` in one).

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


class SmsPartnerRemoveStopsOperator(_BulkStopsOperator):
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
    as it goes, recovered by the next try), ``max_failed`` rule and auth-error stop as the add.

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
