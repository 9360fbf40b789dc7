"""A worker SIGKILLed after the service accepted the create: Airflow's retry re-attaches, one job in all.

Real daemons (``stack.py``: the emulator process, the scheduler and the rest of a fresh deployment). On its
first try the DAG's create task blocks at one of two points and tells the test its process id; the test kills
that process with SIGKILL there, as the OOM killer or a lost node would:

* ``in-create``: right after the create call returned, before the task recorded anything (the gap Airflow's
  task state store cannot close on its own: the retry finds the job by its tag);
* ``after-execute``: after the create operator finished (on Airflow 3.3+ the request is in the task state
  store, so the retry's lookup is one GET) but before the task ended.

Either way the scheduler sees the task die, retries it, the retry re-attaches to the job, the run succeeds and
the emulator counts exactly one created job. Same switch as the real-triggerer tests
(``SENTINEL_BATCH_TRIGGERER_TESTS``).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from packaging.version import Version

from tests.triggerer.stack import AIRFLOW_VERSION, AirflowStack, StackEmulator, clean_environment
from tests.triggerer.test_real_triggerer import _check_environment  # the same on/auto/require switch

pytestmark = [pytest.mark.triggerer, pytest.mark.timeout(420)]

HAS_TASK_STATE_STORE = Version(Version(AIRFLOW_VERSION).base_version) >= Version("3.3.0")
CASES = [("v1", "in-create"), ("v2", "after-execute")]
RUN_TIMEOUT = 180.0


def _dag_id(version: str, kill_point: str) -> str:
    return f"killed_worker_{version}_{kill_point.replace('-', '_')}"


def _dag_source(markers: Path) -> str:
    from tests.integration.identity_racer import payload

    payloads = {version: payload(version) for version in ("v1", "v2")}
    return f'''"""Create only, and a first try that blocks where the test kills it (see test_killed_worker.py)."""
import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator

PAYLOADS = json.loads({json.dumps(payloads)!r})
MARKERS = Path({str(markers)!r})


class KilledOnFirstTry(SentinelBatchCreateOperator):
    """On try 1, blocks at ``kill_point`` after writing its process id where the test looks for it."""

    def __init__(self, *, kill_point, **kwargs):
        super().__init__(**kwargs)
        self.kill_point = kill_point

    def _block(self, context, request_id):
        MARKERS.mkdir(parents=True, exist_ok=True)
        marker = MARKERS / (context["run_id"] + ".json")
        partial = marker.with_suffix(".part")
        partial.write_text(json.dumps({{"pid": os.getpid(), "request_id": request_id}}))
        partial.rename(marker)
        time.sleep(600)  # the test SIGKILLs this process here

    def execute(self, context):
        first = context["ti"].try_number <= 1
        if first and self.kill_point == "in-create":
            create = self.hook.create_request

            def create_then_block(*args, **kwargs):
                body = create(*args, **kwargs)
                self._block(context, body["id"])
                return body

            self.hook.create_request = create_then_block
        request_id = super().execute(context)
        if first and self.kill_point == "after-execute":
            self._block(context, request_id)
        return request_id


for version, kill_point in {CASES!r}:
    dag_id = "killed_worker_" + version + "_" + kill_point.replace("-", "_")
    with DAG(dag_id, schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
        KilledOnFirstTry(
            task_id="create",
            payload=PAYLOADS[version],
            api_version=version,
            kill_point=kill_point,
            retries=1,
            retry_delay=timedelta(seconds=1),
        )
    globals()[dag_id] = dag
'''


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AirflowStack]:
    """Emulator + a fresh Airflow deployment for this module; every process is stopped, even on failure."""
    _check_environment()
    root = tmp_path_factory.mktemp("killed-worker")
    emulator = StackEmulator(root, time_scale=50.0, env=clean_environment())
    airflow: AirflowStack | None = None
    try:
        emulator.launch()
        airflow = AirflowStack(root, emulator)
        airflow.write_dag("killed_worker.py", _dag_source(root / "markers"))
        airflow.migrate()
        emulator.wait_ready()
        airflow.start()
        airflow.wait_ready([_dag_id(v, k) for v, k in CASES])
        yield airflow
    finally:
        if airflow is not None:
            airflow.stop()
        emulator.stop()


def _marker(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.exists() else None


@pytest.mark.parametrize(("version", "kill_point"), CASES)
def test_sigkilled_worker_after_create_is_retried_and_reattaches(
    stack: AirflowStack, version: str, kill_point: str
) -> None:
    dag_id, run_id = _dag_id(version, kill_point), f"killed_{version}_{kill_point}"
    stack.emulator.reset()
    stack.trigger(dag_id, run_id)
    marker = stack.root / "markers" / f"{run_id}.json"
    blocked = stack.wait(
        f"{dag_id}: create's first try blocked after the create call", lambda: _marker(marker), timeout=150
    )
    assert stack.emulator.stats()["jobs_created"] == 1
    assert stack.task_instance(dag_id, run_id, "create")["state"] == "running"  # type: ignore[index]

    os.kill(blocked["pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    state = stack.wait(
        f"{dag_id}/{run_id} to finish",
        lambda: (s := stack.run_state(dag_id, run_id)) in ("success", "failed") and s,
        timeout=RUN_TIMEOUT,
    )
    assert state == "success", stack.describe()
    ti = stack.task_instance(dag_id, run_id, "create")
    assert ti is not None and ti["try_number"] == 2, ti  # the kill failed try 1; try 2 succeeded
    assert stack.emulator.stats()["jobs_created"] == 1, stack.emulator.stats()

    retry_log = stack.task_log(dag_id, run_id, "create", attempt=2)
    assert f"Re-attaching to batch request {blocked['request_id']}" in retry_log, retry_log[-3000:]
    if HAS_TASK_STATE_STORE and kill_point == "after-execute":
        assert "recorded by an earlier try in Airflow's task state store" in retry_log, retry_log[-3000:]
    else:  # nothing recorded before the kill (or no store on this Airflow): the tag search found it
        assert "created by an earlier try of this task" in retry_log, retry_log[-3000:]
    print(
        f"[{AIRFLOW_VERSION} {version} {kill_point}] kill to run success {time.monotonic() - killed_at:.1f} s"
    )
