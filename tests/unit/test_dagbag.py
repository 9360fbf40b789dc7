"""The example DAGs parse cleanly on Airflow 2.11 and 3.x, cheaply, and say what the docs say they do.

They are what users copy first, so besides "no import errors" this pins the parts that matter: the published
Corsica payload and evalscript, no network or metadata DB at parse time, portable imports only, bucket keys never
in DAG literals, and the task graphs documented in each DAG's docstring.
"""

from __future__ import annotations

import ast
import shutil
import socket
import tempfile
import time
from datetime import UTC
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest

from tests.payloads import EVALSCRIPT, corsica_v1

DAGS = Path(__file__).resolve().parents[2] / "dags_examples"
DAG_FILES = sorted(DAGS.glob("*.py"))
EXPECTED = {
    "corsica_max_ndvi_v1": {
        "create": {"analyse"},
        "analyse": {"wait_for_analysis", "cancel_on_failure"},
        "wait_for_analysis": {"report_tiles_and_estimate", "cancel_on_failure"},
        "report_tiles_and_estimate": {"start", "summary", "cancel_on_failure"},
        "start": {"wait_for_done", "cancel_on_failure"},
        "wait_for_done": {"summary", "cancel_on_failure"},
        "summary": set(),
        "cancel_on_failure": set(),
    },
    "corsica_max_ndvi_v2": {
        "create": {"analyse"},
        "analyse": {"wait_for_analysis", "stop_on_failure"},
        "wait_for_analysis": {"start", "stop_on_failure"},
        "start": {"wait_for_done", "stop_on_failure"},
        "wait_for_done": {"summary", "stop_on_failure"},
        "summary": set(),
        "stop_on_failure": set(),
    },
    "seasonal_max_ndvi": {
        "wait_for_data_latency": {"create"},
        "create": {"start"},
        "start": {"wait_for_done", "stop_on_failure"},
        "wait_for_done": {"summary", "stop_on_failure"},
        "summary": set(),
        "stop_on_failure": set(),
    },
    "max_ndvi_per_aoi": {
        "build_payloads": {"per_aoi.create"},
        "per_aoi.create": {"per_aoi.start"},
        "per_aoi.start": {"per_aoi.wait_for_done"},
        "per_aoi.wait_for_done": {"report"},
        "report": set(),
    },
    "ndvi_statistics_per_field": {
        "stage_fields": {"create"},
        "create": {"analyse"},
        "analyse": {"wait_for_analysis", "stop_on_failure"},
        "wait_for_analysis": {"start", "stop_on_failure"},
        "start": {"wait_for_done", "stop_on_failure"},
        "wait_for_done": {"table", "summary", "stop_on_failure"},
        "table": {"summary"},
        "summary": set(),
        "stop_on_failure": set(),
    },
    "asset_producer_corsica_v2": {
        "create": {"start"},
        "start": {"wait_for_done", "stop_on_failure"},
        "wait_for_done": {"stop_on_failure"},
        "stop_on_failure": set(),
    },
}
# Examples without a batch task of their own (tests/integration/test_assets_emulator.py runs them end to end)
OTHER_EXAMPLES = {"downstream_corsica_ndvi_report"}
AIRFLOW_2 = version("apache-airflow").startswith("2.")
# The event-driven pair: its consumer is scheduled by an asset watcher, which exists from Airflow 3 on.
EVENT_PAIR = {
    "event_producer_corsica_v2": {"create": {"start"}, "start": set()},
    "event_consumer_corsica_ndvi": {"report": set()},
}
EVENT_FILES = {f"{dag_id}.py" for dag_id in EVENT_PAIR}
NEEDS_AIRFLOW_3 = pytest.mark.skipif(
    AIRFLOW_2,
    reason="event-driven scheduling (asset watchers) needs Airflow 3; Airflow 2.11 does not parse the pair",
)


def _parse(folder: Path) -> Any:
    try:  # Airflow 3 (examples are never loaded here)
        from airflow.dag_processing.dagbag import DagBag

        return DagBag(dag_folder=str(folder))
    except ImportError:  # Airflow 2.11, without the event-driven pair (Airflow 3 only)
        from airflow.models.dagbag import DagBag as DagBag2

        copy = Path(tempfile.mkdtemp(prefix="sentinel-batch-dags-")) / "dags"
        shutil.copytree(folder, copy, ignore=lambda _dir, names: [n for n in names if n in EVENT_FILES])
        return DagBag2(dag_folder=str(copy), include_examples=False)


@pytest.fixture(scope="module")
def dagbag() -> Any:
    """Parse the folder once with every socket connect refused: a DAG file must not touch the network."""

    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"network access while parsing example DAGs: {args}")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr(socket, "create_connection", refuse)
        started = time.monotonic()
        bag = _parse(DAGS)
        bag.parse_seconds = time.monotonic() - started
    return bag


def _evalscript(create: Any) -> str:
    """The ``.js`` template file's text (DagBag on 2.11 already swaps the file name for its content)."""
    script = create.evalscript
    return (DAGS / script).read_text() if script == "include/max_ndvi.js" else script


def test_no_import_errors(dagbag):
    assert dagbag.import_errors == {}, "\n".join(f"{k}:\n{v}" for k, v in dagbag.import_errors.items())


def test_every_example_dag_is_there(dagbag):
    expected = set(EXPECTED) | OTHER_EXAMPLES | (set() if AIRFLOW_2 else set(EVENT_PAIR))
    assert set(dagbag.dag_ids) == expected


@NEEDS_AIRFLOW_3
@pytest.mark.parametrize("dag_id", sorted(EVENT_PAIR))
def test_event_driven_pair_task_graph(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    assert {task.task_id: set(task.downstream_task_ids) for task in dag.tasks} == EVENT_PAIR[dag_id]
    assert dag.tags and "example" in dag.tags and "event-driven" in dag.tags
    assert dag.doc_md
    # no task waits for the job: the producer ends once the job is started
    assert not [t for t in dag.tasks if type(t).__name__ == "SentinelBatchSensor"]


@NEEDS_AIRFLOW_3
def test_event_consumer_is_scheduled_by_a_watcher_of_the_producers_jobs(dagbag):
    from airflow_provider_sentinel_batch.triggers.events import SentinelBatchEventTrigger

    condition = dagbag.dags["event_consumer_corsica_ndvi"].timetable.asset_condition
    (asset,) = getattr(condition, "objects", [condition])
    (watcher,) = asset.watchers
    trigger = watcher.trigger
    assert isinstance(trigger, SentinelBatchEventTrigger)
    assert trigger.api_version == "v2" and trigger.statuses == ["DONE"] and trigger.tag
    create = dagbag.dags["event_producer_corsica_v2"].get_task("create")
    assert trigger.tag in create.description and create.api_version == "v2"
    assert create.bucket_conn_id == "sentinel_batch_bucket"
    assert _evalscript(create) == EVALSCRIPT


def test_parsing_is_cheap(dagbag):
    # all four files; heavy imports (hooks, HTTP clients) happen only when a task runs
    assert dagbag.parse_seconds < 15, dagbag.parse_seconds


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_task_graph(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    graph = {task.task_id: set(task.downstream_task_ids) for task in dag.tasks}
    assert graph == EXPECTED[dag_id]
    assert dag.tags and "example" in dag.tags
    assert dag.doc_md


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_portable_imports_only(dag_file):
    """Airflow 2.11 and 3.x: classes from the compat SDK (or a guarded fallback), nothing from airflow.models."""
    # the event-driven consumer is Airflow 3 only: AssetWatcher from the Task SDK
    airflow_3_only = ("airflow.sdk",) if dag_file.name in EVENT_FILES else ()
    allowed = (
        *airflow_3_only,
        "airflow.providers.common.compat.sdk",
        "airflow.timetables.trigger",
        "airflow.providers.standard.sensors.date_time",
        "airflow.sensors.date_time",  # only as the ImportError fallback for 2.11
        "airflow_provider_sentinel_batch",
    )
    for node in ast.walk(ast.parse(dag_file.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("airflow"):
            assert node.module.startswith(allowed), f"{dag_file.name}: from {node.module} import ..."
        if isinstance(node, ast.Import):
            assert not any(alias.name.startswith("airflow") for alias in node.names), dag_file.name


@pytest.mark.parametrize("dag_file", DAG_FILES, ids=lambda p: p.name)
def test_no_credentials_in_dag_files(dag_file):
    text = dag_file.read_text()
    for word in ("accessKey", "secretAccessKey", "client_secret", "password="):
        assert word not in text, f"{dag_file.name} contains {word!r}: credentials belong in connections"


def test_corsica_v1_payload_is_the_published_payload(dagbag):
    create = dagbag.dags["corsica_max_ndvi_v1"].get_task("create")
    expected = corsica_v1(bucket=create.payload["bucketName"])
    del expected["processRequest"]["evalscript"]  # sent from the .js file through ``evalscript``
    assert create.payload == expected
    assert "sentinel_batch_bucket" in create.payload["bucketName"]  # Variable, then default
    assert create.api_version == "v1"
    assert _evalscript(create) == EVALSCRIPT


def test_corsica_v2_payload_is_the_same_job_in_v2_form(dagbag):
    create = dagbag.dags["corsica_max_ndvi_v2"].get_task("create")
    v1 = corsica_v1()["processRequest"]
    payload = create.payload
    assert payload["processRequest"]["input"]["bounds"] == v1["input"]["bounds"]
    data = payload["processRequest"]["input"]["data"][0]
    assert data["type"] == "sentinel-2-l2a" and data["dataFilter"] == v1["input"]["data"][0]["dataFilter"]
    assert payload["input"] == {"type": "tiling-grid", "id": 0, "resolution": 60.0}
    assert payload["output"]["type"] == "raster"
    s3 = payload["output"]["delivery"]["s3"]
    assert set(s3) == {"url"} and s3["url"].startswith("s3://")  # keys come from bucket_conn_id at run time
    assert create.bucket_conn_id == "sentinel_batch_bucket"
    assert create.api_version == "v2" and _evalscript(create) == EVALSCRIPT


def test_statistical_example_is_batch_statistical(dagbag):
    dag = dagbag.dags["ndvi_statistics_per_field"]
    create = dag.get_task("create")
    assert create.api_version == "statistical" and create.bucket_conn_id == "sentinel_batch_bucket"
    assert set(create.payload) == {"input", "aggregation", "calculations", "output"}
    assert set(create.payload["output"]["s3"]) == {"url"}  # keys come from bucket_conn_id at run time
    assert all(
        t.api_version == "statistical" for t in dag.tasks if hasattr(t, "request_id") and t.task_id != "table"
    )
    assert "evaluatePixel" in (
        create.evalscript if "\n" in create.evalscript else (DAGS / create.evalscript).read_text()
    )


@pytest.mark.parametrize("dag_id", sorted(EXPECTED))
def test_waits_are_deferrable_with_a_deadline(dagbag, dag_id):
    dag = dagbag.dags[dag_id]
    sensors = [t for t in dag.tasks if type(t).__name__ == "SentinelBatchSensor"]
    assert sensors
    for sensor in sensors:
        assert sensor.deferrable, sensor.task_id
        assert sensor.timeout and sensor.timeout < 7 * 24 * 3600, sensor.task_id  # not the 7-day default
    if dag_id != "max_ndvi_per_aoi":
        cancel = next(t for t in dag.tasks if t.task_id in ("cancel_on_failure", "stop_on_failure"))
        assert getattr(cancel.trigger_rule, "value", cancel.trigger_rule) == "one_failed"


def test_seasonal_runs_cover_april_to_september_month_by_month(dagbag):
    from datetime import datetime

    from airflow.timetables.base import TimeRestriction

    dag = dagbag.dags["seasonal_max_ndvi"]
    assert dag.catchup and dag.max_active_runs == 2
    restriction = TimeRestriction(earliest=datetime(2025, 4, 1, tzinfo=UTC), latest=None, catchup=True)
    months, last = [], None
    for _ in range(7):
        info = dag.timetable.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        start, end = info.data_interval.start, info.data_interval.end
        months_long = (end.year * 12 + end.month) - (start.year * 12 + start.month)
        assert months_long == 1 and start.day == end.day == 1
        assert info.run_after == end  # runs once its month is over (plus the latency sensor)
        months.append(f"{start:%Y-%m}")
        last = info.data_interval
    assert months == ["2025-04", "2025-05", "2025-06", "2025-07", "2025-08", "2025-09", "2026-04"]


def test_seasonal_payload_follows_the_data_interval_through_a_pool(dagbag):
    dag = dagbag.dags["seasonal_max_ndvi"]
    for task_id in ("create", "start", "wait_for_done"):
        assert dag.get_task(task_id).pool == "sentinel_batch"
    assert "data_interval_end" in dag.get_task("wait_for_data_latency").target_time
    create = dag.get_task("create")
    time_range = create.payload["processRequest"]["input"]["data"][0]["dataFilter"]["timeRange"]
    assert "data_interval_start" in time_range["from"] and "data_interval_end" in time_range["to"]
    assert "data_interval_start" in create.description and "data_interval_end" in create.description
