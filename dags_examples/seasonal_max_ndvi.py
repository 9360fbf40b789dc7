"""Seasonal max NDVI, Batch API v2: one job per month of the growing season (April to September), every year.

    wait_for_data_latency → create → start → wait_for_done → summary
                                   any failure ↘ stop_on_failure

Schedule: cron ``0 0 1 5-10 *`` with a one-month interval, so the runs on 1 May … 1 October process April …
September (``data_interval_start`` → ``data_interval_end``) and nothing runs over the winter. The request's time
range and description come from the data interval, so a rerun or a backfill of a month processes that month.

Data latency: Sentinel-2 L2A scenes reach the archive hours to days after acquisition, so a run fired right at the
end of its month would miss the last scenes. ``wait_for_data_latency`` (deferrable, no worker slot) holds the run
until ``data_interval_end + latency_hours`` (param, default 72 h) before anything is created.

Backfills and catchup (``catchup=True``): every missed month becomes a paid job. ``max_active_runs=2`` bounds the
runs of this DAG, and every batch task uses the pool ``sentinel_batch``; create the pool with deferred tasks
counted, otherwise a waiting (deferred) job frees its slot and the pool stops throttling anything::

    airflow pools set sentinel_batch 2 "Sentinel Hub batch jobs" --include-deferred

(Without the pool, tasks stay queued in a real deployment; ``airflow dags test`` ignores pools.)
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task
from airflow.timetables.trigger import CronTriggerTimetable
from dateutil.relativedelta import relativedelta

from airflow_provider_sentinel_batch.operators.batch import (
    SentinelBatchCreateOperator,
    SentinelBatchStartOperator,
    SentinelBatchStopOperator,
)
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

try:  # Airflow 3 (standard provider)
    from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
except ImportError:  # Airflow 2.11
    from airflow.sensors.date_time import DateTimeSensorAsync  # type: ignore[no-redef]

POLL_INTERVAL = float(os.environ.get("SENTINEL_BATCH_POLL_INTERVAL", "60"))
ANALYSIS_POLL_INTERVAL = float(os.environ.get("SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL", "10"))
MAX_COST_PU = float(os.environ.get("SENTINEL_BATCH_MAX_COST_PU", "500"))
BUCKET_CONN_ID = "sentinel_batch_bucket"
POOL = "sentinel_batch"


def setting(name: str, default: str) -> str:
    """Jinja for one setting: the run's param if set, else Variable ``sentinel_batch_<name>``, else ``default``."""
    return f"{{{{ params.{name} or var.value.get('sentinel_batch_{name}', '{default}') }}}}"


CONN_ID = setting("conn_id", "sentinel_batch_default")
BUCKET = setting("bucket", "sentinel-batch-demo")
REQUEST_ID = "{{ ti.xcom_pull(task_ids='create', key='request_id') }}"
CREATED_AT = "{{ ti.xcom_pull(task_ids='create', key='created_at') }}"
MONTH = "{{ data_interval_start.strftime('%Y-%m') }}"

PAYLOAD: dict[str, Any] = {
    "processRequest": {
        "input": {
            "bounds": {
                "bbox": [8.44, 41.31, 9.66, 43.1],  # Corsica
                "properties": {"crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"},
            },
            "data": [
                {
                    "type": "sentinel-2-l2a",
                    "dataFilter": {
                        # the month this run is about, not the moment it runs
                        "timeRange": {
                            "from": "{{ data_interval_start | ts }}",
                            "to": "{{ data_interval_end | ts }}",
                        },
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
        "delivery": {
            "s3": {"url": f"s3://{BUCKET}/seasonal/{MONTH}/<requestId>/<tileName>/<outputId>.<format>"}
        },
    },
}

with DAG(
    dag_id="seasonal_max_ndvi",
    description="Monthly max NDVI over the growing season (Apr-Sep), Batch API v2, catchup through a pool",
    schedule=CronTriggerTimetable("0 0 1 5-10 *", timezone="UTC", interval=relativedelta(months=1)),
    start_date=datetime(2025, 4, 1),
    catchup=True,
    max_active_runs=2,
    tags=["sentinel-hub", "batch", "v2", "example", "scheduled"],
    params={
        "conn_id": Param(None, type=["null", "string"], description="sentinel_batch connection id"),
        "bucket": Param(None, type=["null", "string"], description="S3 bucket for the GeoTIFFs"),
        "latency_hours": Param(72, type="integer", minimum=0, description="wait after the month ends"),
    },
    jinja_environment_kwargs={"keep_trailing_newline": True},
    doc_md=__doc__,
) as dag:
    common: dict[str, Any] = {"sentinel_batch_conn_id": CONN_ID, "api_version": "v2", "pool": POOL}

    wait_for_data_latency = DateTimeSensorAsync(
        task_id="wait_for_data_latency",
        target_time="{{ (data_interval_end + macros.timedelta(hours=params.latency_hours)).isoformat() }}",
    )
    create = SentinelBatchCreateOperator(
        task_id="create",
        payload=PAYLOAD,
        evalscript="include/max_ndvi.js",
        description=f"Seasonal max NDVI {MONTH} ({{{{ data_interval_start | ds }}}} to {{{{ data_interval_end | ds }}}})",
        bucket_conn_id=BUCKET_CONN_ID,
        retries=2,
        retry_delay=timedelta(seconds=30),
        **common,
    )
    # v2: START on a CREATED request runs the analysis first, then processing.
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
        timeout=timedelta(hours=24).total_seconds(),
        cancel_on_timeout=True,
        max_cost_pu=MAX_COST_PU,
        created_at=CREATED_AT,
        **common,
    )

    @task
    def summary(result: dict[str, Any], month: str) -> dict[str, Any]:
        """What this month's job produced, plus a JSON line for scripts."""
        request_id = str(result.get("request_id"))
        location = result.get("location")  # the request's own output folder
        line = {
            "dag_id": "seasonal_max_ndvi",
            "month": month,
            "request_id": request_id,
            "api_version": "v2",
            "status": result.get("status"),
            "cost_pu": result.get("cost_pu"),
            "output_location": location or None,
        }
        print(
            f"{month}: batch request {request_id} {line['status']}, {line['cost_pu']} PU, outputs {location}"
        )
        print("SENTINEL_BATCH_SUMMARY " + json.dumps(line, sort_keys=True))
        return line

    done = summary(wait_for_done.output, MONTH)
    stop = SentinelBatchStopOperator(
        task_id="stop_on_failure", request_id=REQUEST_ID, trigger_rule="one_failed", **common
    )

    wait_for_data_latency >> create >> start >> wait_for_done >> done
    [start, wait_for_done] >> stop
