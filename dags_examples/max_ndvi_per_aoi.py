"""Max NDVI for several areas of interest, Batch API v2: one batch job per AOI with dynamic task mapping.

    build_payloads → per_aoi[i]: create → start → wait_for_done → report

The AOI list is a param (``aois``: objects with ``name`` and a CRS84 ``bbox``), so each run can fan out over a
different set; ``build_payloads`` turns it into one v2 request per AOI (outputs under ``per-aoi/<name>/``). Every
mapped create has its own idempotency tag (the map index is part of it), so retrying one AOI never duplicates
another AOI's job.

No "cancel everything on failure" task here on purpose: one failed AOI should not stop the others. A job is still
stopped when its own wait times out (``cancel_on_timeout``), passes ``max_cost_pu``, or its task is killed.
All batch tasks share the ``sentinel_batch`` pool (see ``seasonal_max_ndvi``) so a long AOI list cannot flood the
account: ``airflow pools set sentinel_batch 2 "Sentinel Hub batch jobs" --include-deferred``.
"""

from __future__ import annotations

import json
import os
import re
from datetime import datetime, timedelta
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Param, task, task_group

from airflow_provider_sentinel_batch.operators.batch import (
    SentinelBatchCreateOperator,
    SentinelBatchStartOperator,
)
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

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
# each mapped task reads the create of its own AOI
CREATED_AT = "{{ ti.xcom_pull(task_ids='per_aoi.create', key='created_at', map_indexes=ti.map_index) }}"

DEFAULT_AOIS = [
    {"name": "cap-corse", "bbox": [9.3, 42.7, 9.5, 43.0]},
    {"name": "ajaccio", "bbox": [8.6, 41.85, 8.85, 42.0]},
    {"name": "bonifacio", "bbox": [9.05, 41.35, 9.3, 41.5]},
]

with DAG(
    dag_id="max_ndvi_per_aoi",
    description="Max NDVI per area of interest: one Batch v2 job per AOI (dynamic task mapping)",
    schedule=None,
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["sentinel-hub", "batch", "v2", "example", "mapping"],
    params={
        "conn_id": Param(None, type=["null", "string"], description="sentinel_batch connection id"),
        "bucket": Param(None, type=["null", "string"], description="S3 bucket for the GeoTIFFs"),
        "aois": Param(DEFAULT_AOIS, type="array", description='[{"name": "...", "bbox": [w, s, e, n]}, ...]'),
        "time_from": Param("2019-04-01T00:00:00Z", type="string"),
        "time_to": Param("2019-06-30T00:00:00Z", type="string"),
    },
    jinja_environment_kwargs={"keep_trailing_newline": True},
    doc_md=__doc__,
) as dag:

    @task
    def build_payloads(bucket: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
        """One v2 request body per AOI; names become folder names, so they are checked and made unique first."""
        params = params or {}
        aois = params.get("aois") or DEFAULT_AOIS
        payloads, seen = [], set()
        for aoi in aois:
            name = re.sub(r"[^A-Za-z0-9_-]+", "-", str(aoi["name"])).strip("-") or "aoi"
            if name in seen:
                raise ValueError(f"duplicate AOI name {name!r}: each AOI needs its own output folder")
            seen.add(name)
            west, south, east, north = (float(v) for v in aoi["bbox"])
            payloads.append(
                {
                    "processRequest": {
                        "input": {
                            "bounds": {
                                "bbox": [west, south, east, north],
                                "properties": {"crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"},
                            },
                            "data": [
                                {
                                    "type": "sentinel-2-l2a",
                                    "dataFilter": {
                                        "timeRange": {"from": params["time_from"], "to": params["time_to"]},
                                        "maxCloudCoverage": 70.0,
                                    },
                                }
                            ],
                        },
                        "output": {
                            "responses": [{"identifier": "default", "format": {"type": "image/tiff"}}]
                        },
                    },
                    "input": {"type": "tiling-grid", "id": 0, "resolution": 60.0},
                    "output": {
                        "type": "raster",
                        "delivery": {
                            "s3": {
                                "url": f"s3://{bucket}/per-aoi/{name}/<requestId>/<tileName>/<outputId>.<format>"
                            }
                        },
                    },
                    "description": f"Max NDVI {name}",
                }
            )
        return payloads

    common: dict[str, Any] = {"sentinel_batch_conn_id": CONN_ID, "api_version": "v2", "pool": POOL}

    # A mapped task group, not Operator.partial().expand(): each AOI runs create → start → wait on its own, and
    # the operators take all their keyword arguments as usual.
    @task_group
    def per_aoi(payload: dict[str, Any]) -> Any:
        create = SentinelBatchCreateOperator(
            task_id="create",
            payload=payload,
            evalscript="include/max_ndvi.js",
            bucket_conn_id=BUCKET_CONN_ID,
            retries=2,
            retry_delay=timedelta(seconds=30),
            **common,
        )
        # v2: START on a CREATED request analyses it first
        start = SentinelBatchStartOperator(
            task_id="start", request_id=create.output, created_at=CREATED_AT, **common
        )
        wait_for_done = SentinelBatchSensor(
            task_id="wait_for_done",
            request_id=start.output,
            wait_for="DONE",
            deferrable=True,
            poll_interval=POLL_INTERVAL,
            analysis_poll_interval=ANALYSIS_POLL_INTERVAL,
            timeout=timedelta(hours=12).total_seconds(),
            cancel_on_timeout=True,
            max_cost_pu=MAX_COST_PU,
            created_at=CREATED_AT,
            **common,
        )
        return wait_for_done.output

    @task
    def report(results: list[dict[str, Any]] | dict[str, Any]) -> list[dict[str, Any]]:
        """One line per AOI job and the total cost, plus a JSON line for scripts."""
        # Airflow 3 hands a mapped group's output over as the value itself, not a list, when the group expanded
        # to one instance (a single AOI)
        if isinstance(results, dict):
            results = [results]
        lines = []
        for result in results:
            request_id = str(result.get("request_id"))
            location = result.get("location")  # the request's own output folder
            lines.append(
                {
                    "request_id": request_id,
                    "status": result.get("status"),
                    "cost_pu": result.get("cost_pu"),
                    "output_location": location or None,
                }
            )
            print(f"{request_id}: {result.get('status')}, {result.get('cost_pu')} PU, outputs {location}")
        total = sum(float(line["cost_pu"] or 0) for line in lines)
        print(f"{len(lines)} jobs, {total:g} PU in total")
        print(
            "SENTINEL_BATCH_SUMMARY "
            + json.dumps({"dag_id": "max_ndvi_per_aoi", "jobs": lines}, sort_keys=True)
        )
        return lines

    report(per_aoi.expand(payload=build_payloads(BUCKET)))
