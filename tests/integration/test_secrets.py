"""Secrets: run the Corsica example DAGs with canary credentials and look for them everywhere.

The client secret, the bucket secret key and every access token the emulator issued during the run must not
appear in: task and trigger logs (the harness's capture, pytest's log capture, stdout/stderr), every file under
the test ``AIRFLOW_HOME`` (log files and the SQLite metadata DB with its XCom, rendered-template, trigger and
task-instance tables), every XCom value, the rendered template fields, the trigger's serialized kwargs, and the
text of the exception when the job fails. Logging runs at DEBUG, so library debug output (requests-oauthlib
logs token requests and answers there) is scanned too. Results in ``docs/reliability.md``.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.integration import harness
from tests.integration.harness import EXAMPLES, DagRunResult

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CANARY_CLIENT_SECRET = "canary-client-secret-6f3a91c2e7d4"
CANARY_BUCKET_SECRET = "canary-bucket-secret-0d4b8e5a19c3"
CANARY_ACCESS_KEY = "AKIACANARY7Q2W9XZ"  # an identifier, not a secret: it may travel, but is reported
CANARY_BUCKET_CONN = json.dumps(
    {
        "conn_type": "aws",
        "login": CANARY_ACCESS_KEY,
        "password": CANARY_BUCKET_SECRET,
        "extra": {"region_name": "eu-central-1"},
    }
)


def run_corsica(dag_runner: Any, server: EmulatorServer, version: str) -> DagRunResult:
    """The Corsica example DAG with the canary bucket keys."""
    return harness.run_corsica(dag_runner, server, version, bucket_conn=CANARY_BUCKET_CONN)


def rendered_fields(result: DagRunResult) -> dict[str, Any]:
    """Every task's RenderedTaskInstanceFields row of this run (what the UI's "Rendered Template" shows)."""
    from airflow.models.renderedtifields import RenderedTaskInstanceFields as RTIF
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.execute(
            select(RTIF.task_id, RTIF.map_index, RTIF.rendered_fields).where(
                RTIF.dag_id == result.dag_id, RTIF.run_id == result.run_id
            )
        ).all()
    return {f"{row.task_id}[{row.map_index}]": row.rendered_fields for row in rows}


def home_files() -> dict[str, str]:
    """Every file under AIRFLOW_HOME (logs, metadata DB and its journal, config, DAG copies) as text."""
    home = Path(os.environ["AIRFLOW_HOME"])
    return {
        str(path.relative_to(home)): path.read_bytes().decode("latin-1")
        for path in sorted(home.rglob("*"))
        if path.is_file()
    }


def places_to_look(result: DagRunResult, extra: dict[str, str]) -> dict[str, str]:
    places: dict[str, str] = dict(extra)
    for (task_id, map_index), task in result.tasks.items():
        places[f"harness log {task_id}[{map_index}]"] = task.log
        for key, value in task.xcom.items():
            places[f"XCom {task_id}[{map_index}].{key}"] = json.dumps(value, default=str)
    for name, fields in rendered_fields(result).items():
        places[f"rendered template fields {name}"] = json.dumps(fields, default=str)
    for run in result.triggers:
        places[f"trigger kwargs {run.task_id}"] = json.dumps(run.kwargs, default=str)
        places[f"trigger event {run.task_id}"] = json.dumps(run.event, default=str)
    for path, text in home_files().items():
        places[f"AIRFLOW_HOME/{path}"] = text
    return places


def find(places: dict[str, str], needles: dict[str, str]) -> list[tuple[str, str]]:
    return [
        (where, name) for where, text in places.items() for name, needle in needles.items() if needle in text
    ]


@pytest.mark.sentinel_batch_emulator(client_secret=CANARY_CLIENT_SECRET, time_scale=100, token_lifetime=1.0)
@pytest.mark.parametrize("outcome", ["done", "failed"])
@pytest.mark.parametrize("version", ["v1", "v2"])
def test_no_secret_or_token_leaks(
    dag_runner, sentinel_batch_emulator, version, outcome, caplog, capfd, monkeypatch
):
    server = sentinel_batch_emulator
    issued: list[str] = []
    issue = server.state.tokens.issue

    def recording_issue(*args: Any, **kwargs: Any) -> dict[str, Any]:
        body = issue(*args, **kwargs)
        issued.append(body["access_token"])
        return body

    monkeypatch.setattr(server.state.tokens, "issue", recording_issue)
    if (
        outcome == "failed"
    ):  # the failure path: an exception with the job's error text, cancel-on-failure runs
        server.set_faults(analysis_failure_rate=1.0)
    caplog.set_level(logging.DEBUG)
    result = run_corsica(dag_runner, server, version)
    captured = capfd.readouterr()

    assert result.succeeded is (outcome == "done"), result.describe()
    assert len(issued) >= 2, "short-lived tokens: several were issued and used"
    if version == "v2":  # the keys did reach the service (so they went through the provider)
        sent = server.state.jobs[str(result.xcom("create"))].body["output"]["delivery"]["s3"]
        assert sent["secretAccessKey"] == CANARY_BUCKET_SECRET and sent["accessKey"] == CANARY_ACCESS_KEY

    places = places_to_look(
        result, {"pytest log capture": caplog.text, "stdout": captured.out, "stderr": captured.err}
    )
    # positive controls: the scan reads what it claims to (the DB, the logs, the templates, the library debug)
    rid = str(result.xcom("create"))
    assert any(name.startswith("AIRFLOW_HOME/airflow.db") and rid in text for name, text in places.items())
    assert any(name.startswith("harness log") and rid in text for name, text in places.items())
    assert any(name.startswith("rendered template fields create") for name in places), sorted(places)
    assert "client_secret" in caplog.text  # requests-oauthlib's DEBUG line about the token request was seen
    secrets = {"client secret": CANARY_CLIENT_SECRET, "bucket secret key": CANARY_BUCKET_SECRET}
    secrets.update({f"access token #{i + 1}": token for i, token in enumerate(issued)})
    assert find(places, secrets) == []
    # the access key id is not a secret, but it must not sit in what the UI shows for the create task
    assert find({k: v for k, v in places.items() if "create" in k}, {"access key": CANARY_ACCESS_KEY}) == []


def test_wrong_secret_error_text_has_no_secret(dag_runner, sentinel_batch_emulator, caplog):
    server = sentinel_batch_emulator
    conn = json.loads(server.airflow_conn_json("v2"))
    conn["password"] = CANARY_CLIENT_SECRET  # the emulator expects another one: the token request fails
    caplog.set_level(logging.DEBUG)
    result = dag_runner(
        EXAMPLES / "corsica_max_ndvi_v2.py",
        "corsica_max_ndvi_v2",
        env={"AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT": json.dumps(conn)},
        support_files=[EXAMPLES / "include"],
    )
    assert result.task_states["create"] == "failed", result.describe()
    assert "Token request to" in result.log("create") and "HTTP 401 invalid_client" in result.log("create")
    places = places_to_look(result, {"pytest log capture": caplog.text})
    assert find(places, {"client secret": CANARY_CLIENT_SECRET}) == []
