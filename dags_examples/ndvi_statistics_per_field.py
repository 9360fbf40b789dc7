"""NDVI statistics per field, Batch Statistical API: one request per month of the growing season.

    stage_fields → create → analyse → wait_for_analysis → start → wait_for_done → table → summary
                                              any failure ↘ stop_on_failure

For every field (polygon) of a GeoPackage in a bucket, the Batch Statistical API computes NDVI statistics (mean,
standard deviation, percentiles, a histogram) per 10-day interval of the run's month, over cloud-free pixels, and
writes one JSON file per field. ``table`` turns them into one CSV (and Parquet, with pyarrow) with a row per field,
interval, output and band, and fails the run when more than 10 % of the fields failed.

The fields: ``include/corsica_parcels_synthetic.gpkg`` holds 24 made-up parcels on the eastern plain of Corsica
(identifiers ``SYNTHETIC-CORSICA-0001``…): regular quadrilaterals generated for this example, not real parcels.
``stage_fields`` copies it to ``s3://<bucket>/fields/`` when it is not there yet; with your own fields, point
``features_url`` at your GeoPackage (one CRS, ≤ 700,000 polygons, an ``id`` column and optionally ``identifier``).

Schedule: cron ``0 0 1 5-10 *`` with a one-month interval, so the runs on 1 May … 1 October cover April …
September (``data_interval_start`` → ``data_interval_end``); a rerun or a backfill of a month recomputes that
month. The bucket keys come from the Airflow connection ``sentinel_batch_bucket`` at run time (never in the DAG).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task
from airflow.timetables.trigger import CronTriggerTimetable
from dateutil.relativedelta import relativedelta

from airflow_provider_sentinel_batch.operators.batch import (
    SentinelBatchAnalyseOperator,
    SentinelBatchCreateOperator,
    SentinelBatchStartOperator,
    SentinelBatchStopOperator,
)
from airflow_provider_sentinel_batch.operators.statistical import SentinelBatchStatisticalTableOperator
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

POLL_INTERVAL = float(os.environ.get("SENTINEL_BATCH_POLL_INTERVAL", "60"))
ANALYSIS_POLL_INTERVAL = float(os.environ.get("SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL", "10"))
MAX_COST_PU = float(os.environ.get("SENTINEL_BATCH_MAX_COST_PU", "2000"))
BUCKET_CONN_ID = "sentinel_batch_bucket"
FIELDS_FILE = Path(__file__).parent / "include" / "corsica_parcels_synthetic.gpkg"


def setting(name: str, default: str) -> str:
    """Jinja for one setting: the run's param if set, else Variable ``sentinel_batch_<name>``, else ``default``."""
    return f"{{{{ params.{name} or var.value.get('sentinel_batch_{name}', '{default}') }}}}"


CONN_ID = setting("conn_id", "sentinel_batch_default")
BUCKET = setting("bucket", "sentinel-batch-demo")
FEATURES_URL = (
    "{{ params.features_url or var.value.get('sentinel_batch_features_url', '') or ('s3://' ~ "
    "(params.bucket or var.value.get('sentinel_batch_bucket', 'sentinel-batch-demo')) ~ "
    "'/fields/corsica_parcels_synthetic.gpkg') }}"
)
RESULTS_URL = "{{ var.value.get('sentinel_batch_results_url', '') or None }}"
TABLE_DIR = setting("table_dir", "/tmp/sentinel-batch-tables")
MONTH = "{{ data_interval_start.strftime('%Y-%m') }}"
REQUEST_ID = "{{ ti.xcom_pull(task_ids='create', key='request_id') }}"
CREATED_AT = "{{ ti.xcom_pull(task_ids='create', key='created_at') }}"

PAYLOAD: dict[str, Any] = {
    "input": {
        "features": {"s3": {"url": FEATURES_URL}},
        "data": [{"type": "sentinel-2-l2a", "dataFilter": {"mosaickingOrder": "leastCC"}}],
    },
    "aggregation": {
        # the month this run is about, not the moment it runs
        "timeRange": {"from": "{{ data_interval_start | ts }}", "to": "{{ data_interval_end | ts }}"},
        "aggregationInterval": {"of": "P10D", "lastIntervalBehavior": "SHORTEN"},
        "resx": 10,
        "resy": 10,
    },
    "calculations": {
        "ndvi": {
            "statistics": {"default": {"percentiles": {"k": [0.1, 0.5, 0.9]}}},
            "histograms": {"default": {"nBins": 10, "lowEdge": -1.0, "highEdge": 1.0}},
        }
    },
    "output": {"s3": {"url": f"s3://{BUCKET}/ndvi-statistics/{MONTH}"}},
}

with DAG(
    dag_id="ndvi_statistics_per_field",
    description="Monthly NDVI statistics per field over the growing season (Apr-Sep), Batch Statistical API",
    schedule=CronTriggerTimetable("0 0 1 5-10 *", timezone="UTC", interval=relativedelta(months=1)),
    start_date=datetime(2025, 4, 1),
    catchup=False,
    max_active_runs=2,
    tags=["sentinel-hub", "batch-statistical", "example", "scheduled"],
    params={
        "conn_id": Param(None, type=["null", "string"], description="sentinel_batch connection id"),
        "bucket": Param(None, type=["null", "string"], description="bucket for fields and statistics"),
        "features_url": Param(
            None, type=["null", "string"], description="s3:// URL of the fields GeoPackage"
        ),
        "table_dir": Param(None, type=["null", "string"], description="folder or fsspec URL for the tables"),
    },
    doc_md=__doc__,
) as dag:
    common: dict[str, Any] = {"sentinel_batch_conn_id": CONN_ID, "api_version": "statistical"}

    @task
    def stage_fields(features_url: str, results_url: str | None) -> str:
        """Copy the shipped synthetic fields to ``features_url`` unless an object is already there."""
        import fsspec

        from airflow_provider_sentinel_batch.bucket import storage_options_from_connection

        target = features_url
        options: dict[str, Any] = {}
        if results_url and target.startswith("s3://"):
            target = f"{results_url.rstrip('/')}/{target[len('s3://') :]}"  # a mirror of the bucket
        elif target.startswith("s3://"):
            from airflow.providers.common.compat.sdk import BaseHook

            options = storage_options_from_connection(BaseHook.get_connection(BUCKET_CONN_ID))
        fs, path = fsspec.core.url_to_fs(target, **options)
        if fs.exists(path):
            print(f"{features_url} is there already")
        else:
            fs.makedirs(fs._parent(path), exist_ok=True)
            fs.put_file(str(FIELDS_FILE), path)
            print(f"staged {FIELDS_FILE.name} at {features_url}")
        return features_url

    staged = stage_fields(FEATURES_URL, RESULTS_URL)
    create = SentinelBatchCreateOperator(
        task_id="create",
        payload=PAYLOAD,
        evalscript="include/ndvi_statistics.js",
        bucket_conn_id=BUCKET_CONN_ID,
        retries=2,
        retry_delay=timedelta(seconds=30),
        **common,
    )
    analyse = SentinelBatchAnalyseOperator(
        task_id="analyse", request_id=REQUEST_ID, created_at=CREATED_AT, **common
    )
    wait_for_analysis = SentinelBatchSensor(
        task_id="wait_for_analysis",
        request_id=REQUEST_ID,
        wait_for="ANALYSIS_DONE",
        deferrable=True,
        analysis_poll_interval=ANALYSIS_POLL_INTERVAL,
        timeout=timedelta(hours=2).total_seconds(),
        **common,
    )
    start = SentinelBatchStartOperator(task_id="start", request_id=REQUEST_ID, **common)
    wait_for_done = SentinelBatchSensor(
        task_id="wait_for_done",
        request_id=REQUEST_ID,
        wait_for="DONE",
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        analysis_poll_interval=ANALYSIS_POLL_INTERVAL,
        timeout=timedelta(hours=24).total_seconds(),
        cancel_on_timeout=True,
        max_cost_pu=MAX_COST_PU,
        **common,
    )
    table = SentinelBatchStatisticalTableOperator(
        task_id="table",
        request_id=REQUEST_ID,
        table_path=f"{TABLE_DIR}/ndvi_per_field_{MONTH}",
        results_url=RESULTS_URL,
        results_conn_id=BUCKET_CONN_ID,
        max_failed_fraction=0.1,
        sentinel_batch_conn_id=CONN_ID,
    )

    @task
    def summary(done: dict[str, Any], table: dict[str, Any], month: str) -> dict[str, Any]:
        """What this month's request produced, plus a JSON line for scripts."""
        line = {
            "dag_id": "ndvi_statistics_per_field",
            "month": month,
            "request_id": done.get("request_id"),
            "api_version": "statistical",
            "status": done.get("status"),
            "cost_pu": done.get("cost_pu"),
            "completion_percentage": done.get("completionPercentage"),
            "output_location": done.get("location"),
            "fields": table["counts"]["features"],
            "failed_fields": table["counts"]["failed"],
            "rows": table["counts"]["rows"],
            "tables": table["tables"],
        }
        print(f"{month}: {line['fields']} fields, {line['rows']} rows in {', '.join(line['tables']) or '-'}")
        print("SENTINEL_BATCH_SUMMARY " + json.dumps(line, sort_keys=True))
        return line

    summarized = summary(wait_for_done.output, table.output, MONTH)
    stop = SentinelBatchStopOperator(
        task_id="stop_on_failure", request_id=REQUEST_ID, trigger_rule="one_failed", **common
    )

    staged >> create >> analyse >> wait_for_analysis >> start >> wait_for_done >> table >> summarized
    [analyse, wait_for_analysis, start, wait_for_done] >> stop
