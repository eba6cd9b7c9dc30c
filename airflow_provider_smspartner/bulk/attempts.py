"""Which calls of a bulk run may have been applied although no answer said so.

The hook retries connection errors, timeouts, 5xx and untrustworthy bodies. Each of those may
come after the API applied the request (the answer, not the request, was lost), so a later
``code 3`` ("already in the list") or ``code 4`` ("id not found") may be this run's own earlier
attempt, and a call that fails after its retries may have landed. This module notes, per worker
thread, the first such failure among the attempts of the call in progress, so the pipeline can
tell "already there" from "added by us, answer lost".
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from airflow_provider_smspartner.exceptions import SmsPartnerRateLimitError
from airflow_provider_smspartner.hooks.smspartner import is_retryable


def is_ambiguous(exc: BaseException) -> bool:
    """Whether ``exc`` leaves it open whether the API applied the request: every error the hook
    retries (dropped connections and timeouts, 5xx, bodies that cannot be trusted) except a 429,
    which says the request was refused."""
    return is_retryable(exc) and not isinstance(exc, SmsPartnerRateLimitError)


class AttemptJournal:
    """Per thread, the first ambiguous failure among the attempts of the current call.

    Call :meth:`start` before each call; read :attr:`ambiguous` after it.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    def start(self) -> None:
        """Forget the previous call of this thread."""
        self._local.ambiguous = None

    def note(self, exc: BaseException) -> None:
        """Record a failed attempt of this thread's call (only ambiguous ones are kept)."""
        if is_ambiguous(exc) and getattr(self._local, "ambiguous", None) is None:
            self._local.ambiguous = exc

    @property
    def ambiguous(self) -> BaseException | None:
        """The first ambiguous failure of this thread's current call, if any."""
        return getattr(self._local, "ambiguous", None)


@contextmanager
def journal_attempts(hook: Any) -> Iterator[AttemptJournal]:
    """Note every failed attempt of ``hook``'s requests in a journal while the block runs.

    ``SmsPartnerHook`` sends each attempt through ``_send_once`` (its retry loop looks the method
    up on the instance), so wrapping that method on this one instance sees every attempt, the
    retried ones included, without changing the hook for anyone else. A hook without it (a test
    double) gets a journal that never notes anything.
    """
    journal = AttemptJournal()
    send_once: Callable[..., Any] | None = getattr(hook, "_send_once", None)
    if not callable(send_once) or "_send_once" in vars(hook):
        yield journal
        return

    def tracked(*args: Any, **kwargs: Any) -> Any:
        try:
            return send_once(*args, **kwargs)
        except Exception as exc:
            journal.note(exc)
            raise

    vars(hook)["_send_once"] = tracked
    try:
        yield journal
    finally:
        vars(hook).pop("_send_once", None)
