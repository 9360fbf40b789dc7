"""Max NDVI over Corsica with Batch API v1: the documented Sentinel Hub workflow, one Airflow task per step.

    create → analyse → wait_for_analysis → report_tiles_and_estimate → start (cost guard) → wait_for_done → summary
                                                                    any failure ↘ cancel_on_failure

The payload is the seed example's, verbatim (bbox over Corsica, S2L2A April-June 2019, ``maxCloudCoverage`` 70,
tiling grid 0 at 60 m, GeoTIFF into ``bucketName``); the evalscript is ``include/max_ndvi.js``.

Settings, per run (trigger conf / params) or per deployment (Airflow Variables), defaults fit the emulator:

* ``conn_id`` / Variable ``sentinel_batch_conn_id``: the ``sentinel_batch`` connection (``sentinel_batch_default``).
* ``bucket`` / Variable ``sentinel_batch_bucket``: the S3 bucket v1 writes to with its bucket policy.

Parse-time knobs (environment, read without touching the metadata DB; the demo and tests lower them):
``SENTINEL_BATCH_POLL_INTERVAL`` (s, default 60), ``SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL`` (s, default 10),
``SENTINEL_BATCH_MAX_COST_PU`` (cost guard: refuse to start above this many PU after the 1/3 batch discount).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task

from airflow_provider_sentinel_batch.operators.batch import (
    SentinelBatchAnalyseOperator,
    SentinelBatchCancelOperator,
    SentinelBatchCreateOperator,
    SentinelBatchStartOperator,
)
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

POLL_INTERVAL = float(os.environ.get("SENTINEL_BATCH_POLL_INTERVAL", "60"))
ANALYSIS_POLL_INTERVAL = float(os.environ.get("SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL", "10"))
MAX_COST_PU = float(os.environ.get("SENTINEL_BATCH_MAX_COST_PU", "500"))


def setting(name: str, default: str) -> str:
    """Jinja for one setting: the run's param if set, else Variable ``sentinel_batch_<name>``, else ``default``."""
    return f"{{{{ params.{name} or var.value.get('sentinel_batch_{name}', '{default}') }}}}"


CONN_ID = setting("conn_id", "sentinel_batch_default")
BUCKET = setting("bucket", "sentinel-batch-demo")
REQUEST_ID = "{{ ti.xcom_pull(task_ids='create', key='request_id') }}"
# Lets a GET right after create that answers 404 (the service's read replica lags) be retried, not fatal.
CREATED_AT = "{{ ti.xcom_pull(task_ids='create', key='created_at') }}"

# Sentinel Hub's batch-processing workflow example request, field for field (the evalscript comes from include/max_ndvi.js).
PAYLOAD: dict[str, Any] = {
    "processRequest": {
        "input": {
            "bounds": {
                "bbox": [8.44, 41.31, 9.66, 43.1],
                "properties": {"crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"},
            },
            "data": [
                {
                    "dataFilter": {
                        "timeRange": {"from": "2019-04-01T00:00:00Z", "to": "2019-06-30T00:00:00Z"},
                        "maxCloudCoverage": 70.0,
                    },
                    "type": "S2L2A",
                }
            ],
        },
        "output": {"responses": [{"identifier": "default", "format": {"type": "image/tiff"}}]},
    },
    "tilingGrid": {"id": 0, "resolution": 60.0},
    "bucketName": BUCKET,
    "description": "Max NDVI over Corsica",
}

with DAG(
    dag_id="corsica_max_ndvi_v1",
    description="Max NDVI over Corsica, Sentinel Hub Batch API v1 (the documented workflow)",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["sentinel-hub", "batch", "v1", "example"],
    params={
        "conn_id": Param(None, type=["null", "string"], description="sentinel_batch connection id"),
        "bucket": Param(None, type=["null", "string"], description="S3 bucket for the GeoTIFFs"),
    },
    # the evalscript file is rendered as a template: keep its last newline so the script is sent byte for byte
    jinja_environment_kwargs={"keep_trailing_newline": True},
    doc_md=__doc__,
) as dag:
    common: dict[str, Any] = {"sentinel_batch_conn_id": CONN_ID, "api_version": "v1"}

    create = SentinelBatchCreateOperator(
        task_id="create",
        payload=PAYLOAD,
        evalscript="include/max_ndvi.js",
        # safe to retry: a retry finds this task instance's request (tag in the description) instead of paying twice
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
        poll_interval=POLL_INTERVAL,
        timeout=timedelta(hours=2).total_seconds(),
        created_at=CREATED_AT,
        **common,
    )

    @task
    def report_tiles_and_estimate(request_id: str, conn_id: str) -> dict[str, Any]:
        """Analysis is free: show what the job will cost and how big it is before anyone pays for it."""
        from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

        hook = SentinelBatchHook(sentinel_batch_conn_id=conn_id, api_version="v1")
        request = hook.get_request(request_id)
        by_status: dict[str, int] = {}
        for tile in hook.iter_tiles(request_id):
            by_status[str(tile.get("status"))] = by_status.get(str(tile.get("status")), 0) + 1
        estimate = request.get("valueEstimate")
        report = {
            "request_id": request_id,
            "tile_count": request.get("tileCount", sum(by_status.values())),
            "tiles_by_status": by_status,
            "value_estimate_pu": estimate,
            # batch processing is billed at 1/3 of the estimate; it assumes one observation every 3 days
            "expected_charge_pu": round(float(estimate) / 3.0, 1) if estimate is not None else None,
            "max_cost_pu": MAX_COST_PU,
        }
        print(f"Batch request {request_id}: {report['tile_count']} tiles {by_status}")
        print(
            f"valueEstimate {estimate} PU -> about {report['expected_charge_pu']} PU charged (max {MAX_COST_PU:g})"
        )
        return report

    report = report_tiles_and_estimate(REQUEST_ID, CONN_ID)

    start = SentinelBatchStartOperator(
        task_id="start", request_id=REQUEST_ID, max_cost_pu=MAX_COST_PU, created_at=CREATED_AT, **common
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
        created_at=CREATED_AT,
        **common,
    )

    @task
    def summary(result: dict[str, Any], estimate: dict[str, Any]) -> dict[str, Any]:
        """One readable block per job, plus a JSON line the demo command picks up."""
        tiles = result.get("tiles") or {}
        line = {
            "dag_id": "corsica_max_ndvi_v1",
            "request_id": result.get("request_id"),
            "api_version": "v1",
            "status": result.get("status"),
            "tiles": tiles,
            "tile_count": estimate.get("tile_count"),
            "value_estimate_pu": estimate.get("value_estimate_pu"),
            "cost_pu": result.get("cost_pu"),
            "output_location": result.get("location"),
            "dashboard_url": result.get("dashboard_url"),
        }
        print(f"Batch request {line['request_id']} (v1): {line['status']}")
        print(f"  tiles: {line['tile_count']} {tiles}")
        print(f"  valueEstimate {line['value_estimate_pu']} PU, ~{line['cost_pu']} PU charged (estimate / 3)")
        print(f"  outputs: {line['output_location']}")
        print("SENTINEL_BATCH_SUMMARY " + json.dumps(line, sort_keys=True))
        return line

    done = summary(wait_for_done.output, report)

    # A failed step must not leave a reserved or running job behind: CANCEL it (already finished is fine).
    cancel = SentinelBatchCancelOperator(
        task_id="cancel_on_failure", request_id=REQUEST_ID, trigger_rule="one_failed", **common
    )

    create >> analyse >> wait_for_analysis >> report >> start >> wait_for_done >> done
    [analyse, wait_for_analysis, report, start, wait_for_done] >> cancel
