"""Task logs of real runs stay free of two pieces of noise.

* "Skipping masking for a secret as it's too short" for this provider's connections as the connection form
  writes them (a named deployment, an explicit default API version).
* "XCom not found ... sentinel_batch_links" when a task ends before it recorded its links (Airflow 3 asks every
  extra link for its target when the task ends, in the worker).

Airflow 3 registers every string value of a connection's extra with its log masker when a task looks the
connection up (``Connection.get_uri()`` reads ``extra_dejson``), and warns once per process for a value under
5 characters whatever its key. Airflow 2.11's masker has no minimum length and no such warning: there the test
checks that the run's logs stay free of it too, and the control (which needs the warning to exist) is skipped.
Airflow 2.11 asks for links only in the webserver (a quiet DB query); there the link test checks the targets.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

from airflow_provider_sentinel_batch import links
from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.integration import harness
from tests.integration.harness import AIRFLOW_V_3, DagRunResult

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

WARNING = "Skipping masking for a secret as it's too short"
BUCKET_CONN = json.dumps({"conn_type": "aws", "login": "AKIAEXAMPLE", "password": "bucket-secret-value"})


def connection(server: EmulatorServer, deployment: str, api_version: Any) -> str:
    """A CDSE connection whose URLs are overridden to reach the emulator (a preset plus overrides)."""
    conn = json.loads(server.airflow_conn_json())
    conn["extra"].update(deployment=deployment, api_version=api_version)
    return json.dumps(conn)


def run_with(
    dag_runner: Any, server: EmulatorServer, conn: str, monkeypatch: Any
) -> tuple[DagRunResult, str]:
    """The Corsica v2 example with ``conn``, in a process that has not warned yet (as a fresh task process)."""
    if AIRFLOW_V_3:
        from airflow.sdk._shared.secrets_masker.secrets_masker import SecretsMasker

        monkeypatch.setattr(SecretsMasker, "_has_warned_short_secret", False)
    result = harness.run_corsica(dag_runner, server, "v2", bucket_conn=BUCKET_CONN, conn=conn)
    assert result.succeeded, result.describe()
    assert result.xcom("create"), "the tasks did read the connection and reach the emulator"
    logs = "\n".join(task.log for task in result.tasks.values())
    return result, logs


@pytest.mark.sentinel_batch_emulator(time_scale=100)
def test_a_run_with_the_form_values_logs_no_short_secret_warning(
    dag_runner, sentinel_batch_emulator, caplog, monkeypatch
):
    caplog.set_level(logging.DEBUG)
    result, logs = run_with(
        dag_runner,
        sentinel_batch_emulator,
        connection(sentinel_batch_emulator, "copernicus-dataspace", 2),
        monkeypatch,
    )
    assert "Batch request" in logs or str(result.xcom("create")) in logs, "the task logs were captured"
    assert WARNING not in logs
    assert WARNING not in caplog.text


@pytest.mark.skipif(not AIRFLOW_V_3, reason="Airflow 2.11's masker has no minimum length and never logs this")
@pytest.mark.sentinel_batch_emulator(time_scale=100)
def test_control_the_old_short_values_do_log_it(dag_runner, sentinel_batch_emulator, caplog, monkeypatch):
    """The same run with ``"cdse"``/``"v2"`` (still accepted) shows the warning: the check above can fail."""
    caplog.set_level(logging.DEBUG)
    _, logs = run_with(
        dag_runner, sentinel_batch_emulator, connection(sentinel_batch_emulator, "cdse", "v2"), monkeypatch
    )
    assert WARNING in logs


# ------------------------------------------------------------------------------------ link lookups
NOT_FOUND = "XCom not found"


def run_failing_create(dag_runner: Any, server: EmulatorServer) -> DagRunResult:
    """Corsica v2 with a wrong client secret: create fails on the token request, before it records links."""
    conn = json.loads(server.airflow_conn_json())
    conn["password"] = "not-the-emulator-secret"
    result = harness.run_example(
        dag_runner,
        "corsica_max_ndvi_v2",
        env={
            "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT": json.dumps(conn),
            "AIRFLOW_CONN_SENTINEL_BATCH_BUCKET": BUCKET_CONN,
        },
    )
    assert result.task_states["create"] == "failed", result.describe()
    assert "Token request to" in result.log("create"), "the create task's log was captured"
    return result


def dashboard_link(result: DagRunResult, task_id: str) -> str:
    """What the dashboard link of ``task_id`` resolves to, asked as the UI would."""
    from airflow.models.taskinstancekey import TaskInstanceKey

    key = TaskInstanceKey(result.dag_id, task_id, result.run_id, result.task(task_id).try_number, -1)
    if AIRFLOW_V_3:  # the worker stored each link's target at the end of the task: what the UI shows
        return str(result.task(task_id).xcom.get(links.SentinelBatchDashboardLink().xcom_key) or "")
    return links.SentinelBatchDashboardLink().get_link(None, ti_key=key)  # type: ignore[arg-type]


@pytest.mark.sentinel_batch_emulator(time_scale=100)
def test_a_create_that_failed_before_its_links_logs_no_xcom_error(
    dag_runner, sentinel_batch_emulator, caplog
):
    caplog.set_level(logging.DEBUG)
    result = run_failing_create(dag_runner, sentinel_batch_emulator)
    assert NOT_FOUND not in result.log("create")
    assert NOT_FOUND not in caplog.text
    assert dashboard_link(result, "create") == ""


@pytest.mark.skipif(not AIRFLOW_V_3, reason="Airflow 2.11 does not ask for links in the worker")
@pytest.mark.sentinel_batch_emulator(time_scale=100)
def test_control_a_plain_xcom_lookup_logs_the_error(dag_runner, sentinel_batch_emulator, monkeypatch):
    """The same run with a plain ``XCom.get_value`` lookup logs the error: the check above can fail."""
    from airflow.providers.common.compat.sdk import XCom

    monkeypatch.setattr(
        links, "recorded_links", lambda ti_key: XCom.get_value(ti_key=ti_key, key=links.LINKS_KEY) or {}
    )
    result = run_failing_create(dag_runner, sentinel_batch_emulator)
    assert NOT_FOUND in result.log("create")


@pytest.mark.sentinel_batch_emulator(time_scale=100)
def test_recorded_links_still_resolve(dag_runner, sentinel_batch_emulator):
    server = sentinel_batch_emulator
    result = harness.run_corsica(dag_runner, server, "v2", bucket_conn=BUCKET_CONN)
    assert result.succeeded, result.describe()
    rid = str(result.xcom("create"))
    for task_id in ("create", "wait_for_done"):
        assert dashboard_link(result, task_id) == f"{server.base_url}/dashboard/batch/{rid}"
        assert NOT_FOUND not in result.log(task_id)
