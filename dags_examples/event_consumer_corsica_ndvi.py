"""Event-driven consumer: runs once per Corsica max-NDVI batch job that reaches DONE (Airflow 3 asset watcher).

    report

Scheduled on an asset watched by ``SentinelBatchEventTrigger``: the triggerer lists the account's v2 requests
every ``SENTINEL_BATCH_EVENTS_POLL_INTERVAL`` seconds (default 60; one shared list poll per interval for
all watchers of one connection) and emits one asset event per request with ``[corsica-ndvi-events]`` in its
description that newly reaches DONE — created by ``event_producer_corsica_v2``, the dashboard, or any script.
A job that stays DONE never fires again; a FAILED or STOPPED job never fires this watcher.

Each run reads its triggering event's payload: ``request_id``, ``output_location``
(``s3://<bucket>/corsica-ndvi/<requestId>/``), ``status``, ``cost_pu``, ``created``, ``finished``. The watcher
spaces the events of one poll a few seconds apart so that each job gets its own run; a run can still carry
several events (a slow scheduler), so the task loops over all of them. Deduplicate on ``request_id`` where a
rerun must not repeat work: without Airflow 3.3's asset state store, a restarted triggerer reports again what
finished within the last hour.

Needs Airflow 3 (asset watchers); on Airflow 2.11 use ``asset_producer_corsica_v2`` and
``downstream_corsica_ndvi_report`` (a task waits for the job and emits the Dataset event).
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

from airflow.providers.common.compat.sdk import DAG, Asset, task
from airflow.sdk import AssetWatcher  # Airflow 3 only: asset watchers do not exist in Airflow 2

from airflow_provider_sentinel_batch.triggers.events import SentinelBatchEventTrigger

POLL_INTERVAL = float(os.environ.get("SENTINEL_BATCH_EVENTS_POLL_INTERVAL", "60"))
#: The producer's description marker (event_producer_corsica_v2.py).
MARKER = "[corsica-ndvi-events]"

# A name only: the results' location is in each event (the asset stands for "a Corsica job reached DONE").
CORSICA_NDVI_DONE = Asset(
    name="corsica_ndvi_batch_done",
    watchers=[
        AssetWatcher(
            name="corsica_ndvi_batch_done_watcher",
            trigger=SentinelBatchEventTrigger(
                conn_id="sentinel_batch_default",
                api_version="v2",
                statuses=["DONE"],
                tag=MARKER,
                poll_interval=POLL_INTERVAL,
            ),
        )
    ],
)


def watcher_payloads(context: Any) -> list[dict[str, Any]]:
    """The payloads of the watcher events that triggered this run (``extra["payload"]`` of each asset event)."""
    events = context.get("triggering_asset_events") or {}
    payloads = []
    for per_asset in events.values():
        for event in per_asset:
            extra = dict(event.extra or {})
            if isinstance(extra.get("payload"), dict):
                payloads.append(extra["payload"])
    return payloads


with DAG(
    dag_id="event_consumer_corsica_ndvi",
    description="Reports each Corsica max-NDVI batch job that reaches DONE, announced by an asset watcher",
    schedule=[CORSICA_NDVI_DONE],
    start_date=datetime(2024, 1, 1),
    catchup=False,
    tags=["sentinel-hub", "batch", "v2", "event-driven", "example"],
    doc_md=__doc__,
) as dag:

    @task
    def report(**context: Any) -> list[dict[str, Any]]:
        reports = []
        for payload in watcher_payloads(context):
            reports.append(
                {
                    "request_id": payload.get("request_id"),
                    "status": payload.get("status"),
                    "output_location": payload.get("output_location"),
                    "cost_pu": payload.get("cost_pu"),
                    "finished": payload.get("finished"),
                }
            )
            print(
                f"SENTINEL_BATCH_EVENT {payload.get('request_id')} {payload.get('status')}: results in "
                f"{payload.get('output_location')} (cost {payload.get('cost_pu')} PU, "
                f"finished {payload.get('finished')})"
            )
        if not reports:
            print("Started without a watcher event (manual run): nothing to report")
        return reports

    report()
