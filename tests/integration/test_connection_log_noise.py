"""Task logs of a real run carry no "Skipping masking for a secret as it's too short" line for this provider's
connections as the connection form writes them (a named deployment, an explicit default API version).

Airflow 3 registers every string value of a connection's extra with its log masker when a task looks the
connection up (``Connection.get_uri()`` reads ``extra_dejson``), and warns once per process for a value under
5 characters whatever its key. Airflow 2.11's masker has no minimum length and no such warning: there the test
checks that the run's logs stay free of it too, and the control (which needs the warning to exist) is skipped.
"""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest

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
