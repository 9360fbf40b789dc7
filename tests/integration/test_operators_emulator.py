"""Operators, sensor and trigger on real Airflow (dag.test, real deferral) against the emulator."""

from __future__ import annotations

import asyncio
import json
import textwrap
import time
from functools import partial

import pytest

from airflow_provider_sentinel_batch.triggers.batch import SentinelBatchTrigger
from tests.payloads import corsica_v1, corsica_v2

pytestmark = pytest.mark.integration


v1_payload = partial(corsica_v1, "corsica-bucket")
v2_payload = partial(corsica_v2, "s3://corsica-bucket/v2")


def dag_source(
    dag_id: str, version: str, *, start: str = "", wait: str = "", create: str = "", extra: str = ""
) -> str:
    payload = v1_payload() if version == "v1" else v2_payload()
    return textwrap.dedent(
        f'''
        import json
        from datetime import datetime, timedelta

        from airflow.providers.common.compat.sdk import DAG, AirflowException, task
        from airflow_provider_sentinel_batch.operators.batch import (
            SentinelBatchAnalyseOperator,
            SentinelBatchCancelOperator,
            SentinelBatchCreateOperator,
            SentinelBatchStartOperator,
        )
        from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

        PAYLOAD = json.loads({json.dumps(payload)!r})
        FAST = dict(deferrable=True, poll_interval=0.2, analysis_poll_interval=0.1, api_version="{version}")
        CREATED_AT = "{{{{ ti.xcom_pull(task_ids='create', key='created_at') }}}}"

        class CrashOnce(SentinelBatchCreateOperator):
            """Dies right after a successful create on its first try, like a killed worker."""

            def execute(self, context):
                request_id = super().execute(context)
                if context["ti"].try_number <= 1:
                    raise RuntimeError("worker lost right after create")
                return request_id

        @task(trigger_rule="one_failed")
        def watcher():
            raise AirflowException("an upstream task failed")

        with DAG("{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
            create = {create or "SentinelBatchCreateOperator"}(task_id="create", payload=PAYLOAD, api_version="{version}")
            analyse = SentinelBatchAnalyseOperator(
                task_id="analyse", request_id=create.output, created_at=CREATED_AT, wait_for_completion=True, **FAST
            )
            start = SentinelBatchStartOperator(task_id="start", request_id=create.output, **FAST{start})
            wait = SentinelBatchSensor(task_id="wait", request_id=create.output, wait_for="DONE", **FAST{wait})
            cancel = SentinelBatchCancelOperator(
                task_id="cancel_on_failure", request_id=create.output, api_version="{version}", trigger_rule="one_failed"
            )
            create >> analyse >> start >> wait >> cancel
            # the cancel task succeeding must not turn a failed run green: a watcher leaf fails the run
            list(dag.tasks) >> watcher()
        {extra}
        '''
    )


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_corsica_workflow_end_to_end(dag_runner, emulator, version):
    server = emulator(version)
    result = dag_runner(dag_source(f"ops_{version}", version, start=", max_cost_pu=100000"), f"ops_{version}")
    assert result.succeeded, result.describe()
    assert result.task_states["cancel_on_failure"] == "skipped"
    summary = result.xcom("wait")
    assert summary["status"] == "DONE" and summary["api_version"] == version
    assert summary["request_id"] == result.xcom("create")
    assert summary["cost_pu"] > 0
    if version == "v1":
        assert (
            summary["tiles"]["PROCESSED"] > 0
            and summary["location"] == f"s3://corsica-bucket/{summary['request_id']}/"
        )
    else:
        assert (
            summary["completionPercentage"] == 100
            and summary["location"] == f"s3://corsica-bucket/v2/{summary['request_id']}/"
        )
    assert result.deferrals("wait") >= 1 or result.xcom("wait")  # waited on the triggerer or was already DONE
    assert result.xcom("analyse")["status"] in ("ANALYSIS_DONE", "PROCESSING", "DONE")
    stats = server.stats()
    assert stats["jobs_created"] == 1
    assert stats["token_requests"] <= 3  # one per process-wide cache; dag.test may re-create nothing else


def test_retry_after_crash_between_create_and_wait_creates_no_second_job(dag_runner, emulator):
    server = emulator("v1")
    source = dag_source("ops_crash", "v1", create="CrashOnce").replace(
        'task_id="create", payload=PAYLOAD',
        'task_id="create", payload=PAYLOAD, retries=1, retry_delay=timedelta(0)',
    )
    result = dag_runner(source, "ops_crash", disable_retries=False)
    assert result.succeeded, result.describe()
    assert result.task("create").try_number == 2
    assert server.stats()["jobs_created"] == 1
    assert "Re-attaching to batch request" in result.log("create")


def test_v1_cost_guard_refuses_to_start(dag_runner, emulator):
    server = emulator("v1")
    result = dag_runner(dag_source("ops_cost_v1", "v1", start=", max_cost_pu=0.5"), "ops_cost_v1")
    assert not result.succeeded
    assert result.task_states["start"] == "failed"
    assert "means about" in result.log("start") and "over max_cost_pu=0.5" in result.log("start")
    assert result.task_states["cancel_on_failure"] == "success"
    assert server.state.job_status(result.xcom("create")) == "CANCELED"


@pytest.mark.sentinel_batch_emulator(time_scale=50)
def test_v2_cost_guard_stops_the_job(dag_runner, emulator):
    server = emulator("v2")
    result = dag_runner(dag_source("ops_cost_v2", "v2", wait=", max_cost_pu=0.001"), "ops_cost_v2")
    assert result.task_states["wait"] == "failed", result.describe()
    assert "over max_cost_pu=0.001" in result.log("wait")
    stats = server.stats()
    assert any(k.endswith("/stop") and v >= 1 for k, v in stats["calls"].items()), stats["calls"]


@pytest.mark.sentinel_batch_emulator(tile_failure_rate=0.2, seed=3)
@pytest.mark.parametrize(
    ("policy", "succeeds"), [("fail", False), ("succeed_with_warning", True), ("restart", True)]
)
def test_v1_partial_policies(dag_runner, emulator, policy, succeeds):
    emulator("v1")
    result = dag_runner(
        dag_source(f"ops_partial_{policy}", "v1", wait=f", partial_policy={policy!r}"),
        f"ops_partial_{policy}",
    )
    assert result.succeeded is succeeds, result.describe()
    if policy == "fail":
        assert "PARTIAL" in result.log("wait") and "failed tiles" in result.log("wait")
    if policy == "restart":
        assert result.xcom("wait")["status"] == "DONE"
    if policy == "succeed_with_warning":
        assert result.xcom("wait")["partial"] is True


@pytest.mark.sentinel_batch_emulator(time_scale=5)
def test_deadline_stops_the_job(dag_runner, emulator):
    server = emulator("v1")
    source = dag_source("ops_deadline", "v1", wait=", wait_timeout=1.5, cancel_on_timeout=True")
    started = time.monotonic()
    result = dag_runner(source, "ops_deadline")
    assert result.task_states["wait"] == "failed", result.describe()
    assert "did not reach DONE before the deadline" in result.log("wait")
    assert time.monotonic() - started < 60
    assert any(k.endswith("/cancel") for k in server.stats()["calls"])


@pytest.mark.sentinel_batch_emulator(rate_429=0.3, rate_5xx=0.1, burst_5xx=2, token_lifetime=2, seed=11)
def test_faults_and_short_tokens_do_not_fail_the_run(dag_runner, emulator):
    server = emulator("v2")
    result = dag_runner(dag_source("ops_faults", "v2"), "ops_faults")
    assert result.succeeded, result.describe()
    stats = server.stats()
    assert stats["jobs_created"] == 1
    assert sum(stats["faults_injected"].values()) > 0


@pytest.mark.sentinel_batch_emulator(time_scale=60)
async def test_trigger_recreated_from_serialize_mid_wait_continues(sentinel_batch_emulator, monkeypatch):
    """A triggerer restart: the running trigger is cancelled, a new one is built from serialize() and resumes."""
    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", sentinel_batch_emulator.airflow_conn_json("v2"))
    hook = SentinelBatchHook()
    rid = await asyncio.to_thread(lambda: hook.create_request(v2_payload())["id"])
    await asyncio.to_thread(hook.start, rid)
    first = SentinelBatchTrigger(
        request_id=rid,
        conn_id="sentinel_batch_default",
        api_version="v2",
        poll_interval=0.1,
        analysis_poll_interval=0.05,
    )
    task = asyncio.ensure_future(first.run().__anext__())
    await asyncio.sleep(0.5)
    assert not task.done()
    task.cancel()  # triggerer shutdown
    with pytest.raises(asyncio.CancelledError):
        await task
    classpath, kwargs = first.serialize()
    assert classpath.endswith("SentinelBatchTrigger")
    second = SentinelBatchTrigger(**json.loads(json.dumps(kwargs)))
    event = (await asyncio.wait_for(second.run().__anext__(), timeout=60)).payload
    assert event["outcome"] == "success"
    stats = sentinel_batch_emulator.stats()
    assert not any(k.endswith("/stop") for k in stats["calls"])  # the restart did not stop the job
