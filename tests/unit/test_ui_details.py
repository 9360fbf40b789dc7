"""What a user sees of the operators in the UI and the logs: link targets, names, costs, and final errors."""

from __future__ import annotations

import logging

import httpx
import pytest
import respx
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_sentinel_batch.exceptions import SentinelBatchError, SentinelBatchRefusedError
from airflow_provider_sentinel_batch.models import cost_of
from airflow_provider_sentinel_batch.operators.batch import (
    SentinelBatchCancelOperator,
    SentinelBatchStopOperator,
)
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor
from airflow_provider_sentinel_batch.triggers.batch import SentinelBatchTrigger
from airflow_provider_sentinel_batch.waiting import summarize

from .conftest import BASE, GRIDS, TOKEN_URL
from .test_operators import RID, V1, ctx, request_body


@pytest.fixture
def v1(conn_env, token_mock, requests_mock):
    requests_mock.get(f"{V1}/tilinggrids", json=GRIDS)
    return requests_mock


def test_stop_operator_has_its_own_name():
    op = SentinelBatchStopOperator(task_id="stop", request_id=RID, api_version="v2")
    assert type(op).__name__ == "SentinelBatchStopOperator"  # what the UI's Operator column shows
    assert isinstance(op, SentinelBatchCancelOperator)


def test_cancel_pushes_its_links_so_the_ui_finds_them(v1):
    v1.get(f"{V1}/process/{RID}", json=request_body(status="DONE", bucketName="bucket"))
    context = ctx("cancel")
    assert SentinelBatchCancelOperator(task_id="cancel", request_id=RID).execute(context) == "DONE"
    links = context["ti"].xcoms["sentinel_batch_links"]
    assert links["dashboard"] == f"https://apps.sentinel-hub.com/dashboard/#/batch/{RID}"
    assert links["output"].startswith("https://s3.console.aws.amazon.com/s3/buckets/bucket?prefix=")


def test_v1_cost_prints_like_the_service_figures():
    assert cost_of("v1", {"valueEstimate": 561.729}) == 187.243
    assert str(summarize("v1", {"id": RID, "valueEstimate": 561.729})["cost_pu"]) == "187.243"


@pytest.fixture
def v2_trigger_api(conn_env):
    conn_env(api_version="v2")
    with respx.mock(assert_all_called=False) as router:
        yield router


async def test_refused_credentials_during_a_wait_end_it_without_retry(v2_trigger_api):
    v2_trigger_api.post(TOKEN_URL).respond(401, json={"error": "invalid_client"})
    trigger = SentinelBatchTrigger(
        request_id=RID, conn_id="sentinel_batch_default", api_version="v2", poll_interval=1.0
    )
    event = (await trigger.run().__anext__()).payload
    assert event["outcome"] == "error" and event["final"] is True and "invalid_client" in event["message"]
    sensor = SentinelBatchSensor(task_id="wait", request_id=RID, api_version="v2")
    with pytest.raises(SentinelBatchRefusedError, match="invalid_client") as exc:
        sensor.execute_complete(ctx("wait"), event)
    assert isinstance(exc.value, AirflowFailException)


def test_a_broken_wait_still_retries(conn_env):
    sensor = SentinelBatchSensor(task_id="wait", request_id=RID, api_version="v2")
    with pytest.raises(SentinelBatchError) as exc:
        sensor.execute_complete(
            ctx("wait"), {"request_id": RID, "outcome": "error", "message": "unreachable"}
        )
    assert not isinstance(exc.value, AirflowFailException)


@pytest.fixture
def logs(monkeypatch, caplog):
    """The trigger's log lines (structlog on Airflow 3: routed to a stdlib logger caplog sees, on both lines)."""
    monkeypatch.setattr(SentinelBatchTrigger, "log", property(lambda _: logging.getLogger("test_ui_details")))
    caplog.set_level(logging.INFO)
    return caplog


async def test_on_kill_says_why_it_leaves_the_job(conn_env, logs):
    trigger = SentinelBatchTrigger(
        request_id=RID, conn_id="sentinel_batch_default", api_version="v2", cancel_on_kill=False
    )
    await trigger.on_kill()
    assert f"cancel_on_kill=False: leaving batch request {RID} running" in logs.text


async def test_on_kill_says_when_the_stop_was_not_needed(v2_trigger_api, logs, monkeypatch):
    v2_trigger_api.post(TOKEN_URL).respond(json={"access_token": "t", "expires_in": 3600})
    v2_trigger_api.post(f"{BASE}/api/v2/batch/process/{RID}/stop").mock(
        return_value=httpx.Response(400, json={"error": {"status": 400, "message": "Task is already DONE"}})
    )
    trigger = SentinelBatchTrigger(request_id=RID, conn_id="sentinel_batch_default", api_version="v2")

    async def failed_state() -> str:
        return "failed"

    monkeypatch.setattr(trigger, "_task_state", failed_state)
    await trigger.on_kill()
    assert f"Batch request {RID} was already finished after the task was marked failed" in logs.text
    assert "Task is already DONE" in logs.text
