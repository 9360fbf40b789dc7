"""Batch Statistical through the Hook and the async client, over real HTTP against the emulator."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from airflow_provider_sentinel_batch.exceptions import (
    SentinelBatchAPIError,
    SentinelBatchNotFoundError,
    SentinelBatchValidationError,
)
from airflow_provider_sentinel_batch.hooks.async_client import SentinelBatchAsyncClient
from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
from airflow_provider_sentinel_batch.retry import RetryPolicy
from tests.emulator.stat_helpers import DROP, stat_payload, write_parcels

FAST = RetryPolicy(backoff_initial=0.01, backoff_max=0.2, default_retry_after=0.01, max_retry_after=0.05)


@pytest.fixture
def hook(sentinel_batch_emulator, monkeypatch) -> SentinelBatchHook:
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", sentinel_batch_emulator.airflow_conn_json("v2"))
    write_parcels(sentinel_batch_emulator.data_dir, count=5)
    return SentinelBatchHook(retry_policy=FAST)


def wait_status(
    hook: SentinelBatchHook, rid: str, statuses: set[str], timeout: float = 30.0
) -> dict[str, Any]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = hook.get_statistical_status(rid)
        if status["status"] in statuses:
            return status
        time.sleep(0.02)
    raise AssertionError(f"{rid} never reached {statuses}; last {status}")


def test_create_analyse_start_done(sentinel_batch_emulator, hook):
    created = hook.create_statistical_request(stat_payload())
    rid = created["id"]
    assert created["status"] == "CREATED" and created["costPU"] == 0
    assert hook.get_statistical_request(rid)["request"]["aggregation"]["aggregationInterval"] == {"of": "P1M"}
    hook.analyse_statistical(rid)
    wait_status(hook, rid, {"ANALYSIS_DONE"})
    hook.start_statistical(rid)
    done = wait_status(hook, rid, {"DONE", "FAILED", "STOPPED"})
    assert done["status"] == "DONE" and done["completionPercentage"] == 100 and done["costPU"] >= 100
    folder = sentinel_batch_emulator.data_dir / "stat-bucket" / "stats" / rid
    assert sorted(p.name for p in folder.iterdir()) == [f"{i}.json" for i in range(1, 6)]
    stats = sentinel_batch_emulator.stats()
    assert stats["jobs_created"] == 1 and stats["token_requests"] == 1  # one token for every call


def test_list_pages_through_every_request(hook):
    ids = [hook.create_statistical_request(stat_payload())["id"] for _ in range(5)]
    assert [r["id"] for r in hook.iter_statistical_requests(page_size=2)] == ids
    assert [r["id"] for r in hook.list_statistical_requests(sort="created:desc")] == ids[::-1]
    assert all("costPU" in r for r in hook.list_statistical_requests())


def test_stop_and_deprecated_cancel(hook):
    rid = hook.create_statistical_request(stat_payload())["id"]
    hook.analyse_statistical(rid)
    wait_status(hook, rid, {"ANALYSIS_DONE"})
    hook.stop_statistical(rid)
    stopped = hook.get_statistical_status(rid)
    assert (stopped["status"], stopped["stoppedStatusReason"]) == ("STOPPED", "USER_ACTION")
    with pytest.warns(DeprecationWarning, match="use stop_statistical"):
        hook.cancel_statistical(rid)  # 204 on a stopped request, nothing changes
    assert hook.get_statistical_request(rid)["status"] == "STOPPED"


def test_local_validation_sends_nothing(sentinel_batch_emulator, hook):
    with pytest.raises(SentinelBatchValidationError, match=r"aggregation\.evalscript is missing"):
        hook.create_statistical_request(stat_payload(**{"aggregation.evalscript": DROP}))
    assert sentinel_batch_emulator.stats()["calls"] == {}


def test_service_errors_are_quoted(hook):
    with pytest.raises(SentinelBatchAPIError) as info:
        hook.create_statistical_request(stat_payload(**{"aggregation.evalscript": DROP}), validate=False)
    error = info.value
    assert (error.status, error.code) == (400, "COMMON_BAD_PAYLOAD")
    assert error.message == (
        "Invalid request payload: aggregation->evalscript: either evalscript or evalscriptReference is required"
    )
    assert error.errors == [
        {
            "parameter": "aggregation->evalscript",
            "violation": "either evalscript or evalscriptReference is required",
        }
    ]
    with pytest.raises(SentinelBatchNotFoundError):
        hook.get_statistical_status("00000000-0000-4000-8000-000000000000")


def test_not_enough_pu_is_a_clear_403(sentinel_batch_emulator, hook):
    sentinel_batch_emulator.state.set_pu_budget(500)
    with pytest.raises(SentinelBatchAPIError) as info:
        hook.create_statistical_request(stat_payload())
    assert info.value.status == 403
    assert "need at least 1000 PU" in info.value.message


@pytest.mark.sentinel_batch_emulator(rate_429=0.5, rate_5xx=0.1, burst_5xx=2, seed=3)
def test_retry_policy_applies(sentinel_batch_emulator, hook):
    hook = SentinelBatchHook(retry_policy=RetryPolicy(**{**FAST.to_dict(), "max_attempts": 10}))
    rid = hook.create_statistical_request(stat_payload())["id"]
    for _ in range(15):
        assert hook.get_statistical_status(rid)["id"] == rid
    assert sum(sentinel_batch_emulator.stats()["faults_injected"].values()) > 0
    assert sentinel_batch_emulator.stats()["jobs_created"] == 1


@pytest.mark.sentinel_batch_emulator(not_found_after_create=0.5)
def test_404_grace_after_create(sentinel_batch_emulator, hook):
    rid = hook.create_statistical_request(stat_payload())["id"]
    assert hook.get_statistical_request(rid)["id"] == rid
    calls = sentinel_batch_emulator.stats()["calls"]
    assert calls["GET /api/v1/statistics/batch/{id}"] >= 2


def test_async_client_get_and_stop(sentinel_batch_emulator, hook):
    sentinel_batch_emulator.state.set_time_scale(1e-6)  # the test moves the clock
    rid = hook.create_statistical_request(stat_payload())["id"]
    hook.start_statistical(rid)
    sentinel_batch_emulator.advance(70)  # queued, analysed, processing; no feature finished yet
    settings = hook.settings

    async def run() -> tuple[dict[str, Any], dict[str, Any]]:
        async with SentinelBatchAsyncClient(settings, retry_policy=FAST) as client:
            status = await client.get_statistical(rid)
            assert status["status"] == "PROCESSING"
            await client.stop_statistical(rid)
            return status, await client.get_statistical(rid, status_only=False)

    seen, after = asyncio.run(run())
    assert "costPU" in seen and "request" not in seen
    assert after["status"] == "STOPPED" and after["userAction"] == "STOP" and "request" in after
