"""Tests of SmsPartnerSuppressAudienceOperator over the sandbox (real loopback HTTP) and real databases.

The expected outcome of every audience row is computed here, independently of the provider's
normaliser: ``phonenumbers.parse`` + ``is_valid_number`` + ``format_number(E164)`` per value, and
the live list as the sandbox holds it.
"""

from __future__ import annotations

import logging
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from airflow.exceptions import AirflowException

from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook
from airflow_provider_smspartner.operators.smspartner import SmsPartnerSuppressAudienceOperator
from airflow_provider_smspartner.sql.dbapi import resolve_dbapi_hook
from airflow_provider_smspartner.suppression import engine, matching
from airflow_provider_smspartner.utils.stop_list import list_sha256
from tests.conftest import TEST_API_KEY
from tests.helpers import (
    CONTEXT,
    drop_table,
    live_sha256,
    national,
    new_numbers,
    oracle_e164,
    read_results,
    ti_context,
)

COUNT_KEYS = ("audience", "valid", "invalid", "duplicate", "stopped", "kept")
SAME_NUMBER = ["06 12 34 56 78", "+33612345678", "0033612345678", "06.12.34.56.78", 33612345678]
OTHER_REGIONS = [
    "+49 151 12345678",
    "+1 650 253 0000",
    "+32 470 12 34 56",
    "+41 79 123 45 67",
    "07-61-23-45-67",
]
JUNK = ["abc", "", None, "123", "+999123456789", "06 12", float("nan")]


# ------------------------------------------------------------------------------------ the oracle
def expected_outcomes(values: list[Any], live: set[str]) -> list[str]:
    """One outcome per row: ``invalid``, ``stopped``, ``duplicate`` or ``kept`` (first row wins)."""
    seen: set[str] = set()
    outcomes = []
    for value in values:
        e164 = oracle_e164(value)
        if e164 is None:
            outcomes.append("invalid")
        elif e164 in live:
            outcomes.append("stopped")
        elif e164 in seen:
            outcomes.append("duplicate")
        else:
            seen.add(e164)
            outcomes.append("kept")
    return outcomes


def expected_counts(outcomes: list[str]) -> dict[str, int]:
    tally = Counter(outcomes)
    counts = {key: tally.get(key, 0) for key in ("invalid", "duplicate", "stopped", "kept")}
    return {"audience": len(outcomes), "valid": len(outcomes) - counts["invalid"], **counts}


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture
def tables(warehouse_conn: str) -> Iterator[tuple[str, dict[str, str]]]:
    """``(conn_id, {"kept", "excluded", "audit", "source"})``: fresh table names, dropped after."""
    suffix = uuid.uuid4().hex[:8]
    names = {kind: f"aud_{kind}_{suffix}" for kind in ("kept", "excluded", "audit", "source")}
    yield warehouse_conn, names
    for name in names.values():
        drop_table(warehouse_conn, name)


def audience_frame(api: Any) -> tuple[pd.DataFrame, list[str]]:
    """A messy audience (formats, regions, junk, repeats, listed numbers) and 2 numbers of it
    that are not on the list yet (added through the API during the test)."""
    listed = sorted(api.state.phone_numbers())[:5]
    fresh = new_numbers(8, api)
    later = fresh[:2]
    phones: list[Any] = [
        *SAME_NUMBER,
        *OTHER_REGIONS,
        listed[0],
        national(listed[1]),
        "0033" + listed[2][3:],
        int(listed[3][1:]),
        listed[4].replace("+33", "+33 (0)"),
        *JUNK,
        national(later[0]),
        later[1],
        *fresh[2:],
        national(fresh[3]),  # a repeat of a kept number
        listed[0],  # a repeat of a stopped number
        later[0],  # a repeat of a number that joins the list later
    ]
    frame = pd.DataFrame(
        {
            "customer_id": range(1, len(phones) + 1),
            "phone": pd.Series(phones, dtype=object),
            "segment": [f"s{i % 3}" for i in range(len(phones))],
        }
    )
    return frame, later


def join_the_list_after_the_first_extract(api: Any, numbers: list[str]) -> str:
    """Extract the list (as a first task would), then add ``numbers`` through the API; return
    the first extract's ``list_sha256``."""
    hook = SmsPartnerHook()
    first = hook.get_stop_list_df()
    assert not set(numbers) & set(first["phone_e164"])
    for number in numbers:
        assert hook.add_stop(number).status == "added"
    hook.close()
    assert set(numbers) <= api.state.phone_numbers()
    return list_sha256(first["stop_id"].to_numpy(), first["phone_number"])


def _suppress(**kwargs: Any) -> SmsPartnerSuppressAudienceOperator:
    return SmsPartnerSuppressAudienceOperator(task_id="suppress", **kwargs)


# ------------------------------------------------------------------------------------ filter mode
class TestFilterToTables:
    def test_kept_rows_are_the_audience_minus_the_live_list(self, api, tables):
        conn_id, names = tables
        frame, later = audience_frame(api)
        first_sha = join_the_list_after_the_first_extract(api, later)
        live = api.state.phone_numbers()
        outcomes = expected_outcomes(frame["phone"].tolist(), live)

        summary = _suppress(
            phone_numbers=frame,
            phone_column="phone",
            output_table=names["kept"],
            excluded_table=names["excluded"],
            audit_table=names["audit"],
            output_conn_id=conn_id,
            chunk_size=7,
        ).execute(context=ti_context(2, map_index=3, task_id="suppress"))

        counts = expected_counts(outcomes)
        listed = {"rows_in_list": len(live), "matched": len(live), "unreadable": 0}
        assert summary == {**counts, **listed, "output": names["kept"]}
        assert summary["audience"] == sum(summary[k] for k in ("kept", "invalid", "duplicate", "stopped"))
        assert counts["stopped"] >= 5 and counts["duplicate"] >= 5 and counts["invalid"] == len(JUNK)

        kept = read_results(conn_id, names["kept"]).sort_values("customer_id")
        assert list(kept.columns) == ["customer_id", "phone", "segment", "phone_e164"]
        expected_ids = [i + 1 for i, outcome in enumerate(outcomes) if outcome == "kept"]
        assert kept["customer_id"].tolist() == expected_ids
        expected_kept = {oracle_e164(v) for v, o in zip(frame["phone"], outcomes, strict=True) if o == "kept"}
        audience_numbers = {oracle_e164(v) for v in frame["phone"]} - {None}
        assert set(kept["phone_e164"]) == expected_kept == audience_numbers - live
        assert not set(kept["phone_e164"]) & set(later)  # joined after the first extract: still out
        assert kept["phone_e164"].is_unique
        segments = dict(zip(frame["customer_id"], frame["segment"], strict=True))
        assert all(segments[c] == s for c, s in zip(kept["customer_id"], kept["segment"], strict=True))

        excluded = read_results(conn_id, names["excluded"]).sort_values("customer_id")
        assert list(excluded.columns) == ["customer_id", "phone", "segment", "phone_e164", "reason"]
        expected_reasons = {i + 1: o for i, o in enumerate(outcomes) if o != "kept"}
        assert dict(zip(excluded["customer_id"], excluded["reason"], strict=True)) == expected_reasons
        stopped = excluded[excluded["reason"] == "stopped"]
        assert set(stopped["phone_e164"]) <= live and set(later) <= set(stopped["phone_e164"])

        (audit,) = read_results(conn_id, names["audit"]).to_dict("records")
        assert {k: audit[k] for k in ("dag_id", "run_id", "task_id", "map_index", "try_number")} == {
            "dag_id": "bulk_dag",
            "run_id": "manual__2026-01-01",
            "task_id": "suppress",
            "map_index": 3,
            "try_number": 2,
        }
        assert audit["mode"] == "filter" and audit["output"] == names["kept"]
        assert audit["status"] == "accepted" and audit["reason"] is None
        assert {k: int(audit[k]) for k in listed} == listed
        assert audit["list_sha256"] == live_sha256(api) != first_sha
        assert {k: int(audit[k]) for k in COUNT_KEYS} == counts
        assert pd.to_datetime(audit["checked_at"], utc=True) <= pd.Timestamp.now(tz="UTC")

    def test_the_table_holds_exactly_this_runs_audience(self, api, tables):
        conn_id, names = tables
        first = new_numbers(4, api)
        kwargs = {"output_table": names["kept"], "output_conn_id": conn_id, "audit_table": names["audit"]}
        _suppress(phone_numbers=first, **kwargs).execute(context=CONTEXT)
        SmsPartnerHook().add_stop(first[0])
        summary = _suppress(phone_numbers=first[:3], **kwargs).execute(context=CONTEXT)
        assert (summary["kept"], summary["stopped"]) == (2, 1)
        kept = read_results(conn_id, names["kept"])
        assert sorted(kept["phone_e164"]) == sorted(first[1:3])
        assert list(kept.columns) == ["phone_number", "phone_e164"]
        assert len(read_results(conn_id, names["audit"])) == 2  # appended


class TestStreaming:
    def test_sql_source_larger_than_a_chunk(self, api, tables, monkeypatch):
        conn_id, names = tables
        hook = resolve_dbapi_hook(conn_id)
        listed = sorted(api.state.phone_numbers())
        fresh = new_numbers(1200, api)
        phones = [national(n) if i % 2 else n for i, n in enumerate(fresh)] + fresh[:100] + listed + ["junk"]
        hook.run(f"CREATE TABLE {names['source']} (customer_id INTEGER, phone VARCHAR(40), city VARCHAR(20))")
        rows = [(i, phone, f"city{i % 7}") for i, phone in enumerate(phones)]
        hook.insert_rows(names["source"], rows, commit_every=500)

        sizes: list[int] = []
        classify = engine.classify

        def counting(values, *args, **kwargs):
            sizes.append(len(values))
            return classify(values, *args, **kwargs)

        monkeypatch.setattr(engine, "classify", counting)
        summary = _suppress(
            sql=f"SELECT customer_id, phone, city FROM {names['source']} ORDER BY customer_id",
            sql_conn_id=conn_id,
            phone_column="phone",
            output_table=names["kept"],  # the source's database: output_conn_id defaults to sql_conn_id
            chunk_size=500,
        ).execute(context=CONTEXT)

        assert sizes == [500, 500, len(phones) - 1000]
        outcomes = expected_outcomes(phones, api.state.phone_numbers())
        assert {k: summary[k] for k in COUNT_KEYS} == expected_counts(outcomes)
        assert (summary["kept"], summary["duplicate"], summary["stopped"]) == (1200, 100, len(listed))
        kept = read_results(conn_id, names["kept"])
        assert set(kept["phone_e164"]) == set(fresh)
        assert list(kept.columns) == ["customer_id", "phone", "city", "phone_e164"]
        assert sorted(kept["customer_id"]) == list(range(1200))

    @pytest.mark.parametrize("name", ["audience.parquet", "audience.csv", "audience.csv.gz"])
    def test_file_source_larger_than_a_chunk(self, api, tmp_path, monkeypatch, name):
        listed = sorted(api.state.phone_numbers())
        fresh = new_numbers(900, api)
        phones = ["0" + n[3:] for n in fresh] + listed + fresh[:50] + ["", "nope"]
        frame = pd.DataFrame({"id": range(len(phones)), "mobile": phones, "zip": ["01000"] * len(phones)})
        path = tmp_path / name
        if name.endswith(".parquet"):
            frame.to_parquet(path, index=False)
        else:
            frame.to_csv(path, index=False)
        sizes: list[int] = []
        classify = engine.classify
        monkeypatch.setattr(
            engine,
            "classify",
            lambda values, *a, **k: sizes.append(len(values)) or classify(values, *a, **k),
        )
        out = tmp_path / "out" / "safe.parquet"
        summary = _suppress(
            source_path=str(path), phone_column="mobile", output_path=str(out), chunk_size=400
        ).execute(context=CONTEXT)
        assert len(sizes) == 3 and max(sizes) == 400 and sum(sizes) == len(phones)
        assert (summary["kept"], summary["stopped"], summary["duplicate"], summary["invalid"]) == (
            900,
            len(listed),
            50,
            2,
        )
        kept = pd.read_parquet(out)
        assert set(kept["phone_e164"]) == set(fresh)
        assert kept["zip"].eq("01000").all()  # every column kept; CSV cells as text (leading zero)
        assert kept["id"].astype(int).tolist() == list(range(900))


class TestFileOutputs:
    @pytest.mark.parametrize("output_format", ["parquet", "csv"])
    def test_kept_and_excluded_files(self, api, tmp_path, output_format):
        frame, later = audience_frame(api)
        join_the_list_after_the_first_extract(api, later)
        outcomes = expected_outcomes(frame["phone"].tolist(), api.state.phone_numbers())
        kept_path = tmp_path / "out" / f"safe.{output_format}"
        excluded_path = tmp_path / "out" / f"excluded.{output_format}"
        summary = _suppress(
            phone_numbers=frame.to_dict("records"),  # a list of dicts, as from an upstream task
            phone_column="phone",
            output_path=kept_path.as_uri(),
            excluded_path=str(excluded_path),
            chunk_size=10,
        ).execute(context=CONTEXT)
        assert {k: summary[k] for k in COUNT_KEYS} == expected_counts(outcomes)
        assert summary["output"].endswith(f"out/safe.{output_format}")

        def read(path: Path) -> pd.DataFrame:
            if output_format == "parquet":
                return pd.read_parquet(path)
            return pd.read_csv(path, dtype=str, keep_default_na=False)

        kept, excluded = read(kept_path), read(excluded_path)
        assert list(kept.columns) == ["customer_id", "phone", "segment", "phone_e164"]
        assert kept["customer_id"].astype(int).tolist() == [
            i + 1 for i, o in enumerate(outcomes) if o == "kept"
        ]
        assert (
            set(kept["phone_e164"])
            == {oracle_e164(v) for v in frame["phone"]} - {None} - api.state.phone_numbers()
        )
        assert list(excluded.columns) == ["customer_id", "phone", "segment", "phone_e164", "reason"]
        assert dict(zip(excluded["customer_id"].astype(int), excluded["reason"], strict=True)) == {
            i + 1: o for i, o in enumerate(outcomes) if o != "kept"
        }
        # The phone column as given: a number given as an int comes back as its digits.
        assert "33612345678" in set(excluded["phone"].astype(str))

    def test_output_format_overrides_the_extension(self, api, tmp_path):
        out = tmp_path / "safe.data"
        _suppress(phone_numbers=["0612345678"], output_path=str(out), output_format="csv").execute(
            context=CONTEXT
        )
        assert out.read_text().splitlines() == ["phone_number,phone_e164", "0612345678,+33612345678"]

    def test_empty_audience_writes_the_columns(self, api, tmp_path):
        out = tmp_path / "safe.parquet"
        summary = _suppress(
            phone_numbers=pd.DataFrame(
                {"id": pd.Series([], dtype="int64"), "phone": pd.Series([], dtype=object)}
            ),
            phone_column="phone",
            output_path=str(out),
        ).execute(context=CONTEXT)
        rows = len(api.state.phone_numbers())
        listed = {"rows_in_list": rows, "matched": rows, "unreadable": 0}
        assert summary == {**dict.fromkeys(COUNT_KEYS, 0), **listed, "output": out.as_uri()}
        assert list(pd.read_parquet(out).columns) == ["id", "phone", "phone_e164"]


# ------------------------------------------------------------------------------------ check mode
class TestCheckMode:
    def test_fails_with_masked_examples_after_writing_the_audit_row(self, api, sqlite_conn):
        frame, later = audience_frame(api)
        join_the_list_after_the_first_extract(api, later)
        live = api.state.phone_numbers()
        outcomes = expected_outcomes(frame["phone"].tolist(), live)
        with pytest.raises(AirflowException) as failure:
            _suppress(
                phone_numbers=frame,
                phone_column="phone",
                mode="check",
                audit_table="suppression_audit",
                audit_conn_id=sqlite_conn,
            ).execute(context=CONTEXT)
        message = str(failure.value)
        counts = expected_counts(outcomes)
        assert f"{counts['stopped']} of {counts['audience']} audience rows" in message
        stopped = [oracle_e164(v) for v, o in zip(frame["phone"], outcomes, strict=True) if o == "stopped"]
        first_five = list(dict.fromkeys(stopped))[:5]
        for number in first_five:
            assert f"+33 {number[3]}\u2022\u2022 \u2022\u2022 {number[-4:-2]} {number[-2:]}" in message
        for number in live:
            assert number not in message and number[3:] not in message
        assert message.count("\u2022\u2022 \u2022\u2022") == 5

        (audit,) = read_results(sqlite_conn, "suppression_audit").to_dict("records")
        assert audit["mode"] == "check" and audit["output"] is None
        assert {k: int(audit[k]) for k in COUNT_KEYS} == counts
        assert audit["list_sha256"] == live_sha256(api) and audit["rows_in_list"] == len(live)

    def test_passes_a_clean_audience(self, api):
        fresh = new_numbers(3, api)
        summary = _suppress(phone_numbers=[*fresh, "junk", fresh[0]], mode="check").execute(context=CONTEXT)
        assert summary == {
            "audience": 5,
            "valid": 4,
            "invalid": 1,
            "duplicate": 1,
            "stopped": 0,
            "kept": 3,
            "rows_in_list": len(api.state.phone_numbers()),
            "matched": len(api.state.phone_numbers()),
            "unreadable": 0,
            "output": None,
        }

    def test_a_number_that_joined_the_list_during_the_run_fails_the_check(self, api):
        fresh = new_numbers(3, api)
        op = _suppress(phone_numbers=fresh, mode="check")
        assert op.execute(context=CONTEXT)["stopped"] == 0
        SmsPartnerHook().add_stop(fresh[1])
        with pytest.raises(AirflowException, match=r"1 of 3 audience rows \(1 distinct"):
            op.execute(context=CONTEXT)


@pytest.mark.parametrize(
    ("number", "masked"),
    [
        ("+33612345678", "+33 6\u2022\u2022 \u2022\u2022 56 78"),
        ("+4915112345678", "+49 1\u2022\u2022 \u2022\u2022 \u2022\u2022 56 78"),
        ("+16502530000", "+1 6\u2022 \u2022\u2022 \u2022\u2022 00 00"),
    ],
)
def test_mask_phone_number(number, masked):
    assert matching.mask_phone_number(number) == masked


# ------------------------------------------------------------------------------------ arguments
class TestArguments:
    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"output_path": "x.parquet"}, "got none"),
            (
                {"phone_numbers": ["x"], "sql": "SELECT 1", "sql_conn_id": "db", "output_path": "x.csv"},
                "got phone_numbers and sql",
            ),
            ({"phone_numbers": ["x"]}, "exactly one of output_table or output_path .got neither"),
            (
                {"phone_numbers": ["x"], "output_path": "x.csv", "output_table": "t", "output_conn_id": "db"},
                "got both",
            ),
            (
                {"phone_numbers": ["x"], "mode": "check", "output_path": "x.csv"},
                "mode='check' writes no output",
            ),
            ({"phone_numbers": ["x"], "mode": "check", "excluded_path": "x.csv"}, "excluded_path is set"),
            ({"phone_numbers": ["x"], "mode": "audit"}, "mode must be one of filter, check"),
            ({"phone_numbers": ["x"], "output_table": "t"}, "needs a database"),
            (
                {"phone_numbers": ["x"], "mode": "check", "audit_table": "t"},
                "audit_table 't' needs a database",
            ),
            ({"phone_numbers": ["x"], "output_path": "x.csv", "chunk_size": 0}, "chunk_size must be"),
            (
                {"phone_numbers": ["x"], "output_path": "x.csv", "output_format": "xlsx"},
                "output_format must be",
            ),
            (
                {
                    "phone_numbers": ["x"],
                    "output_path": "x.csv",
                    "excluded_path": "e.csv",
                    "excluded_table": "e",
                },
                "at most one of excluded_table or excluded_path",
            ),
        ],
    )
    def test_refused_at_parse_time(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            _suppress(**kwargs)

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"output_table": "bad name; DROP TABLE x"}, "Invalid table name"),
            ({"output_path": "out.xlsx"}, r"output_path 'out.xlsx' must end with"),
            ({"output_path": "out.csv", "excluded_path": "ex.txt"}, "excluded_path 'ex.txt' must end with"),
            ({"output_path": "out.csv", "audit_table": "a-b"}, "Invalid table name"),
            (
                {"output_path": "out.csv", "phone_column": "mobile"},
                r"'mobile' is not a column.*\['id', 'phone'\]",
            ),
            ({"output_path": "out.csv", "phone_column": None}, "set phone_column"),
        ],
    )
    def test_refused_before_any_api_call(self, api, sqlite_conn, tmp_path, monkeypatch, kwargs, match):
        monkeypatch.chdir(tmp_path)
        kwargs.setdefault("phone_column", "phone")
        audience = pd.DataFrame({"id": [1], "phone": ["0612345678"]})
        op = _suppress(phone_numbers=audience, output_conn_id=sqlite_conn, **kwargs)
        with pytest.raises(ValueError, match=match):
            op.execute(context=CONTEXT)
        assert api.stats.total == 0
        assert not list(tmp_path.iterdir())

    def test_unknown_column_of_a_query_before_any_api_call(self, api, sqlite_conn, tmp_path):
        hook = resolve_dbapi_hook(sqlite_conn)
        hook.run("CREATE TABLE contacts (id INTEGER, tel TEXT)")
        op = _suppress(
            sql="SELECT id, tel FROM contacts",
            sql_conn_id=sqlite_conn,
            phone_column="phone",
            output_path=str(tmp_path / "x.parquet"),
        )
        with pytest.raises(ValueError, match=r"'phone' is not a column.*\['id', 'tel'\]"):
            op.execute(context=CONTEXT)
        assert api.stats.total == 0

    def test_template_fields(self):
        assert {
            "phone_numbers",
            "sql",
            "sql_conn_id",
            "source_path",
            "phone_column",
            "default_region",
            "smspartner_conn_id",
            "output_table",
            "output_path",
            "excluded_table",
            "excluded_path",
            "audit_table",
        } <= set(SmsPartnerSuppressAudienceOperator.template_fields)


def test_the_api_key_never_reaches_the_logs_or_errors(api, sqlite_conn, caplog):
    caplog.set_level(logging.DEBUG)
    frame, later = audience_frame(api)
    join_the_list_after_the_first_extract(api, later)
    with pytest.raises(AirflowException) as failure:
        _suppress(
            phone_numbers=frame,
            phone_column="phone",
            mode="check",
            audit_table="audit",
            audit_conn_id=sqlite_conn,
        ).execute(context=CONTEXT)
    assert TEST_API_KEY not in str(failure.value)
    assert caplog.records
    assert not [r for r in caplog.records if TEST_API_KEY in r.getMessage()]


def test_a_failed_run_leaves_the_table_as_it_was(api, tables, monkeypatch):
    """A failure after the first chunks went to the writer (streamed on PostgreSQL and MariaDB,
    spilled on SQLite) rolls the table back to the previous run's audience."""
    conn_id, names = tables
    fresh = new_numbers(7, api)
    kwargs = {"output_table": names["kept"], "output_conn_id": conn_id, "chunk_size": 2}
    _suppress(phone_numbers=fresh[:2], **kwargs).execute(context=CONTEXT)
    classify = engine.classify
    calls = []

    def failing(values, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return classify(values, *args, **kwargs)

    monkeypatch.setattr(engine, "classify", failing)
    with pytest.raises(RuntimeError, match="boom"):
        _suppress(phone_numbers=fresh, **kwargs).execute(context=CONTEXT)
    assert sorted(read_results(conn_id, names["kept"])["phone_e164"]) == sorted(fresh[:2])
