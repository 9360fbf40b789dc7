"""Event-driven scheduling under a real Airflow 3 deployment: an asset watcher runs SentinelBatchEventTrigger.

One deployment for this module (``stack.py``: emulator, api-server, scheduler, dag-processor, triggerer, as
separate processes). A producer DAG creates and starts a v2 job and ends; a consumer DAG is scheduled on an asset
whose watcher lists the account's v2 requests every second and fires once per request with the marker in its
description that newly reaches DONE. The emulator's clock is nearly frozen so each job finishes exactly when the
test forces it to, one at a time, and every finish is followed through the metadata DB (consumer runs and the
asset events that triggered them), the emulator's control plane and the triggerer's log.

* three jobs finish (two from the producer DAG, one created straight through the API as another tool would)
  → exactly three consumer runs, each with its own request id;
* a job with the marker that FAILS, and a job without the marker that finishes, never run the consumer;
* the triggerer is restarted between two finishes, and a job finishes while it is down → that job still runs
  the consumer once, and no earlier job runs it again (Airflow 3.3: the watcher's memory is in the asset state
  store, whose row the test reads).

Switch: ``SENTINEL_BATCH_TRIGGERER_TESTS`` as for ``test_real_triggerer.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from packaging.version import Version

from tests.triggerer.stack import AIRFLOW_3, AIRFLOW_VERSION, AirflowStack, StackEmulator, clean_environment
from tests.triggerer.test_real_triggerer import _check_environment, _report_timings

pytestmark = [
    pytest.mark.triggerer,
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not AIRFLOW_3, reason="asset watchers (event-driven scheduling) exist from Airflow 3 on"
    ),
    pytest.mark.skipif(
        Version(Version(AIRFLOW_VERSION).base_version) < Version("3.3.0"),
        reason="exactly-once across a triggerer restart needs the asset state store (Airflow 3.3+)",
    ),
]

PRODUCER, CONSUMER = "rt_events_producer", "rt_events_consumer"
MARKER = "[rt-events]"
FROZEN = 0.001  # emulated s per real s: started jobs stay where they are until the test forces them on
RUN_TIMEOUT = 180.0
QUIET = 8.0  # seconds of polls (1 s interval) after which a missing consumer run is a real absence
EVALSCRIPT = """//VERSION=3
function setup() { return {input: [{bands: ["B04", "B08"]}], output: [{id: "default", bands: 1}]} }
function evaluatePixel(s) { return [(s.B08 - s.B04) / (s.B08 + s.B04)] }
"""
PAYLOAD: dict[str, Any] = {
    "processRequest": {
        "input": {
            "bounds": {
                "bbox": [9.0, 42.0, 9.1, 42.1],
                "properties": {"crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"},
            },
            "data": [
                {
                    "type": "sentinel-2-l2a",
                    "dataFilter": {
                        "timeRange": {"from": "2019-04-01T00:00:00Z", "to": "2019-06-30T00:00:00Z"}
                    },
                }
            ],
        },
        "output": {"responses": [{"identifier": "default", "format": {"type": "image/tiff"}}]},
        "evalscript": EVALSCRIPT,
    },
    "input": {"type": "tiling-grid", "id": 0, "resolution": 60.0},
    "output": {"type": "raster", "delivery": {"s3": {"url": "s3://rt-events/<requestId>/<tileName>"}}},
}


def _dag_source() -> str:
    return f'''"""Event-driven pair: the producer creates and starts a v2 job; an asset watcher schedules the consumer."""
import json
from datetime import datetime

from airflow.providers.common.compat.sdk import DAG, Asset, task
from airflow.sdk import AssetWatcher

from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator, SentinelBatchStartOperator
from airflow_provider_sentinel_batch.triggers.events import SentinelBatchEventTrigger

PAYLOAD = json.loads({json.dumps(PAYLOAD)!r})

with DAG("{PRODUCER}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False):
    create = SentinelBatchCreateOperator(
        task_id="create", payload=PAYLOAD, api_version="v2", description="producer {MARKER}"
    )
    start = SentinelBatchStartOperator(task_id="start", request_id=create.output, api_version="v2")
    create >> start

DONE = Asset(
    name="rt_batch_done",
    watchers=[
        AssetWatcher(
            name="rt_batch_done_watcher",
            trigger=SentinelBatchEventTrigger(api_version="v2", tag="{MARKER}", poll_interval=1.0),
        )
    ],
)

with DAG("{CONSUMER}", schedule=[DONE], start_date=datetime(2024, 1, 1), catchup=False):

    @task
    def report(**context):
        ids = []
        for events in context["triggering_asset_events"].values():
            for event in events:
                payload = event.extra["payload"]
                print(f"RT_EVENT {{payload['request_id']}} {{payload['status']}} {{payload['output_location']}}")
                ids.append(payload["request_id"])
        return ids

    report()
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[AirflowStack]:
    """Emulator + a fresh Airflow deployment for this module; every process is stopped, even on failure."""
    _check_environment()
    root = tmp_path_factory.mktemp("event-watchers")
    started = time.monotonic()
    emulator = StackEmulator(root, time_scale=FROZEN, env=clean_environment())
    airflow: AirflowStack | None = None
    try:
        emulator.launch()
        airflow = AirflowStack(root, emulator)
        airflow.write_dag("rt_events.py", _dag_source())
        airflow.migrate()
        emulator.wait_ready()
        airflow.start()
        airflow.wait_ready([PRODUCER, CONSUMER])
        airflow.timings["setup"] = time.monotonic() - started
        yield airflow
    finally:
        if airflow is not None:
            airflow.stop()
            _report_timings(request.config, airflow, started)
        emulator.stop()


# ---------------------------------------------------------------------------------------------- helpers
def consumer_runs(stack: AirflowStack) -> dict[str, dict[str, Any]]:
    """``{run_id: {"state", "request_ids"}}`` of the consumer, the ids read from its triggering asset events."""
    runs = {
        row["run_id"]: {"state": row["state"], "request_ids": []}
        for row in stack.query("SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id", CONSUMER)
    }
    rows = stack.query(
        "SELECT dr.run_id, ae.extra FROM dag_run dr "
        "JOIN dagrun_asset_event dae ON dae.dag_run_id = dr.id JOIN asset_event ae ON ae.id = dae.event_id "
        "WHERE dr.dag_id = ? ORDER BY ae.id",
        CONSUMER,
    )
    for row in rows:
        extra = json.loads(row["extra"]) if isinstance(row["extra"], str) else row["extra"]
        runs[row["run_id"]]["request_ids"].append(extra["payload"]["request_id"])
    return runs


def all_reported(stack: AirflowStack) -> list[str]:
    return [rid for run in consumer_runs(stack).values() for rid in run["request_ids"]]


def wait_consumer_run_for(stack: AirflowStack, request_id: str) -> dict[str, Any]:
    """The consumer run triggered by ``request_id``'s event, once it has finished."""

    def probe() -> dict[str, Any] | None:
        for run_id, run in consumer_runs(stack).items():
            if request_id in run["request_ids"] and run["state"] in ("success", "failed"):
                return {"run_id": run_id, **run}
        return None

    return stack.wait(f"a finished consumer run for {request_id}", probe, timeout=RUN_TIMEOUT)


def list_calls(stack: AirflowStack) -> int:
    return int(stack.emulator.stats()["calls"].get("GET /api/v2/batch/process", 0))


def quiet_period(stack: AirflowStack) -> None:
    """Let the watcher poll several more times (proven by the emulator's list-call count), then return."""
    before = list_calls(stack)
    time.sleep(QUIET)
    assert list_calls(stack) >= before + 3, "the watcher stopped polling"


def run_producer(stack: AirflowStack, run_id: str) -> str:
    stack.trigger(PRODUCER, run_id)
    state = stack.wait(
        f"{PRODUCER}/{run_id} to finish",
        lambda: (s := stack.run_state(PRODUCER, run_id)) in ("success", "failed") and s,
        timeout=RUN_TIMEOUT,
    )
    assert state == "success", stack.describe()
    mine = [
        j
        for j in stack.emulator.jobs()
        if MARKER in (j.get("description") or "") and "producer" in j["description"]
    ]
    return str(mine[-1]["id"])


class OtherTool:
    """Creates and starts v2 jobs straight through the Batch API with the connection's client credentials."""

    def __init__(self, emulator: StackEmulator) -> None:
        conn = json.loads(emulator.airflow_conn)
        self.base = conn["extra"]["base_url"]
        self.http = requests.Session()
        self.http.trust_env = False
        extra = conn["extra"]
        token = self.http.post(
            extra.get("auth_url") or extra["token_url"],
            data={
                "grant_type": "client_credentials",
                "client_id": conn["login"],
                "client_secret": conn["password"],
            },
            timeout=10,
        ).json()["access_token"]
        self.http.headers["Authorization"] = f"Bearer {token}"

    def create_and_start(self, description: str) -> str:
        created = self.http.post(
            f"{self.base}/api/v2/batch/process", json={**PAYLOAD, "description": description}, timeout=10
        )
        assert created.status_code == 201, created.text
        request_id = str(created.json()["id"])
        started = self.http.post(f"{self.base}/api/v2/batch/process/{request_id}/start", timeout=10)
        assert started.status_code in (200, 204), started.text
        return request_id


def force(stack: AirflowStack, request_id: str, status: str) -> None:
    stack.emulator.control("POST", f"/jobs/{request_id}/force", {"status": status})
    assert stack.emulator.job(request_id)["status"] == status


# ------------------------------------------------------------------------------------------------- test
def test_one_consumer_run_per_finished_job_across_a_triggerer_restart(stack: AirflowStack) -> None:
    started = time.monotonic()
    # the watcher's trigger row is claimed by the running triggerer, which lists the account every second
    stack.wait(
        "the watcher's trigger running on the triggerer",
        lambda: (
            any(
                row["triggerer_id"] is not None
                for row in stack.query("SELECT classpath, triggerer_id FROM trigger")
                if row["classpath"].endswith("SentinelBatchEventTrigger")
            )
            and list_calls(stack) >= 2
        ),
        timeout=120,
    )

    first = run_producer(stack, "producer_1")
    second = run_producer(stack, "producer_2")
    tool = OtherTool(stack.emulator)
    third = tool.create_and_start(f"made by another tool {MARKER}")
    failing = tool.create_and_start(f"will fail {MARKER}")
    unmarked = tool.create_and_start("another team's job, not ours")
    assert len({first, second, third, failing, unmarked}) == 5
    quiet_period(stack)
    assert consumer_runs(stack) == {}, "nothing has finished yet"

    # 1. the first job finishes: one consumer run, for it
    force(stack, first, "DONE")
    run = wait_consumer_run_for(stack, first)
    assert run["state"] == "success" and run["request_ids"] == [first], stack.describe()
    stack.timings["finish to consumer run"] = time.monotonic() - started

    # 2. a marked job fails and an unmarked job finishes: the DONE watcher of the marker fires for neither
    force(stack, failing, "FAILED")
    force(stack, unmarked, "DONE")
    quiet_period(stack)
    assert all_reported(stack) == [first], consumer_runs(stack)

    # 3. the triggerer restarts; the second job finishes while it is down
    old = stack.triggerer
    old.stop()
    assert not old.killed, f"the triggerer needed SIGKILL after SIGINT:\n{old.tail()}"
    force(stack, second, "DONE")
    stack.start_triggerer()
    run = wait_consumer_run_for(stack, second)
    assert run["state"] == "success" and run["request_ids"] == [second], stack.describe()

    # 4. the job the other tool created finishes
    force(stack, third, "DONE")
    run = wait_consumer_run_for(stack, third)
    assert run["state"] == "success" and run["request_ids"] == [third], stack.describe()

    # exactly three runs, one per job, each with its own request id; nothing repeated after the restart
    quiet_period(stack)
    runs = consumer_runs(stack)
    assert sorted(all_reported(stack)) == sorted([first, second, third]), runs
    assert len(runs) == 3 and all(
        r["state"] == "success" and len(r["request_ids"]) == 1 for r in runs.values()
    )
    for request_id in (first, second, third):
        log = "\n".join(
            stack.task_log(CONSUMER, run_id, "report")
            for run_id, r in runs.items()
            if request_id in r["request_ids"]
        )
        assert f"RT_EVENT {request_id} DONE s3://rt-events/{request_id}/" in log, log[-3000:]

    # the watcher's memory is in the asset state store (that is what made the restart exactly-once)
    rows = stack.query("SELECT key, value FROM asset_state_store WHERE key LIKE 'sentinel_batch_events:%'")
    assert len(rows) == 1, [dict(r) for r in rows]
    reported = json.loads(rows[0]["value"])["reported"]
    assert {first, second, third} <= set(reported) and failing not in reported and unmarked not in reported
    # the restarted triggerer ran the watcher (its own log shows the event for the second job)
    assert f"request {second} reached DONE" in stack.triggerer.log(), stack.triggerer.tail(60)
    stack.timings["scenario"] = time.monotonic() - started


def test_two_jobs_finishing_at_once_get_a_consumer_run_each(stack: AirflowStack) -> None:
    """Both finish within one poll: the watcher spaces its two events, so the scheduler makes two runs (events
    for one asset that arrive while its previous event still waits for a run would be left for a later run)."""
    before = consumer_runs(stack)
    tool = OtherTool(stack.emulator)
    a, b = (tool.create_and_start(f"pair {i} {MARKER}") for i in (1, 2))
    quiet_period(stack)
    stack.emulator.control("POST", f"/jobs/{a}/force", {"status": "DONE"})
    stack.emulator.control("POST", f"/jobs/{b}/force", {"status": "DONE"})
    run_a, run_b = wait_consumer_run_for(stack, a), wait_consumer_run_for(stack, b)
    assert run_a["run_id"] != run_b["run_id"], consumer_runs(stack)
    assert run_a["request_ids"] == [a] and run_b["request_ids"] == [b]
    assert run_a["state"] == run_b["state"] == "success"
    quiet_period(stack)
    new = {k: v for k, v in consumer_runs(stack).items() if k not in before}
    assert len(new) == 2, new
