"""Tests of utils.hash_key: the keyed-hash secret read from an Airflow connection."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging

import pytest

from airflow_provider_smspartner.exceptions import SmsPartnerConfigError
from airflow_provider_smspartner.utils.hash_key import (
    FINGERPRINT_LABEL,
    MIN_KEY_LENGTH,
    HashKey,
    key_fingerprint,
    resolve_hash_key,
)
from airflow_provider_smspartner.utils.redaction import redact, secret_forms
from tests.helpers import use_connection

CONN_ID = "phone_hash_key"
KEY = "hash-key+with/special=chars&é-0123456789"


def hash_key_connection(password: str | None, conn_type: str = "generic", **extra: object) -> str:
    return json.dumps({"conn_type": conn_type, "password": password, "extra": extra})


@pytest.fixture
def masked(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What is handed to Airflow's secret masker."""
    seen: list[str] = []
    monkeypatch.setattr("airflow_provider_smspartner.utils.hash_key.mask_secret", seen.append)
    return seen


class TestResolveHashKey:
    @pytest.mark.parametrize("conn_type", ["generic", "smspartner", "postgres"])
    def test_any_connection_type_password_is_the_key(self, monkeypatch, masked, conn_type):
        use_connection(monkeypatch, hash_key_connection(KEY, conn_type), CONN_ID)
        hash_key = resolve_hash_key(CONN_ID)
        assert hash_key.key == KEY.encode("utf-8")
        assert hash_key.conn_id == CONN_ID

    def test_key_id_from_extra(self, monkeypatch, masked):
        use_connection(monkeypatch, hash_key_connection(KEY, key_id="crm-2026-q1"), CONN_ID)
        assert resolve_hash_key(CONN_ID).key_id == "crm-2026-q1"

    @pytest.mark.parametrize("extra", [{}, {"key_id": None}, {"key_id": ""}], ids=["absent", "null", "empty"])
    def test_key_id_defaults_to_the_fingerprint(self, monkeypatch, masked, extra):
        use_connection(monkeypatch, hash_key_connection(KEY, **extra), CONN_ID)
        assert resolve_hash_key(CONN_ID).key_id == key_fingerprint(KEY)

    @pytest.mark.parametrize(
        "password",
        ["k" * (MIN_KEY_LENGTH - 1), "short-secret-key", "é" * 20],
        ids=["31-chars", "16-chars", "20-non-ascii-chars-40-bytes"],
    )
    def test_short_key_refused_naming_connection_and_rule_not_key(self, monkeypatch, masked, password):
        use_connection(monkeypatch, hash_key_connection(password), CONN_ID)
        with pytest.raises(SmsPartnerConfigError, match="at least 32 characters") as excinfo:
            resolve_hash_key(CONN_ID)
        message = str(excinfo.value)
        assert repr(CONN_ID) in message
        assert "password" in message
        assert password not in message
        # Masked even though refused: it may still be printed by whoever reads the connection.
        assert password in masked

    @pytest.mark.parametrize("password", [None, ""], ids=["none", "empty"])
    def test_missing_key_refused(self, monkeypatch, masked, password):
        use_connection(monkeypatch, hash_key_connection(password), CONN_ID)
        with pytest.raises(SmsPartnerConfigError, match=rf"'{CONN_ID}'.*at least 32 characters.*empty"):
            resolve_hash_key(CONN_ID)

    def test_exactly_32_characters_accepted(self, monkeypatch, masked):
        use_connection(monkeypatch, hash_key_connection("k" * MIN_KEY_LENGTH), CONN_ID)
        assert resolve_hash_key(CONN_ID).key == b"k" * MIN_KEY_LENGTH

    @pytest.mark.parametrize("password", [KEY + "\n", " " + KEY, KEY + "\t"], ids=["newline", "space", "tab"])
    def test_surrounding_whitespace_refused(self, monkeypatch, masked, password):
        use_connection(monkeypatch, hash_key_connection(password), CONN_ID)
        with pytest.raises(SmsPartnerConfigError, match="whitespace") as excinfo:
            resolve_hash_key(CONN_ID)
        assert KEY not in str(excinfo.value)

    def test_unknown_connection_named(self):
        with pytest.raises(
            SmsPartnerConfigError, match=r"'no_such_hash_key' .*not a defined Airflow connection"
        ):
            resolve_hash_key("no_such_hash_key")

    @pytest.mark.parametrize(
        "key_id",
        ["x" * 65, "clé-2026", " padded", "tab\tinside", 2026, ["a"]],
        ids=["too-long", "non-ascii", "leading-space", "control", "number", "list"],
    )
    def test_bad_key_id_refused(self, monkeypatch, masked, key_id):
        use_connection(monkeypatch, hash_key_connection(KEY, key_id=key_id), CONN_ID)
        with pytest.raises(SmsPartnerConfigError, match=r"extra 'key_id' must be 1 to 64 printable ASCII"):
            resolve_hash_key(CONN_ID)

    def test_key_id_holding_the_key_refused_without_echo(self, monkeypatch, masked):
        key = "k" * 40
        use_connection(monkeypatch, hash_key_connection(key, key_id=f"id-{key}"), CONN_ID)
        with pytest.raises(SmsPartnerConfigError, match="contains the hash key") as excinfo:
            resolve_hash_key(CONN_ID)
        assert key not in str(excinfo.value)

    def test_repr_hides_the_key(self, monkeypatch, masked):
        use_connection(monkeypatch, hash_key_connection(KEY, key_id="crm"), CONN_ID)
        hash_key = resolve_hash_key(CONN_ID)
        text = f"{hash_key!r} {hash_key!s}"
        assert "0123456789" not in text
        assert repr(hash_key) == f"HashKey(key_id='crm', conn_id='{CONN_ID}')"


class TestMasking:
    def test_every_form_is_registered_with_airflows_masker(self, monkeypatch, masked):
        use_connection(monkeypatch, hash_key_connection(KEY), CONN_ID)
        resolve_hash_key(CONN_ID)
        assert KEY in masked
        assert secret_forms(KEY) <= set(masked)

    def test_key_redacted_from_messages_and_http_logs(self, monkeypatch, masked, caplog):
        key = "another-hash-key-never-in-logs-0123456789"
        use_connection(monkeypatch, hash_key_connection(key), CONN_ID)
        resolve_hash_key(CONN_ID)
        assert key not in redact(f"hashing with {key} and {json.dumps(key)}")
        with caplog.at_level(logging.DEBUG, logger="urllib3.connectionpool"):
            logging.getLogger("urllib3.connectionpool").debug("GET /x?key=%s", key)
        assert key not in caplog.text

    def test_airflows_masker_hides_the_key(self, monkeypatch):
        # The real masker this time (no stand-in): what the task log handler applies.
        try:
            from airflow.sdk.log import _secrets_masker
        except ImportError:  # Airflow 3.2 keeps it in the SDK's shared copy of the masker
            from airflow.sdk._shared.secrets_masker import _secrets_masker  # type: ignore[no-redef]

        key = "real-masker-hash-key-0123456789abcdef"
        use_connection(monkeypatch, hash_key_connection(key), CONN_ID)
        resolve_hash_key(CONN_ID)
        assert key not in str(_secrets_masker().redact(f"phone_hash computed with {key}"))


class TestKeyFingerprint:
    def test_definition(self):
        expected = hmac.new(KEY.encode(), FINGERPRINT_LABEL, hashlib.sha256).hexdigest()[:12]
        assert key_fingerprint(KEY) == expected

    def test_short_hex_deterministic_str_and_bytes_alike(self):
        fingerprint = key_fingerprint(KEY)
        assert len(fingerprint) == 12
        assert all(c in "0123456789abcdef" for c in fingerprint)
        assert key_fingerprint(KEY) == fingerprint == key_fingerprint(KEY.encode("utf-8"))

    def test_differs_per_key(self):
        keys = [KEY, KEY + "x", KEY[:-1], KEY.upper(), "k" * 32, "k" * 33]
        assert len({key_fingerprint(key) for key in keys}) == len(keys)

    @pytest.mark.parametrize("key", [KEY, "0123456789abcdef" * 4, "a" * 32])
    def test_does_not_reveal_the_key(self, key):
        fingerprint = key_fingerprint(key)
        raw = key.encode()
        assert fingerprint not in key and key not in fingerprint
        # Not any plain encoding of the key either.
        assert fingerprint not in raw.hex() and fingerprint not in hashlib.sha256(raw).hexdigest()

    def test_is_not_a_phone_hash(self):
        # The label is not an E.164 text: no phone number hashes to a key's fingerprint.
        assert not FINGERPRINT_LABEL.startswith(b"+")


def test_hash_key_dataclass_is_frozen():
    hash_key = HashKey(key=b"k" * 32, key_id="id", conn_id="c")
    with pytest.raises(AttributeError):
        hash_key.key = b"other"  # type: ignore[misc]
