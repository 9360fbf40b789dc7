"""SentinelBatchTrigger with respx: events, retries inside the wait, deadline, cost guard, kill, serialization."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
import respx

from airflow_provider_sentinel_batch.auth import TOKEN_CACHE
from airflow_provider_sentinel_batch.triggers.batch import SentinelBatchTrigger

from .conftest import BASE, SECRET, TOKEN_URL

RID = "0c7d7a36-1111-4222-8333-444455556666"
V2 = f"{BASE}/api/v2/batch/process/{RID}"
V1 = f"{BASE}/api/v1/batch/process/{RID}"
FAST = {"max_attempts": 2, "max_rate_limited": 2, "backoff_initial": 0.0, "default_retry_after": 0.0}


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    """Record the trigger's waits instead of sleeping."""
    waits: list[float] = []
    real_sleep = asyncio.sleep

    async def fake_sleep(delay, *args, **kwargs):
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return waits


@pytest.fixture
def api(conn_env):
    conn_env(api_version="v2")
    with respx.mock(assert_all_called=False) as router:
        router.post(TOKEN_URL).respond(json={"access_token": "tok", "expires_in": 3600})
        yield router


def trigger(**kwargs) -> SentinelBatchTrigger:
    defaults = {
        "request_id": RID,
        "conn_id": "sentinel_batch_default",
        "api_version": "v2",
        "poll_interval": 60.0,
        "analysis_poll_interval": 10.0,
        "retry_policy": FAST,
    }
    return SentinelBatchTrigger(**{**defaults, **kwargs})


async def first_event(t: SentinelBatchTrigger) -> dict:
    return (await t.run().__anext__()).payload


def statuses(*bodies):
    return [httpx.Response(200, json={"id": RID, **b}) for b in bodies]


def test_serialize_round_trip_has_no_secret():
    t = trigger(deadline=123.0, max_cost_pu=50.0, created_at=1.0)
    path, kwargs = t.serialize()
    assert path == "airflow_provider_sentinel_batch.triggers.batch.SentinelBatchTrigger"
    assert SentinelBatchTrigger(**kwargs).serialize() == (path, kwargs)
    assert SECRET not in json.dumps(kwargs)
    assert all(isinstance(v, str | int | float | bool | dict | type(None)) for v in kwargs.values())


async def test_waits_until_done_with_status_aware_intervals(api, no_sleep):
    route = api.get(V2).mock(
        side_effect=statuses(
            {"status": "ANALYSING", "userAction": "START"},
            {"status": "PROCESSING", "userAction": "START", "completionPercentage": 10, "costPU": 1.5},
            {
                "status": "DONE",
                "userAction": "START",
                "completionPercentage": 100,
                "costPU": 9.0,
                "request": {"output": {"delivery": {"s3": {"url": "s3://b/p", "secretAccessKey": "KEY"}}}},
            },
        )
    )
    event = await first_event(trigger())
    assert event["status"] == "success" and event["request_id"] == RID
    assert event["summary"]["cost_pu"] == 9.0 and event["summary"]["output_location"] == "s3://b/p"
    assert "KEY" not in json.dumps(event)  # bucket keys of the payload never leave the trigger
    assert route.call_count == 3
    assert no_sleep == [10.0, 60.0]  # fast while analysing, poll_interval while processing


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (
            {"status": "FAILED", "error": "Evalscript error: ReferenceError"},
            "failed",
            "ended FAILED: Evalscript error: ReferenceError",
        ),
        (
            {"status": "STOPPED", "stoppedStatusReason": "OUT_OF_PU"},
            "failed",
            "stoppedStatusReason OUT_OF_PU",
        ),
        ({"status": "ANALYSIS_DONE", "userAction": "ANALYSE"}, "not_started", "nobody started this job"),
    ],
)
async def test_failure_states_end_the_wait(api, body, status, text):
    api.get(V2).mock(side_effect=statuses(body))
    event = await first_event(trigger())
    assert event["status"] == status and text in event["message"]


async def test_wait_for_analysis(api):
    api.get(V2).mock(
        side_effect=statuses({"status": "ANALYSING", "userAction": "ANALYSE"}, {"status": "ANALYSIS_DONE"})
    )
    assert (await first_event(trigger(wait_for="ANALYSIS_DONE")))["status"] == "success"


async def test_transient_errors_are_ridden_out(api):
    route = api.get(V2).mock(
        side_effect=[
            httpx.Response(429, headers={"Retry-After": "5"}),
            httpx.Response(429),  # one poll's retries exhausted
            httpx.Response(503),
            httpx.ConnectError("boom"),  # and another one
            *statuses({"status": "DONE"}),
        ]
    )
    event = await first_event(trigger())
    assert event["status"] == "success"
    assert route.call_count == 5


async def test_bounded_consecutive_failures_give_an_error_event(api):
    route = api.get(V2).mock(
        return_value=httpx.Response(500, json={"error": {"message": "Internal", "code": "COMMON_EXCEPTION"}})
    )
    event = await first_event(trigger(max_poll_failures=3))
    assert event["status"] == "error"
    assert "3 consecutive status checks failed" in event["message"] and "COMMON_EXCEPTION" in event["message"]
    assert route.call_count == 6  # 3 polls x 2 attempts: bounded


async def test_unknown_request_is_an_immediate_error(api):
    api.get(V2).mock(
        return_value=httpx.Response(
            404, json={"error": {"status": 404, "message": "Not found", "code": "COMMON_NOT_FOUND"}}
        )
    )
    event = await first_event(trigger())
    assert event["status"] == "error" and "Not found" in event["message"]


async def test_404_right_after_create_is_retried(api):
    route = api.get(V2).mock(
        side_effect=[httpx.Response(404), httpx.Response(404), *statuses({"status": "DONE"})]
    )
    event = await first_event(trigger(created_at=time.time()))
    assert event["status"] == "success" and route.call_count == 3


async def test_token_expiry_401_refreshes_once(api):
    tokens = api.post(TOKEN_URL).mock(
        side_effect=[
            httpx.Response(200, json={"access_token": "t1", "expires_in": 3600}),
            httpx.Response(200, json={"access_token": "t2", "expires_in": 3600}),
        ]
    )
    route = api.get(V2).mock(
        side_effect=[
            *statuses({"status": "PROCESSING", "userAction": "START"}),
            httpx.Response(401),
            *statuses({"status": "DONE"}),
        ]
    )
    assert (await first_event(trigger()))["status"] == "success"
    assert tokens.call_count == 2
    assert route.calls[-1].request.headers["Authorization"] == "Bearer t2"


async def test_deadline_stops_the_job_when_asked(api):
    api.get(V2).mock(side_effect=statuses({"status": "PROCESSING", "userAction": "START"}) * 50)
    stop = api.post(f"{V2}/stop").respond(204)
    event = await first_event(
        trigger(deadline=time.time() + 0.05, cancel_on_timeout=True, poll_interval=0.01, adaptive=False)
    )
    assert event["status"] == "timeout" and "asked to stop" in event["message"]
    assert stop.call_count == 1


async def test_deadline_without_cancel_leaves_the_job(api):
    api.get(V2).mock(side_effect=statuses({"status": "PROCESSING", "userAction": "START"}) * 50)
    stop = api.post(f"{V2}/stop").respond(204)
    event = await first_event(trigger(deadline=time.time() - 1))
    assert event["status"] == "timeout" and stop.call_count == 0


async def test_v2_cost_guard_stops_and_reports(api):
    api.get(V2).mock(
        side_effect=statuses(
            {"status": "PROCESSING", "userAction": "START", "costPU": 10.0},
            {"status": "PROCESSING", "userAction": "START", "costPU": 120.0},
        )
    )
    stop = api.post(f"{V2}/stop").respond(204)
    event = await first_event(trigger(max_cost_pu=100.0))
    assert event["status"] == "cost_exceeded" and "cost 120 PU, over max_cost_pu=100" in event["message"]
    assert stop.call_count == 1


async def test_v1_partial_and_tiles_summary(conn_env):
    conn_env(api_version="v1")
    with respx.mock() as router:
        router.post(TOKEN_URL).respond(json={"access_token": "tok", "expires_in": 3600})
        router.get(V1).respond(json={"id": RID, "status": "PARTIAL", "valueEstimate": 300.0})
        router.get(f"{V1}/tiles").mock(
            side_effect=[
                httpx.Response(
                    200,
                    json={
                        "data": [{"id": 1, "status": "PROCESSED"}, {"id": 2, "status": "FAILED"}],
                        "links": {"nextToken": "2"},
                    },
                ),
                httpx.Response(200, json={"data": [{"id": 3, "status": "PROCESSED"}], "links": {}}),
            ]
        )
        event = await first_event(trigger(api_version="v1"))
    assert event["status"] == "partial"
    assert event["summary"]["tiles"] == {"PROCESSED": 2, "FAILED": 1}
    assert event["summary"]["cost_pu"] == 100.0


async def test_stale_partial_after_restart_is_waited_out(conn_env):
    conn_env(api_version="v1")
    with respx.mock() as router:
        router.post(TOKEN_URL).respond(json={"access_token": "tok", "expires_in": 3600})
        router.get(V1).mock(
            side_effect=statuses(
                {"status": "PARTIAL"}, {"status": "PROCESSING", "userAction": "START"}, {"status": "DONE"}
            )
        )
        router.get(f"{V1}/tiles").respond(json={"data": [], "links": {}})
        event = await first_event(
            trigger(api_version="v1", stale_status="PARTIAL", stale_until=time.time() + 600)
        )
    assert event["status"] == "success"


async def test_on_kill_stops_but_cancellation_does_not(api):
    api.get(V2).mock(side_effect=statuses({"status": "PROCESSING", "userAction": "START"}) * 1000)
    stop = api.post(f"{V2}/stop").respond(204)
    t = trigger(poll_interval=3600)
    task = asyncio.ensure_future(t.run().__anext__())
    for _ in range(5):
        await asyncio.sleep(0)
    task.cancel()  # a triggerer restart / reassignment: the job must keep running
    with pytest.raises(asyncio.CancelledError):
        await task
    assert stop.call_count == 0
    await t.on_kill()  # a user marked the task failed (Airflow 3.3+)
    assert stop.call_count == 1
    await trigger(cancel_on_kill=False).on_kill()
    assert stop.call_count == 1


async def test_many_triggers_share_one_token(api):
    tokens = api.post(TOKEN_URL).respond(json={"access_token": "shared", "expires_in": 3600})
    api.get(V2).mock(side_effect=lambda request: httpx.Response(200, json={"id": RID, "status": "DONE"}))
    events = await asyncio.gather(*(first_event(trigger()) for _ in range(50)))
    assert {e["status"] for e in events} == {"success"}
    assert tokens.call_count == 1 and sum(TOKEN_CACHE.fetches.values()) == 1
