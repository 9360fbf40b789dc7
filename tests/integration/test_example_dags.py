"""Every example DAG runs to success on real Airflow (dag.test, real deferral) against the emulator, and so does
the demo command's entry point.

The DAG files are used as shipped: the harness copies them (and ``include/``) into the test DAGs folder; only the
parse-time poll intervals are lowered through the environment, as the demo does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
from tests.integration.harness import run_example
from tests.payloads import EVALSCRIPT

# slow enough that the sensors find the job still running and really defer, fast enough for a test suite
pytestmark = [pytest.mark.integration, pytest.mark.sentinel_batch_emulator(time_scale=100)]

ROOT = Path(__file__).resolve().parents[2]
BUCKET_SECRET = "canary-bucket-secret-5e3f"


@pytest.fixture
def server(emulator):
    """The emulator behind ``sentinel_batch_default`` (v2 default) and the v2 delivery keys' connection."""
    return emulator("v2", bucket_keys=("test-access-key", BUCKET_SECRET))


def files_under(data_dir: Path, location: str) -> list[Path]:
    folder = data_dir.joinpath(*location.removeprefix("s3://").strip("/").split("/"))
    return sorted(p for p in folder.rglob("*.tif"))


def assert_no_secret(result) -> None:
    for task in result.tasks.values():
        assert BUCKET_SECRET not in task.log, task.task_id
        assert BUCKET_SECRET not in json.dumps(task.xcom, default=str), task.task_id


def test_corsica_v1(dag_runner, server):
    result = run_example(dag_runner, "corsica_max_ndvi_v1")
    assert result.succeeded, result.describe()
    assert result.task_states["cancel_on_failure"] == "skipped"
    assert result.deferrals("wait_for_analysis") + result.deferrals("wait_for_done") >= 1
    summary = result.xcom("summary")
    request_id = result.xcom("create")
    assert summary["request_id"] == request_id and summary["status"] == "DONE"
    report = result.xcom("report_tiles_and_estimate")
    assert report["tile_count"] > 0 and report["value_estimate_pu"] > 0
    assert report["expected_charge_pu"] == pytest.approx(report["value_estimate_pu"] / 3, abs=0.1)
    assert summary["tiles"] == {"PROCESSED": report["tile_count"]}
    assert summary["output_location"] == f"s3://sentinel-batch-demo/{request_id}/"
    assert len(files_under(server.data_dir, summary["output_location"])) == report["tile_count"]
    # the published Corsica request: its evalscript byte for byte, its description, one job
    request = SentinelBatchHook(api_version="v1").get_request(request_id)
    assert request["processRequest"]["evalscript"] == EVALSCRIPT
    assert request["description"].startswith("Max NDVI over Corsica [airflow-")
    assert request["bucketName"] == "sentinel-batch-demo"
    assert server.stats()["jobs_created"] == 1


def test_corsica_v2(dag_runner, server):
    result = run_example(dag_runner, "corsica_max_ndvi_v2")
    assert result.succeeded, result.describe()
    assert result.task_states["stop_on_failure"] == "skipped"
    summary = result.xcom("summary")
    request_id = result.xcom("create")
    assert summary["status"] == "DONE" and summary["completion_percentage"] == 100
    assert summary["cost_pu"] > 0
    assert summary["output_location"] == f"s3://sentinel-batch-demo/{request_id}/"
    assert files_under(server.data_dir, summary["output_location"])
    request = SentinelBatchHook(api_version="v2").get_request(request_id)
    assert request["request"]["processRequest"]["evalscript"] == EVALSCRIPT
    assert server.stats()["jobs_created"] == 1
    assert_no_secret(result)


def test_corsica_v1_failure_cancels_the_job(dag_runner, server):
    """The cost guard refuses to start; the one_failed task cancels the analysed job; the run fails."""
    result = run_example(dag_runner, "corsica_max_ndvi_v1", env={"SENTINEL_BATCH_MAX_COST_PU": "10"})
    assert not result.succeeded
    assert result.task_states["start"] == "failed"
    assert result.task_states["cancel_on_failure"] == "success"
    assert result.task_states["summary"] == "upstream_failed"
    assert "max_cost_pu=10" in result.log("start")
    request = SentinelBatchHook(api_version="v1").get_request(result.xcom("create"))
    assert request["status"] == "CANCELED"


def test_seasonal_month_from_the_data_interval(dag_runner, server):
    # the run on 1 June processes May (the one-month interval before the cron tick)
    result = run_example(dag_runner, "seasonal_max_ndvi", logical_date=datetime(2025, 6, 1, tzinfo=UTC))
    assert result.succeeded, result.describe()
    assert result.deferrals("wait_for_data_latency") == 1  # long past: fires at once
    summary = result.xcom("summary")
    assert summary["month"] == "2025-05" and summary["status"] == "DONE"
    assert summary["output_location"].startswith("s3://sentinel-batch-demo/seasonal/2025-05/")
    request = SentinelBatchHook(api_version="v2").get_request(summary["request_id"])
    inner = request["request"]
    time_range = inner["processRequest"]["input"]["data"][0]["dataFilter"]["timeRange"]
    assert time_range["from"].startswith("2025-05-01T00:00:00") and time_range["to"].startswith(
        "2025-06-01T00:00:00"
    )
    description = request.get("description") or inner.get("description")
    assert description.startswith("Seasonal max NDVI 2025-05 (2025-05-01 to 2025-06-01)")


def test_per_aoi_fans_out_one_job_per_area(dag_runner, server):
    aois = [
        {"name": "cap corse", "bbox": [9.3, 42.7, 9.5, 43.0]},
        {"name": "ajaccio", "bbox": [8.6, 41.85, 8.85, 42.0]},
    ]
    result = run_example(dag_runner, "max_ndvi_per_aoi", conf={"aois": aois})
    assert result.succeeded, result.describe()
    assert len(result.mapped("per_aoi.create")) == len(result.mapped("per_aoi.wait_for_done")) == 2
    jobs = result.xcom("report")
    assert [job["status"] for job in jobs] == ["DONE", "DONE"]
    assert len({job["request_id"] for job in jobs}) == 2
    assert jobs[0]["output_location"].startswith("s3://sentinel-batch-demo/per-aoi/cap-corse/")
    assert jobs[1]["output_location"].startswith("s3://sentinel-batch-demo/per-aoi/ajaccio/")
    assert all(files_under(server.data_dir, job["output_location"]) for job in jobs)
    assert server.stats()["jobs_created"] == 2
    assert_no_secret(result)


def test_demo_entry_point(tmp_path):
    """What ``bash .ci/demo`` runs, on this Airflow line: own emulator, AIRFLOW_HOME, ``airflow dags test``."""
    workdir = tmp_path / "demo"
    (workdir / "emulator-data" / "stale").mkdir(parents=True)  # leftovers of an earlier run are cleared
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_HOME"}
    env["AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT"] = "must-not-be-used"  # the demo never talks to your account
    command = [sys.executable, str(ROOT / "tools" / "demo.py"), "--workdir", str(workdir)]
    command += ["--dag", "corsica_max_ndvi_v1", "--time-scale", "200", "--poll-interval", "0.5"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "==> airflow dags test corsica_max_ndvi_v1" in out
    assert "deferred: the trigger polls the job" in out
    assert "status     : DONE" in out and "DONE: demo ran in" in out
    assert "default.tif" in out
    assert not (workdir / "emulator-data" / "stale").exists()
    assert (workdir / "airflow-home" / "airflow.db").is_file()
    assert (workdir / "logs" / "corsica_max_ndvi_v1.log").is_file()


def test_corsica_v2_result_manifest_from_the_emulator_bucket(dag_runner, server):
    """SENTINEL_BATCH_RESULTS_URL (the emulator's data dir) gives the v2 example its result manifest."""
    result = run_example(
        dag_runner, "corsica_max_ndvi_v2", env={"SENTINEL_BATCH_RESULTS_URL": server.data_dir.as_uri()}
    )
    assert result.succeeded, result.describe()
    manifest = result.xcom("wait_for_done")["results"]
    counts = manifest["counts"]
    assert manifest["source"] == "execution database" and counts["total"] > 0
    assert counts["done"] == counts["total"] and counts["failed"] == 0
    assert result.xcom("summary")["results"]["counts"] == counts


def test_per_aoi_with_a_single_area(dag_runner, server):
    """One AOI still maps (one task instance each) and the report lists that one job."""
    aois = [{"name": "cap corse", "bbox": [9.3, 42.7, 9.5, 43.0]}]
    result = run_example(dag_runner, "max_ndvi_per_aoi", conf={"aois": aois})
    assert result.succeeded, result.describe()
    assert len(result.mapped("per_aoi.create")) == len(result.mapped("per_aoi.wait_for_done")) == 1
    jobs = result.xcom("report")
    assert [job["status"] for job in jobs] == ["DONE"]
    assert jobs[0]["output_location"].startswith("s3://sentinel-batch-demo/per-aoi/cap-corse/")
    assert server.stats()["jobs_created"] == 1
