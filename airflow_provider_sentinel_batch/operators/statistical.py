"""Batch Statistical results as a table: :class:`SentinelBatchStatisticalTableOperator`.

Runs after the wait for DONE: reads the request's per-feature JSON files from the bucket (``results_conn_id``, an
S3 connection, or ``results_url``, a mirror), flattens them into one row per feature, interval, output and band,
writes CSV (and Parquet when pyarrow is installed), fails when too many features failed, and reports counts in
its return value and in OpenLineage. Import-light: the reader and the hook are imported when the task runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from airflow.providers.common.compat.sdk import BaseOperator

from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError, SentinelBatchJobError

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context

#: Failed features listed in the return value (the counts are always complete).
FAILED_LISTED = 100


class SentinelBatchStatisticalTableOperator(BaseOperator):
    """Turn a finished Batch Statistical request's per-feature JSON files into one CSV/Parquet table.

    :param request_id: the Batch Statistical request (templated; e.g. the create task's ``output``).
    :param table_path: where to write, without extension (templated): a local path or an fsspec URL;
        ``<table_path>.csv`` always, ``<table_path>.parquet`` too when pyarrow is installed (``parquet=True``
        requires it, ``False`` skips it). ``None`` writes nothing and only reports the counts.
    :param results_conn_id: Airflow connection with read access to the bucket (login = access key, password =
        secret key; extras ``endpoint_url``, ``region_name``); needs the ``s3`` extra.
    :param results_url: fsspec URL under which the bucket is mirrored (``s3://b/k`` → ``<results_url>/b/k``);
        when set (and not itself ``s3://``), ``results_conn_id`` is not used for reading.
    :param results_storage_options: extra fsspec options for reading.
    :param table_conn_id: connection whose keys write ``table_path`` when it is an ``s3://`` URL.
    :param max_failed_features: fail when more features than this failed.
    :param max_failed_fraction: fail when a larger share of the features failed (0.05 = 5 %).
    """

    template_fields: Sequence[str] = ("request_id", "table_path", "results_url", "sentinel_batch_conn_id")
    ui_color = "#d6ecc9"

    def __init__(
        self,
        *,
        request_id: str,
        table_path: str | None = None,
        sentinel_batch_conn_id: str = "sentinel_batch_default",
        results_conn_id: str | None = None,
        results_url: str | None = None,
        results_storage_options: Mapping[str, Any] | None = None,
        table_conn_id: str | None = None,
        max_failed_features: int | None = None,
        max_failed_fraction: float | None = None,
        parquet: bool | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if max_failed_fraction is not None and not 0 <= max_failed_fraction <= 1:
            raise SentinelBatchConfigError(
                f"max_failed_fraction must be within [0, 1], got {max_failed_fraction}"
            )
        if max_failed_features is not None and max_failed_features < 0:
            raise SentinelBatchConfigError(
                f"max_failed_features must not be negative, got {max_failed_features}"
            )
        self.request_id = request_id
        self.table_path = table_path
        self.sentinel_batch_conn_id = sentinel_batch_conn_id
        self.results_conn_id = results_conn_id
        self.results_url = results_url
        self.results_storage_options = dict(results_storage_options or {})
        self.table_conn_id = table_conn_id
        self.max_failed_features = max_failed_features
        self.max_failed_fraction = max_failed_fraction
        self.parquet = parquet
        self._lineage: dict[str, Any] = {}

    def _storage_options(self, conn_id: str | None, extra: Mapping[str, Any]) -> dict[str, Any]:
        options = dict(extra)
        if conn_id:
            from airflow.providers.common.compat.sdk import BaseHook

            from airflow_provider_sentinel_batch.bucket import storage_options_from_connection

            options = {**storage_options_from_connection(BaseHook.get_connection(conn_id)), **options}
        return options

    def execute(self, context: Context) -> dict[str, Any]:
        """Read the results of a DONE request, write the table (if ``table_path``) and return the summary.

        Raises :class:`SentinelBatchJobError` if the request is not DONE, has no output URL, or more features
        failed than ``max_failed_features`` / ``max_failed_fraction`` allow (the table is written first);
        :class:`SentinelBatchConfigError` for ``parquet=True`` without pyarrow.
        """
        from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
        from airflow_provider_sentinel_batch.statistical import cost_pu, output_root, output_url
        from airflow_provider_sentinel_batch.statistical_results import (
            parquet_available,
            read_table,
            write_table,
        )

        rid = str(self.request_id)
        hook = SentinelBatchHook(sentinel_batch_conn_id=self.sentinel_batch_conn_id)
        request = hook.get_statistical_request(rid)
        status = request.get("status")
        if status != "DONE":
            raise SentinelBatchJobError(
                f"Batch Statistical request {rid} is {status}, not DONE: there is no complete result to read",
                request_id=rid,
                status=str(status),
            )
        url = output_url(request)
        if not url:
            raise SentinelBatchJobError(
                f"Batch Statistical request {rid} has no output.s3.url", request_id=rid
            )
        if not (self.results_conn_id or self.results_url or self.results_storage_options):
            self.log.info("Reading %s with the default credentials (no results_conn_id / results_url)", url)
        table = read_table(
            request_id=rid,
            output_url=url,
            results_url=self.results_url,
            storage_options=self._storage_options(
                # a mirror (results_url) is read as it is; the connection's keys are for the bucket itself
                None
                if self.results_url and not str(self.results_url).startswith("s3")
                else self.results_conn_id,
                self.results_storage_options,
            ),
        )
        counts = table.counts()
        location = output_root(url, rid)
        self.log.info(
            "Batch Statistical request %s: %d feature files under %s, %d ok, %d failed, %d rows over %d "
            "intervals (%d interval errors)",
            rid,
            counts["features"],
            location,
            counts["ok"],
            counts["failed"],
            counts["rows"],
            counts["intervals"],
            counts["interval_errors"],
        )
        written: list[str] = []
        if self.table_path:
            if self.parquet and not parquet_available():
                raise SentinelBatchConfigError(
                    'parquet=True needs pyarrow: pip install "airflow-provider-sentinel-batch[parquet]" (or pyarrow)'
                )
            written = write_table(
                table,
                str(self.table_path),
                storage_options=self._storage_options(self.table_conn_id, {}),
                parquet=self.parquet,
            )
            self.log.info("Wrote %s", ", ".join(written))
        summary = {
            "request_id": rid,
            "api_version": "statistical",
            "status": status,
            "cost_pu": cost_pu(request),
            "location": location,
            "tables": written,
            "columns": table.columns,
            "counts": counts,
            "failed": table.failed[:FAILED_LISTED],
            "failed_truncated": len(table.failed) > FAILED_LISTED,
        }
        self._lineage = {"summary": summary, "base_url": hook.settings.base_url}
        self._check_thresholds(rid, counts, table.failed)
        return summary

    def _check_thresholds(self, rid: str, counts: Mapping[str, int], failed: list[dict[str, Any]]) -> None:
        from airflow_provider_sentinel_batch.results import raise_if_too_many_failed

        raise_if_too_many_failed(
            what=f"Batch Statistical request {rid}",
            request_id=rid,
            failed=counts["failed"],
            total=counts["features"],
            unit="features",
            samples=[f"{f.get('identifier') or f.get('id')} ({f.get('error')})" for f in failed[:10]],
            max_failed_features=self.max_failed_features,
            max_failed_fraction=self.max_failed_fraction,
        )

    def get_openlineage_facets_on_complete(self, task_instance: Any) -> Any:
        """Input: the request's result folder; outputs: the table files with their row count; run facets: the
        request id (``externalQuery``) and ``sentinelBatch`` (API, status, cost, feature counts)."""
        from airflow.providers.common.compat.openlineage.facet import (
            ExternalQueryRunFacet,
            InputDataset,
            OutputDataset,
            OutputStatisticsOutputDatasetFacet,
        )
        from airflow.providers.openlineage.extractors import OperatorLineage

        from airflow_provider_sentinel_batch._openlineage_facets import SentinelBatchRunFacet
        from airflow_provider_sentinel_batch.lineage import namespace_for

        summary = self._lineage.get("summary")
        if not summary:
            return OperatorLineage()
        counts = summary["counts"]
        inputs = [InputDataset(namespace=ns, name=name) for ns, name in [_dataset(summary["location"])]]
        outputs = [
            OutputDataset(
                namespace=ns,
                name=name,
                outputFacets={
                    "outputStatistics": OutputStatisticsOutputDatasetFacet(rowCount=counts["rows"])
                },
            )
            for ns, name in (_dataset(path) for path in summary["tables"])
        ]
        source = namespace_for(self._lineage.get("base_url"))
        run_facets = {
            "externalQuery": ExternalQueryRunFacet(externalQueryId=summary["request_id"], source=source),
            "sentinelBatch": SentinelBatchRunFacet(
                requestId=summary["request_id"],
                apiVersion="statistical",
                status=summary["status"],
                costPU=summary["cost_pu"],
                outputLocation=summary["location"],
                total=counts["features"],
                done=counts["ok"],
                failed=counts["failed"],
            ),
        }
        return OperatorLineage(inputs=inputs, outputs=outputs, run_facets=run_facets)


def _dataset(url: str) -> tuple[str, str]:
    """OpenLineage ``(namespace, name)`` of a location: ``s3://bucket`` + key, ``file`` + path."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return "file", parsed.path or url
    return f"{parsed.scheme}://{parsed.netloc}", parsed.path.lstrip("/").rstrip("/")
