"""Keeps API keys out of log records and error messages.

SMS Partner takes the API key in the query string of GET requests and in the JSON body of POST
requests, so any library that logs or formats a URL (urllib3 at DEBUG, ``requests`` exception
messages) or a body would print it, and not always as typed: a key holding ``+ / = & % # ?``, a
space or a non-ASCII letter shows up percent-encoded in a URL and escaped in JSON. Every such form
of a registered key is redacted. Airflow's masker covers task logs (the hook registers the same
forms with it); this filter also covers plain Python logging and the messages we build.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from urllib.parse import quote, quote_plus

REDACTED = "***"
#: Like Airflow's masker, shorter values are not redacted: replacing every "k" of a message would
#: garble it while protecting nothing (real SMS Partner keys are tens of characters long).
MIN_SECRET_LENGTH = 5

_secrets: set[str] = set()
#: The registered forms, longest first, so a long form is never cut by a shorter one it contains.
_ordered: tuple[str, ...] = ()
_lock = threading.Lock()
_installed = False

#: Loggers of the HTTP stack that format request URLs.
_HTTP_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry", "requests")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def secret_forms(secret: str) -> set[str]:
    """Every form in which ``secret`` can appear in a URL, a JSON body or a Python repr.

    The raw text; percent-encoded as ``quote`` (path, ``/`` kept or not) and ``quote_plus`` (query
    string, what ``requests`` sends) write it, with upper- and lower-case hex digits; JSON-escaped
    (ASCII-only, as ``requests`` sends a body, and UTF-8); and escaped as ``repr`` writes it.
    """
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        quote_plus(secret, safe="/"),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
    }
    forms |= {_PERCENT_ESCAPE.sub(lambda m: m.group().lower(), form) for form in forms}
    return {form for form in forms if form}


def redact(text: str) -> str:
    """Return ``text`` with every form of every registered secret replaced by ``***``."""
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactSecretsFilter(logging.Filter):
    """Rewrites a record's message with the registered secrets removed (it never drops a record)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if _ordered:
            message = record.getMessage()
            cleaned = redact(message)
            if cleaned != message:
                record.msg, record.args = cleaned, ()
        return True


def register_secret(secret: str) -> set[str]:
    """Remember ``secret`` (in all its forms) for redaction and make sure the HTTP loggers are filtered.

    :return: The forms registered (empty for a secret shorter than ``MIN_SECRET_LENGTH``), so the
        caller can hand the same forms to Airflow's masker.
    """
    global _installed, _ordered
    forms = secret_forms(secret) if len(secret) >= MIN_SECRET_LENGTH else set()
    with _lock:
        if forms - _secrets:
            _secrets.update(forms)
            _ordered = tuple(sorted(_secrets, key=len, reverse=True))
        if not _installed:
            log_filter = RedactSecretsFilter()
            for name in _HTTP_LOGGERS:
                logging.getLogger(name).addFilter(log_filter)
            _installed = True
    return forms
