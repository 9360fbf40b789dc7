"""Producer: the Corsica max-NDVI job (Batch v2) announces its tiles as an Airflow Asset (a Dataset on 2.11).

    create → start → wait_for_done (outlet: the corsica-ndvi asset)
                                any failure ↘ stop_on_failure

``downstream_corsica_ndvi_report`` is scheduled on the same asset and runs after every successful job.

A request id exists only at run time, so the asset is the *stable* data product,
``s3://<bucket>/corsica-ndvi``; each job writes under ``s3://<bucket>/corsica-ndvi/<requestId>/``. When the job
is DONE, ``wait_for_done`` attaches the request's facts to the asset event's ``extra``: ``request_id``,
``api_version``, ``status``, ``location`` (that request's folder), ``cost_pu``, feature counts, and the execution
database it read. The full result manifest (done features with their output paths, failed feature ids) is the
task's return value (XCom).

Results: the sensor reads ``execution-<requestId>.sqlite`` and ``featureManifest-<requestId>.gpkg`` from the
bucket with the read credentials of the Airflow connection ``sentinel_batch_bucket`` (needs ``s3fs``), or from a
mirror of the bucket when ``SENTINEL_BATCH_RESULTS_URL`` is set (the local emulator: ``file://<its data dir>``).
More than 5 % failed features fail the task, so no asset event announces a half-empty season.

Parse-time settings (environment): ``SENTINEL_BATCH_BUCKET`` (default ``sentinel-batch-demo``; the asset URI
depends on it, so it cannot come from a run's conf), ``SENTINEL_BATCH_RESULTS_URL``,
``SENTINEL_BATCH_POLL_INTERVAL``, ``SENTINEL_BATCH_MAX_COST_PU``.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Asset

from airflow_provider_sentinel_batch.operators.batch import (
    SentinelBatchCreateOperator,
    SentinelBatchStartOperator,
    SentinelBatchStopOperator,
)
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

BUCKET = os.environ.get("SENTINEL_BATCH_BUCKET", "sentinel-batch-demo")
RESULTS_URL = os.environ.get("SENTINEL_BATCH_RESULTS_URL")
POLL_INTERVAL = float(os.environ.get("SENTINEL_BATCH_POLL_INTERVAL", "60"))
MAX_COST_PU = float(os.environ.get("SENTINEL_BATCH_MAX_COST_PU", "500"))
BUCKET_CONN_ID = "sentinel_batch_bucket"

# The data product downstream DAGs schedule on (same URI in downstream_corsica_ndvi_report.py).
CORSICA_NDVI = Asset(f"s3://{BUCKET}/corsica-ndvi")

REQUEST_ID = "{{ ti.xcom_pull(task_ids='create', key='request_id') }}"
CREATED_AT = "{{ ti.xcom_pull(task_ids='create', key='created_at') }}"

PAYLOAD: dict[str, Any] = {
    "processRequest": {
        "input": {
            "bounds": {
                "bbox": [8.44, 41.31, 9.66, 43.1],
                "properties": {"crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"},
            },
            "data": [
                {
                    "type": "sentinel-2-l2a",
                    "dataFilter": {
                        "timeRange": {"from": "2019-04-01T00:00:00Z", "to": "2019-06-30T00:00:00Z"},
                        "maxCloudCoverage": 70.0,
                    },
                }
            ],
        },
        "output": {"responses": [{"identifier": "default", "format": {"type": "image/tiff"}}]},
    },
    "input": {"type": "tiling-grid", "id": 0, "resolution": 60.0},
    "output": {
        "type": "raster",
        "delivery": {"s3": {"url": f"s3://{BUCKET}/corsica-ndvi/<requestId>/<tileName>/<outputId>.<format>"}},
    },
    "description": "Max NDVI over Corsica (asset producer)",
}

# Where the sensor reads the execution database: a mirror of the bucket, else the bucket itself.
RESULTS: dict[str, Any] = {"results_url": RESULTS_URL} if RESULTS_URL else {"results_conn_id": BUCKET_CONN_ID}

with DAG(
    dag_id="asset_producer_corsica_v2",
    description="Corsica max NDVI (Batch v2) that emits an asset event with the request's output location",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["sentinel-hub", "batch", "v2", "assets", "example"],
    jinja_environment_kwargs={"keep_trailing_newline": True},
    doc_md=__doc__,
) as dag:
    common: dict[str, Any] = {"sentinel_batch_conn_id": "sentinel_batch_default", "api_version": "v2"}

    create = SentinelBatchCreateOperator(
        task_id="create",
        payload=PAYLOAD,
        evalscript="include/max_ndvi.js",
        bucket_conn_id=BUCKET_CONN_ID,
        retries=2,
        retry_delay=timedelta(seconds=30),
        **common,
    )
    start = SentinelBatchStartOperator(
        task_id="start", request_id=REQUEST_ID, created_at=CREATED_AT, **common
    )
    wait_for_done = SentinelBatchSensor(
        task_id="wait_for_done",
        request_id=REQUEST_ID,
        wait_for="DONE",
        deferrable=True,
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=12).total_seconds(),
        cancel_on_timeout=True,
        max_cost_pu=MAX_COST_PU,
        created_at=CREATED_AT,
        outlets=[CORSICA_NDVI],  # the event gets request_id, location, counts, cost in its extra
        max_failed_fraction=0.05,  # more failed features than this: the task fails and no event is emitted
        **RESULTS,
        **common,
    )
    stop = SentinelBatchStopOperator(
        task_id="stop_on_failure", request_id=REQUEST_ID, trigger_rule="one_failed", **common
    )

    create >> start >> wait_for_done
    [start, wait_for_done] >> stop
