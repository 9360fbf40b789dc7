"""SentinelBatchTrigger with respx: events, retries inside the wait, deadline, cost guard, kill, serialization."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
import time
from types import SimpleNamespace

import httpx
import pytest
import respx

from airflow_provider_sentinel_batch.auth import TOKEN_CACHE
from airflow_provider_sentinel_batch.triggers import batch as batch_module
from airflow_provider_sentinel_batch.triggers.batch import SentinelBatchTrigger

from .conftest import BASE, SECRET, TOKEN_URL

RID = "0c7d7a36-1111-4222-8333-444455556666"
V2 = f"{BASE}/api/v2/batch/process/{RID}"
V1 = f"{BASE}/api/v1/batch/process/{RID}"
FAST = {"max_attempts": 2, "max_rate_limited": 2, "backoff_initial": 0.0, "default_retry_after": 0.0}


@pytest.fixture(autouse=True)
def no_sleep(monkeypatch):
    """Record the trigger's waits instead of sleeping.

    Only in this test's thread: ``asyncio.sleep`` is patched module-wide, and an emulator left running by other
    tests (uvicorn's loop in its own thread) sleeps through it too.
    """
    waits: list[float] = []
    real_sleep = asyncio.sleep
    test_thread = threading.get_ident()

    async def fake_sleep(delay, *args, **kwargs):
        if threading.get_ident() != test_thread:
            return await real_sleep(delay, *args, **kwargs)
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
    assert event["outcome"] == "success" and event["request_id"] == RID
    assert event["summary"]["cost_pu"] == 9.0 and event["summary"]["location"] == f"s3://b/p/{RID}/"
    assert "KEY" not in json.dumps(event)  # bucket keys of the payload never leave the trigger
    assert route.call_count == 3
    # waiting for DONE, the analysis is a preamble: the looks are held to a fixed 60 s poller's (never more);
    # the recorded sleeps take no time, so the third look is due when that poller's third is, 120 s in
    assert no_sleep == [pytest.approx(60.0, abs=1.0), pytest.approx(120.0, abs=1.0)]


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
    assert event["outcome"] == status and text in event["message"]


async def test_wait_for_analysis(api):
    api.get(V2).mock(
        side_effect=statuses({"status": "ANALYSING", "userAction": "ANALYSE"}, {"status": "ANALYSIS_DONE"})
    )
    assert (await first_event(trigger(wait_for="ANALYSIS_DONE")))["outcome"] == "success"


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
    assert event["outcome"] == "success"
    assert route.call_count == 5


async def test_bounded_consecutive_failures_give_an_error_event(api):
    route = api.get(V2).mock(
        return_value=httpx.Response(500, json={"error": {"message": "Internal", "code": "COMMON_EXCEPTION"}})
    )
    event = await first_event(trigger(max_poll_failures=3))
    assert event["outcome"] == "error"
    assert "3 consecutive status checks failed" in event["message"] and "COMMON_EXCEPTION" in event["message"]
    assert route.call_count == 6  # 3 polls x 2 attempts: bounded


async def test_unknown_request_is_an_immediate_error(api):
    api.get(V2).mock(
        return_value=httpx.Response(
            404, json={"error": {"status": 404, "message": "Not found", "code": "COMMON_NOT_FOUND"}}
        )
    )
    event = await first_event(trigger())
    assert event["outcome"] == "error" and "Not found" in event["message"]


async def test_404_right_after_create_is_retried(api):
    route = api.get(V2).mock(
        side_effect=[httpx.Response(404), httpx.Response(404), *statuses({"status": "DONE"})]
    )
    event = await first_event(trigger(created_at=time.time()))
    assert event["outcome"] == "success" and route.call_count == 3


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
    assert (await first_event(trigger()))["outcome"] == "success"
    assert tokens.call_count == 2
    assert route.calls[-1].request.headers["Authorization"] == "Bearer t2"


async def test_deadline_stops_the_job_when_asked(api, monkeypatch):
    # No wall-clock race: the wait's clock passes the deadline during the first look (on a loaded machine,
    # resolving the connection alone can outlast a deadline set a few milliseconds ahead).
    from airflow_provider_sentinel_batch import waiting

    ahead = {"by": 0.0}
    monkeypatch.setattr(waiting, "time", SimpleNamespace(time=lambda: time.time() + ahead["by"]))
    t = trigger(deadline=time.time() + 3600, cancel_on_timeout=True, poll_interval=0.01, adaptive=False)

    def processing_until_the_deadline_passes(request):
        ahead["by"] = 7200.0
        return httpx.Response(200, json={"id": RID, "status": "PROCESSING", "userAction": "START"})

    looks = api.get(V2).mock(side_effect=processing_until_the_deadline_passes)
    stop = api.post(f"{V2}/stop").respond(204)
    event = await first_event(t)
    assert event["outcome"] == "timeout" and "asked to stop" in event["message"]
    assert looks.call_count == 1 and stop.call_count == 1


async def test_deadline_without_cancel_leaves_the_job(api):
    api.get(V2).mock(side_effect=statuses({"status": "PROCESSING", "userAction": "START"}) * 50)
    stop = api.post(f"{V2}/stop").respond(204)
    event = await first_event(trigger(deadline=time.time() - 1))
    assert event["outcome"] == "timeout" and stop.call_count == 0


async def test_v2_cost_guard_stops_and_reports(api):
    api.get(V2).mock(
        side_effect=statuses(
            {"status": "PROCESSING", "userAction": "START", "costPU": 10.0},
            {"status": "PROCESSING", "userAction": "START", "costPU": 120.0},
        )
    )
    stop = api.post(f"{V2}/stop").respond(204)
    event = await first_event(trigger(max_cost_pu=100.0))
    assert event["outcome"] == "cost_exceeded" and "cost 120 PU, over max_cost_pu=100" in event["message"]
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
    assert event["outcome"] == "partial"
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
    assert event["outcome"] == "success"


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
    assert {e["outcome"] for e in events} == {"success"}
    assert tokens.call_count == 1 and sum(TOKEN_CACHE.fetches.values()) == 1


# ------------------------------------------------------------------------------------------ on_kill by state
# Airflow 3.3 calls a trigger's on_kill when a user marks the deferred task failed, but also when they mark it
# success or clear it: only a failed task may stop the job.
def killed_trigger(api, **kwargs) -> tuple[SentinelBatchTrigger, respx.Route]:
    t = trigger(**kwargs)
    t.task_instance = SimpleNamespace(dag_id="d", task_id="wait", run_id="r1", map_index=-1, try_number=1)
    return t, api.post(f"{V2}/stop").respond(204)


@pytest.fixture
def logs(monkeypatch, caplog):
    """The trigger's log lines (structlog on Airflow 3: routed to a stdlib logger caplog sees, on both lines)."""
    monkeypatch.setattr(
        SentinelBatchTrigger, "log", property(lambda _: logging.getLogger("test_trigger.on_kill"))
    )
    caplog.set_level(logging.INFO)
    return caplog


def state_is(monkeypatch, result) -> None:
    async def fake(self):
        if isinstance(result, BaseException):
            raise result
        return result

    monkeypatch.setattr(SentinelBatchTrigger, "_task_state", fake)


async def test_on_kill_stops_the_job_when_the_task_was_marked_failed(api, monkeypatch, logs):
    state_is(monkeypatch, "failed")
    t, stop = killed_trigger(api)
    await t.on_kill()
    assert stop.call_count == 1
    assert f"Asked the service to stop batch request {RID} (the task was marked failed)" in logs.text


@pytest.mark.parametrize(
    "state", ["success", None, "deferred", "scheduled", "queued", "running", "up_for_retry", "skipped"]
)
async def test_on_kill_leaves_the_job_running_when_the_task_did_not_fail(api, monkeypatch, logs, state):
    """Marked success (the user accepts the job), cleared (the next try re-attaches to this job: None, then
    scheduled ... deferred), or moved to another triggerer (still deferred)."""
    state_is(monkeypatch, state)
    t, stop = killed_trigger(api)
    await t.on_kill()
    assert stop.call_count == 0
    assert f"leaving batch request {RID} running" in logs.text


async def test_on_kill_stops_the_job_when_the_state_cannot_be_read(api, monkeypatch, logs):
    state_is(monkeypatch, RuntimeError("supervisor unreachable"))
    t, stop = killed_trigger(api)
    await t.on_kill()
    assert stop.call_count == 1  # a user acted on the task: the documented behaviour
    assert "Could not read the state" in logs.text and "supervisor unreachable" in logs.text


async def test_on_kill_state_lookup_is_bounded(api, monkeypatch):
    async def hangs(self):
        await asyncio.Event().wait()

    monkeypatch.setattr(SentinelBatchTrigger, "_task_state", hangs)
    monkeypatch.setattr(batch_module, "_on_kill_budget", lambda: 0.5)  # the lookup gets half of it here
    t, stop = killed_trigger(api)
    await asyncio.wait_for(t.on_kill(), timeout=5)
    assert stop.call_count == 1


async def test_on_kill_outlives_the_repeated_cancellation(api, monkeypatch):
    """Airflow 3.3 cancels the trigger task again with every state sync (~1 s) while on_kill runs: a slow state
    lookup (the first one on a fresh triggerer) must still end in the stop, not be cut off."""
    answered = asyncio.Event()

    async def slow(self):
        await answered.wait()
        return "failed"

    monkeypatch.setattr(SentinelBatchTrigger, "_task_state", slow)
    t, stop = killed_trigger(api)
    kill = asyncio.ensure_future(t.on_kill())
    for _ in range(3):  # three syncs while the lookup is pending
        await asyncio.sleep(0)
        kill.cancel("__airflow_user_action__")
    await asyncio.sleep(0)
    assert not kill.done() and stop.call_count == 0
    answered.set()
    await asyncio.wait_for(kill, timeout=5)  # returns normally once the work is done
    assert stop.call_count == 1


async def test_on_kill_is_bounded_and_never_raises(api, monkeypatch, logs):
    state_is(monkeypatch, "failed")

    async def stop_hangs(self, client, why):
        await asyncio.Event().wait()

    monkeypatch.setattr(SentinelBatchTrigger, "_stop", stop_hangs)
    monkeypatch.setattr(batch_module, "_on_kill_budget", lambda: 0.1)
    t, _ = killed_trigger(api)
    await asyncio.wait_for(t.on_kill(), timeout=5)  # returns by itself, before the framework's bound
    assert f"Best-effort stop of {RID} on kill failed: TimeoutError" in logs.text


async def test_on_kill_without_the_task_sdk_falls_back_to_stopping(api, monkeypatch):
    """Airflow 2 has no ``airflow.sdk`` (and never calls a trigger's on_kill): the lookup degrades to a stop."""
    monkeypatch.setitem(sys.modules, "airflow.sdk.execution_time.task_runner", None)  # import -> ImportError
    t, stop = killed_trigger(api)
    await t.on_kill()
    assert stop.call_count == 1


@pytest.mark.parametrize(
    ("map_index", "key", "state", "stops"),
    [
        (-1, "wait", "failed", 1),
        (-1, "wait", "success", 0),
        (3, "wait_3", "failed", 1),
        (3, "wait_3", None, 0),
    ],
)
async def test_on_kill_reads_the_state_through_the_task_sdk(api, monkeypatch, map_index, key, state, stops):
    """Airflow 3: ``RuntimeTaskInstance.get_task_states`` (a blocking call to the triggerer's supervisor) runs
    off the event loop; its answer is ``{run_id: {task_id or "<task_id>_<map_index>": state}}``."""
    task_runner = pytest.importorskip("airflow.sdk.execution_time.task_runner")
    from airflow.utils.state import TaskInstanceState

    calls: list[dict] = []
    loop_thread = threading.get_ident()

    def get_task_states(**kwargs):
        calls.append({**kwargs, "on_loop_thread": threading.get_ident() == loop_thread})
        value = None if state is None else TaskInstanceState(state)
        return {"r1": {key: value, "other": "failed"}}

    monkeypatch.setattr(task_runner.RuntimeTaskInstance, "get_task_states", staticmethod(get_task_states))
    t, stop = killed_trigger(api)
    t.task_instance.map_index = map_index
    await t.on_kill()
    assert calls == [
        {
            "dag_id": "d",
            "task_ids": ["wait"],
            "run_ids": ["r1"],
            "map_index": map_index,
            "on_loop_thread": False,
        }
    ]
    assert stop.call_count == stops


async def test_on_kill_missing_task_instance_in_the_answer_falls_back_to_stopping(api, monkeypatch):
    task_runner = pytest.importorskip("airflow.sdk.execution_time.task_runner")
    monkeypatch.setattr(task_runner.RuntimeTaskInstance, "get_task_states", staticmethod(lambda **kwargs: {}))
    t, stop = killed_trigger(api)
    await t.on_kill()
    assert stop.call_count == 1


# ------------------------------------------------------------------------------------ the pool's SSL context
async def test_pool_loads_ca_certificates_only_for_https(monkeypatch):
    """Loading the CA bundle costs 40-200 ms of CPU on the loop: not for a plain-http (loopback emulator) pool;
    an https token URL on an http base URL still gets a verifying context."""
    from airflow_provider_sentinel_batch.hooks import async_client

    loads: list[bool] = []
    real = httpx.create_ssl_context

    def counting(*args, **kwargs):
        loads.append(True)
        return real(*args, **kwargs)

    monkeypatch.setattr(async_client.httpx, "create_ssl_context", counting)
    emulator = "http://127.0.0.1:8080"
    plain = async_client._acquire(emulator, 5.0, tls=async_client._needs_tls(emulator, f"{emulator}/token"))
    lane = await plain.take(1.0)
    plain.give_back(lane)
    assert loads == [] and not plain.tls  # main client and lane built without loading any CA
    assert plain.ssl_context.verify_mode.name == "CERT_REQUIRED" and plain.ssl_context.check_hostname

    mixed = async_client._acquire(emulator, 5.0, tls=async_client._needs_tls(emulator, TOKEN_URL))
    assert mixed is not plain and mixed.tls and loads == [True]  # replaced, not shared without TLS
    again = async_client._acquire(emulator, 5.0, tls=False)
    assert again is mixed and loads == [True]  # a TLS pool serves plain-http users too
    secure = async_client._acquire(BASE, 5.0, tls=async_client._needs_tls(BASE, TOKEN_URL))
    assert secure.tls and loads == [True, True]
    for url, pool in ((emulator, plain), (emulator, mixed), (emulator, again), (BASE, secure)):
        await async_client._release(url, pool)
    assert plain.main.is_closed and mixed.main.is_closed and secure.main.is_closed
