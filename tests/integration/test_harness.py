"""Proves the ``dag.test()`` harness on the running Airflow line: values, deferral, failure, connections."""

from __future__ import annotations

import json

import pytest

from tests.integration.harness import AIRFLOW_V_3, DagImportError

pytestmark = pytest.mark.integration

PYTHON_DAG = """
from __future__ import annotations

import datetime
import logging
from pathlib import Path

from airflow.providers.common.compat.sdk import DAG, task
from airflow.providers.common.compat.standard.operators import PythonOperator

INCLUDED = Path(__file__).parent / "include" / "note.txt"


def answer(**context):
    logging.getLogger("airflow.task").info("stdlib-marker %s", context["dag_run"].conf.get("who"))
    context["ti"].xcom_push(key="side", value=[1, "two"])
    return {"answer": 42, "conf": dict(context["dag_run"].conf), "included": INCLUDED.read_text().strip()}


with DAG("harness_python", schedule=None, start_date=datetime.datetime(2024, 1, 1), catchup=False):
    @task
    def double(x: int) -> int:
        return 2 * x

    PythonOperator(task_id="answer", python_callable=answer) >> double.expand(x=[1, 2, 3])
"""


def test_python_task_values_mapping_conf_logs_and_support_files(dag_runner, tmp_path):
    (tmp_path / "include").mkdir()
    (tmp_path / "include" / "note.txt").write_text("from include/\n")
    dag_file = tmp_path / "harness_python.py"
    dag_file.write_text(PYTHON_DAG)

    result = dag_runner(
        dag_file, "harness_python", conf={"who": "tester"}, support_files=[tmp_path / "include"]
    )

    assert result.succeeded, result.describe()
    assert result.task_states == {
        "answer": "success",
        "double[0]": "success",
        "double[1]": "success",
        "double[2]": "success",
    }
    assert result.xcom("answer") == {"answer": 42, "conf": {"who": "tester"}, "included": "from include/"}
    assert result.xcom("answer", key="side") == [1, "two"]
    assert [t.return_value for t in result.mapped("double")] == [2, 4, 6]
    assert "stdlib-marker tester" in result.log("answer")
    assert result.triggers == []

    # reusable in the same process: a second run of the same DAG with other conf is a new, separate run
    again = dag_runner(
        dag_file, "harness_python", conf={"who": "again"}, support_files=[tmp_path / "include"]
    )
    assert again.succeeded and again.run_id != result.run_id
    assert again.xcom("answer")["conf"] == {"who": "again"}


DEFERRING_DAG = """
from __future__ import annotations

import datetime

from airflow.providers.common.compat.sdk import DAG, task

try:  # Airflow 3: the standard provider
    from airflow.providers.standard.sensors.date_time import DateTimeSensorAsync
except ImportError:  # Airflow 2.11: core
    from airflow.sensors.date_time import DateTimeSensorAsync

from tests.integration.harness_triggers import DeferToEchoOperator

with DAG("harness_defer", schedule=None, start_date=datetime.datetime(2024, 1, 1), catchup=False):
    # a past moment: the sensor still defers (always), and the trigger fires at once (2.11 sleeps in 1 s steps)
    wait = DateTimeSensorAsync(task_id="wait", target_time=datetime.datetime(2024, 1, 1, tzinfo=datetime.timezone.utc))
    echo = DeferToEchoOperator(task_id="echo", conn_id="harness_conn", note="{{ dag_run.conf['note'] }}")

    @task
    def provider_hook_settings() -> dict:
        from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

        s = SentinelBatchHook().settings
        return {"base_url": s.base_url, "api_version": s.api_version, "client_id": s.client_id}

    wait >> echo >> provider_hook_settings()
"""


def _conn(login: str) -> str:
    return json.dumps(
        {"conn_type": "generic", "login": login, "password": "pw", "extra": {"region": login[::-1]}}
    )


def test_deferral_runs_triggers_and_env_connections_reach_task_and_trigger(dag_runner, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT",
        json.dumps(
            {
                "conn_type": "sentinel_batch",
                "login": "cid",
                "password": "secret",
                "extra": {
                    "deployment": "custom",
                    "base_url": "http://127.0.0.1:1",
                    "token_url": "http://127.0.0.1:1/token",
                    "api_version": "v1",
                },
            }
        ),
    )
    monkeypatch.setenv("AIRFLOW_CONN_HARNESS_CONN", _conn("from-monkeypatch"))

    first = dag_runner(DEFERRING_DAG, "harness_defer", conf={"note": "n1"})

    assert first.succeeded, first.describe()
    assert (first.deferrals("wait"), first.deferrals("echo")) == (1, 1)
    echo_trigger = next(t for t in first.triggers if t.task_id == "echo")
    assert echo_trigger.classpath == "tests.integration.harness_triggers.EchoConnectionTrigger"
    assert echo_trigger.kwargs == {"conn_id": "harness_conn", "delay": 0.1, "note": "n1"}
    expected = {"login": "from-monkeypatch", "extra": {"region": "hctapyeknom-morf"}, "note": "n1"}
    assert echo_trigger.event == expected
    assert first.xcom("echo") == expected  # execute_complete got the event and returned it
    assert first.xcom("echo", key="worker_login") == "from-monkeypatch"
    assert "EchoConnectionTrigger read connection harness_conn" in first.log("echo")  # the trigger's own log
    assert "Resumed after the trigger" in first.log("echo")
    assert first.xcom("provider_hook_settings") == {
        "base_url": "http://127.0.0.1:1",
        "api_version": "v1",
        "client_id": "cid",
    }

    # env= overrides for one run only, and nothing caches the previous run's connection
    second = dag_runner(
        DEFERRING_DAG,
        "harness_defer",
        conf={"note": "n2"},
        env={"AIRFLOW_CONN_HARNESS_CONN": _conn("from-env-arg")},
    )
    assert second.succeeded, second.describe()
    assert second.xcom("echo", key="worker_login") == "from-env-arg"
    assert second.xcom("echo")["login"] == "from-env-arg"


FAILING_DAG = """
from __future__ import annotations

import datetime

from airflow.providers.common.compat.sdk import DAG, task

default_args = {"retries": 3, "retry_delay": datetime.timedelta(minutes=5)}

with DAG("harness_fail", schedule=None, start_date=datetime.datetime(2024, 1, 1), catchup=False,
         default_args=default_args):
    @task
    def boom():
        raise ValueError("kaboom-marker")

    @task
    def fine():
        return "ok"

    @task
    def after(x):
        return x

    after(boom())
    fine()
"""


def test_failing_task_fails_the_run_without_waiting_for_retries(dag_runner):
    result = dag_runner(FAILING_DAG, "harness_fail")

    assert result.state == "failed"
    assert result.task_states == {"after": "upstream_failed", "boom": "failed", "fine": "success"}
    assert "kaboom-marker" in result.log("boom")
    assert "kaboom-marker" in result.describe()
    assert result.duration < 60  # retries (5 min apart) were switched off


def test_import_errors_are_reported_before_running():
    from tests.integration.harness import run_dag

    with pytest.raises(DagImportError, match=r"NameError|not defined"):
        run_dag("from airflow.providers.common.compat.sdk import DAG\nundefined_name\n", "broken")
    with pytest.raises(DagImportError, match="defines"):
        run_dag(FAILING_DAG, "not_there")


def test_version_flag_matches_installed_airflow():
    import airflow

    assert airflow.__version__.startswith("3.") == AIRFLOW_V_3
