"""Run real DAGs with ``dag.test()`` inside the test process, the same way on Airflow 2.11 and 3.x.

Why in-process: Airflow 3 starts its in-process Execution API once per process (~9 s), every later
``dag.test()`` costs well under a second, and the emulator, ``respx``/``requests_mock`` and
``monkeypatch``-ed ``AIRFLOW_CONN_*`` variables all reach the tasks *and* the triggers (deferral runs the
trigger inline, first event only). Use::

    from tests.integration.harness import run_dag

    result = run_dag(DAGS / "example_batch.py", "example_batch", conf={"aoi": "corsica"})
    assert result.succeeded, result.describe()
    assert result.xcom("create", key="batch_request_id")

What the harness adds over a bare ``dag.test()``:

* one ``airflow db migrate`` (in-process ``upgradedb``) per process into the test ``AIRFLOW_HOME``
  (``tests/conftest.py`` points it at a fresh temp dir with SQLite); refuses any other home;
* the DAG file (or source text) is written into ``[core] dags_folder``, which Airflow 3 requires, and
  files of earlier runs are removed first (Airflow 3 re-parses the whole folder on every ``dag.test()``);
* on Airflow 2.11 the deferred trigger goes through ``serialize()``, the encrypted ``Trigger`` row format
  and an import of its classpath before it runs, as on a real triggerer (3.x ``dag.test()`` already does
  this); so a trigger whose kwargs do not round-trip fails here on both lines;
* task retries are switched off by default: a failing task ends the run at once instead of sleeping
  through ``retry_delay`` inside ``dag.test()``;
* a :class:`DagRunResult` read back from the metadata DB: run state, per-task (and per map index) state,
  every XCom, the log records emitted while each task (and its trigger) ran, and each trigger run.

Trigger classes must live in importable modules (e.g. ``tests/integration/harness_triggers.py``), never
in the DAG file: the classpath is imported again before the trigger runs.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import textwrap
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from unittest import mock

import airflow
from packaging.version import Version

AIRFLOW_V_3 = Version(Version(airflow.__version__).base_version) >= Version("3.0.0")
HOME_PREFIX = "sentinel-batch-airflow-home-"  # tests/conftest.py creates AIRFLOW_HOME with this prefix
EXAMPLES = Path(__file__).resolve().parents[2] / "dags_examples"
# the example DAGs read their poll intervals from the environment at parse time (60 s / 10 s by default)
FAST_POLLS = {"SENTINEL_BATCH_POLL_INTERVAL": "0.2", "SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL": "0.1"}

__all__ = [
    "AIRFLOW_V_3",
    "FAST_POLLS",
    "DagImportError",
    "DagRunResult",
    "TaskResult",
    "TriggerRun",
    "dags_folder",
    "ensure_airflow_db",
    "place_files",
    "run_corsica",
    "run_dag",
    "run_example",
]


class DagImportError(AssertionError):
    """The DAG file did not import, or did not define the requested DAG."""


@dataclass(frozen=True)
class TriggerRun:
    """One inline trigger run: who deferred, what was rebuilt from the classpath, the first event."""

    task_id: str
    map_index: int
    classpath: str
    kwargs: dict[str, Any]
    event: Any  # the TriggerEvent payload; None when the trigger ended without an event


@dataclass(frozen=True)
class TaskResult:
    """Final state of one task instance (one map index), its XComs and the log records of its run."""

    task_id: str
    map_index: int
    state: str | None
    try_number: int
    xcom: dict[str, Any]
    log: str

    @property
    def return_value(self) -> Any:
        return self.xcom.get("return_value")


@dataclass(frozen=True)
class DagRunResult:
    """Outcome of :func:`run_dag`; ``describe()`` makes a readable assertion message."""

    dag_id: str
    run_id: str
    state: str | None
    tasks: dict[tuple[str, int], TaskResult]
    triggers: list[TriggerRun] = field(default_factory=list)
    duration: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.state == "success"

    @property
    def task_states(self) -> dict[str, str | None]:
        """``{"task": state}``; mapped instances as ``"task[0]"``, ``"task[1]"``, ..."""
        return {_label(tid, mi): t.state for (tid, mi), t in sorted(self.tasks.items())}

    def task(self, task_id: str, map_index: int = -1) -> TaskResult:
        try:
            return self.tasks[(task_id, map_index)]
        except KeyError:
            raise KeyError(f"no task instance {_label(task_id, map_index)}; have {sorted(self.task_states)}")

    def mapped(self, task_id: str) -> list[TaskResult]:
        """Every expanded instance of a mapped task, by map index."""
        return [t for (tid, mi), t in sorted(self.tasks.items()) if tid == task_id and mi >= 0]

    def xcom(self, task_id: str, key: str = "return_value", map_index: int = -1) -> Any:
        return self.task(task_id, map_index).xcom.get(key)

    def log(self, task_id: str, map_index: int = -1) -> str:
        return self.task(task_id, map_index).log

    def deferrals(self, task_id: str, map_index: int = -1) -> int:
        """How many times the task deferred (each deferral ran its trigger inline once)."""
        return sum(1 for t in self.triggers if (t.task_id, t.map_index) == (task_id, map_index))

    def describe(self, log_lines: int = 40) -> str:
        lines = [f"DAG run {self.dag_id}/{self.run_id}: {self.state} in {self.duration:.1f}s"]
        for (tid, mi), t in sorted(self.tasks.items()):
            lines.append(f"  {_label(tid, mi)}: {t.state} (try {t.try_number}) xcom keys {sorted(t.xcom)}")
            if t.state not in ("success", "skipped") and t.log:
                tail = t.log.splitlines()[-log_lines:]
                lines.extend("      | " + line for line in tail)
        return "\n".join(lines)


def _label(task_id: str, map_index: int) -> str:
    return task_id if map_index < 0 else f"{task_id}[{map_index}]"


def _state(value: Any) -> str | None:
    return None if value is None else str(getattr(value, "value", value))


# ----------------------------------------------------------------------------------------- environment
def _home() -> Path:
    home = Path(os.environ.get("AIRFLOW_HOME", "")).resolve()
    if not home.name.startswith(HOME_PREFIX):
        raise RuntimeError(
            f"AIRFLOW_HOME={home} is not the throw-away home tests/conftest.py creates; the harness migrates "
            "its database and rewrites its DAGs folder, so it refuses to run anywhere else."
        )
    return home


def dags_folder() -> Path:
    """``[core] dags_folder`` of the test home (created on first use)."""
    from airflow.configuration import conf

    home = _home()
    folder = Path(conf.get("core", "dags_folder")).resolve()
    if home not in folder.parents:
        raise RuntimeError(f"[core] dags_folder {folder} lies outside the test AIRFLOW_HOME {home}")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


_DB_LOCK = threading.Lock()
_DB_READY = False


def ensure_airflow_db() -> None:
    """``airflow db migrate`` once per process, in-process (the CLI would pay Airflow's start-up again)."""
    global _DB_READY
    with _DB_LOCK:
        if _DB_READY:
            return
        from airflow.configuration import conf

        home = _home()
        url = conf.get("database", "sql_alchemy_conn")
        if not url.startswith("sqlite:///") or home not in Path(url.removeprefix("sqlite:///")).parents:
            raise RuntimeError(f"the test database must be SQLite inside {home}, not {url}")
        from airflow.utils import db

        # Alembic's env.py applies alembic.ini's logging config (root at WARNING, a new stderr handler),
        # which would silence INFO records of tasks and triggers for the rest of the process: undo it.
        root = logging.getLogger()
        level, handlers = root.level, list(root.handlers)
        try:
            db.upgradedb()
        finally:
            root.setLevel(level)
            root.handlers[:] = handlers
        _DB_READY = True


# ------------------------------------------------------------------------------------------ DAG files
_WRITTEN: list[Path] = []  # what earlier runs put into the DAGs folder (removed before the next run)


def place_files(dag_file: Path | str, dag_id: str | None, support_files: Iterable[Path | str] = ()) -> Path:
    """Write the DAG file (a ``Path`` is copied, text is written) and ``support_files`` into the DAGs folder,
    after removing what earlier calls put there; the path of the DAG file."""
    folder = dags_folder()
    for old in _WRITTEN:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    _WRITTEN.clear()
    shutil.rmtree(folder / "__pycache__", ignore_errors=True)
    for extra in support_files:
        extra = Path(extra)
        target = folder / extra.name
        if extra.is_dir():
            shutil.copytree(extra, target, dirs_exist_ok=True)
        else:
            shutil.copy2(extra, target)
        _WRITTEN.append(target)
    if isinstance(dag_file, os.PathLike):
        source = Path(dag_file)
        target = folder / source.name
        shutil.copy2(source, target)
    else:
        target = folder / f"{dag_id or 'harness_dag'}.py"
        target.write_text(textwrap.dedent(dag_file))
    _WRITTEN.append(target)
    return target


def _load_dag(path: Path, dag_id: str | None) -> Any:
    if AIRFLOW_V_3:
        from airflow.dag_processing.dagbag import DagBag

        bag = DagBag(dag_folder=path)
    else:
        from airflow.models.dagbag import DagBag

        bag = DagBag(dag_folder=str(path), include_examples=False)
    if bag.import_errors:
        errors = "\n".join(f"{file}:\n{err}" for file, err in bag.import_errors.items())
        raise DagImportError(f"{path.name} failed to import:\n{errors}")
    if dag_id is None:
        if len(bag.dags) != 1:
            raise DagImportError(f"{path.name} defines {sorted(bag.dags)}; pass dag_id")
        dag_id = next(iter(bag.dags))
    if dag_id not in bag.dags:
        raise DagImportError(f"{path.name} defines {sorted(bag.dags)}, not {dag_id!r}")
    return bag.dags[dag_id]


# ------------------------------------------------------------------------------------- capture hooks
class _Capture(logging.Handler):
    """Log records (stdlib and, on Airflow 3, structlog) attributed to the task instance now running."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.current: tuple[str, int] | None = None
        self.logs: dict[tuple[str, int], list[str]] = {}
        self.triggers: list[TriggerRun] = []

    def _add(self, line: str) -> None:
        if self.current is not None:
            self.logs.setdefault(self.current, []).append(line)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = f"{record.levelname} {record.name}: {record.getMessage()}"
        except Exception:  # a broken %-format in someone's log call must not break the run
            line = f"{record.levelname} {record.name}: {record.msg!r} {record.args!r}"
        if record.exc_info and record.exc_info[0] is not None:
            line += "\n" + "".join(traceback.format_exception(*record.exc_info)).rstrip()
        self._add(line)

    def structlog_processor(
        self, logger: Any, method_name: str, event_dict: dict[str, Any]
    ) -> dict[str, Any]:
        if self.current is not None:
            skip = {"event", "logger", "timestamp", "level", "loc", "exc_info", "exception", "logger_name"}
            extra = " ".join(f"{k}={v!r}" for k, v in event_dict.items() if k not in skip)
            line = f"{method_name.upper()} {event_dict.get('logger', '')}: {event_dict.get('event', '')}"
            line += f" {extra}" if extra else ""
            exc = event_dict.get("exc_info")
            if exc:
                info = sys.exc_info() if exc is True else exc
                if isinstance(info, BaseException):
                    info = (type(info), info, info.__traceback__)
                if isinstance(info, tuple) and info[0] is not None:
                    line += "\n" + "".join(traceback.format_exception(*info)).rstrip()
            self._add(line)
        return event_dict


@contextmanager
def _capturing(capture: _Capture) -> Iterator[None]:
    """Attach ``capture`` to logging and wrap ``dag.test()``'s per-task runner and inline-trigger runner."""
    if AIRFLOW_V_3:
        import airflow.sdk.definitions.dag as dag_module
    else:
        import airflow.models.dag as dag_module

    original_run_task = dag_module._run_task
    original_run_trigger = dag_module._run_inline_trigger

    def run_task(*args: Any, **kwargs: Any) -> Any:
        ti = kwargs["ti"]
        capture.current = (ti.task_id, ti.map_index)
        try:
            return original_run_task(*args, **kwargs)
        finally:
            capture.current = None

    def run_trigger(trigger: Any, *args: Any) -> Any:
        if not AIRFLOW_V_3:
            trigger = _as_triggerer_would(trigger)
        classpath, kwargs = trigger.serialize()
        event = original_run_trigger(trigger, *args)
        task_id, map_index = capture.current or ("?", -1)
        payload = getattr(event, "payload", None)
        capture.triggers.append(TriggerRun(task_id, map_index, classpath, dict(kwargs), payload))
        return event

    root = logging.getLogger()
    task_logger = logging.getLogger("airflow.task")
    loggers = [root] if task_logger.propagate else [root, task_logger]
    processors: list[Any] | None = None
    with ExitStack() as stack:
        stack.enter_context(mock.patch.object(dag_module, "_run_task", run_task))
        stack.enter_context(mock.patch.object(dag_module, "_run_inline_trigger", run_trigger))
        for logger in loggers:
            logger.addHandler(capture)
            stack.callback(logger.removeHandler, capture)
        if AIRFLOW_V_3:
            import structlog

            # The processor list is shared (not copied) by already cached loggers, so edit it in place,
            # just before the renderer, and take the entry out again afterwards.
            processors = structlog.get_config()["processors"]
            processors.insert(max(len(processors) - 1, 0), capture.structlog_processor)
            stack.callback(processors.remove, capture.structlog_processor)
        yield


def _as_triggerer_would(trigger: Any) -> Any:
    """Airflow 2.11: rebuild the trigger from its encrypted ``Trigger`` row, as the triggerer does."""
    from airflow.models.trigger import Trigger
    from airflow.utils.module_loading import import_string

    classpath, kwargs = trigger.serialize()
    row = Trigger(classpath=classpath, kwargs=kwargs)
    return import_string(row.classpath)(**row.kwargs)


# ------------------------------------------------------------------------------------------- results
def _read_results(dag_id: str, run_id: str, capture: _Capture, duration: float) -> DagRunResult:
    from airflow.models.dagrun import DagRun
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from sqlalchemy import select

    if AIRFLOW_V_3:
        from airflow.models.xcom import XComModel as XComRow

        deserialize = XComRow.deserialize_value
    else:
        from airflow.models.xcom import BaseXCom as XComRow
        from airflow.models.xcom import XCom

        deserialize = XCom.deserialize_value

    with create_session() as session:
        run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one()
        tis = session.scalars(
            select(TaskInstance).where(TaskInstance.dag_id == dag_id, TaskInstance.run_id == run_id)
        ).all()
        xcoms: dict[tuple[str, int], dict[str, Any]] = {}
        # plain columns, not ORM objects: 2.11's XCom model swaps ``value`` for a lossy UI rendering on load
        columns = (XComRow.task_id, XComRow.map_index, XComRow.key, XComRow.value)
        for row in session.execute(
            select(*columns).where(XComRow.dag_id == dag_id, XComRow.run_id == run_id)
        ).all():
            xcoms.setdefault((row.task_id, row.map_index), {})[row.key] = deserialize(row)
        tasks = {
            (ti.task_id, ti.map_index): TaskResult(
                task_id=ti.task_id,
                map_index=ti.map_index,
                state=_state(ti.state),
                try_number=ti.try_number,
                xcom=xcoms.get((ti.task_id, ti.map_index), {}),
                log="\n".join(capture.logs.get((ti.task_id, ti.map_index), [])),
            )
            for ti in tis
        }
        return DagRunResult(dag_id, run_id, _state(run.state), tasks, list(capture.triggers), duration)


# --------------------------------------------------------------------------------------------- entry
def run_dag(
    dag_file: Path | str,
    dag_id: str | None = None,
    *,
    conf: Mapping[str, Any] | None = None,
    logical_date: datetime | None = None,
    env: Mapping[str, str] | None = None,
    support_files: Iterable[Path | str] = (),
    disable_retries: bool = True,
    existing_run_id: str | None = None,
) -> DagRunResult:
    """Run one DAG run with ``dag.test()`` in this process and report what happened.

    :param dag_file: a ``Path`` to a DAG file (copied into the DAGs folder) or the DAG source text.
    :param dag_id: the DAG to run; may be omitted when the file defines exactly one.
    :param conf: ``dag_run.conf`` (``run_conf``).
    :param logical_date: the run's logical date (default: now).
    :param env: extra environment variables (e.g. ``AIRFLOW_CONN_*``) for the duration of the run only;
        ``monkeypatch.setenv`` works as well.
    :param support_files: files or directories copied next to the DAG file (e.g. ``include/``).
    :param disable_retries: set every task's ``retries`` to 0 so failures end the run immediately.
    :param existing_run_id: execute this already created run (e.g. one the scheduler created for an asset
        event) with ``dag.test()``'s task loop, instead of a new manual run.
    :raises DagImportError: the file did not import or lacks ``dag_id``.
    """
    ensure_airflow_db()
    path = place_files(dag_file, dag_id, support_files)
    with mock.patch.dict(os.environ, dict(env or {})):
        dag = _load_dag(path, dag_id)
        if disable_retries:
            for task in dag.tasks:
                task.retries = 0
        capture = _Capture()
        kwargs: dict[str, Any] = {"run_conf": dict(conf) if conf is not None else None}
        if logical_date is not None:
            kwargs["logical_date" if AIRFLOW_V_3 else "execution_date"] = logical_date
        started = time.monotonic()
        with _capturing(capture), _existing_run(dag.dag_id, existing_run_id):
            dag_run = dag.test(**kwargs)
        duration = time.monotonic() - started
    return _read_results(dag.dag_id, existing_run_id or dag_run.run_id, capture, duration)


@contextmanager
def _existing_run(dag_id: str, run_id: str | None) -> Iterator[None]:
    """While active, ``dag.test()`` runs the existing run ``run_id`` instead of creating one (no-op for None)."""
    if run_id is None:
        yield
        return
    from airflow.models.dagrun import DagRun
    from airflow.utils.state import DagRunState
    from sqlalchemy import select

    def existing_run(*args: Any, **kwargs: Any) -> Any:
        session = kwargs["session"]
        run = session.scalars(select(DagRun).where(DagRun.dag_id == dag_id, DagRun.run_id == run_id)).one()
        run.state = DagRunState.RUNNING
        session.commit()
        run.dag = kwargs["dag"]  # what the real helper's create_dagrun() sets
        return run

    target = (
        "airflow.models.dagrun.get_or_create_dagrun"
        if AIRFLOW_V_3
        else "airflow.models.dag._get_or_create_dagrun"
    )
    with mock.patch(target, existing_run):
        yield


# ------------------------------------------------------------------------------------- example DAGs
def run_example(
    runner: Callable[..., DagRunResult], dag_id: str, *, env: Mapping[str, str] | None = None, **kwargs: Any
) -> DagRunResult:
    """``dags_examples/<dag_id>.py`` as shipped (with ``include/``) through ``runner`` (``run_dag`` or the
    ``dag_runner`` fixture), polling every 0.1-0.2 s; ``env`` and ``kwargs`` go to the run."""
    return runner(
        EXAMPLES / f"{dag_id}.py",
        dag_id,
        support_files=[EXAMPLES / "include"],
        env={**FAST_POLLS, **(env or {})},
        **kwargs,
    )


def run_corsica(
    runner: Callable[..., DagRunResult],
    server: Any,
    version: str,
    *,
    bucket_conn: str,
    conn: str | None = None,
    env: Mapping[str, str] | None = None,
    disable_retries: bool = True,
) -> DagRunResult:
    """The example DAG ``corsica_max_ndvi_<version>`` against the emulator ``server`` (or the connection
    ``conn``), with ``bucket_conn`` as the v2 delivery keys' connection (``sentinel_batch_bucket``)."""
    run_env = {
        "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT": conn or server.airflow_conn_json(version),
        "AIRFLOW_CONN_SENTINEL_BATCH_BUCKET": bucket_conn,
        **(env or {}),
    }
    return run_example(runner, f"corsica_max_ndvi_{version}", env=run_env, disable_retries=disable_retries)
