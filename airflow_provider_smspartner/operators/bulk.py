"""What the bulk add and remove operators share: options, keyed-hash mode, the results table, the
run, its stop on SIGTERM and its lineage. Import-light (parsed with every DAG)."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow.sdk.exceptions import AirflowTaskTerminated

from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.operators.base import PhoneSourceOperator, task_identity
from airflow_provider_smspartner.utils.arguments import check_count

if TYPE_CHECKING:
    import pandas as pd
    from airflow.providers.openlineage.extractors import OperatorLineage
    from airflow.sdk import Context

    from airflow_provider_smspartner.bulk.pipeline import BulkOptions, BulkResult
    from airflow_provider_smspartner.bulk.results import TryResults
    from airflow_provider_smspartner.utils.hash_key import HashKey


class BulkStopsOperator(PhoneSourceOperator):
    """What the bulk add and remove operators share: options, keyed-hash mode, results table,
    reporting."""

    template_fields: Sequence[str] = (
        *PhoneSourceOperator.source_template_fields,
        "results_table",
        "results_conn_id",
        "default_region",
        "smspartner_conn_id",
        "hash_key_conn_id",
    )

    def __init__(
        self,
        *,
        dry_run: bool = False,
        max_workers: int = 8,
        results_table: str | None = None,
        results_conn_id: str | None = None,
        max_failed: int = 0,
        hash_key_conn_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.hash_key_conn_id = hash_key_conn_id
        # Not self.dry_run: that is a BaseOperator method (render the templates only).
        self.is_dry_run = dry_run
        self.max_workers = max_workers
        self.results_table = results_table
        self.results_conn_id = results_conn_id
        self.max_failed = max_failed
        self._summary: dict[str, Any] = {}  # for the lineage
        self._stoppable = False  # execute is running in the main thread: on_kill may stop it
        check_count("max_workers", max_workers, minimum=1)
        check_count("max_failed", max_failed, minimum=0)
        if results_table and not (results_conn_id or self.sql_conn_id):
            raise ValueError(
                f"results_table {results_table!r} needs a database: set results_conn_id (or sql_conn_id) "
                "to the connection to write it to."
            )

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
        :raises SmsPartnerConfigError: when ``hash_key_conn_id``'s key is missing, short or
            malformed (before anything else).
        :raises ResultsTableError: when the results table cannot be created, has another shape or
            hash mode or key, or cannot be written (before any API call).
        :raises SmsPartnerAuthError: when the API refuses the key (outcomes recorded first).
        :raises AirflowException: when more than ``max_failed`` inputs failed (outcomes recorded first).
        """
        self._stoppable = threading.current_thread() is threading.main_thread()
        try:
            return self._execute(context)
        finally:
            self._stoppable = False

    def on_kill(self) -> None:
        """Stop a running bulk run on SIGTERM; it records every input on the way out.

        Airflow 3's task runner calls this from its SIGTERM handler, in the task's main thread, and
        lets ``execute`` go on until its SIGKILL 5 s later. So, while ``execute`` runs, this raises
        ``AirflowTaskTerminated`` there (as Airflow 2 did): no further call is sent, the calls in
        flight get a moment to end, and the results table records each input (``not_processed`` for
        the ones never sent) before the task ends. After ``execution_timeout`` Airflow calls it once
        ``execute`` has ended, and so does nothing.

        :raises AirflowTaskTerminated: while ``execute`` runs in this (the main) thread.
        """
        if self._stoppable and threading.current_thread() is threading.main_thread():
            self._stoppable = False  # a second SIGTERM must not break the way out
            raise AirflowTaskTerminated(
                f"Task {self.task_id!r} received SIGTERM: bulk run stopped, every input recorded"
            )

    def _execute(self, context: Context) -> dict[str, Any]:
        from airflow_provider_smspartner.bulk.pipeline import conclude
        from airflow_provider_smspartner.bulk.results import ResultsTable, TaskIdentity

        key = self._hash_key()  # first: a bad key stops the task before anything is read or sent
        options = self._options()
        results = None
        if self.results_table:
            # Before any API call: a bad name, a table of another shape or hash mode, a missing
            # schema or a missing privilege fails here; earlier tries' rows are read for the recovery.
            table = ResultsTable(
                conn_id=str(self.results_conn_id or self.sql_conn_id), table=self.results_table, hash_key=key
            )
            results = table.prepare(TaskIdentity(**task_identity(context, self.task_id)))
            self.log.info("Recording outcomes in %s as %s", results.describe(), results.identity.describe())
        try:
            source = self._phone_source()
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
        self._summary = dict(result.counts())
        return conclude(result, max_failed=self.max_failed, logger=self.log, hashed=key is not None)

    def _hash_key(self) -> HashKey | None:
        """The key of ``hash_key_conn_id`` (checked, masked in logs), or ``None`` in clear mode."""
        if self.hash_key_conn_id is None:
            return None
        from airflow_provider_smspartner.utils.hash_key import resolve_hash_key

        key = resolve_hash_key(self.hash_key_conn_id)
        self.log.info("Keyed-hash mode: numbers are recorded as phone_hash under key id %s", key.key_id)
        return key

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> OperatorLineage:
        """OpenLineage: the source in (tables of the query, or the file); the stop list and the
        results table out."""
        from airflow_provider_smspartner.utils.lineage import bulk_operator_lineage

        return bulk_operator_lineage(
            self.smspartner_conn_id,
            self._source(),
            results_table=self.results_table,
            results_conn_id=self.results_conn_id,
            counts=self._summary,
        )
