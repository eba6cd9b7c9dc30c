"""Tests of utils.storage: file formats by extension, and paths as ObjectStoragePath."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_provider_smspartner.utils.storage import file_format, to_storage_path


class TestFileFormat:
    @pytest.mark.parametrize(
        ("path", "kind"),
        [("a.csv", "csv"), ("s3://b/a.CSV.gz", "csv"), ("a.parquet", "parquet"), ("file:///a.pq", "parquet")],
        ids=["csv", "csv-gz-uri", "parquet", "pq-uri"],
    )
    def test_file_format(self, path, kind):
        assert file_format(path) == kind

    def test_file_format_refuses_unknown_extension(self):
        with pytest.raises(ValueError, match=r"must end with \.csv"):
            file_format("numbers.xlsx")

    def test_error_names_the_argument(self):
        with pytest.raises(ValueError, match=r"^output_path 'x.txt'"):
            file_format("x.txt", argument="output_path")


class TestToStoragePath:
    def test_local_path_becomes_an_absolute_file_uri(self, tmp_path, monkeypatch):
        monkeypatch.chdir(tmp_path)
        target = to_storage_path("out/stops.csv")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("x")
        assert (tmp_path / "out" / "stops.csv").read_text() == "x"
        assert str(target).startswith("file://")

    def test_uri_is_kept(self, tmp_path):
        uri = (tmp_path / "a.parquet").as_uri()
        assert Path(to_storage_path(uri).path) == tmp_path / "a.parquet"
