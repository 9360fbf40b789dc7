"""A real Airflow deployment for tests: the emulator and Airflow's own daemons, each in its own process.

* :class:`StackEmulator`: the package's :class:`EmulatorProcess` (``python -m
  airflow_provider_sentinel_batch.emulator --port 0`` on 127.0.0.1, ready line, ``/_emulator`` control plane
  for stats, job states and the clock) with its data and log under the stack's folder.
* :class:`AirflowStack`: a fresh ``AIRFLOW_HOME`` (SQLite) and the daemons a deployment runs. Airflow 3:
  ``api-server`` (127.0.0.1 only; tasks reach the Execution API through it; ``simple_auth_manager_all_admins``
  so the test can act as a user through the REST API), ``scheduler`` (LocalExecutor, which Airflow 3 accepts
  with SQLite), ``dag-processor``, ``triggerer``. Airflow 2.11: ``scheduler`` (SequentialExecutor, the only
  executor 2.x accepts with SQLite; it also parses DAGs) and ``triggerer``.

Every process runs in its own session (process group) with its output in a log file, and is stopped the way
Ctrl+C stops it: SIGINT to the whole group, then SIGKILL to the group if anything is left after a grace
period. Log servers are not started (``--skip-serve-logs``: they would listen on all interfaces), proxies are
removed from the environment, so all traffic stays on the loopback interface.

The state is read the way an operator would look at it: the metadata DB (read-only SQLite connections), the
task and trigger log files under ``AIRFLOW_HOME/logs`` and the emulator's control plane.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any, TypeVar

import requests

from airflow_provider_sentinel_batch.emulator.process import EmulatorProcess

AIRFLOW_VERSION = version("apache-airflow")
AIRFLOW_3 = int(AIRFLOW_VERSION.split(".")[0]) >= 3
BIN = Path(sys.executable).parent  # the venv's bin: ``airflow`` and the interpreter the daemons must use
TRIGGER_CLASSPATH = "airflow_provider_sentinel_batch.triggers.batch.SentinelBatchTrigger"
_PROXY_VARS = {"http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "no_proxy"}

T = TypeVar("T")


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for the API server, which cannot report the port it picked)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _interrupt_when_orphaned() -> None:
    """Linux (in the child, before exec): SIGINT this daemon if the test process dies without stopping it
    (killed by a CI timeout, say), so a run cannot leave Airflow's daemons behind."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGINT))  # 1 = PR_SET_PDEATHSIG
    except Exception:  # best effort: stop() remains the normal way out
        pass


def local_session() -> requests.Session:
    """HTTP for loopback only: never through a proxy from the environment."""
    session = requests.Session()
    session.trust_env = False
    return session


def check_environment(switch: str, *, what: str, cannot: str, problem: Callable[[], str | None]) -> None:
    """Skip, fail or go on, by the on/auto/require environment switch ``switch`` and by ``problem()`` (why this
    machine cannot run the stack, or None). ``what`` names the tests, ``cannot`` what could not run."""
    import pytest

    value = os.environ.get(switch, "auto").strip().lower()
    if value in {"0", "off", "false", "no", "skip"}:
        pytest.skip(f"{switch}={os.environ.get(switch)} switches the {what} tests off")
    found = problem()
    if found is None:
        return
    if value in {"1", "on", "true", "yes", "require", "required"}:
        pytest.fail(f"{switch}=require, but this machine cannot run them: {found}")
    pytest.skip(f"cannot run {cannot} here: {found} (set {switch}=require to fail instead)")


class ManagedProcess:
    """One daemon in its own process group, its output in ``log_path``; :meth:`stop` is SIGINT then SIGKILL."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str],
        cwd: Path,
        log_path: Path,
        stdout_pipe: bool = False,
    ) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self.log_path = log_path
        self.stdout_pipe = stdout_pipe
        self.proc: subprocess.Popen[bytes] | None = None
        self.stopped = False  # stop() was called: its death is expected
        self.killed = False  # SIGINT was not enough
        self.stop_seconds: float | None = None
        self._stop_started = 0.0

    def start(self) -> ManagedProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if self.stdout_pipe else log,
                stderr=log,
                start_new_session=True,  # own process group: stop() reaches every worker it forks
                preexec_fn=_interrupt_when_orphaned if sys.platform == "linux" else None,
                **self.popen_options(),
            )
        return self

    def popen_options(self) -> dict[str, Any]:
        """More ``subprocess.Popen`` arguments for this process (none here; e.g. a user to run as)."""
        return {}

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def returncode(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _group_alive(self) -> bool:
        assert self.proc is not None
        self.proc.poll()  # reap the leader, or the group never looks empty
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def _signal_group(self, sig: int) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def interrupt(self) -> None:
        """Send SIGINT to the whole group (what Ctrl+C in a terminal does); :meth:`stop` waits for it."""
        if self.proc is None or self.stopped:
            return
        self.stopped = True
        self._stop_started = time.monotonic()
        if self._group_alive():
            self._signal_group(signal.SIGINT)

    def stop(self, grace: float = 30.0) -> float:
        """SIGINT the group, wait up to ``grace`` s for all of it to exit, then SIGKILL; seconds taken."""
        if self.proc is None:
            return 0.0
        if self.stop_seconds is not None:
            return self.stop_seconds
        self.interrupt()
        while self._group_alive():
            if time.monotonic() - self._stop_started > grace:
                self.killed = True
                self._signal_group(signal.SIGKILL)
                break
            time.sleep(0.1)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.stop_seconds = time.monotonic() - self._stop_started
        return self.stop_seconds

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        return "\n".join(self.log().splitlines()[-lines:])


class StackEmulator(EmulatorProcess):
    """The emulator process of a stack: its data and log under ``root``, plus the kill calls it has seen."""

    def __init__(self, root: Path, *, time_scale: float, env: dict[str, str] | None = None) -> None:
        super().__init__(
            time_scale=time_scale,
            data_dir=root / "emulator-data",
            env=dict(env if env is not None else clean_environment()),
            cwd=root,
            log_path=root / "logs" / "emulator.log",
        )

    def kill_calls(self) -> dict[str, int]:
        """Calls that stop a job: v1 ``.../cancel``, v2 ``.../stop`` (route templates, all jobs)."""
        calls = self.stats()["calls"]
        return {k: v for k, v in calls.items() if k.endswith(("/{id}/cancel", "/{id}/stop"))}


def clean_environment() -> dict[str, str]:
    """This process's environment without Airflow settings (the test process has its own) or proxies."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("AIRFLOW") and k.lower() not in _PROXY_VARS and not k.startswith("PYTEST_")
    }
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"  # the daemons start `airflow` sub-commands
    env["PYTHONUNBUFFERED"] = "1"
    return env


class AirflowStack:
    """A fresh ``AIRFLOW_HOME`` under ``root`` and Airflow's daemons, talking to ``emulator``."""

    def __init__(self, root: Path, emulator: StackEmulator, *, parallelism: int = 2) -> None:
        from cryptography.fernet import Fernet

        self.root = root
        self.emulator = emulator
        self.home = root / "airflow-home"
        self.dags_folder = self.home / "dags"
        self.db_path = self.home / "airflow.db"
        self.process_logs = root / "logs"
        self.api_port = free_port() if AIRFLOW_3 else 0
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.http = local_session()
        self.processes: list[ManagedProcess] = []
        self.triggerers: list[ManagedProcess] = []
        self.timings: dict[str, float] = {}
        env = clean_environment()
        env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}",
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__PARALLELISM": str(parallelism),
                "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            }
        )
        if AIRFLOW_3:
            env.update(
                {
                    "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                    "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.api_url}/execution/",
                    "AIRFLOW__API__HOST": "127.0.0.1",
                    "AIRFLOW__API__PORT": str(self.api_port),
                    "AIRFLOW__API__WORKERS": "1",
                    # REST calls as an admin without a login: acceptable only because it listens on loopback
                    "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                    "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_urlsafe(32),
                    "AIRFLOW__API__SECRET_KEY": secrets.token_urlsafe(32),
                }
            )
        else:
            env.update(
                {
                    "AIRFLOW__CORE__EXECUTOR": "SequentialExecutor",
                    "AIRFLOW__WEBSERVER__SECRET_KEY": secrets.token_urlsafe(32),
                }
            )
        self.env = env

    # ------------------------------------------------------------------------------------------ life
    def airflow(self, *args: str, timeout: float = 240.0) -> str:
        """Run one ``airflow`` CLI command to completion; its output, or an error with the output."""
        started = time.monotonic()
        result = subprocess.run(
            [str(BIN / "airflow"), *args],
            env=self.env,
            cwd=self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=True,
        )
        self.timings[f"airflow {' '.join(args[:2])}"] = time.monotonic() - started
        if result.returncode != 0:
            raise RuntimeError(
                f"airflow {' '.join(args)} exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        return result.stdout

    def write_dag(self, filename: str, source: str) -> Path:
        self.dags_folder.mkdir(parents=True, exist_ok=True)
        path = self.dags_folder / filename
        path.write_text(source)
        return path

    def migrate(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        self.airflow("db", "migrate")

    def _spawn(
        self, name: str, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> ManagedProcess:
        """Start ``airflow <args>`` as the daemon ``name`` (this stack's environment and folder unless given)."""
        process = ManagedProcess(
            name,
            [str(BIN / "airflow"), *args],
            env=self.env if env is None else env,
            cwd=self.root if cwd is None else cwd,
            log_path=self.process_logs / f"{name}.log",
        ).start()
        self.processes.append(process)
        return process

    def _connect_emulator(self) -> None:
        """Give the daemons the emulator's connection (the emulator must be running)."""
        if not self.emulator.airflow_conn:
            raise RuntimeError("start the emulator first: the daemons need its connection")
        self.env["AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT"] = self.emulator.airflow_conn

    def start(self) -> None:
        """Start the daemons (the DB migrated, the DAG files in place, the emulator ready)."""
        self._connect_emulator()
        if AIRFLOW_3:
            self._spawn("api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.api_port))
            self._spawn("dag-processor", "dag-processor")
        self._spawn("scheduler", "scheduler", "--skip-serve-logs")
        self.start_triggerer()

    def start_triggerer(self) -> ManagedProcess:
        triggerer = self._spawn(f"triggerer-{len(self.triggerers) + 1}", "triggerer", "--skip-serve-logs")
        self.triggerers.append(triggerer)
        return triggerer

    @property
    def triggerer(self) -> ManagedProcess:
        return self.triggerers[-1]

    def stop(self) -> None:
        """Stop every daemon (SIGINT to all at once, then wait); never raises: teardown must go on."""
        self.http.close()  # an idle keep-alive connection would hold up the API server's graceful exit
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.interrupt()
        for process in self.processes:
            try:
                process.stop()
            except Exception as exc:  # keep stopping the others
                print(f"stopping {process.name} failed: {exc!r}", file=sys.stderr)

    def wait_ready(self, dag_ids: list[str], timeout: float = 150.0) -> None:
        """Each daemon has registered its job (and heartbeats), the API answers and the DAGs are parsed."""
        started = time.monotonic()
        kinds = ["SchedulerJob", "TriggererJob"] + (["DagProcessorJob"] if AIRFLOW_3 else [])

        def ready() -> bool:
            running = {
                row["job_type"] for row in self.query("SELECT job_type FROM job WHERE state = 'running'")
            }
            if not set(kinds) <= running:
                return False
            if AIRFLOW_3 and not self._api_ok("/api/v2/monitor/health"):
                return False
            placeholders = ",".join("?" * len(dag_ids))
            parsed = self.query(
                f"SELECT dag_id FROM serialized_dag WHERE dag_id IN ({placeholders})", *dag_ids
            )
            return len({row["dag_id"] for row in parsed}) == len(dag_ids)

        self.wait(f"{', '.join(kinds)} running and DAGs {dag_ids} parsed", ready, timeout=timeout)
        self.timings["daemons ready"] = time.monotonic() - started

    def _api_ok(self, path: str) -> bool:
        try:
            return self.http.get(self.api_url + path, timeout=5).status_code == 200
        except requests.RequestException:
            return False

    # ------------------------------------------------------------------------------------- user actions
    def trigger(self, dag_id: str, run_id: str) -> None:
        """Trigger a DAG run as a user: REST API on Airflow 3 (the CLI pays Airflow's start-up), CLI on 2.x."""
        if AIRFLOW_3:
            response = self.http.post(
                f"{self.api_url}/api/v2/dags/{dag_id}/dagRuns",
                json={"dag_run_id": run_id, "logical_date": None},
                timeout=30,
            )
            if response.status_code != 200:
                raise RuntimeError(f"triggering {dag_id}: {response.status_code} {response.text}")
        else:
            self.airflow("dags", "trigger", dag_id, "--run-id", run_id)

    def set_task_state(self, dag_id: str, run_id: str, task_id: str, state: str) -> dict[str, Any]:
        """Mark a task instance as a user does in the UI (Airflow 3 REST API)."""
        response = self.http.patch(
            f"{self.api_url}/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}",
            json={"new_state": state},
            timeout=30,
        )
        if response.status_code != 200:
            raise RuntimeError(f"marking {task_id} {state}: {response.status_code} {response.text}")
        return dict(response.json())

    def clear_task(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
        """Clear one task instance of a run as a user does in the UI (Airflow 3 REST API): a new try."""
        response = self.http.post(
            f"{self.api_url}/api/v2/dags/{dag_id}/clearTaskInstances",
            json={
                "dry_run": False,
                "dag_run_id": run_id,
                "task_ids": [task_id],
                "only_failed": False,
                "include_upstream": False,
                "include_downstream": False,
                "include_past": False,
                "include_future": False,
            },
            timeout=30,
        )
        if response.status_code != 200:
            raise RuntimeError(f"clearing {task_id}: {response.status_code} {response.text}")
        return dict(response.json())

    # ------------------------------------------------------------------------------------ metadata DB
    def query(self, sql: str, *params: Any) -> list[sqlite3.Row]:
        """Read the metadata DB (read-only, short-lived connection; waits out a writer's lock)."""
        if not self.db_path.exists():
            return []
        conn = sqlite3.connect(f"file:{self.db_path}?mode=ro", uri=True, timeout=10)
        try:
            conn.row_factory = sqlite3.Row
            return list(conn.execute(sql, params))
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc) or "locked" in str(exc):
                return []
            raise
        finally:
            conn.close()

    def task_instance(self, dag_id: str, run_id: str, task_id: str) -> dict[str, Any] | None:
        rows = self.query(
            "SELECT task_id, state, try_number, next_method, trigger_id FROM task_instance "
            "WHERE dag_id = ? AND run_id = ? AND task_id = ? AND map_index = -1",
            dag_id,
            run_id,
            task_id,
        )
        return dict(rows[0]) if rows else None

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str | None]:
        rows = self.query(
            "SELECT task_id, state FROM task_instance WHERE dag_id = ? AND run_id = ?", dag_id, run_id
        )
        return {row["task_id"]: row["state"] for row in rows}

    def run_state(self, dag_id: str, run_id: str) -> str | None:
        rows = self.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", dag_id, run_id)
        return rows[0]["state"] if rows else None

    def trigger_row(self, trigger_id: int) -> dict[str, Any] | None:
        rows = self.query("SELECT id, classpath, triggerer_id FROM trigger WHERE id = ?", trigger_id)
        return dict(rows[0]) if rows else None

    def triggerer_jobs(self) -> list[dict[str, Any]]:
        rows = self.query("SELECT id, state, hostname FROM job WHERE job_type = 'TriggererJob' ORDER BY id")
        return [dict(row) for row in rows]

    # ------------------------------------------------------------------------------------------- logs
    def task_log_dir(self, dag_id: str, run_id: str, task_id: str) -> Path:
        return self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"

    def task_log(self, dag_id: str, run_id: str, task_id: str, attempt: int = 1) -> str:
        path = self.task_log_dir(dag_id, run_id, task_id) / f"attempt={attempt}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def trigger_logs(self, dag_id: str, run_id: str, task_id: str, attempt: int = 1) -> dict[int, str]:
        """``{triggerer job id: text}``: a triggerer writes the trigger's log to ``<task log>.trigger.<job id>.log``."""
        logs: dict[int, str] = {}
        for path in self.task_log_dir(dag_id, run_id, task_id).glob(f"attempt={attempt}.log.trigger.*.log"):
            job_id = path.name.removeprefix(f"attempt={attempt}.log.trigger.").removesuffix(".log")
            if job_id.isdigit():
                logs[int(job_id)] = path.read_text(errors="replace")
        return logs

    # ---------------------------------------------------------------------------------------- waiting
    def wait(self, what: str, probe: Callable[[], T], *, timeout: float, interval: float = 0.25) -> T:
        """Poll ``probe`` until it returns something truthy; fail early if a daemon died, else on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            dead = [p for p in [self.emulator, *self.processes] if not p.stopped and not p.alive()]
            if dead:
                raise AssertionError(
                    f"{', '.join(f'{p.name} (exit {p.returncode})' for p in dead)} died while waiting for "
                    f"{what}\n{self.describe()}"
                )
            value = probe()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{self.describe()}")
            time.sleep(interval)

    def describe(self, lines: int = 20) -> str:
        """Everything useful for a failure message: runs, task states, triggers, jobs, daemon log tails."""
        out = []
        for row in self.query("SELECT dag_id, run_id, state FROM dag_run ORDER BY id"):
            states = self.task_states(row["dag_id"], row["run_id"])
            out.append(f"run {row['dag_id']}/{row['run_id']}: {row['state']} {states}")
        for row in self.query("SELECT id, classpath, triggerer_id FROM trigger"):
            out.append(f"trigger {dict(row)}")
        out.append(f"triggerer jobs {self.triggerer_jobs()}")
        try:
            out.append(f"emulator jobs {self.emulator.jobs()}")
        except requests.RequestException as exc:
            out.append(f"emulator unreachable: {exc}")
        for process in [self.emulator, *self.processes]:
            state = "running" if process.alive() else f"exit {process.returncode}"
            out.append(f"--- {process.name} ({state}), last {lines} lines of {process.log_path}")
            out.append(process.tail(lines))
        return "\n".join(out)
