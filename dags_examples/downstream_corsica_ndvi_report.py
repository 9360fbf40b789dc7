"""Downstream: runs when ``asset_producer_corsica_v2`` has delivered a Corsica max-NDVI job (data-aware scheduling).

    report

Scheduled on the asset ``s3://<bucket>/corsica-ndvi`` (an Airflow Asset on 3.x, a Dataset on 2.11, both through
the compat layer). The triggering asset event's ``extra`` says which request produced the data and where it is
(``location`` = ``s3://<bucket>/corsica-ndvi/<requestId>/``), with its status, cost and feature counts (``total``, ``done``, ``failed``): a mosaic,
zonal-statistics or training task starts from there. ``SENTINEL_BATCH_BUCKET`` must match the producer's.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Asset, task

BUCKET = os.environ.get("SENTINEL_BATCH_BUCKET", "sentinel-batch-demo")
CORSICA_NDVI = Asset(f"s3://{BUCKET}/corsica-ndvi")


def triggering_events(context: Any) -> list[Any]:
    """The asset events that triggered this run (``triggering_dataset_events`` on Airflow 2.11)."""
    events = context.get("triggering_asset_events") or context.get("triggering_dataset_events") or {}
    return [event for per_asset in events.values() for event in per_asset]


with DAG(
    dag_id="downstream_corsica_ndvi_report",
    description="Reports each new Corsica max-NDVI delivery announced by the producer's asset event",
    schedule=[CORSICA_NDVI],
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["sentinel-hub", "batch", "assets", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def report(**context: Any) -> list[dict[str, Any]]:
        deliveries = []
        for event in triggering_events(context):
            extra = dict(event.extra or {})
            deliveries.append(
                {
                    "request_id": extra.get("request_id"),
                    "status": extra.get("status"),
                    "location": extra.get("location"),
                    "features_done": extra.get("done"),
                    "features_failed": extra.get("failed"),
                    "cost_pu": extra.get("cost_pu"),
                }
            )
            print(
                f"Batch request {extra.get('request_id')} delivered to {extra.get('location')}: "
                f"{extra.get('done')} of {extra.get('total')} features (cost {extra.get('cost_pu')} PU)"
            )
        if not deliveries:
            print("Started without an asset event (manual run): nothing to report")
        return deliveries

    report()
