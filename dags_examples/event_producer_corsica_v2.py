"""Event-driven producer: create and start the Corsica max-NDVI job (Batch v2), then end. Nothing waits.

    create → start

``event_consumer_corsica_ndvi`` is scheduled by an asset *watcher* (Airflow 3): it runs once for every batch
request whose description carries the marker ``[corsica-ndvi-events]`` and that reaches DONE, whether this DAG,
the dashboard or a script created it. No worker slot or triggerer wait is held while the job runs.

The marker is the request's description (the create operator appends its own idempotency tag after it), so
a job started elsewhere joins in by putting ``[corsica-ndvi-events]`` into its description. The output goes to
``s3://<bucket>/corsica-ndvi/<requestId>/`` with the keys of the Airflow connection ``sentinel_batch_bucket``.

Parse-time settings (environment): ``SENTINEL_BATCH_BUCKET`` (default ``sentinel-batch-demo``).
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_sentinel_batch.operators.batch import (
    SentinelBatchCreateOperator,
    SentinelBatchStartOperator,
)

BUCKET = os.environ.get("SENTINEL_BATCH_BUCKET", "sentinel-batch-demo")
BUCKET_CONN_ID = "sentinel_batch_bucket"
#: What the consumer's watcher looks for in a request's description (same text in event_consumer_corsica_ndvi.py).
MARKER = "[corsica-ndvi-events]"

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
}

with DAG(
    dag_id="event_producer_corsica_v2",
    description="Creates and starts the Corsica max-NDVI job (v2) and ends; an asset watcher schedules the consumer",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["sentinel-hub", "batch", "v2", "event-driven", "example"],
    jinja_environment_kwargs={"keep_trailing_newline": True},
    doc_md=__doc__,
) as dag:
    common: dict[str, Any] = {"sentinel_batch_conn_id": "sentinel_batch_default", "api_version": "v2"}

    create = SentinelBatchCreateOperator(
        task_id="create",
        payload=PAYLOAD,
        evalscript="include/max_ndvi.js",
        description=f"Max NDVI over Corsica {MARKER}",
        bucket_conn_id=BUCKET_CONN_ID,
        retries=2,
        retry_delay=timedelta(seconds=30),
        **common,
    )
    start = SentinelBatchStartOperator(
        task_id="start", request_id=REQUEST_ID, created_at=CREATED_AT, **common
    )

    create >> start
