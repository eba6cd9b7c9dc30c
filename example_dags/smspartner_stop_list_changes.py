"""Downstream of the stop-list extract: do the follow-up work only when the stop list changed.

``smspartner_stop_list_to_warehouse`` publishes the ``smspartner_stop_list`` Asset, and each of
its events carries what the extract changed in its extra: ``rows_in_list``, ``inserted``,
``updated``, ``removed`` and ``list_sha256``. This DAG is scheduled on that Asset:

1. ``stop_list_changes`` adds up the events that triggered the run (several extracts may be
   folded into one run, their events in no fixed order: the list hash is the newest event's by
   timestamp); a run started by hand reads the Asset's latest event instead.
2. ``anything_changed`` short-circuits the rest when no stop was inserted, updated or removed.
3. ``record_changes`` stands for the work a change calls for (refresh a campaign audience,
   notify the CRM): here it appends a row to ``smspartner_stop_list_changes`` in the warehouse.

Connection: ``warehouse`` (override with ``SMSPARTNER_EXAMPLE_SQL_CONN_ID``).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.sdk import Asset, dag, task

SQL_CONN_ID = os.environ.get("SMSPARTNER_EXAMPLE_SQL_CONN_ID", "warehouse")
STOP_LIST_ASSET = Asset("smspartner_stop_list")
COUNTS = ("inserted", "updated", "removed")


@dag(
    dag_id="smspartner_stop_list_changes",
    schedule=[STOP_LIST_ASSET],
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["smspartner", "example"],
    doc_md=__doc__,
)
def smspartner_stop_list_changes():
    @task(inlets=[STOP_LIST_ASSET])
    def stop_list_changes(triggering_asset_events=None, inlet_events=None) -> dict[str, Any]:
        """The changes of the extract runs behind this run: counts summed, the latest list's hash."""
        events = list(triggering_asset_events[STOP_LIST_ASSET]) if triggering_asset_events else []
        if not events:  # started by hand: the Asset's latest event
            events = list(inlet_events[STOP_LIST_ASSET].ascending(False).limit(1))
        changes: dict[str, Any] = {key: sum(int(e.extra.get(key) or 0) for e in events) for key in COUNTS}
        changes["events"] = len(events)
        # The events come in no fixed order (PostgreSQL): the newest is the one with the latest timestamp.
        newest = max(events, key=lambda e: e.timestamp, default=None)
        changes["list_sha256"] = newest.extra.get("list_sha256") if newest is not None else None
        return changes

    @task.short_circuit
    def anything_changed(changes: dict[str, Any]) -> bool:
        """False (skip what follows) when the stop list is the same as before."""
        return any(changes[key] for key in COUNTS)

    @task
    def record_changes(changes: dict[str, Any]) -> None:
        """The follow-up work: here, one row per change noticed."""
        from airflow.sdk import BaseHook

        hook = BaseHook.get_connection(SQL_CONN_ID).get_hook()
        hook.run(
            "CREATE TABLE IF NOT EXISTS smspartner_stop_list_changes (noticed_at VARCHAR(32), "
            "inserted BIGINT, updated BIGINT, removed BIGINT, list_sha256 VARCHAR(64))"
        )
        noticed_at = datetime.now().astimezone().isoformat(timespec="seconds")
        row = (noticed_at, *(changes[key] for key in COUNTS), changes["list_sha256"])
        hook.insert_rows(
            "smspartner_stop_list_changes",
            [row],
            target_fields=["noticed_at", *COUNTS, "list_sha256"],
        )

    changes = stop_list_changes()
    anything_changed(changes) >> record_changes(changes)


smspartner_stop_list_changes()
