"""Operators for the SMS Partner stop list: extract it, and bulk add or remove numbers."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseOperator

from airflow_provider_smspartner.hooks.smspartner import SmsPartnerHook

if TYPE_CHECKING:
    import pandas as pd
    from airflow.sdk import Context, ObjectStoragePath

OUTPUT_FORMATS = ("parquet", "csv")


def to_storage_path(path: str) -> ObjectStoragePath:
    """A local path or any ObjectStoragePath URI (``file://``, ``s3://``...) as an ``ObjectStoragePath``."""
    from airflow.sdk import ObjectStoragePath

    if "://" in path:
        return ObjectStoragePath(path)
    return ObjectStoragePath(Path(path).expanduser().resolve().as_uri())


class SmsPartnerStopListOperator(BaseOperator):
    """Fetch the SMS Partner stop list.

    Without ``output_path`` the task returns the list as a DataFrame (XCom; columns ``stop_id``,
    ``phone_number``, ``phone_e164``, ``created_at`` in UTC). Large lists belong in a file: with
    ``output_path`` it writes Parquet (default) or CSV there and returns the path.

    :param smspartner_conn_id: The ``smspartner`` connection. (templated)
    :param output_path: Local path or ObjectStoragePath URI (``file://``, ``s3://``...). (templated)
    :param output_format: ``parquet`` or ``csv``. (templated)
    """

    template_fields: Sequence[str] = ("smspartner_conn_id", "output_path", "output_format")
    ui_color = "#e8f4fd"

    def __init__(
        self,
        *,
        smspartner_conn_id: str = SmsPartnerHook.default_conn_name,
        output_path: str | None = None,
        output_format: str = "parquet",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.smspartner_conn_id = smspartner_conn_id
        self.output_path = output_path
        self.output_format = output_format

    def execute(self, context: Context) -> pd.DataFrame | str:
        if self.output_path and self.output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format must be one of {OUTPUT_FORMATS}; got {self.output_format!r}.")
        frame = SmsPartnerHook(smspartner_conn_id=self.smspartner_conn_id).get_stop_list_df()
        self.log.info("Fetched %d stops from SMS Partner", len(frame))
        if not self.output_path:
            return frame
        target = to_storage_path(self.output_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as handle:
            if self.output_format == "parquet":
                frame.to_parquet(handle, index=False)
            else:
                frame.to_csv(handle, index=False, date_format="%Y-%m-%dT%H:%M:%SZ")
        self.log.info("Wrote %d stops to %s (%s)", len(frame), target, self.output_format)
        return str(target)
