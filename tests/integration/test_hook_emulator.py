"""The Hook and the async client over real HTTP against the emulator: Sentinel Hub's Batch
workflow example (v1, Corsica), v2, faults."""

from __future__ import annotations

import time
from functools import partial

import pytest

from airflow_provider_sentinel_batch.exceptions import SentinelBatchAuthError, SentinelBatchNotFoundError
from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
from airflow_provider_sentinel_batch.retry import RetryPolicy
from tests.payloads import corsica_v1, corsica_v2

FAST = RetryPolicy(backoff_initial=0.01, backoff_max=0.2, default_retry_after=0.01, max_retry_after=0.05)


v2_payload = partial(corsica_v2, "s3://my-bucket/corsica", data_type="sentinel-2-l2a")


def wait_until(hook, rid, statuses, timeout=30.0, **kwargs):
    deadline = time.time() + timeout
    while time.time() < deadline:
        request = hook.get_request(rid, **kwargs)
        if request["status"] in statuses:
            return request
        time.sleep(0.05)
    raise AssertionError(f"{rid} never reached {statuses}; last {request['status']}")


@pytest.fixture
def emulator_conn(sentinel_batch_emulator, monkeypatch):
    def set_conn(api_version: str):
        monkeypatch.setenv(
            "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", sentinel_batch_emulator.airflow_conn_json(api_version)
        )
        return SentinelBatchHook(retry_policy=FAST)

    return set_conn


def test_seed_workflow_call_by_call(sentinel_batch_emulator, emulator_conn):
    hook = emulator_conn("v1")
    created = hook.create_request(corsica_v1("my-bucket"))  # create
    rid = created["id"]
    assert created["status"] == "CREATED" and created["tileCount"] > 0
    assert rid in [r["id"] for r in hook.list_requests()]  # all requests
    assert hook.get_request(rid)["processRequest"]["evalscript"].startswith("//VERSION=3")  # one request
    assert hook.get_status(rid) in ("CREATED", "ANALYSING")  # status
    hook.analyse(rid)  # ANALYSE
    analysed = wait_until(hook, rid, {"ANALYSIS_DONE"})
    assert analysed["valueEstimate"] > 0
    tiles = hook.list_tiles(rid)  # tiles
    assert len(tiles) == analysed["tileCount"] and {t["status"] for t in tiles} == {"PENDING"}
    hook.start(rid)  # START
    assert hook.get_user_action(rid) == "START"  # latest user action
    hook.cancel(rid)  # CANCEL
    assert wait_until(hook, rid, {"CANCELED"})["userAction"] == "CANCEL"
    stats = sentinel_batch_emulator.stats()
    assert stats["jobs_created"] == 1 and stats["token_requests"] == 1


def test_v1_to_done_and_outputs(sentinel_batch_emulator, emulator_conn):
    hook = emulator_conn("v1")
    rid = hook.create_request(corsica_v1("my-bucket"))["id"]
    hook.start(rid)  # START without ANALYSE analyses first
    done = wait_until(hook, rid, {"DONE", "PARTIAL", "FAILED"})
    assert done["status"] == "DONE"
    assert {t["status"] for t in hook.iter_tiles(rid)} == {"PROCESSED"}
    assert hook.list_tiles(rid, status="FAILED") == []
    outputs = list((sentinel_batch_emulator.data_dir / "my-bucket" / rid).rglob("*.tif"))
    assert len(outputs) == done["tileCount"]


def test_v1_update_delete_and_grids(sentinel_batch_emulator, emulator_conn):
    hook = emulator_conn("v1")
    rid = hook.create_request(corsica_v1("my-bucket"))["id"]
    assert hook.update_request(rid, description="renamed")["description"] == "renamed"
    assert [g["id"] for g in hook.list_tiling_grids()][:3] == [0, 1, 2]
    assert hook.get_tiling_grid(0)["properties"]["resolutions"]
    hook.delete_request(rid)
    with pytest.raises(SentinelBatchNotFoundError):
        hook.get_request(rid)


def test_v2_workflow(sentinel_batch_emulator, emulator_conn):
    hook = emulator_conn("v2")
    created = hook.create_request(v2_payload())
    rid = created["id"]
    hook.analyse(rid)
    wait_until(hook, rid, {"ANALYSIS_DONE"})
    hook.update_request(rid, description="Max NDVI over Corsica (v2)")
    hook.start(rid)
    done = wait_until(hook, rid, {"DONE", "FAILED", "STOPPED"})
    assert done["status"] == "DONE" and done["completionPercentage"] == 100 and done["costPU"] > 0
    assert any(r["id"] == rid for r in hook.iter_requests(search="v2"))


def test_v2_stop(sentinel_batch_emulator, emulator_conn):
    hook = emulator_conn("v2")
    rid = hook.create_request(v2_payload())["id"]
    hook.analyse(rid)
    wait_until(hook, rid, {"ANALYSIS_DONE"})
    hook.stop(rid)
    stopped = wait_until(hook, rid, {"STOPPED"})
    assert stopped["stoppedStatusReason"] == "USER_ACTION"


@pytest.mark.sentinel_batch_emulator(rate_429=0.5, rate_5xx=0.1, burst_5xx=2, seed=7)
def test_hook_rides_out_429_and_5xx(sentinel_batch_emulator, emulator_conn):
    emulator_conn("v1")
    hook = SentinelBatchHook(retry_policy=RetryPolicy(**{**FAST.to_dict(), "max_attempts": 10}))
    rid = hook.create_request(corsica_v1("b"))["id"]
    for _ in range(20):
        assert hook.get_request(rid)["id"] == rid
    injected = sentinel_batch_emulator.stats()["faults_injected"]
    assert sum(injected.values()) > 0
    assert sentinel_batch_emulator.stats()["jobs_created"] == 1


@pytest.mark.sentinel_batch_emulator(not_found_after_create=0.5)
def test_404_window_after_create(sentinel_batch_emulator, emulator_conn):
    hook = emulator_conn("v1")
    rid = hook.create_request(corsica_v1("b"))["id"]
    assert hook.get_request(rid)["id"] == rid  # 404s during the window are retried
    calls = sentinel_batch_emulator.stats()["calls"]
    assert sum(v for k, v in calls.items() if k.startswith("GET /api/v1/batch/process/")) >= 2


@pytest.mark.sentinel_batch_emulator(token_lifetime=1)
def test_short_token_lifetime_refreshes(sentinel_batch_emulator, emulator_conn):
    hook = emulator_conn("v1")
    rid = hook.create_request(corsica_v1("b"))["id"]
    time.sleep(1.2)
    hook.get_request(rid)
    assert sentinel_batch_emulator.stats()["token_requests"] == 2


def test_revoked_token_is_replaced(sentinel_batch_emulator, emulator_conn):
    hook = emulator_conn("v1")
    rid = hook.create_request(corsica_v1("b"))["id"]
    sentinel_batch_emulator.revoke_tokens()
    assert hook.get_request(rid)["id"] == rid
    assert sentinel_batch_emulator.stats()["token_requests"] == 2


def test_wrong_secret_is_a_clear_auth_error(sentinel_batch_emulator, monkeypatch):
    import json

    conn = json.loads(sentinel_batch_emulator.airflow_conn_json("v1"))
    conn["password"] = "wrong-secret-123"
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", json.dumps(conn))
    with pytest.raises(SentinelBatchAuthError, match="HTTP 401 invalid_client") as exc:
        SentinelBatchHook(retry_policy=FAST).list_tiling_grids()
    assert "wrong-secret-123" not in str(exc.value)


def test_test_connection_against_emulator(sentinel_batch_emulator, emulator_conn):
    ok, message = emulator_conn("v2").test_connection()
    assert ok and "tiling grids visible" in message
