"""Job identity against the emulator: every row of the re-attach table, the task state store, concurrent
executions of one task instance (threads, and separate processes), and a real Airflow retry."""

from __future__ import annotations

import json
import logging
import threading
from typing import Any

import pytest

from airflow_provider_sentinel_batch import identity
from airflow_provider_sentinel_batch.emulator import EmulatorServer
from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator, idempotency_tag
from tests.integration.identity_racer import PREFIX, payload
from tests.integration.identity_racer import context as task_context

pytestmark = [pytest.mark.integration, pytest.mark.sentinel_batch_emulator(time_scale=1.0)]

VERSIONS = ["v1", "v2"]
LOGGER = "identity.create"


class MemoryStore:
    """Airflow 3.3's task state store surface (get/set), kept in memory across "tries"."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    def set(self, key: str, value: Any, *, retention: Any = None) -> None:
        self.data[key] = value


def context(run_id: str = "manual__identity", store: MemoryStore | None = None) -> dict[str, Any]:
    ctx = task_context(run_id)
    if store is not None:
        ctx["task_state_store"] = store
    return ctx


@pytest.fixture(autouse=True)
def _stdlib_task_log(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task logger is structlog on Airflow 3: route it to a stdlib logger that caplog sees, on both lines."""
    monkeypatch.setattr(SentinelBatchCreateOperator, "log", property(lambda _: logging.getLogger(LOGGER)))


@pytest.fixture
def emu(sentinel_batch_emulator: EmulatorServer, monkeypatch: pytest.MonkeyPatch):
    def use(version: str) -> EmulatorServer:
        monkeypatch.setenv(
            "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", sentinel_batch_emulator.airflow_conn_json(version)
        )
        return sentinel_batch_emulator

    return use


def create(version: str, ctx: dict[str, Any], suffix: str = "", **kwargs: Any) -> str:
    op = SentinelBatchCreateOperator(
        task_id="create", payload=payload(version, suffix), api_version=version, **kwargs
    )
    return op.execute(ctx)


def live_tagged(server: EmulatorServer, tag: str) -> dict[str, str]:
    """Jobs whose description carries ``tag``, with their status (what the tag search finds)."""
    with server.state.lock:
        return {j.id: j.status for j in server.state.jobs.values() if tag in j.description}


def list_calls(server: EmulatorServer, version: str) -> int:
    return int(server.stats()["calls"].get(f"GET /api/{version}/batch/process", 0))


# ---------------------------------------------------------------------------------------------- the table
@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("status", ["CREATED", "ANALYSIS_DONE", "PROCESSING", "DONE"])
def test_retry_with_same_payload_reattaches_to_an_active_or_done_job(emu, version, status, caplog):
    server = emu(version)
    first = create(version, context())
    server.state.force(first, status)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = create(version, context())
    assert again == first
    assert server.stats()["jobs_created"] == 1
    assert f"Re-attaching to batch request {first} ({status})" in caplog.text


@pytest.mark.parametrize(
    ("version", "status", "why"),
    [
        ("v1", "FAILED", "error"),
        ("v1", "CANCELED", None),
        ("v2", "FAILED", "error"),
        ("v2", "STOPPED", "reason"),
    ],
)
def test_failed_previous_job_gets_a_new_job_and_the_log_names_it(emu, version, status, why, caplog):
    server = emu(version)
    first = create(version, context())
    server.state.force(
        first,
        status,
        error="Analysis failed: no data (forced)" if why == "error" else None,
        stopped_status_reason="OUT_OF_PU" if why == "reason" else None,
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = create(version, context())
    assert again != first
    assert server.stats()["jobs_created"] == 2
    assert f"Earlier batch request {first} of this task instance ended {status}" in caplog.text
    if why == "error":
        assert "no data (forced)" in caplog.text
    if why == "reason":
        assert "OUT_OF_PU" in caplog.text


@pytest.mark.parametrize("version", VERSIONS)
def test_changed_payload_gets_a_new_job_and_leaves_the_old_one_running(emu, version, caplog):
    server = emu(version)
    first = create(version, context())
    server.state.force(first, "PROCESSING")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = create(version, context(), suffix="\n// fixed evalscript")
    assert again != first
    assert server.stats()["jobs_created"] == 2
    assert server.state.job_status(first) == "PROCESSING"  # left as it is by default
    assert f"Batch request {first} (PROCESSING) of this task instance was made from a different payload" in (
        caplog.text
    )
    assert "changed: processRequest.evalscript" in caplog.text
    assert f"Batch request {again} supersedes {first} (PROCESSING)" in caplog.text
    # the new job is now the task's job: a retry with the fixed payload re-attaches to it
    assert create(version, context(), suffix="\n// fixed evalscript") == again
    assert server.stats()["jobs_created"] == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_stop_superseded_stops_the_old_running_job(emu, version):
    server = emu(version)
    first = create(version, context())
    server.state.force(first, "PROCESSING")
    again = create(version, context(), suffix="\n// v2 of the script", stop_superseded=True)
    assert again != first
    assert server.state.job_status(first) == ("CANCELED" if version == "v1" else "STOPPED")
    assert server.state.job_status(again) == "CREATED"


@pytest.mark.parametrize("version", VERSIONS)
def test_changed_output_location_is_a_change(emu, version):
    server = emu(version)
    first = create(version, context())
    op_payload = payload(version)
    if version == "v1":
        op_payload["bucketName"] = "another-bucket"
    else:
        op_payload["output"]["delivery"]["s3"]["url"] = "s3://another-bucket/v2"
    op = SentinelBatchCreateOperator(task_id="create", payload=op_payload, api_version=version)
    assert op.execute(context()) != first
    assert server.stats()["jobs_created"] == 2


@pytest.mark.parametrize("version", VERSIONS)
def test_reuse_existing_false_always_creates(emu, version):
    server = emu(version)
    ids = {create(version, context(), reuse_existing=False) for _ in range(2)}
    assert len(ids) == 2 and server.stats()["jobs_created"] == 2


def test_rotated_bucket_keys_are_not_a_change(emu, monkeypatch, caplog):
    server = emu("v2")

    def bucket(secret: str) -> None:
        monkeypatch.setenv(
            "AIRFLOW_CONN_RESULTS_BUCKET",
            json.dumps({"conn_type": "aws", "login": "AKIAROTATE", "password": secret}),
        )

    bucket("bucket-secret-before-rotation")
    first = create("v2", context(), bucket_conn_id="results_bucket")
    bucket("bucket-secret-after-rotation")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = create("v2", context(), bucket_conn_id="results_bucket")
    assert again == first and server.stats()["jobs_created"] == 1
    description = server.state.get_job(first).description
    assert "bucket-secret" not in description and "AKIAROTATE" not in description
    assert "bucket-secret" not in caplog.text


def test_legacy_label_without_fingerprint_is_still_reattached(emu, caplog):
    """A job created by an older version of the provider (tag only) keeps working after an upgrade."""
    server = emu("v1")
    ctx = context()
    tag = idempotency_tag(ctx)
    legacy = payload("v1")
    legacy["description"] = f"Max NDVI over Corsica [{tag}]"
    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

    old = SentinelBatchHook(api_version="v1").create_request(legacy)["id"]
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert create("v1", ctx) == old
    assert server.stats()["jobs_created"] == 1
    assert "no payload fingerprint" not in caplog.text  # the service echoes the same payload: nothing to warn


# ---------------------------------------------------------------------------------------------- the store
@pytest.mark.parametrize("version", VERSIONS)
def test_the_task_state_store_makes_a_retry_one_get(emu, version, caplog):
    server = emu(version)
    store = MemoryStore()
    first = create(version, context(store=store))
    assert store.data[identity.STATE_KEY]["request_id"] == first
    lists = list_calls(server, version)
    gets = server.stats()["calls"].get(f"GET /api/{version}/batch/process/{{id}}", 0)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert create(version, context(store=store)) == first
    calls = server.stats()["calls"]
    assert list_calls(server, version) == lists  # no search
    assert calls[f"GET /api/{version}/batch/process/{{id}}"] == gets + 1
    assert "recorded by an earlier try in Airflow's task state store" in caplog.text


@pytest.mark.parametrize("version", VERSIONS)
def test_store_entry_of_a_changed_payload_falls_back_to_the_search(emu, version, caplog):
    server = emu(version)
    store = MemoryStore()
    first = create(version, context(store=store))
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = create(version, context(store=store), suffix="\n// changed")
    assert again != first and store.data[identity.STATE_KEY]["request_id"] == again
    assert "it was made from a different payload" in caplog.text
    assert server.stats()["jobs_created"] == 2


def test_store_pointing_at_a_deleted_job_falls_back_to_the_search(emu, caplog):
    server = emu("v1")
    store = MemoryStore()
    first = create("v1", context(store=store))
    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

    SentinelBatchHook(api_version="v1").delete_request(first)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        again = create("v1", context(store=store))
    assert again != first and "the service does not know it (404)" in caplog.text
    assert server.stats()["jobs_created"] == 2


def test_death_between_create_and_store_write_is_closed_by_the_tag_search(emu, monkeypatch):
    """The gap the store alone cannot close: the job exists, the store is empty; the search finds it."""
    server = emu("v1")
    store = MemoryStore()
    first = create("v1", context(store=store))
    store.data.clear()  # as if the worker died before the write
    assert create("v1", context(store=store)) == first
    assert server.stats()["jobs_created"] == 1
    assert store.data[identity.STATE_KEY]["request_id"] == first  # recorded now


# ---------------------------------------------------------------------------------------------- concurrency
def _thread_safeguard() -> None:
    """Airflow 2.11's execute() guard keeps its state in a thread-local set up in the importing thread only."""
    try:
        from airflow.models.baseoperator import ExecutorSafeguard
    except ImportError:
        return
    sentinel = getattr(ExecutorSafeguard, "_sentinel", None)
    if sentinel is not None and not hasattr(sentinel, "callers"):
        sentinel.callers = {}


def race(version: str, run_id: str) -> list[str]:
    """Two executions of one task instance at the same moment (threads); the ids they return."""
    results: list[str] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(2)

    def one() -> None:
        try:
            _thread_safeguard()
            barrier.wait(5)
            results.append(create(version, context(run_id)))
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


@pytest.mark.parametrize("version", VERSIONS)
def test_concurrent_executions_converge_on_one_job(emu, version):
    server = emu(version)
    server.set_faults(create_delay_ms=300)  # both searches run before either job exists
    trials, raced, left_two = 5, 0, 0
    for trial in range(trials):
        run_id = f"manual__race_{trial}"
        before = server.stats()["jobs_created"]
        ids = race(version, run_id)
        created = server.stats()["jobs_created"] - before
        raced += created == 2
        tag = idempotency_tag(context(run_id))
        live = {jid: s for jid, s in live_tagged(server, tag).items() if s not in ("FAILED", "CANCELED")}
        left_two += len(live) > 1
        assert len(set(ids)) == 1, (trial, ids)
        assert list(live) == [ids[0]], (trial, live)
    assert raced == trials  # the race really happened every time: both executions created a job
    assert left_two == 0
    if version == "v1":  # the loser deleted its own job
        assert len(server.state.jobs) == trials
    else:  # the loser renamed its never-started job out of the tag search
        renamed = [j for j in server.state.jobs.values() if "duplicate of" in j.description]
        assert len(renamed) == trials and all(j.status == "CREATED" for j in renamed)


# ---------------------------------------------------------------------------------------------- real Airflow
def crash_dag_source(version: str, dag_id: str, body: dict[str, Any] | None = None) -> str:
    """A DAG whose create task (payload ``body``, by default the Corsica job) dies right after its first create."""
    return f'''
import json
from datetime import datetime, timedelta

from airflow.providers.common.compat.sdk import DAG
from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator

PAYLOAD = json.loads({json.dumps(body or payload(version))!r})


class CrashAfterCreate(SentinelBatchCreateOperator):
    """Fails right after a successful create on its first try, like a worker lost at that moment."""

    def execute(self, context):
        request_id = super().execute(context)
        if context["ti"].try_number <= 1:
            raise RuntimeError("worker lost right after create (injected)")
        return request_id


with DAG("{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
    CrashAfterCreate(
        task_id="create", payload=PAYLOAD, api_version="{version}", retries=1, retry_delay=timedelta(0)
    )
'''


@pytest.mark.parametrize("version", VERSIONS)
def test_airflow_retry_reattaches_through_the_task_state_store_or_the_tag(dag_runner, emu, version):
    """Real task runs (dag.test): Airflow 3.3 hands the task its state store, 2.11 has none and searches."""
    from tests.integration.harness import AIRFLOW_V_3

    server = emu(version)
    dag_id = f"identity_retry_{version}"
    result = dag_runner(crash_dag_source(version, dag_id), dag_id, disable_retries=False)
    assert result.succeeded, result.describe()
    assert result.task("create").try_number == 2
    assert server.stats()["jobs_created"] == 1
    log = result.log("create")
    store_available = AIRFLOW_V_3 and _has_task_state_store()
    if store_available:
        assert "recorded by an earlier try in Airflow's task state store" in log, log
        assert list_calls(server, version) == 2  # the first try's search and concurrency check; none on retry
    else:
        assert "created by an earlier try of this task" in log, log
        assert list_calls(server, version) == 3


def _has_task_state_store() -> bool:
    import importlib.util

    return importlib.util.find_spec("airflow.sdk.bases.resumablejobmixin") is not None


@pytest.mark.parametrize("version", VERSIONS)
def test_two_processes_executing_one_task_instance_converge_on_one_job(emu, version):
    """Two processes run the same create task instance at the same moment; the create call is held 300 ms
    so both search before either job exists. How often does the race leave two live jobs (more trials:
    ``SENTINEL_BATCH_RACE_TRIALS``)?"""
    import os
    import subprocess
    import sys
    from pathlib import Path

    server = emu(version)
    server.set_faults(create_delay_ms=300)
    root = Path(__file__).resolve().parents[2]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    trials = int(os.environ.get("SENTINEL_BATCH_RACE_TRIALS", "2"))  # a process pair takes ~10 s to start
    raced, left_two, outcomes = 0, 0, []
    for trial in range(trials):
        run_id = f"manual__processes_{trial}"
        before = server.stats()["jobs_created"]
        racers = [
            subprocess.Popen(
                [sys.executable, "-m", "tests.integration.identity_racer", version, run_id],
                cwd=root,
                env=env,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            for racer in racers:  # both imported, built and authenticated ...
                assert racer.stdout is not None
                while (line := racer.stdout.readline()) and line.strip() != "RACER ready":
                    pass
                assert line, "the racer exited before it was ready"
            for racer in racers:  # ... then go at once
                assert racer.stdin is not None
                racer.stdin.write("go\n")
                racer.stdin.flush()
            results = []
            for racer in racers:
                out, _ = racer.communicate(timeout=120)
                answers = [line[len(PREFIX) :] for line in out.splitlines() if line.startswith(PREFIX)]
                assert answers, out[-2000:]
                results.append(json.loads(answers[-1]))
        finally:
            for racer in racers:
                if racer.poll() is None:
                    racer.kill()
                    racer.wait()
        assert all("request_id" in r for r in results), results
        ids = [r["request_id"] for r in results]
        created = server.stats()["jobs_created"] - before
        tag = idempotency_tag(context(run_id))
        live = {jid: s for jid, s in live_tagged(server, tag).items() if s not in ("FAILED", "CANCELED")}
        outcomes.append((created, len(live), len(set(ids))))
        raced += created == 2
        left_two += len(live) > 1
        assert len(set(ids)) == 1, (trial, ids)
        assert list(live) == [ids[0]], (trial, live)
    print(f"{version}: {trials} trials, (jobs created, live jobs left, distinct ids returned) = {outcomes}")
    assert raced == trials and left_two == 0, outcomes
