"""Retries and 429 pauses of one hook, logged as summaries rather than one warning per request."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

from airflow_provider_smspartner.exceptions import (
    SmsPartnerConnectionError,
    SmsPartnerRateLimitError,
    SmsPartnerResponseError,
    SmsPartnerServerError,
)

#: How each retried error is counted in the summaries. Which errors are retried is the hook's rule
#: (``hooks.smspartner.is_retryable``); an error not named here is counted as "other".
KIND_LABELS: tuple[tuple[type[Exception], str], ...] = (
    (SmsPartnerRateLimitError, "HTTP 429"),
    (SmsPartnerServerError, "HTTP 5xx"),
    (SmsPartnerConnectionError, "connection/timeout"),
    (SmsPartnerResponseError, "untrusted answer"),
)


class RetrySummaryLog:
    """Retries and 429 pauses of one hook (one task), logged as summaries.

    The first retry is logged at once, with its error; after that, at most one line every
    ``every`` seconds gives the counts per kind since the previous line, the latest error, and
    how long requests waited in the throttle (checked at each retry and each request). Whatever
    is left is logged by ``flush`` (the hook's ``close``). A bulk run meeting thousands of 429s
    thus logs a line every few seconds, not one warning per request.
    """

    every = 5.0

    def __init__(self, conn_id: str) -> None:
        self.conn_id = conn_id
        self._lock = threading.Lock()
        self._retries: Counter[str] = Counter()
        self._pauses = 0
        self._requests = 0
        self._waited = 0.0
        self._latest = ""
        self._last_line: float | None = None

    def request(self, log: Any, waited: float) -> None:
        """Count a request and the seconds it ``waited`` in the throttle; log a due summary."""
        with self._lock:
            self._requests += 1
            self._waited += waited
            due = bool(self._retries or self._pauses) and (
                self._last_line is None or time.monotonic() - self._last_line >= self.every
            )
        if due:  # retries have stopped: say so now rather than at close()
            self.flush(log, force=False)

    def pause(self) -> None:
        """Count a pause ordered by a 429's ``Retry-After``."""
        with self._lock:
            self._pauses += 1

    def retry(
        self, log: Any, exc: BaseException | None, attempt: int, max_retries: int, delay: float
    ) -> None:
        """Count a retry (``attempt`` of ``max_retries``, after ``delay`` s) caused by ``exc``."""
        kind = next((name for cls, name in KIND_LABELS if isinstance(exc, cls)), "other")
        with self._lock:
            now = time.monotonic()
            if self._last_line is None:
                # The first one is worth its own line: it may be all there is.
                self._last_line = now
                first = True
            else:
                first = False
                self._retries[kind] += 1
                self._latest = str(exc)
        if first:
            log.warning(
                "SMS Partner %r: %s; retry %d of %d in %.2f s (further retries are summarised every %g s)",
                self.conn_id,
                exc,
                attempt,
                max_retries,
                delay,
                self.every,
            )
        else:
            self.flush(log, force=False)

    def flush(self, log: Any, force: bool = True) -> None:
        """Log the counts gathered since the last line (when ``every`` seconds passed, or ``force``)."""
        with self._lock:
            now = time.monotonic()
            if not (self._retries or self._pauses) or (
                not force and self._last_line is not None and now - self._last_line < self.every
            ):
                return
            since = now - self._last_line if self._last_line is not None else 0.0
            retries, pauses, latest = self._retries, self._pauses, self._latest
            requests, waited = self._requests, self._waited
            self._retries, self._pauses, self._requests, self._waited = Counter(), 0, 0, 0.0
            self._last_line = now
        kinds = ", ".join(f"{kind}: {count:,}" for kind, count in retries.most_common())
        parts = [f"{sum(retries.values()):,} retries ({kinds or 'none'})"]
        if pauses:
            parts.append(f"{pauses:,} Retry-After pauses")
        parts.append(f"throttle: {requests:,} requests waited {waited:.1f} s in all")
        log.warning(
            "SMS Partner %r, last %.1f s: %s; latest error: %s",
            self.conn_id,
            since,
            "; ".join(parts),
            latest or "none",
        )
