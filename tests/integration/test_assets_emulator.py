"""Assets (Datasets on 2.11): a finished job's asset event carries the request's facts, and the downstream DAG
scheduled on that asset runs with them (scheduler steps as in ``asset_scheduling.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration import asset_scheduling as sched

pytestmark = pytest.mark.integration

DAGS = Path(__file__).resolve().parents[2] / "dags_examples"
PRODUCER = DAGS / "asset_producer_corsica_v2.py"
DOWNSTREAM = DAGS / "downstream_corsica_ndvi_report.py"
BUCKET = "asset-test-bucket"
ASSET_URI = f"s3://{BUCKET}/corsica-ndvi"  # as declared in the example DAGs


@pytest.fixture
def env(sentinel_batch_emulator, monkeypatch):
    values = {
        "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT": sentinel_batch_emulator.airflow_conn_json("v2"),
        "AIRFLOW_CONN_SENTINEL_BATCH_BUCKET": '{"conn_type": "aws", "login": "AKIAEMULATOR", "password": "emulator-bucket-secret"}',
        "SENTINEL_BATCH_BUCKET": BUCKET,
        "SENTINEL_BATCH_RESULTS_URL": sentinel_batch_emulator.data_dir.as_uri(),
        "SENTINEL_BATCH_POLL_INTERVAL": "0.2",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def test_downstream_dag_runs_after_the_producers_asset_event(dag_runner, env, sentinel_batch_emulator):
    support = [DOWNSTREAM, DAGS / "include"]
    sched.place_files(PRODUCER, support)
    sched.sync_and_unpause(["downstream_corsica_ndvi_report"])

    produced = dag_runner(PRODUCER, "asset_producer_corsica_v2", support_files=support)
    assert produced.succeeded, produced.describe()
    summary = produced.xcom("wait_for_done")
    request_id = summary["request_id"]
    location = f"s3://{BUCKET}/corsica-ndvi/{request_id}/"
    assert summary["results"]["location"] == location
    assert summary["results"]["counts"]["done"] == summary["results"]["counts"]["total"] > 0

    # Airflow recorded the event with the task's extra, and queued the DAG scheduled on the asset
    events = sched.asset_events(ASSET_URI, "asset_producer_corsica_v2")
    assert len(events) == 1, events
    extra = events[0]["extra"]
    assert extra["request_id"] == request_id and extra["status"] == "DONE" and extra["api_version"] == "v2"
    assert extra["location"] == location
    assert extra["unit"] == "features" and extra["done"] == summary["results"]["counts"]["done"]
    assert extra["failed"] == 0 and extra["cost_pu"] > 0
    assert extra["execution_db"] == f"{location}execution-{request_id}.sqlite"
    assert "emulator-bucket-secret" not in repr(extra) and "AKIAEMULATOR" not in repr(extra)
    assert events[0]["source_task_id"] == "wait_for_done"
    assert sched.queued_for("downstream_corsica_ndvi_report") == 1

    # the scheduler's own code creates the asset-triggered run; its task sees the triggering event
    run_id = sched.create_asset_triggered_run("downstream_corsica_ndvi_report")
    consumed = sched.consumed_events("downstream_corsica_ndvi_report", run_id)
    assert [e["id"] for e in consumed] == [events[0]["id"]]
    assert sched.queued_for("downstream_corsica_ndvi_report") == 0
    downstream = sched.run_existing_dag_run(
        DOWNSTREAM, "downstream_corsica_ndvi_report", run_id, support_files=[PRODUCER, DAGS / "include"]
    )
    assert downstream.succeeded, downstream.describe()
    report = downstream.xcom("report")
    assert report == [
        {
            "request_id": request_id,
            "status": "DONE",
            "location": location,
            "features_done": extra["done"],
            "features_failed": 0,
            "cost_pu": extra["cost_pu"],
        }
    ]


@pytest.mark.sentinel_batch_emulator(tile_failure_rate=0.5, seed=5)
def test_too_many_failed_features_fail_the_producer_and_emit_no_event(dag_runner, env):
    support = [DOWNSTREAM, DAGS / "include"]
    sched.place_files(PRODUCER, support)
    sched.sync_and_unpause(["downstream_corsica_ndvi_report"])
    before = len(sched.asset_events(ASSET_URI))
    produced = dag_runner(PRODUCER, "asset_producer_corsica_v2", support_files=support)
    assert produced.task_states["wait_for_done"] == "failed", produced.describe()
    assert "over max_failed_fraction=0.05" in produced.log("wait_for_done")
    assert produced.task_states["stop_on_failure"] == "success"
    assert len(sched.asset_events(ASSET_URI)) == before
