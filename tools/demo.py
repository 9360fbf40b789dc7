"""The one-command demo: the Corsica max-NDVI job on real Airflow against the local emulator.

``bash .ci/demo`` builds the environment and runs ``python tools/demo.py`` (from a checkout: it needs
``dags_examples/`` and the package with its ``emulator`` extra), which:
starts the emulator on 127.0.0.1 (free port, fast clock, outputs under ``.demo/emulator-data``), prepares a
project-local ``AIRFLOW_HOME`` (``.demo/airflow-home``, SQLite), runs ``airflow dags test`` for each example DAG
(real deferral: the trigger runs inline), prints each step's progress and a summary per job, stops the emulator
and exits non-zero if anything failed. Full Airflow logs go to ``.demo/logs/``. Re-running starts from a clean
emulator and output folder; the metadata DB is kept (``airflow db migrate`` is idempotent).

Nothing here talks to a real Sentinel Hub account: every ``AIRFLOW*`` and ``SENTINEL_BATCH_*`` variable of the
calling shell is dropped for the Airflow commands, and the connection points at the emulator.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from importlib.metadata import version
from pathlib import Path
from typing import Any

_AIRFLOW_3 = not version("apache-airflow").startswith("2.")
DEFAULT_DAGS = ("corsica_max_ndvi_v1", "corsica_max_ndvi_v2")
SUMMARY_MARKER = "SENTINEL_BATCH_SUMMARY "
# One log line, Airflow 3 (structlog) or Airflow 2 (logging) format → its level and message.
_AF3_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT[\d:.]+Z \[(?P<level>\w+)\s*\] (?P<msg>.*?)(?: \[[\w.]+\](?: .*)?)?$"
)
_AF2_LINE = re.compile(r"^\[[^\]]+\] \{[^}]+\} (?P<level>[A-Z]+) - (?P<msg>.*)$")
_EXCEPTION = re.compile(r"^[\w.]*(Error|Exception): ")
# Airflow 3 starts its in-process Execution API for the first task: a pause worth explaining.
_FIRST_TASK_NOTE = " (Airflow 3 first starts its in-process Execution API: 10-30 s)" if _AIRFLOW_3 else ""
_PROGRESS = (
    "Batch request ",
    "Cost guard",
    "Asked the service",
    "Re-attaching",
    "Not sending",
    "Not starting",
)


def _say(text: str = "") -> None:
    print(text, flush=True)


def _default_dags_folder() -> Path:
    return Path(__file__).resolve().parents[1] / "dags_examples"  # tools/ sits beside dags_examples/


def _airflow_env(home: Path, dags_folder: Path, conn_json: str, args: argparse.Namespace) -> dict[str, str]:
    """A clean environment for the Airflow commands: the caller's Airflow settings and accounts never leak in."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "SENTINEL_BATCH_"))}
    env.update(
        {
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
            "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT": conn_json,
            # v2 delivery keys come from a connection, as in production (the emulator accepts any)
            "AIRFLOW_CONN_SENTINEL_BATCH_BUCKET": json.dumps(
                {"conn_type": "aws", "login": "demo-access-key", "password": "demo-secret-key"}
            ),
            "AIRFLOW_VAR_SENTINEL_BATCH_BUCKET": args.bucket,
            # the example DAGs poll every 60 s / 10 s by default; the emulator's clock runs faster
            "SENTINEL_BATCH_POLL_INTERVAL": str(args.poll_interval),
            "SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL": str(args.poll_interval / 2),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _airflow(*argv: str) -> list[str]:
    return [sys.executable, "-m", "airflow", *argv]


def _message(line: str) -> tuple[str, str]:
    """``(level, message)`` of a log line; plain output (a task's ``print``) comes back with level ``""``."""
    for pattern in (_AF3_LINE, _AF2_LINE):
        match = pattern.match(line)
        if match:
            return match["level"].lower(), match["msg"].strip()
    return "", line.strip()


def _run_dag(dag_id: str, env: dict[str, str], log_path: Path) -> tuple[int, dict[str, Any] | None]:
    """``airflow dags test <dag_id>``: progress lines to the terminal, everything to ``log_path``."""
    _say(f"\n==> airflow dags test {dag_id}")
    started = time.monotonic()
    task, last, summary = "-", "", None
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            _airflow("dags", "test", dag_id),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        )
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                log.write(line)
                level, msg = _message(line)
                shown = ""
                if msg.startswith(SUMMARY_MARKER):
                    summary = json.loads(msg[len(SUMMARY_MARKER) :])
                elif msg.startswith("[DAG TEST] starting task_id="):
                    shown = "started" + (_FIRST_TASK_NOTE if task == "-" else "")
                    task = msg.split("task_id=", 1)[1].split()[0]
                elif msg.startswith("[DAG TEST] running trigger in line"):
                    shown = "deferred: the trigger polls the job (inline, as a triggerer would)"
                elif msg.startswith(_PROGRESS) or _EXCEPTION.match(msg):
                    shown = msg
                elif level in ("error", "critical"):
                    shown = "ERROR " + msg
                elif msg.startswith("Marking run <DagRun"):
                    shown = "DAG run " + ("succeeded" if msg.rstrip().endswith("successful") else "FAILED")
                if shown and shown != last:
                    _say(f"  {time.monotonic() - started:6.1f}s  {task:<26} {shown}")
                    last = shown
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    _say(f"    exit code {rc} after {time.monotonic() - started:.1f}s (full log: {log_path})")
    return rc, summary


def _s3_outputs(s3: Any, location: str | None) -> tuple[str | None, list[str]]:
    """The objects under ``location`` (names relative to it), listed over the S3 API with read-only keys."""
    if not location or not location.startswith("s3://"):
        return None, []
    bucket, _, prefix = location[len("s3://") :].partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
    return location, [key[len(prefix) :] for key in s3.keys_in(bucket, prefix)]


def _local_outputs(data_dir: Path, location: str | None) -> tuple[Path | None, list[Path]]:
    """The emulator writes ``s3://bucket/key`` to ``<data_dir>/bucket/key``."""
    if not location or not location.startswith("s3://"):
        return None, []
    folder = data_dir.joinpath(*[p for p in location[len("s3://") :].split("/") if p])
    files = sorted(p for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else []
    return folder, files


def _report(summary: dict[str, Any], data_dir: Path, s3: Any = None) -> bool:
    """Print one job's summary; True when it is DONE with outputs on disk (or in the S3 server)."""
    if s3 is None:
        local, paths = _local_outputs(data_dir, summary.get("output_location"))
        folder = str(local) if local is not None else None
        files = [str(path.relative_to(local)) for path in paths] if local is not None else []
    else:
        folder, files = _s3_outputs(s3, summary.get("output_location"))
    cost = summary.get("cost_pu")
    _say(f"  {summary.get('dag_id')} (Batch {summary.get('api_version')})")
    _say(f"    request id : {summary.get('request_id')}")
    _say(f"    status     : {summary.get('status')}")
    if summary.get("api_version") == "v1":
        _say(f"    tiles      : {summary.get('tile_count')} {summary.get('tiles') or ''}")
        _say(
            f"    estimate   : valueEstimate {summary.get('value_estimate_pu')} PU, "
            f"~{cost if cost is None else round(float(cost), 1)} PU charged (estimate / 3)"
        )
    else:
        _say(f"    progress   : {summary.get('completion_percentage')}% complete")
        _say(f"    cost       : {cost} PU (costPU)")
    _say(f"    outputs    : {summary.get('output_location')}")
    if folder is not None:
        where = "objects in the S3 server" if s3 is not None else "files"
        _say(f"                 -> {folder} ({len(files)} {where})")
        for name in files[:4]:
            _say(f"                    {name}")
        if len(files) > 4:
            _say(f"                    ... and {len(files) - 4} more")
    manifest = summary.get("results")
    if manifest:
        counts = manifest.get("counts") or {}
        how = "over S3 (results_conn_id)" if s3 is not None else "from the bucket's mirror (results_url)"
        _say(
            f"    manifest   : {manifest.get('source')} read {how}: {counts.get('done')} done, "
            f"{counts.get('failed')} failed of {counts.get('total')}"
        )
        _say(f"                 {manifest.get('execution_db')}")
    manifest_ok = bool(manifest) or summary.get("api_version") != "v2"  # every v2 job shows its manifest
    return summary.get("status") == "DONE" and bool(files) and manifest_ok


def _start_s3(bucket: str) -> Any:
    """A moto S3 server on 127.0.0.1 with the demo bucket (moto comes with the project's test extra)."""
    from airflow_provider_sentinel_batch.emulator.s3server import S3Server

    started = time.monotonic()
    s3 = S3Server().start()
    s3.create_bucket(bucket)
    _say(
        f"==> S3 server (moto): {s3.endpoint_url}, bucket {bucket}, ready in {time.monotonic() - started:.1f}s"
    )
    return s3


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python tools/demo.py",
        description="Run the example DAGs end to end on real Airflow against the local Batch API emulator.",
    )
    parser.add_argument("--workdir", type=Path, default=Path(".demo"), help="demo state (default: .demo)")
    parser.add_argument("--dags-folder", type=Path, default=_default_dags_folder())
    parser.add_argument(
        "--dag",
        action="append",
        dest="dags",
        help="DAG id to run (repeatable; default: the Corsica v1 and v2 DAGs)",
    )
    parser.add_argument("--time-scale", type=float, default=30.0, help="emulated seconds per real second")
    parser.add_argument("--poll-interval", type=float, default=2.0, help="status poll interval in seconds")
    parser.add_argument("--bucket", default="sentinel-batch-demo", help="bucket name used in the payloads")
    parser.add_argument(
        "--s3",
        action="store_true",
        help="deliver into a local S3-compatible server (moto, on 127.0.0.1) and read the v2 result manifest "
        "back over the S3 API with a read-only key (results_conn_id)",
    )
    args = parser.parse_args(argv)
    dags = args.dags or list(DEFAULT_DAGS)
    dags_folder = args.dags_folder.resolve()
    if not (dags_folder / "include" / "max_ndvi.js").is_file():
        parser.error(f"{dags_folder} does not hold the example DAGs; pass --dags-folder")

    from airflow_provider_sentinel_batch.emulator import EmulatorConfig, EmulatorServer

    workdir = args.workdir.resolve()
    home, data_dir, logs = workdir / "airflow-home", workdir / "emulator-data", workdir / "logs"
    for stale in (data_dir, logs):  # a re-run starts from an empty bucket and fresh logs
        shutil.rmtree(stale, ignore_errors=True)
    for folder in (home, data_dir, logs):
        folder.mkdir(parents=True, exist_ok=True)

    began = time.monotonic()
    s3 = _start_s3(args.bucket) if args.s3 else None
    server = EmulatorServer(
        EmulatorConfig(
            host="127.0.0.1",
            port=0,
            time_scale=args.time_scale,
            data_dir=data_dir,
            s3=s3.emulator_delivery() if s3 is not None else None,
        )
    )
    server.start()
    results: list[tuple[str, int, dict[str, Any] | None]] = []
    try:
        outputs_at = (
            f"outputs in bucket {args.bucket} at {s3.endpoint_url}" if s3 else f"outputs in {data_dir}"
        )
        _say(f"==> emulator: {server.base_url} (time scale x{args.time_scale:g}), {outputs_at}")
        env = _airflow_env(home, dags_folder, server.airflow_conn_json("v2"), args)
        if s3 is not None:  # delivery with the server's writer keys, result manifest with its reader keys
            env["AIRFLOW_CONN_SENTINEL_BATCH_BUCKET"] = json.dumps(s3.airflow_conn(s3.writer_keys))
            env["AIRFLOW_CONN_SENTINEL_BATCH_RESULTS"] = json.dumps(s3.airflow_conn(s3.reader_keys))
            env["SENTINEL_BATCH_RESULTS_CONN_ID"] = "sentinel_batch_results"
        # Batch Statistical example: its fields are staged into (and its table read from) the bucket; the tables
        # go next to the logs
        env["AIRFLOW_VAR_SENTINEL_BATCH_TABLE_DIR"] = str(workdir / "tables")
        # the emulator's data directory mirrors its bucket: s3://bucket/key -> <data_dir>/bucket/key
        if s3 is None:
            env["AIRFLOW_VAR_SENTINEL_BATCH_RESULTS_URL"] = data_dir.as_uri()
            env["SENTINEL_BATCH_RESULTS_URL"] = data_dir.as_uri()  # the v2 example's result manifest
        _say(f"==> Airflow metadata DB (SQLite) in {home}: airflow db migrate")
        step = time.monotonic()
        with (logs / "db-migrate.log").open("w") as log:
            migrated = subprocess.run(
                _airflow("db", "migrate"), env=env, stdout=log, stderr=subprocess.STDOUT
            )
        if migrated.returncode != 0:
            _say(f"    FAILED (exit {migrated.returncode}); see {logs / 'db-migrate.log'}")
            return 1
        _say(f"    ok in {time.monotonic() - step:.1f}s")
        for dag_id in dags:
            rc, summary = _run_dag(dag_id, env, logs / f"{dag_id}.log")
            results.append((dag_id, rc, summary))
    finally:
        stats = server.stats()
        server.stop()

    _say("\n==> summary")
    ok = True
    for dag_id, rc, summary in results:
        if summary is None:
            _say(f"  {dag_id}: no summary (exit code {rc}); see {logs / (dag_id + '.log')}")
            ok = False
            continue
        jobs = summary.get("jobs")  # max_ndvi_per_aoi reports a list
        for job in jobs if isinstance(jobs, list) else [summary]:
            job = {"dag_id": dag_id, "api_version": summary.get("api_version", "v2"), **job}
            ok = _report(job, data_dir, s3) and rc == 0 and ok
    if s3 is not None:  # (it also exits with this process)
        s3.stop()
    _say(
        f"\n  emulator: {stats.get('jobs_created')} jobs created, "
        f"{sum(stats.get('calls', {}).values())} API calls, {stats.get('token_requests')} token requests"
    )
    _say(f"  {'DONE' if ok else 'FAILED'}: demo ran in {time.monotonic() - began:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
