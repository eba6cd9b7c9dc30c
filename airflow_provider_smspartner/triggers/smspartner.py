"""SmsPartnerStopListTrigger: event-driven scheduling on the SMS Partner stop list (``AssetWatcher``).

The trigger polls the live list and fires an Asset event when it changed (list mode), or when a
warehouse copy of it is stale (warehouse mode). Import-light: the DAG processor imports this module
with every DAG that declares the watcher, so pyarrow, SQLAlchemy, pandas and asgiref load only in
the triggerer, inside a poll. See ``docs/triggers.md``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from airflow_provider_smspartner.exceptions import (
    SmsPartnerAuthError,
    SmsPartnerConfigError,
    SmsPartnerConnectionError,
    SmsPartnerError,
    SmsPartnerRateLimitError,
    SmsPartnerResponseError,
    SmsPartnerServerError,
)
from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.sql.names import TableName
from airflow_provider_smspartner.sql.tables import DEFAULT_RUN_LOG_TABLE, run_log_table_name
from airflow_provider_smspartner.utils.redaction import redact

T = TypeVar("T")

#: What each kind of failed poll is called in the log (one line per kind until a poll succeeds).
FAILURE_KINDS = {
    "auth": "the API key or the account was refused",
    "config": "the connection is unusable",
    "rate_limit": "rate limited (HTTP 429)",
    "server_error": "server error (HTTP 5xx)",
    "timeout_or_connection": "no answer (timeout or connection failure)",
    "bad_answer": "an answer that breaks the list contract",
    "api_error": "an API error",
    "warehouse": "the warehouse run log could not be read",
    "unexpected": "an unexpected error",
}
#: Failures logged at ERROR: nothing will change until someone fixes the key or the connection.
_NEEDS_A_HUMAN = frozenset({"auth", "config", "unexpected"})


def failure_kind(exc: BaseException) -> str:
    """The kind of a failed list call, a key of :data:`FAILURE_KINDS`."""
    from airflow.sdk.exceptions import AirflowNotFoundException

    kinds: tuple[tuple[type[BaseException] | tuple[type[BaseException], ...], str], ...] = (
        (SmsPartnerAuthError, "auth"),
        ((SmsPartnerConfigError, AirflowNotFoundException), "config"),
        (SmsPartnerRateLimitError, "rate_limit"),
        (SmsPartnerServerError, "server_error"),
        (SmsPartnerConnectionError, "timeout_or_connection"),
        (SmsPartnerResponseError, "bad_answer"),
        (SmsPartnerError, "api_error"),
    )
    return next((kind for types, kind in kinds if isinstance(exc, types)), "unexpected")


@dataclass(frozen=True)
class _Look:
    """One poll's view: the live list, and in warehouse mode the copy's last applied list."""

    rows_in_list: int
    list_sha256: str
    checked_at: str
    warehouse_list_sha256: str | None = None


class SmsPartnerStopListTrigger(BaseEventTrigger):
    """Fire an Asset event when the SMS Partner stop list changes, or when a warehouse copy is stale.

    For ``Asset(..., watchers=[AssetWatcher(name=..., trigger=SmsPartnerStopListTrigger(...))])``:
    a DAG scheduled on the Asset runs once per event. Every ``poll_interval`` seconds it makes one
    ``stop-sms/list`` call through :class:`SmsPartnerHook` (its throttle, shared rate limit and
    retries), in a worker thread, and keeps only the list's size and
    :func:`~airflow_provider_smspartner.utils.stop_list.list_sha256`: no DataFrame, nothing of the list
    between polls.

    - **Warehouse mode** (``sql_conn_id`` and ``table``): fires when the live list's
      ``list_sha256`` differs from the one of the last ``applied`` run in the extract's run log
      (``run_log_table``), i.e. when the copy is stale; the extract the event starts makes them
      equal again, and the trigger falls quiet. One event per distinct list state: while the copy
      stays stale with the same list (its extract failing), the event is fired again only after
      :attr:`refire_after` seconds, doubling each time up to :attr:`max_refire_after`. The state
      fired for is kept in memory: after a triggerer restart, a copy still stale fires once more.
    - **List mode** (no warehouse): fires when the list differs from the state it last fired for
      (or first saw). That state is kept in the Asset's state store where Airflow provides one
      (3.3+, ``asset_state_store``), so a restart compares with it; without one (Airflow 3.2, tests)
      or with nothing stored yet, the first poll is the baseline and fires nothing.

    The event's payload: ``list_sha256``, ``rows_in_list``, ``checked_at`` (UTC, ISO 8601) and, in
    warehouse mode, ``warehouse_list_sha256`` (``None`` before the first applied extract); never a
    phone number. A failed poll (429, 5xx, timeout, refused key, unreadable run log) fires nothing:
    it is logged once per kind (a refused key or connection at ERROR) and tried again at the next
    poll. :meth:`run` never returns.

    :param smspartner_conn_id: The ``smspartner`` connection.
    :param poll_interval: Seconds between two polls (> 0; below 60 a warning about the API budget
        is logged: each poll downloads the whole list).
    :param sql_conn_id: The warehouse connection (any ``DbApiHook``); warehouse mode, with ``table``.
    :param table: The extract's stop-list table, ``name`` or ``schema.name``.
    :param run_log_table: The extract's run log, as its ``run_log_table`` argument (``{table}``
        stands for ``table``); default ``<table>_runs``.
    :raises ValueError: on a bad argument (when the DAG is parsed).
    """

    #: Below this poll interval (seconds) a warning about the API budget is logged.
    budget_warning_interval: float = 60.0
    #: Warehouse mode: seconds before a copy still stale with the same list gets another event.
    refire_after: float = 3600.0
    #: Cap of that wait, which doubles at each event fired again for the same list.
    max_refire_after: float = 86400.0
    #: List mode: key of the state in the Asset's state store (the connection id is appended).
    state_key_prefix = "smspartner_list_sha256"

    def __init__(
        self,
        smspartner_conn_id: str = SmsPartnerHook.default_conn_name,
        poll_interval: float = 300.0,
        sql_conn_id: str | None = None,
        table: str | None = None,
        run_log_table: str | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(smspartner_conn_id, str) or not smspartner_conn_id.strip():
            raise ValueError(f"smspartner_conn_id must be a connection id; got {smspartner_conn_id!r}.")
        if (
            isinstance(poll_interval, bool)
            or not isinstance(poll_interval, (int, float))
            or not math.isfinite(poll_interval)
            or poll_interval <= 0
        ):
            raise ValueError(f"poll_interval must be a number of seconds > 0; got {poll_interval!r}.")
        if (sql_conn_id is None) != (table is None):
            raise ValueError(
                "Give both sql_conn_id and table (warehouse mode: fire when the table's copy of the list "
                f"is stale) or neither (list mode: fire when the list changes); got sql_conn_id={sql_conn_id!r}, "
                f"table={table!r}."
            )
        if run_log_table is not None and table is None:
            raise ValueError("run_log_table needs table and sql_conn_id (warehouse mode).")
        if table is not None:
            TableName.parse(table)
            TableName.parse(run_log_table_name(table, run_log_table or DEFAULT_RUN_LOG_TABLE))
        self.smspartner_conn_id = smspartner_conn_id
        # A float either way, so serialize() gives the same kwargs for 300 and 300.0.
        self.poll_interval = float(poll_interval)
        self.sql_conn_id = sql_conn_id
        self.table = table
        self.run_log_table = run_log_table
        #: The list state this trigger fired for (warehouse: while stale) or last saw (list mode).
        self._remembered: str | None = None
        self._fired_at: float | None = None
        self._refires = 0
        #: Failure kinds of the current streak of failed polls, with their counts.
        self._failing: dict[str, int] = {}
        self._state_store_usable = True
        # Seams for tests (a fake clock); the triggerer uses the real ones.
        self._monotonic: Callable[[], float] = time.monotonic
        self._sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep

    def serialize(self) -> tuple[str, dict[str, Any]]:
        """The class path and the constructor's arguments: plain JSON values, stable across
        interpreters (Airflow identifies the watcher's trigger by a hash of them)."""
        return (
            f"{type(self).__module__}.{type(self).__qualname__}",
            {
                "smspartner_conn_id": self.smspartner_conn_id,
                "poll_interval": self.poll_interval,
                "sql_conn_id": self.sql_conn_id,
                "table": self.table,
                "run_log_table": self.run_log_table,
            },
        )

    @property
    def warehouse_mode(self) -> bool:
        """Whether the trigger compares the list with a warehouse copy (``sql_conn_id`` + ``table``)."""
        return self.table is not None

    @property
    def run_log(self) -> str | None:
        """The run log read in warehouse mode (its name resolved), else ``None``."""
        if self.table is None:
            return None
        return run_log_table_name(self.table, self.run_log_table or DEFAULT_RUN_LOG_TABLE)

    # ------------------------------------------------------------------------------------ loop
    async def run(self) -> AsyncIterator[TriggerEvent]:
        """Poll forever; yield an event when the list changed (list mode) or the copy is stale."""
        self._announce()
        while True:
            started = self._monotonic()
            look = await self._look()
            event = None if look is None else await self._decided(look)
            if event is not None:
                yield event
                # Remembered once the event is out: a crash in between fires it again rather
                # than losing it.
                await self._remember(event.payload)
            # A failed poll waits a whole interval; a successful one keeps the cadence.
            waited = 0.0 if look is None else self._monotonic() - started
            await self._sleep(max(0.0, self.poll_interval - waited))

    def _announce(self) -> None:
        if self.warehouse_mode:
            what = f"fires when table {self.table} ({self.sql_conn_id!r}, run log {self.run_log}) is stale"
        else:
            what = "fires when the list changes"
        self.log.info(
            "Watching the SMS Partner stop list of connection %r every %g s: %s",
            self.smspartner_conn_id,
            self.poll_interval,
            what,
        )
        if self.poll_interval < self.budget_warning_interval:
            self.log.warning(
                "poll_interval=%g s is below %g s: each poll is one stop-sms/list call that downloads "
                "the whole list (about 2 s of transfer and parsing per million stops), %d calls a day "
                "taken from the API budget (2,000 requests per minute per IP) that the extract and the "
                "bulk tasks share; see docs/triggers.md to choose the interval",
                self.poll_interval,
                self.budget_warning_interval,
                round(86400 / self.poll_interval),
            )

    async def _look(self) -> _Look | None:
        """Fetch the list's fingerprint (then, in warehouse mode, the copy's), off the event loop;
        ``None`` when a step failed (logged)."""
        checked_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            rows, live = await _in_thread(self._fingerprint)
        except Exception as exc:
            self._failed(failure_kind(exc), exc)
            return None
        warehouse = None
        if self.warehouse_mode:
            try:
                warehouse = await _in_thread(self._warehouse_fingerprint)
            except Exception as exc:
                self._failed("warehouse", exc)
                return None
        return _Look(rows, live, checked_at, warehouse)

    def _fingerprint(self) -> tuple[int, str]:
        """``(rows_in_list, list_sha256)`` of the live list; a new hook each poll, so a rotated key
        or a changed connection is picked up without a triggerer restart."""
        hook = SmsPartnerHook(smspartner_conn_id=self.smspartner_conn_id)
        try:
            return hook.get_stop_list_fingerprint()
        finally:
            hook.close()
            _release_arrow_memory()

    def _warehouse_fingerprint(self) -> str | None:
        """The ``list_sha256`` of the last applied extract in the run log (``None``: none yet)."""
        from airflow_provider_smspartner.sql.list_checks import last_applied_run

        assert self.sql_conn_id is not None and self.table is not None
        last = last_applied_run(self.sql_conn_id, self.table, self.run_log_table or DEFAULT_RUN_LOG_TABLE)
        return None if last is None else last.list_sha256

    # ------------------------------------------------------------------------------- decisions
    async def _decided(self, look: _Look) -> TriggerEvent | None:
        """The event ``look`` calls for, if any; an error here (a bug) is logged, never raised, so
        the watcher keeps polling."""
        try:
            event = await self._decide(look)
        except Exception as exc:
            self._failed("unexpected", exc)
            return None
        self._recovered()
        return event

    async def _decide(self, look: _Look) -> TriggerEvent | None:
        if self.warehouse_mode:
            return self._decide_for_warehouse(look)
        return await self._decide_for_list(look)

    def _decide_for_warehouse(self, look: _Look) -> TriggerEvent | None:
        if look.list_sha256 == look.warehouse_list_sha256:
            if self._remembered is not None:
                self.log.info(
                    "Table %s holds the live list again (list_sha256 %s): quiet until the list changes",
                    self.table,
                    look.list_sha256,
                )
            self._remembered, self._fired_at, self._refires = None, None, 0
            return None
        if look.list_sha256 != self._remembered or self._fired_at is None:
            self.log.info(
                "Table %s is stale: the list has %d stops, list_sha256 %s; the last applied extract "
                "recorded %s. Firing an event.",
                self.table,
                look.rows_in_list,
                look.list_sha256,
                look.warehouse_list_sha256 or "nothing yet",
            )
            return self._event(look)
        wait = self._refire_wait()
        if self._monotonic() - self._fired_at < wait:
            return None
        self.log.warning(
            "Table %s is still stale %g s after the event for list_sha256 %s (did its extract fail? "
            "see the run log %s): firing it again; the next one, if still stale, after %g s",
            self.table,
            wait,
            look.list_sha256,
            self.run_log,
            min(wait * 2, self.max_refire_after),
        )
        return self._event(look)

    def _refire_wait(self) -> float:
        return min(self.refire_after * 2.0**self._refires, self.max_refire_after)

    async def _decide_for_list(self, look: _Look) -> TriggerEvent | None:
        previous = self._remembered
        if previous is None:
            previous = await self._stored_state()
        if previous is None:
            self.log.info(
                "Baseline: the list has %d stops, list_sha256 %s; the next change fires an event",
                look.rows_in_list,
                look.list_sha256,
            )
            self._remembered = look.list_sha256
            await self._store_state(look.list_sha256)
            return None
        self._remembered = previous
        if look.list_sha256 == previous:
            return None
        self.log.info(
            "The list changed: %d stops, list_sha256 %s (was %s). Firing an event.",
            look.rows_in_list,
            look.list_sha256,
            previous,
        )
        return self._event(look)

    def _event(self, look: _Look) -> TriggerEvent:
        payload: dict[str, Any] = {
            "list_sha256": look.list_sha256,
            "rows_in_list": look.rows_in_list,
            "checked_at": look.checked_at,
        }
        if self.warehouse_mode:
            payload["warehouse_list_sha256"] = look.warehouse_list_sha256
        return TriggerEvent(payload)

    async def _remember(self, payload: dict[str, Any]) -> None:
        """What a fired event changes: the state fired for (and the back-off in warehouse mode)."""
        fired = payload["list_sha256"]
        if self.warehouse_mode:
            self._refires = self._refires + 1 if fired == self._remembered else 0
            self._fired_at = self._monotonic()
            self._remembered = fired
            return
        self._remembered = fired
        await self._store_state(fired)

    # ----------------------------------------------------------------------- asset state store
    @property
    def _state_key(self) -> str:
        return f"{self.state_key_prefix}:{self.smspartner_conn_id}"

    def _state_store(self) -> Any | None:
        # Set by the triggerer on watcher triggers from Airflow 3.3; 3.2 has no such attribute.
        store = getattr(self, "asset_state_store", None)
        return store if self._state_store_usable else None

    async def _stored_state(self) -> str | None:
        store = self._state_store()
        if store is None:
            return None
        try:
            value = await store.aget(self._state_key)
        except Exception as exc:
            self._state_store_failed(exc)
            return None
        return value if isinstance(value, str) and value else None

    async def _store_state(self, list_sha256: str) -> None:
        store = self._state_store()
        if store is None:
            return
        try:
            await store.aset(self._state_key, list_sha256)
        except Exception as exc:
            self._state_store_failed(exc)

    def _state_store_failed(self, exc: Exception) -> None:
        # E.g. one trigger watching several Assets: the store then needs an Asset to be named.
        self._state_store_usable = False
        self.log.warning(
            "The Asset state store cannot be used (%s: %s): the list's state is kept in memory only, "
            "so after a triggerer restart the first poll is a baseline again",
            type(exc).__name__,
            redact(str(exc)),
        )

    # -------------------------------------------------------------------------------- failures
    def _failed(self, kind: str, exc: BaseException) -> None:
        """Log a failed poll, once per kind until a poll succeeds; never an event."""
        count = self._failing.get(kind, 0) + 1
        self._failing[kind] = count
        if count > 1:
            self.log.debug("Poll failed again (%s, %d in a row): %s", kind, count, redact(str(exc)))
            return
        self.log.log(
            logging.ERROR if kind in _NEEDS_A_HUMAN else logging.WARNING,
            "SMS Partner stop-list poll failed: %s (%s: %s). No event; tried again every %g s, "
            "logged once until a poll succeeds",
            FAILURE_KINDS[kind],
            type(exc).__name__,
            redact(str(exc)),
            self.poll_interval,
            exc_info=kind == "unexpected",
        )

    def _recovered(self) -> None:
        if self._failing:
            failed = ", ".join(f"{kind} x{count}" for kind, count in self._failing.items())
            self.log.info("SMS Partner stop-list polls succeed again after failed polls (%s)", failed)
            self._failing = {}


async def _in_thread(function: Callable[[], T]) -> T:
    """Run ``function`` in a worker thread. ``sync_to_async`` rather than ``asyncio.to_thread``:
    the connection lookups inside (``BaseHook.get_connection``) talk to the triggerer's supervisor,
    which Airflow 3.2 reaches with asgiref's ``async_to_sync``; that finds the triggerer's event
    loop from a thread ``sync_to_async`` started (3.3 works from any thread)."""
    from asgiref.sync import sync_to_async

    return await sync_to_async(function, thread_sensitive=False)()


def _release_arrow_memory() -> None:
    """Hand the list's Arrow buffers back to the system between polls (the pool keeps them)."""
    try:
        import pyarrow as pa

        pa.default_memory_pool().release_unused()
    except Exception:  # only an optimisation
        pass
