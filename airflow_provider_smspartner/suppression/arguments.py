"""The gate operator's argument checks: the ones that need no data, run when the DAG is parsed
and again once the templates are rendered. Import-light (the DAG processor runs them)."""

from __future__ import annotations

from typing import Any

from airflow_provider_smspartner.utils.arguments import (
    check_choice,
    check_count,
    check_flag,
    check_fraction,
    check_one_source,
)

#: ``mode`` of the gate.
SUPPRESSION_MODES = ("filter", "check")
#: File formats of ``output_format``.
OUTPUT_FORMATS = ("parquet", "csv")
#: What the gate does with a stop-list row that has no E.164 (``on_unreadable_list_row``).
UNREADABLE_LIST_ROW_CHOICES = ("fail", "warn")


def check_gate_arguments(gate: Any) -> None:
    """Check a ``SmsPartnerSuppressAudienceOperator``'s arguments.

    :raises ValueError: naming the argument and what to change.
    """
    check_choice("mode", gate.mode, SUPPRESSION_MODES)
    check_one_source(gate.phone_numbers, gate.sql, gate.sql_conn_id, gate.source_path)
    check_count("chunk_size", gate.chunk_size, minimum=1)
    check_fraction("max_removed_fraction", gate.max_removed_fraction, allow_none=True)
    check_flag("allow_empty_list", gate.allow_empty_list)
    check_choice("on_unreadable_list_row", gate.on_unreadable_list_row, UNREADABLE_LIST_ROW_CHOICES)
    if gate.stop_list_table and not gate._stop_list_conn:
        raise ValueError(
            f"stop_list_table {gate.stop_list_table!r} needs a database: set stop_list_conn_id (or "
            "output_conn_id, or sql_conn_id)."
        )
    check_hash_arguments(gate)
    if gate.output_format is not None:
        check_choice("output_format", gate.output_format, OUTPUT_FORMATS)
    outputs = {
        "output_table": gate.output_table,
        "output_path": gate.output_path,
        "excluded_table": gate.excluded_table,
        "excluded_path": gate.excluded_path,
    }
    given = [name for name, value in outputs.items() if value]
    if gate.mode == "check":
        if given:
            raise ValueError(
                f"mode='check' writes no output, but {' and '.join(given)} {'is' if len(given) == 1 else 'are'} "
                "set; use mode='filter' to write the safe audience, or leave the outputs out."
            )
    elif bool(gate.output_table) == bool(gate.output_path):
        got = "both" if gate.output_table else "neither"
        raise ValueError(
            f"mode='filter' writes the safe audience to exactly one of output_table or output_path "
            f"(got {got})."
        )
    if gate.excluded_table and gate.excluded_path:
        raise ValueError("Give at most one of excluded_table or excluded_path (got both).")
    for name in ("output_table", "excluded_table"):
        if outputs[name] and not gate._output_conn:
            raise ValueError(
                f"{name} {outputs[name]!r} needs a database: set output_conn_id (or sql_conn_id) to "
                "the connection to write it to."
            )
    if gate.audit_table and not gate._audit_conn:
        raise ValueError(
            f"audit_table {gate.audit_table!r} needs a database: set audit_conn_id (or output_conn_id, "
            "or sql_conn_id)."
        )


def check_hash_arguments(gate: Any) -> None:
    """``phone_hash_column`` and ``excluded_columns`` belong to keyed-hash mode.

    :raises ValueError: naming the argument and what to change.
    """
    if gate.phone_hash_column is not None and (
        not isinstance(gate.phone_hash_column, str) or not gate.phone_hash_column.strip()
    ):
        raise ValueError(f"phone_hash_column must be a column name, got {gate.phone_hash_column!r}.")
    if isinstance(gate.excluded_columns, str) or not all(
        isinstance(name, str) and name for name in gate.excluded_columns
    ):
        raise ValueError(f"excluded_columns must be a list of column names, got {gate.excluded_columns!r}.")
    if gate.hash_key_conn_id:
        if gate.phone_hash_column and gate.phone_column:
            raise ValueError(
                f"Give phone_column {gate.phone_column!r} (numbers, hashed here) or phone_hash_column "
                f"{gate.phone_hash_column!r} (hashes made with the same key), not both."
            )
        return
    for name in ("phone_hash_column", "excluded_columns"):
        if getattr(gate, name):
            raise ValueError(
                f"{name} applies to keyed-hash mode only: set hash_key_conn_id to the connection "
                "whose password is the hash key, or leave it out."
            )
