"""Credentials against the emulator's real token endpoint, and in a real DAG run with retries configured."""

from __future__ import annotations

import json

import pytest

from airflow_provider_sentinel_batch.exceptions import SentinelBatchCredentialsError
from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
from airflow_provider_sentinel_batch.retry import RetryPolicy

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

FAST = RetryPolicy(backoff_initial=0.01, backoff_max=0.2, default_retry_after=0.01, max_retry_after=0.05)
WRONG = "not-the-secret-41d7"


@pytest.fixture
def two_conns(sentinel_batch_emulator, monkeypatch):
    """``right`` with the emulator's secret, ``wrong`` with the same client id and another secret."""
    right = sentinel_batch_emulator.airflow_conn_json("v2")
    wrong = json.loads(right)
    wrong["password"] = WRONG
    monkeypatch.setenv("AIRFLOW_CONN_RIGHT", right)
    monkeypatch.setenv("AIRFLOW_CONN_WRONG", json.dumps(wrong))
    return lambda conn_id: SentinelBatchHook(sentinel_batch_conn_id=conn_id, retry_policy=FAST)


def test_wrong_secret_gets_no_token_from_the_cache(sentinel_batch_emulator, two_conns):
    assert two_conns("right").list_tiling_grids(use_cache=False)
    with pytest.raises(SentinelBatchCredentialsError, match="HTTP 401 invalid_client") as exc:
        two_conns("wrong").list_tiling_grids(use_cache=False)
    assert WRONG not in str(exc.value)
    stats = sentinel_batch_emulator.stats()
    assert stats["token_requests"] == 2 and stats["tokens_issued"] == 1


def test_test_connection_proves_the_secret(sentinel_batch_emulator, two_conns):
    two_conns("right").get_token()  # this process now holds a valid token for the client id
    ok, message = two_conns("wrong").test_connection()
    assert not ok and "invalid_client" in message and WRONG not in message
    ok, message = two_conns("right").test_connection()
    assert ok and "tiling grids visible" in message, message
    # a fresh token for the test, not the cached one
    assert sentinel_batch_emulator.stats()["tokens_issued"] == 2


FAIL_FAST_DAG = """
from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG
from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator

PAYLOAD = {payload}

with DAG("{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    SentinelBatchCreateOperator(
        task_id="create", payload=PAYLOAD, api_version="v1", retries=2, retry_delay=timedelta(seconds=1)
    )
"""


def test_wrong_secret_fails_the_task_without_airflow_retries(dag_runner, sentinel_batch_emulator):
    from tests.payloads import corsica_v1

    conn = json.loads(sentinel_batch_emulator.airflow_conn_json("v1"))
    conn["password"] = WRONG
    dag_id = "wrong_secret_no_retry"
    source = FAIL_FAST_DAG.format(dag_id=dag_id, payload=repr(corsica_v1("my-bucket")))
    result = dag_runner(
        source, dag_id, env={"AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT": json.dumps(conn)}, disable_retries=False
    )
    create = result.task("create")
    assert create.state == "failed", result.describe()
    assert create.try_number == 1, result.describe()  # retries=2 configured, none used
    # the token URL is readable in the error (a "token_url" extra would have it masked as ***)
    assert (
        f"Token request to {sentinel_batch_emulator.token_url} failed: HTTP 401 invalid_client" in create.log
    )
    assert WRONG not in create.log
    assert sentinel_batch_emulator.stats()["token_requests"] == 1
