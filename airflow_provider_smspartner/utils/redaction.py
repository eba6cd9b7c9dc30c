"""Keeps API keys out of log records and error messages.

SMS Partner takes the API key in the query string of GET requests, so any library that logs or
formats a URL (urllib3 at DEBUG, ``requests`` exception messages) would print it. Airflow's masker
covers task logs; this filter also covers plain Python logging and the messages we build.
"""

from __future__ import annotations

import logging
import threading

REDACTED = "***"
#: Like Airflow's masker, shorter values are not redacted: replacing every "k" of a message would
#: garble it while protecting nothing (real SMS Partner keys are tens of characters long).
MIN_SECRET_LENGTH = 5

_secrets: set[str] = set()
_lock = threading.Lock()
_installed = False

#: Loggers of the HTTP stack that format request URLs.
_HTTP_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry", "requests")


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret and secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactSecretsFilter(logging.Filter):
    """Rewrites a record's message with the registered secrets removed (it never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _secrets:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        return True


def register_secret(secret: str) -> None:
    """Remember ``secret`` for redaction and make sure the HTTP loggers are filtered."""
    global _installed
    with _lock:
        if len(secret) >= MIN_SECRET_LENGTH:
            _secrets.add(secret)
        if not _installed:
            log_filter = RedactSecretsFilter()
            for name in _HTTP_LOGGERS:
                logging.getLogger(name).addFilter(log_filter)
            _installed = True
