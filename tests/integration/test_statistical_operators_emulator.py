"""Batch Statistical through the operators and the deferrable sensor (``api_version="statistical"``) on real
Airflow (dag.test, real deferral) against the emulator: success, FAILED, STOPPED by a user and for lack of PU,
the cost budget, failure thresholds, and a retried create that re-attaches."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.emulator.stat_helpers import stat_payload, write_parcels

pytestmark = pytest.mark.integration
BUCKET_SECRET = "canary-stat-bucket-secret-77a1"


def dag_source(
    dag_id: str, *, create: str = "", wait: str = "", middle: str = "", payload: dict | None = None
) -> str:
    body = payload or stat_payload()
    for place in (body["input"]["features"]["s3"], body["output"]["s3"]):
        place.pop("accessKey", None), place.pop("secretAccessKey", None)  # the keys come from the connection
    return textwrap.dedent(
        f'''
        import json
        from datetime import datetime, timedelta

        from airflow.providers.common.compat.sdk import DAG, AirflowException, task
        from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
        from airflow_provider_sentinel_batch.operators.batch import (
            SentinelBatchAnalyseOperator,
            SentinelBatchCreateOperator,
            SentinelBatchStartOperator,
            SentinelBatchStopOperator,
        )
        from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

        PAYLOAD = json.loads({json.dumps(body)!r})
        FAST = dict(deferrable=True, poll_interval=0.2, analysis_poll_interval=0.1, api_version="statistical")
        RID = "{{{{ ti.xcom_pull(task_ids='create', key='request_id') }}}}"

        class CrashOnce(SentinelBatchCreateOperator):
            def execute(self, context):
                request_id = super().execute(context)
                if context["ti"].try_number <= 1:
                    raise RuntimeError("worker lost right after create")
                return request_id

        @task
        def someone_stops(request_id):
            SentinelBatchHook(api_version="statistical").stop_or_cancel(request_id)

        @task(trigger_rule="one_failed")
        def watcher():
            raise AirflowException("an upstream task failed")

        with DAG("{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
            create = {create or "SentinelBatchCreateOperator"}(
                task_id="create", payload=PAYLOAD, api_version="statistical", bucket_conn_id="stat_bucket"
            )
            analyse = SentinelBatchAnalyseOperator(task_id="analyse", request_id=RID, wait_for_completion=True, **FAST)
            start = SentinelBatchStartOperator(task_id="start", request_id=RID, **FAST)
            wait = SentinelBatchSensor(task_id="wait", request_id=RID, wait_for="DONE", **FAST{wait})
            stop = SentinelBatchStopOperator(
                task_id="stop_on_failure", request_id=RID, api_version="statistical", trigger_rule="one_failed"
            )
            create >> analyse >> start {middle}>> wait >> stop
            list(dag.tasks) >> watcher()
        '''
    )


@pytest.fixture
def stat_emulator(emulator):
    """The shared emulator, the ``stat_bucket`` connection with the bucket keys, and eight parcels to read."""
    server = emulator("v2", bucket_keys=("stat-access-key", BUCKET_SECRET), bucket_conn_id="stat_bucket")
    write_parcels(server.data_dir, count=8)
    return server


def assert_no_secret(result) -> None:
    for task in result.tasks.values():
        assert BUCKET_SECRET not in task.log, task.task_id
        assert BUCKET_SECRET not in json.dumps(task.xcom, default=str), task.task_id


def test_success_with_results_counts(dag_runner, stat_emulator):
    wait = f", results_url={stat_emulator.data_dir.as_uri()!r}, max_failed_fraction=0.1"
    result = dag_runner(dag_source("stat_ok", wait=wait), "stat_ok")
    assert result.succeeded, result.describe()
    assert result.task_states["stop_on_failure"] == "skipped"
    rid = result.xcom("create")
    summary = result.xcom("wait")
    assert (summary["status"], summary["api_version"], summary["request_id"]) == ("DONE", "statistical", rid)
    assert summary["completionPercentage"] == 100 and summary["cost_pu"] >= 100
    assert summary["location"] == f"s3://stat-bucket/stats/{rid}/"
    assert summary["results"]["counts"] == {"total": 8, "done": 8, "failed": 0, "pending": 0}
    assert summary["results"]["rows"] > 0
    assert "cost" in result.log("wait") and "% complete" in result.log("wait")
    assert stat_emulator.stats()["jobs_created"] == 1
    sent = stat_emulator.state.stat_requests[rid].body
    assert sent["output"]["s3"]["secretAccessKey"] == BUCKET_SECRET  # put in at run time, from the connection
    assert sent["input"]["features"]["s3"]["accessKey"] == "stat-access-key"
    assert_no_secret(result)


def test_failed_analysis_fails_the_wait(dag_runner, stat_emulator):
    stat_emulator.state.queue_job_overrides(analysis_error="the GeoPackage has no polygons")
    result = dag_runner(dag_source("stat_failed"), "stat_failed")
    assert not result.succeeded
    assert result.task_states["analyse"] == "failed"
    assert "ended FAILED: the GeoPackage has no polygons" in result.log("analyse")
    assert result.task_states["stop_on_failure"] == "success"


@pytest.mark.sentinel_batch_emulator(time_scale=10)
def test_user_stop_fails_the_wait(dag_runner, stat_emulator):
    write_parcels(stat_emulator.data_dir, count=40)  # still processing when someone stops it
    result = dag_runner(dag_source("stat_user_stop", middle=">> someone_stops(RID) "), "stat_user_stop")
    assert result.task_states["wait"] == "failed", result.describe()
    assert "ended STOPPED (stoppedStatusReason USER_ACTION)" in result.log("wait")
    assert stat_emulator.state.stat_requests[result.xcom("create")].status == "STOPPED"


def test_out_of_pu_fails_the_wait(dag_runner, stat_emulator):
    stat_emulator.state.set_pu_budget(
        1000.01
    )  # enough to create and start; processing drops below 1000 at once
    result = dag_runner(dag_source("stat_oop"), "stat_oop")
    assert result.task_states["wait"] == "failed", result.describe()
    assert "ended STOPPED (stoppedStatusReason OUT_OF_PU)" in result.log("wait")


@pytest.mark.sentinel_batch_emulator(time_scale=50)
def test_cost_budget_stops_the_job(dag_runner, stat_emulator):
    write_parcels(stat_emulator.data_dir, count=40)
    result = dag_runner(dag_source("stat_cost", wait=", max_cost_pu=0.001"), "stat_cost")
    assert result.task_states["wait"] == "failed", result.describe()
    assert "over max_cost_pu=0.001" in result.log("wait")
    calls = stat_emulator.stats()["calls"]
    assert calls.get("POST /api/v1/statistics/batch/{id}/stop", 0) >= 1, calls
    assert stat_emulator.state.stat_requests[result.xcom("create")].status == "STOPPED"


def test_too_many_failed_features_fail_the_wait(dag_runner, stat_emulator):
    stat_emulator.state.queue_job_overrides(tile_failure_rate=0.5)
    wait = f", results_url={stat_emulator.data_dir.as_uri()!r}, max_failed_fraction=0.1"
    result = dag_runner(dag_source("stat_threshold", wait=wait), "stat_threshold")
    assert result.task_states["wait"] == "failed", result.describe()
    assert "4 of 8 features failed, over max_failed_fraction=0.1 (50.0% failed)" in result.log("wait")


def test_retried_create_reattaches(dag_runner, stat_emulator):
    source = dag_source("stat_crash", create="CrashOnce").replace(
        'task_id="create", payload=PAYLOAD',
        'task_id="create", payload=PAYLOAD, retries=1, retry_delay=timedelta(0)',
    )
    result = dag_runner(source, "stat_crash", disable_retries=False)
    assert result.succeeded, result.describe()
    assert result.task("create").try_number == 2
    assert stat_emulator.stats()["jobs_created"] == 1
    assert "Re-attaching to batch request" in result.log("create")
