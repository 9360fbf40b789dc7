"""Max NDVI over Corsica with Batch API v2 (recommended for new work): the same job as ``corsica_max_ndvi_v1``.

    create → analyse → wait_for_analysis → start → wait_for_done (cost guard on costPU) → summary
                                       any failure ↘ stop_on_failure

What changes from v1: the tiling grid is an ``input`` of type ``tiling-grid`` (id 0 at 60 m); results go to an
``output`` of type ``raster`` with an S3 ``delivery`` URL; there is no ``valueEstimate`` before starting, so the
cost guard watches ``costPU`` while the job runs and STOPs it past ``max_cost_pu``; "cancel" is STOP (no restart
for 30 minutes afterwards).

Bucket credentials come from the Airflow connection ``sentinel_batch_bucket`` (login = access key, password =
secret key, optional extra ``region_name``), added to the request at run time and masked in logs: never put keys in
the DAG. With an IAM role (Sentinel Hub on AWS) instead, add ``"iamRoleARN"`` to ``output.delivery.s3`` and drop
``bucket_conn_id``.

Settings (trigger conf / params, else Airflow Variables, else emulator-friendly defaults): ``conn_id``
(``sentinel_batch_conn_id``), ``bucket`` (``sentinel_batch_bucket``). Parse-time knobs as in the v1 example:
``SENTINEL_BATCH_POLL_INTERVAL``, ``SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL``, ``SENTINEL_BATCH_MAX_COST_PU``.
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_sentinel_batch.operators.batch import (
    SentinelBatchAnalyseOperator,
    SentinelBatchCreateOperator,
    SentinelBatchStartOperator,
    SentinelBatchStopOperator,
)
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

POLL_INTERVAL = float(os.environ.get("SENTINEL_BATCH_POLL_INTERVAL", "60"))
ANALYSIS_POLL_INTERVAL = float(os.environ.get("SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL", "10"))
MAX_COST_PU = float(os.environ.get("SENTINEL_BATCH_MAX_COST_PU", "500"))
BUCKET_CONN_ID = "sentinel_batch_bucket"
# A connection that may read the bucket (aws: access key, secret, endpoint_url): the wait then reads the execution
# database and the feature manifest from it and returns the result manifest. Unset: no bucket reads.
RESULTS_CONN_ID = os.environ.get("SENTINEL_BATCH_RESULTS_CONN_ID") or None
# Or an fsspec URL under which the bucket is mirrored or mounted (the local emulator: file://<its data dir>).
RESULTS_URL = os.environ.get("SENTINEL_BATCH_RESULTS_URL") or None


def setting(name: str, default: str) -> str:
    """Jinja for one setting: the run's param if set, else Variable ``sentinel_batch_<name>``, else ``default``."""
    return f"{{{{ params.{name} or var.value.get('sentinel_batch_{name}', '{default}') }}}}"


CONN_ID = setting("conn_id", "sentinel_batch_default")
BUCKET = setting("bucket", "sentinel-batch-demo")
REQUEST_ID = "{{ ti.xcom_pull(task_ids='create', key='request_id') }}"
CREATED_AT = "{{ ti.xcom_pull(task_ids='create', key='created_at') }}"

# The CDSE documentation's v2 form of the Corsica example (the evalscript comes from include/max_ndvi.js).
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
        "delivery": {"s3": {"url": f"s3://{BUCKET}/<requestId>/<tileName>/<outputId>.<format>"}},
    },
    "description": "Max NDVI over Corsica",
}

with DAG(
    dag_id="corsica_max_ndvi_v2",
    description="Max NDVI over Corsica, Sentinel Hub Batch API v2 (tiling-grid input, raster output to S3)",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["sentinel-hub", "batch", "v2", "example"],
    params={
        "conn_id": Param(None, type=["null", "string"], description="sentinel_batch connection id"),
        "bucket": Param(None, type=["null", "string"], description="S3 bucket for the GeoTIFFs"),
    },
    jinja_environment_kwargs={"keep_trailing_newline": True},
    doc_md=__doc__,
) as dag:
    common: dict[str, Any] = {"sentinel_batch_conn_id": CONN_ID, "api_version": "v2"}

    create = SentinelBatchCreateOperator(
        task_id="create",
        payload=PAYLOAD,
        evalscript="include/max_ndvi.js",
        bucket_conn_id=BUCKET_CONN_ID,
        retries=2,  # a retry re-attaches to the request this task instance already created
        retry_delay=timedelta(seconds=30),
        **common,
    )
    # Optional on v2 (START on a CREATED request analyses first); done here so a bad bucket or grid fails for free.
    analyse = SentinelBatchAnalyseOperator(
        task_id="analyse", request_id=REQUEST_ID, created_at=CREATED_AT, **common
    )
    wait_for_analysis = SentinelBatchSensor(
        task_id="wait_for_analysis",
        request_id=REQUEST_ID,
        wait_for="ANALYSIS_DONE",
        deferrable=True,
        analysis_poll_interval=ANALYSIS_POLL_INTERVAL,
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=2).total_seconds(),
        created_at=CREATED_AT,
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
        analysis_poll_interval=ANALYSIS_POLL_INTERVAL,
        timeout=timedelta(hours=12).total_seconds(),
        cancel_on_timeout=True,
        # v2 bills while processing: the trigger STOPs the job once costPU passes this, then the task fails
        max_cost_pu=MAX_COST_PU,
        results_conn_id=RESULTS_CONN_ID,
        results_url=RESULTS_URL,
        created_at=CREATED_AT,
        **common,
    )

    @task
    def summary(result: dict[str, Any]) -> dict[str, Any]:
        """One readable block per job, plus a JSON line the demo command picks up."""
        request_id = str(result.get("request_id"))
        location = result.get("location")  # the request's own output folder
        line = {
            "dag_id": "corsica_max_ndvi_v2",
            "request_id": request_id,
            "api_version": "v2",
            "status": result.get("status"),
            "completion_percentage": result.get("completionPercentage"),
            "cost_pu": result.get("cost_pu"),
            "output_location": location,
            "dashboard_url": result.get("dashboard_url"),
        }
        print(
            f"Batch request {request_id} (v2): {line['status']} ({line['completion_percentage']}% complete)"
        )
        print(f"  cost: {line['cost_pu']} PU (max {MAX_COST_PU:g})")
        print(f"  outputs: {location}")
        manifest = result.get("results")
        if manifest:  # read from the bucket through RESULTS_CONN_ID, or from its mirror RESULTS_URL
            counts = manifest.get("counts") or {}
            line["results"] = {k: manifest.get(k) for k in ("source", "counts", "execution_db")}
            print(
                f"  result manifest ({manifest.get('source')}): {counts.get('done')} done, "
                f"{counts.get('failed')} failed of {counts.get('total')}"
            )
        print("SENTINEL_BATCH_SUMMARY " + json.dumps(line, sort_keys=True))
        return line

    done = summary(wait_for_done.output)

    # STOP, not cancel, on v2: finished or in-flight features are still charged, and no restart for 30 minutes.
    stop = SentinelBatchStopOperator(
        task_id="stop_on_failure", request_id=REQUEST_ID, trigger_rule="one_failed", **common
    )

    create >> analyse >> wait_for_analysis >> start >> wait_for_done >> done
    [analyse, wait_for_analysis, start, wait_for_done] >> stop
