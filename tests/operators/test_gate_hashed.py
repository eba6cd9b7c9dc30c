"""Keyed-hash mode of the campaign gate (``hash_key_conn_id``), against the sandbox and real SQLite,
PostgreSQL and MariaDB: it keeps exactly the rows clear mode keeps, matches by ``phone_hash``, and
writes no number of the list in clear (the excluded ``stopped`` rows keep only ``phone_hash``,
``reason`` and ``excluded_columns``)."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from airflow.exceptions import AirflowException

from airflow_provider_smspartner.exceptions import SmsPartnerConfigError, StopListGuardError
from airflow_provider_smspartner.operators.smspartner import SmsPartnerSuppressAudienceOperator
from airflow_provider_smspartner.phone_numbers import hash_phone_numbers
from airflow_provider_smspartner.suppression.matching import hash_keys
from tests.helpers import CONTEXT, drop_table, national, oracle_e164, read_results, serve_list_rows
from tests.operators.test_suppress_audience import COUNT_KEYS, audience_frame, expected_outcomes
from tests.transfers.test_hashed_extract import _text_columns

KEY = "g" * 16 + "0123456789abcdefXYZ"
CREATED = "2026-01-05 10:00:00"


def _hmac(e164: str, key: str = KEY) -> str:
    return hmac.new(key.encode(), e164.encode(), hashlib.sha256).hexdigest()


@pytest.fixture
def hash_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(
        "AIRFLOW_CONN_GATE_KEY",
        json.dumps({"conn_type": "generic", "password": KEY, "extra": {"key_id": "gate-k1"}}),
    )
    return "gate_key"


@pytest.fixture
def tables(warehouse_conn: str) -> Iterator[tuple[str, dict[str, str]]]:
    suffix = uuid.uuid4().hex[:8]
    names = {
        kind: f"hg_{kind}_{suffix}" for kind in ("kept", "excluded", "audit", "kept2", "excluded2", "audit2")
    }
    yield warehouse_conn, names
    for name in names.values():
        drop_table(warehouse_conn, name)


def _gate(**kwargs: Any) -> SmsPartnerSuppressAudienceOperator:
    return SmsPartnerSuppressAudienceOperator(task_id="suppress", **kwargs)


def _forms(e164: str) -> list[str]:
    """The forms a French number could leak in: E.164, without the plus, national (grouped or
    not), the national significant number."""
    return [e164, e164[1:], "0" + e164[3:], national(e164), e164[3:]]


def _leaks(text: str, numbers: set[str]) -> list[str]:
    return [form for number in sorted(numbers) for form in _forms(number) if form in text]


# ------------------------------------------------------------------------------------ same rows
class TestHashedKeepsWhatClearKeeps:
    def test_kept_and_excluded_rows_match_clear_mode(self, api, tables, hash_key):
        conn_id, names = tables
        frame, _later = audience_frame(api)
        live = api.state.phone_numbers()
        outcomes = expected_outcomes(frame["phone"].tolist(), live)
        common = {"phone_numbers": frame, "phone_column": "phone", "output_conn_id": conn_id, "chunk_size": 7}
        clear = _gate(
            output_table=names["kept"], excluded_table=names["excluded"], audit_table=names["audit"], **common
        ).execute(context=CONTEXT)
        hashed = _gate(
            output_table=names["kept2"],
            excluded_table=names["excluded2"],
            audit_table=names["audit2"],
            hash_key_conn_id=hash_key,
            excluded_columns=["customer_id"],
            **common,
        ).execute(context=CONTEXT)
        assert {k: hashed[k] for k in COUNT_KEYS} == {k: clear[k] for k in COUNT_KEYS}
        assert hashed["stopped"] >= 5 and hashed["kept"] >= 5

        kept_clear = read_results(conn_id, names["kept"]).sort_values("customer_id")
        kept = read_results(conn_id, names["kept2"]).sort_values("customer_id")
        assert list(kept.columns) == ["customer_id", "phone", "segment", "phone_hash"]
        assert kept["customer_id"].tolist() == kept_clear["customer_id"].tolist()
        assert kept["customer_id"].tolist() == [i + 1 for i, o in enumerate(outcomes) if o == "kept"]
        # The kept audience is the user's own data: its columns stay as they were.
        assert kept["phone"].tolist() == kept_clear["phone"].tolist()
        assert kept["phone_hash"].tolist() == [_hmac(e164) for e164 in kept_clear["phone_e164"]]

        excluded_clear = read_results(conn_id, names["excluded"]).sort_values("customer_id")
        excluded = read_results(conn_id, names["excluded2"])
        assert list(excluded.columns) == ["customer_id", "phone", "segment", "phone_hash", "reason"]
        reasons = dict(zip(excluded_clear["customer_id"], excluded_clear["reason"], strict=True))
        assert dict(zip(excluded["customer_id"], excluded["reason"], strict=True)) == reasons
        stopped = excluded[excluded["reason"] == "stopped"]
        assert stopped["phone"].isna().all() and stopped["segment"].isna().all()
        stopped_clear = excluded_clear[excluded_clear["reason"] == "stopped"]
        assert sorted(stopped["phone_hash"]) == sorted(_hmac(e164) for e164 in stopped_clear["phone_e164"])
        others = excluded[excluded["reason"] != "stopped"].sort_values("customer_id")
        others_clear = excluded_clear[excluded_clear["reason"] != "stopped"]
        assert others["phone"].tolist() == others_clear["phone"].tolist()  # not people on the list

        # Every column of every table the hashed run wrote: no number of the list in clear.
        written = _text_columns(conn_id, [names["kept2"], names["excluded2"], names["audit2"]])
        assert _leaks(written, live) == []

        (audit_clear,) = read_results(conn_id, names["audit"]).to_dict("records")
        (audit,) = read_results(conn_id, names["audit2"]).to_dict("records")
        same = (*COUNT_KEYS, "rows_in_list", "matched", "unreadable", "list_sha256", "status")
        assert {k: audit[k] for k in same} == {k: audit_clear[k] for k in same}

    def test_given_hashes_match_like_numbers(self, api, tmp_path, hash_key):
        frame, _later = audience_frame(api)
        live = api.state.phone_numbers()
        outcomes = expected_outcomes(frame["phone"].tolist(), live)
        hashes = hash_phone_numbers(frame["phone"].tolist(), KEY)["phone_hash"]
        # Made elsewhere: upper case, padded; a hash under another key matches nothing.
        given = [
            (f" {h.upper()} " if i % 3 == 0 else h) if isinstance(h, str) else None
            for i, h in enumerate(hashes.astype(object).where(hashes.notna(), None))
        ]
        audience = pd.DataFrame({"id": frame["customer_id"], "h": given})
        audience.loc[len(audience)] = [999, "not a hash"]
        audience.loc[len(audience)] = [1000, _hmac("+33611112222", "x" * 40)]
        out = tmp_path / "safe.parquet"
        summary = _gate(
            phone_numbers=audience,
            phone_hash_column="h",
            hash_key_conn_id=hash_key,
            output_path=str(out),
            excluded_path=str(tmp_path / "out.csv"),
        ).execute(context=CONTEXT)
        kept = pd.read_parquet(out)
        expected = [i + 1 for i, o in enumerate(outcomes) if o == "kept"] + [1000]
        assert kept["id"].tolist() == expected
        assert list(kept.columns) == ["id", "h", "phone_hash"]
        assert kept["phone_hash"].str.fullmatch("[0-9a-f]{64}").all()
        assert summary["invalid"] == outcomes.count("invalid") + 1
        assert summary["stopped"] == outcomes.count("stopped")
        excluded = pd.read_csv(tmp_path / "out.csv", dtype=str)
        assert excluded.loc[excluded["reason"] == "stopped", ["id", "h"]].isna().all().all()

    def test_hash_keys_are_the_first_63_bits(self):
        hashes = pd.Series([_hmac("+33612345678"), None, "f" * 64, "0" * 64])
        keys = hash_keys(hashes)
        assert keys.dtype == np.int64
        assert keys.tolist() == [int(hashes[0][:16], 16) >> 1, -1, (2**64 - 1) >> 1, 0]


# ------------------------------------------------------------------------------------ nothing in clear
class TestNothingInClear:
    def test_sqlite_bytes_files_and_logs(self, api, sqlite_conn, tmp_path, hash_key, caplog):
        frame, _later = audience_frame(api)
        live = api.state.phone_numbers()
        caplog.set_level(logging.INFO)
        kwargs = {"phone_numbers": frame, "phone_column": "phone", "hash_key_conn_id": hash_key}
        _gate(
            output_table="kept",
            excluded_table="excluded",
            audit_table="audit",
            output_conn_id=sqlite_conn,
            **kwargs,
        ).execute(context=CONTEXT)
        _gate(
            output_path=str(tmp_path / "safe.csv"), excluded_path=str(tmp_path / "out.parquet"), **kwargs
        ).execute(context=CONTEXT)
        assert len(read_results(sqlite_conn, "excluded")) > 5
        database = Path(json.loads(os.environ["AIRFLOW_CONN_WAREHOUSE_SQLITE"])["host"])
        raw = b"".join(path.read_bytes() for path in database.parent.glob(database.name + "*"))
        assert _leaks(raw.decode("latin-1"), live) == []
        for name in ("safe.csv", "out.parquet"):
            assert _leaks((tmp_path / name).read_bytes().decode("latin-1"), live) == []
        assert [p.name for p in tmp_path.iterdir() if "smspartner-tmp" in p.name] == []
        assert _leaks(caplog.text, live) == []

    def test_check_mode_quotes_hash_prefixes(self, api, hash_key, caplog):
        listed = sorted(api.state.phone_numbers())
        caplog.set_level(logging.INFO)
        with pytest.raises(AirflowException, match=r"are on the SMS Partner stop list") as failed:
            _gate(
                phone_numbers=[national(listed[0]), listed[1], "+33699887766"],
                mode="check",
                hash_key_conn_id=hash_key,
            ).execute(context=CONTEXT)
        message = str(failed.value)
        assert f"phone_hash {_hmac(listed[0])[:12]}" in message
        assert _leaks(message + caplog.text, set(listed)) == []
        assert "•" not in message


# ------------------------------------------------------------------------------------ refusals
class TestRefusals:
    def test_a_short_key_fails_before_any_call(self, api, sqlite_conn, tmp_path, monkeypatch):
        monkeypatch.setenv(
            "AIRFLOW_CONN_SHORT_KEY", json.dumps({"conn_type": "generic", "password": "x" * 31})
        )
        with pytest.raises(SmsPartnerConfigError, match=r"'short_key'.*at least 32 characters"):
            _gate(
                phone_numbers=["+33611111111"],
                output_path=str(tmp_path / "safe.csv"),
                audit_table="audit",
                audit_conn_id=sqlite_conn,
                hash_key_conn_id="short_key",
            ).execute(context=CONTEXT)
        assert api.stats.count() == 0
        assert not (tmp_path / "safe.csv").exists()
        assert not Path(tmp_path / "warehouse.db").exists()

    def test_the_phone_column_cannot_be_kept_in_stopped_rows(self, api, tmp_path, hash_key):
        with pytest.raises(ValueError, match=r"excluded_columns names the phone column 'phone'"):
            _gate(
                phone_numbers=[{"phone": "+33611111111", "id": 1}],
                phone_column="phone",
                output_path=str(tmp_path / "safe.csv"),
                excluded_path=str(tmp_path / "out.csv"),
                hash_key_conn_id=hash_key,
                excluded_columns=["id", "phone"],
            ).execute(context=CONTEXT)
        assert api.stats.count() == 0

    def test_excluded_columns_must_exist(self, api, tmp_path, hash_key):
        with pytest.raises(ValueError, match=r"\['city'\] are not columns of the audience"):
            _gate(
                phone_numbers=[{"phone": "+33611111111", "id": 1}],
                phone_column="phone",
                output_path=str(tmp_path / "safe.csv"),
                hash_key_conn_id=hash_key,
                excluded_columns=["city"],
            ).execute(context=CONTEXT)
        assert api.stats.count() == 0

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"phone_hash_column": "h"}, r"phone_hash_column applies to keyed-hash mode only"),
            ({"excluded_columns": ["id"]}, r"excluded_columns applies to keyed-hash mode only"),
            (
                {"hash_key_conn_id": "k", "phone_hash_column": "h", "phone_column": "p"},
                r"not both",
            ),
            ({"hash_key_conn_id": "k", "excluded_columns": "id"}, r"must be a list of column names"),
        ],
    )
    def test_arguments(self, tmp_path, kwargs, message):
        with pytest.raises(ValueError, match=message):
            _gate(phone_numbers=["+33611111111"], output_path=str(tmp_path / "safe.csv"), **kwargs)

    def test_an_unreadable_list_row_follows_the_gate_rule(self, monkeypatch, api, tmp_path, hash_key):
        serve_list_rows(monkeypatch, api, [(1, "+33612345678", CREATED), (42, "+33699999999#", CREATED)])
        kwargs = {"phone_numbers": ["+33699999999", "+33611111111"], "hash_key_conn_id": hash_key}
        with pytest.raises(StopListGuardError, match=r"stop ids 42"):
            _gate(output_path=str(tmp_path / "a.csv"), **kwargs).execute(context=CONTEXT)
        summary = _gate(output_path=str(tmp_path / "b.csv"), on_unreadable_list_row="warn", **kwargs).execute(
            context=CONTEXT
        )
        assert (summary["stopped"], summary["kept"], summary["unreadable"]) == (1, 1, 1)
        kept = pd.read_csv(tmp_path / "b.csv", dtype=str)
        assert kept["phone_hash"].tolist() == [_hmac(oracle_e164("+33611111111"))]
