"""Keeps API keys out of log records and error messages.

SMS Partner takes the API key in the query string of GET requests and in the JSON body of POST
requests, so any library that logs or formats a URL (urllib3 at DEBUG, ``requests`` exception
messages) or a body would print it, and not always as typed: a key holding ``+ / = & % # ?``, a
space or a non-ASCII letter shows up percent-encoded in a URL and escaped in JSON. A server that
echoes the key in an error may also encode it its own way: JSON with ``\\/`` or ``\\uXXXX`` for any
character, HTML entities (named, decimal, hex), percent-encoded twice or three times, or several of
these in layers. ``redact`` replaces the common forms (``secret_forms``) directly, then looks for the
key in the decoded views of the text and redacts the span it came from. Airflow's masker covers
task logs (the hook registers the same forms with it); this filter also covers plain Python logging
and the messages we build.
"""

from __future__ import annotations

import codecs
import html
import json
import logging
import re
import threading
from bisect import bisect_right
from collections.abc import Callable, Iterator
from typing import NamedTuple
from urllib.parse import quote, quote_plus

REDACTED = "***"
#: Like Airflow's masker, shorter values are not redacted: replacing every "k" of a message would
#: garble it while protecting nothing (real SMS Partner keys are tens of characters long).
MIN_SECRET_LENGTH = 5

_secrets: set[str] = set()
#: The registered forms, longest first, so a long form is never cut by a shorter one it contains.
_ordered: tuple[str, ...] = ()
#: The registered secrets themselves, folded (see ``_fold``), looked for in the decoded views.
_keys: tuple[str, ...] = ()
_lock = threading.Lock()
_installed = False

#: Loggers of the HTTP stack that format request URLs.
_HTTP_LOGGERS = ("urllib3.connectionpool", "urllib3.connection", "urllib3.util.retry", "requests")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-F]{2}")


def secret_forms(secret: str) -> set[str]:
    """The common forms in which ``secret`` appears in a URL, a JSON body, an HTML page or a repr.

    The raw text; percent-encoded as ``quote`` (path, ``/`` kept or not) and ``quote_plus`` (query
    string, what ``requests`` sends) write it, once and twice, with upper- and lower-case hex
    digits; JSON-escaped (ASCII-only, as ``requests`` sends a body, and UTF-8, and with ``\\/`` as
    PHP writes it); HTML-escaped; and escaped as ``repr`` writes it. These are what Airflow's
    masker, which cannot decode, gets; ``redact`` also finds every other encoding.
    """
    json_ascii = json.dumps(secret)[1:-1]
    forms = {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        quote_plus(secret, safe="/"),
        quote(quote(secret, safe=""), safe=""),
        quote_plus(quote_plus(secret)),
        json_ascii,
        json_ascii.replace("/", "\\/"),
        json.dumps(secret, ensure_ascii=False)[1:-1],
        html.escape(secret),
        html.escape(secret, quote=False),
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
    }
    forms |= {_PERCENT_ESCAPE.sub(lambda m: m.group().lower(), form) for form in forms}
    return {form for form in forms if form}


def redact(text: str) -> str:
    """Return ``text`` with every registered secret replaced by ``***``, in whatever encoding.

    The forms of ``secret_forms`` are replaced first (cheap); a text that still holds an escape
    character (``\\``, ``&`` or ``%``) is then decoded (see ``_redact_encoded``).
    """
    for secret in _ordered:
        if secret in text:
            text = text.replace(secret, REDACTED)
    if _keys and ("%" in text or "&" in text or "\\" in text):
        text = _redact_encoded(text)
    return text


# --------------------------------------------------------------------------- decoded views
#: Layers of encoding undone, e.g. percent-encoded three times, then JSON-escaped, then HTML-escaped.
_MAX_DEPTH = 6
#: Distinct decoded views of one text looked at; a text that has more is withheld whole.
_MAX_VIEWS = 256

_JSON_ESCAPE = re.compile(
    r"\\(?:u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}|u[0-9a-fA-F]{4}"
    r"|U[0-9a-fA-F]{8}|x[0-9a-fA-F]{2}|[\"'\\/bfnrt])"
)
_JSON_SIMPLE = {"b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
#: html.unescape's own pattern: each match unescaped alone gives what unescaping the whole text gives.
_HTML_REFERENCE = re.compile(r"&(#[0-9]+;?|#[xX][0-9a-fA-F]+;?|[^\t\n\f <&#;]{1,32};?)")
_PERCENT_RUN = re.compile(r"(?:%[0-9a-fA-F]{2})+")

#: A decoded piece of a view: (start, end) in the view it was decoded from, and its text.
_Piece = tuple[int, int, str]


class _View(NamedTuple):
    """A text decoded from ``source`` (``None`` for the original), with where each piece came from."""

    text: str
    starts: list[int]
    #: (start, end) in ``text`` and (start, end) in ``source.text`` of each decoded piece.
    pieces: list[tuple[int, int, int, int]]
    source: _View | None

    def locate(self, start: int, end: int) -> tuple[int, int]:
        """The span of ``source.text`` that ``text[start:end]`` (not empty) was decoded from."""
        return self._position(start, is_end=False), self._position(end - 1, is_end=True)

    def _position(self, at: int, is_end: bool) -> int:
        index = bisect_right(self.starts, at) - 1
        if index < 0:
            return at + is_end
        _, end, source_start, source_end = self.pieces[index]
        if at < end:  # inside a decoded piece: the whole escape it came from
            return source_end if is_end else source_start
        return at - end + source_end + is_end


def _json_pieces(text: str) -> Iterator[_Piece]:
    for match in _JSON_ESCAPE.finditer(text):
        escape = match.group()
        kind = escape[1]
        if len(escape) == 12:  # a surrogate pair
            high, low = int(escape[2:6], 16), int(escape[8:], 16)
            char = chr(0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00))
        elif kind in "uUx":
            code = int(escape[2:], 16)
            if code > 0x10FFFF:
                continue
            char = chr(code)
        else:
            char = _JSON_SIMPLE.get(kind, kind)
        yield match.start(), match.end(), char


def _html_pieces(text: str) -> Iterator[_Piece]:
    for match in _HTML_REFERENCE.finditer(text):
        reference = match.group()
        unescaped = html.unescape(reference)
        if unescaped != reference:
            yield match.start(), match.end(), unescaped


def _percent_pieces(text: str) -> Iterator[_Piece]:
    # Byte by byte, so that each character maps back to its own escapes (UTF-8 takes up to four).
    for run in _PERCENT_RUN.finditer(text):
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        start = run.start()
        for at in range(run.start(), run.end(), 3):
            chars = decoder.decode(bytes((int(text[at + 1 : at + 3], 16),)))
            if chars:
                yield start, at + 3, chars
                start = at + 3
        chars = decoder.decode(b"", final=True)
        if chars:
            yield start, run.end(), chars


#: Each decoder, with the character without which it has nothing to decode.
_DECODERS: tuple[tuple[str, Callable[[str], Iterator[_Piece]]], ...] = (
    ("\\", _json_pieces),
    ("&", _html_pieces),
    ("%", _percent_pieces),
)


def _decode(view: _View, decoded: Iterator[_Piece]) -> _View | None:
    parts: list[str] = []
    starts: list[int] = []
    pieces: list[tuple[int, int, int, int]] = []
    length = last = 0
    for start, end, chars in decoded:
        parts.append(view.text[last:start])
        length += start - last
        starts.append(length)
        pieces.append((length, length + len(chars), start, end))
        parts.append(chars)
        length += len(chars)
        last = end
    if not pieces:
        return None
    parts.append(view.text[last:])
    return _View("".join(parts), starts, pieces, view)


def _fold(text: str) -> str:
    # A form-encoded "+" is a space: compare with both as spaces (length and positions unchanged).
    return text.replace("+", " ")


def _redact_encoded(text: str) -> str:
    """Redact the secrets that only a decoded view of ``text`` shows.

    Every decoder is applied to every view, layer after layer, so encodings stacked in any order
    are undone (and a key that merely looks encoded, like ``%41...``, is still found in the view
    that leaves it alone). Where a view holds a secret, the span of ``text`` it was decoded from is
    replaced; a decoded escape maps back whole, so a cut never leaves part of it behind.
    """
    spans: list[tuple[int, int]] = []
    seen = {text}
    layer = [_View(text, [], [], None)]
    for _ in range(_MAX_DEPTH):
        decoded_layer = []
        for view in layer:
            for trigger, pieces in _DECODERS:
                if trigger not in view.text:
                    continue
                decoded = _decode(view, pieces(view.text))
                if decoded is None or decoded.text in seen:
                    continue
                if len(seen) >= _MAX_VIEWS:
                    return REDACTED  # too many ways to read it to check them all: withhold it
                seen.add(decoded.text)
                decoded_layer.append(decoded)
                spans.extend(_secret_spans(decoded))
        layer = decoded_layer
    return _replace_spans(text, spans)


def _secret_spans(view: _View) -> Iterator[tuple[int, int]]:
    """The spans of the original text that each occurrence of a secret in ``view`` came from."""
    folded = _fold(view.text)
    for key in _keys:
        at = folded.find(key)
        while at != -1:
            start, end, source = at, at + len(key), view
            while source.source is not None:
                start, end = source.locate(start, end)
                source = source.source
            yield start, end
            at = folded.find(key, at + 1)


def _replace_spans(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    parts: list[str] = []
    last = 0
    for start, end in sorted(spans):
        if start >= last:
            parts += [text[last:start], REDACTED]
        last = max(last, end)
    parts.append(text[last:])
    return "".join(parts)


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
    global _installed, _keys, _ordered
    forms = secret_forms(secret) if len(secret) >= MIN_SECRET_LENGTH else set()
    with _lock:
        if forms - _secrets:
            _secrets.update(forms)
            _ordered = tuple(sorted(_secrets, key=len, reverse=True))
            _keys = tuple(dict.fromkeys((*_keys, _fold(secret))))
        if not _installed:
            log_filter = RedactSecretsFilter()
            for name in _HTTP_LOGGERS:
                logging.getLogger(name).addFilter(log_filter)
            _installed = True
    return forms
