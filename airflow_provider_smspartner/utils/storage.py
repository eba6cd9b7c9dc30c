"""Files the operators read and write: local paths and ObjectStoragePath URIs, by extension."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from airflow.sdk import ObjectStoragePath

FileFormat = Literal["csv", "parquet"]


def to_storage_path(path: str) -> ObjectStoragePath:
    """A local path or any ObjectStoragePath URI (``file://``, ``s3://``...) as an ``ObjectStoragePath``."""
    from airflow.sdk import ObjectStoragePath

    if "://" in path:
        return ObjectStoragePath(path)
    return ObjectStoragePath(Path(path).expanduser().resolve().as_uri())


def file_format(path: str, argument: str = "source_path") -> FileFormat:
    """``"csv"`` or ``"parquet"`` from the file name.

    :param argument: The operator argument that holds ``path``, named in the error.
    :raises ValueError: for any other extension.
    """
    name = path.lower().rstrip("/")
    if name.endswith((".parquet", ".pq")):
        return "parquet"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    raise ValueError(
        f"{argument} {path!r} must end with .csv, .csv.gz, .parquet or .pq (the format is taken from "
        "the extension)."
    )
