"""What the SMS Partner operators share: the task identity a run is recorded under, and the one
phone-number source of the bulk and suppression operators. Import-light (parsed with every DAG)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.utils.arguments import check_one_source

if TYPE_CHECKING:
    from airflow.sdk import Context

    from airflow_provider_smspartner.bulk.sources import PhoneSource


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


class PhoneSourceOperator(BaseOperator):
    """What the operators that read phone numbers share: exactly one source (``phone_numbers``,
    ``sql`` + ``sql_conn_id``, or ``source_path``), ``phone_column``, ``default_region`` and the
    ``smspartner`` connection."""

    #: The source's templated arguments; each subclass lists them in its ``template_fields``.
    source_template_fields: tuple[str, ...] = (
        "phone_numbers",
        "sql",
        "sql_conn_id",
        "source_path",
        "phone_column",
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
        self.smspartner_conn_id = smspartner_conn_id
        check_one_source(phone_numbers, sql, sql_conn_id, source_path)

    def render_template(self, content: Any, context: Context, *args: Any, **kwargs: Any) -> Any:
        # A literal list of numbers would otherwise be compiled by Jinja one string at a time (slow
        # for big lists), and native rendering would turn "+33612345678" into an int. A string
        # without a brace cannot hold a template, so it is returned unchanged.
        if isinstance(content, str) and "{" not in content and not content.endswith(tuple(self.template_ext)):
            return content
        return super().render_template(content, context, *args, **kwargs)

    def _source(self) -> dict[str, Any]:
        """The one source, as :class:`~airflow_provider_smspartner.bulk.sources.PhoneSource` and the
        lineage take it."""
        return {
            "phone_numbers": self.phone_numbers,
            "sql": self.sql,
            "sql_conn_id": self.sql_conn_id,
            "source_path": self.source_path,
        }

    def _phone_source(self) -> PhoneSource:
        from airflow_provider_smspartner.bulk.sources import PhoneSource

        return PhoneSource(**self._source(), phone_column=self.phone_column)
