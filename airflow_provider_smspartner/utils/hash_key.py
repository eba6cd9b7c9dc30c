"""The secret of keyed-hash mode (``hash_key_conn_id``): read, checked, masked and named.

The key is the password of an Airflow connection of any type; ``phone_hash`` is HMAC-SHA256 under
its UTF-8 bytes (``phone_numbers.hash_phone_numbers``). The connection's extra ``key_id``
(optional) names the key, so a table can record which key its hashes were made with and a key can
be rotated; without it the name is :func:`key_fingerprint`.

Called from ``execute`` (never at DAG parse time), before any API call, so a bad key stops a task
before it has read or changed anything.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field

from airflow.sdk import BaseHook
from airflow.sdk.exceptions import AirflowNotFoundException
from airflow.sdk.log import mask_secret

from airflow_provider_smspartner.exceptions import SmsPartnerConfigError
from airflow_provider_smspartner.utils.redaction import register_secret

#: Shortest accepted key, in characters: 32 random characters hold well over 128 bits, so hashed
#: phone numbers (a small space: about 10**9 mobile numbers per country) cannot be enumerated
#: without the key.
MIN_KEY_LENGTH = 32
#: The message of the fingerprint's HMAC: a fixed label, not a phone number, so the fingerprint is
#: never the ``phone_hash`` of anything.
FINGERPRINT_LABEL = b"smspartner-key-id"
#: Hex digits of the fingerprint kept: 48 bits, enough to tell the keys of one deployment apart.
FINGERPRINT_LENGTH = 12
#: A ``key_id``: 1 to 64 printable ASCII characters, no leading or trailing space (it is stored
#: next to every hash and shown in logs).
_KEY_ID = re.compile(r"[!-~](?:[ -~]{0,62}[!-~])?")


@dataclass(frozen=True)
class HashKey:
    """The hash key of one connection. ``key`` is excluded from the repr.

    :param key: The secret's UTF-8 bytes (the HMAC key).
    :param key_id: The connection's extra ``key_id``, or the key's :func:`key_fingerprint`.
    :param conn_id: The connection it was read from.
    """

    key: bytes = field(repr=False)
    key_id: str
    conn_id: str


def key_fingerprint(key: str | bytes) -> str:
    """A short name for ``key`` that does not reveal it.

    The first 12 hex digits of HMAC-SHA256(key, ``b"smspartner-key-id"``): an output of the key
    used as a MAC key, from which the key cannot be recovered, and which lets a guessed key be
    tested only as fast as HMAC runs (hopeless for a key of 32 random characters). A plain
    ``sha256(key)`` would do as well for long random keys; the HMAC keeps the fingerprint apart
    from any other hash of the key by construction.

    :param key: The secret; ``str`` is taken as its UTF-8 bytes.
    :return: 12 lowercase hex digits.
    """
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    return hmac.new(raw, FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:FINGERPRINT_LENGTH]


def resolve_hash_key(conn_id: str) -> HashKey:
    """Read the hash key from the connection ``conn_id`` and check it.

    The password is registered with Airflow's secret masker and the provider's redaction before it
    is checked, so it never shows in a task log, even when refused.

    :param conn_id: The ``hash_key_conn_id`` of an operator: any connection type; the password is
        the key; the extra ``key_id`` (optional) names it.
    :return: the key, its id (``key_id``, else :func:`key_fingerprint`) and ``conn_id``.
    :raises SmsPartnerConfigError: the connection does not exist; its password is missing, shorter
        than ``MIN_KEY_LENGTH`` characters, starts or ends with whitespace, or does not encode as
        UTF-8; or its ``key_id`` is not 1 to 64 printable ASCII characters, or contains the key.
        The message names the connection and the rule, never the key.
    """
    where = f"Connection {conn_id!r} (hash_key_conn_id)"
    try:
        conn = BaseHook.get_connection(conn_id)
    except AirflowNotFoundException:
        raise SmsPartnerConfigError(f"{where} is not a defined Airflow connection.") from None
    password = conn.password or ""
    if password:
        mask_secret(password)
    try:
        key = password.encode("utf-8")
    except UnicodeEncodeError:
        raise SmsPartnerConfigError(
            f"{where}: the hash key (the password) does not encode as UTF-8."
        ) from None
    # The other forms of the key (escaped, percent-encoded), as the hook registers its API key.
    for form in register_secret(password):
        mask_secret(form)
    if len(password) < MIN_KEY_LENGTH:
        raise SmsPartnerConfigError(
            f"{where}: the hash key is the connection's password and must be at least "
            f"{MIN_KEY_LENGTH} characters long; {'it is shorter' if password else 'it is empty'}."
        )
    if password != password.strip():
        # The key is used byte for byte: a stray newline from a secrets file would silently give
        # hashes that match nothing computed elsewhere with the intended key.
        raise SmsPartnerConfigError(
            f"{where}: the hash key (the password) starts or ends with whitespace; remove it, "
            "the key is used exactly as stored."
        )
    key_id = (conn.extra_dejson or {}).get("key_id")
    if key_id is None or key_id == "":
        return HashKey(key=key, key_id=key_fingerprint(key), conn_id=conn_id)
    if isinstance(key_id, str) and password in key_id:
        raise SmsPartnerConfigError(
            f"{where}: extra 'key_id' contains the hash key; it names the key and is stored next to "
            "every hash, so it must not reveal it."
        )
    if not isinstance(key_id, str) or not _KEY_ID.fullmatch(key_id):
        raise SmsPartnerConfigError(
            f"{where}: extra 'key_id' must be 1 to 64 printable ASCII characters without leading or "
            f"trailing spaces, got {key_id!r}."
        )
    return HashKey(key=key, key_id=key_id, conn_id=conn_id)
