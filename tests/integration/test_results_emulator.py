"""Result manifest against the emulator on real Airflow: v1 from the tiles endpoint, v2 from the execution
database the emulator writes under its data directory, failure thresholds, caps, and no secrets in XCom."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from tests.payloads import corsica_v1, corsica_v2

pytestmark = pytest.mark.integration

BUCKET_SECRET = "results-canary-secret-81c2"


def payload(version: str) -> dict:
    return corsica_v1("results-bucket") if version == "v1" else corsica_v2("s3://results-bucket/ndvi")


def dag_source(dag_id: str, version: str, wait: str = "", outlets: str = "") -> str:
    return textwrap.dedent(
        f"""
        import json
        from datetime import datetime

        from airflow.providers.common.compat.sdk import DAG, Asset, AssetAlias
        from airflow_provider_sentinel_batch.operators.batch import (
            SentinelBatchCreateOperator,
            SentinelBatchStartOperator,
        )
        from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

        PAYLOAD = json.loads({json.dumps(payload(version))!r})
        FAST = dict(deferrable=True, poll_interval=0.2, analysis_poll_interval=0.1, api_version="{version}")

        with DAG("{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
            create = SentinelBatchCreateOperator(task_id="create", payload=PAYLOAD, api_version="{version}")
            start = SentinelBatchStartOperator(task_id="start", request_id=create.output, **FAST)
            wait = SentinelBatchSensor(
                task_id="wait", request_id=create.output, wait_for="DONE", {outlets} **FAST{wait}
            )
            create >> start >> wait
        """
    )


def local(data_dir: Path, url: str) -> Path:
    return data_dir.joinpath(*url.removeprefix("s3://").split("/"))


def test_v1_manifest_lists_tiles_and_paths_that_exist(dag_runner, emulator):
    server = emulator("v1")
    result = dag_runner(dag_source("results_v1", "v1"), "results_v1")
    assert result.succeeded, result.describe()
    summary = result.xcom("wait")
    rid = summary["request_id"]
    manifest = summary["results"]
    assert manifest["source"] == "tiles endpoint"
    assert manifest["location"] == summary["location"] == f"s3://results-bucket/{rid}/"
    assert manifest["path_template"] == f"s3://results-bucket/{rid}/<tileName>/<outputId>.<format>"
    counts = manifest["counts"]
    assert counts["total"] == counts["done"] == summary["tiles"]["PROCESSED"] > 0 and counts["failed"] == 0
    assert len(manifest["outputs"]) == counts["done"] and not manifest["outputs_truncated"]
    for entry in manifest["outputs"]:
        assert entry["paths"] == [f"s3://results-bucket/{rid}/{entry['name']}/default.tif"]
        assert local(server.data_dir, entry["paths"][0]).is_file(), entry


def test_v2_manifest_from_the_execution_database(dag_runner, emulator):
    server = emulator("v2")
    wait = f", results_url={server.data_dir.as_uri()!r}"
    result = dag_runner(dag_source("results_v2", "v2", wait=wait), "results_v2")
    assert result.succeeded, result.describe()
    summary = result.xcom("wait")
    rid = summary["request_id"]
    manifest = summary["results"]
    assert manifest["source"] == "execution database"
    assert manifest["location"] == f"s3://results-bucket/ndvi/{rid}/"
    assert manifest["execution_db"] == f"s3://results-bucket/ndvi/{rid}/execution-{rid}.sqlite"
    assert manifest["feature_manifest"] == f"s3://results-bucket/ndvi/{rid}/featureManifest-{rid}.gpkg"
    counts = manifest["counts"]
    assert counts["total"] == counts["done"] > 0 and counts["failed"] == counts["undelivered"] == 0
    for entry in manifest["outputs"]:
        assert len(entry["paths"]) == 1 and local(server.data_dir, entry["paths"][0]).is_file(), entry


def test_v2_without_bucket_access_returns_the_plain_summary(dag_runner, emulator):
    emulator("v2")
    result = dag_runner(dag_source("results_v2_plain", "v2"), "results_v2_plain")
    assert result.succeeded, result.describe()
    summary = result.xcom("wait")
    assert "results" not in summary
    assert summary["location"] == f"s3://results-bucket/ndvi/{summary['request_id']}/"


@pytest.mark.sentinel_batch_emulator(tile_failure_rate=0.3, seed=7)
@pytest.mark.parametrize(
    ("thresholds", "succeeds"),
    [
        ("max_failed_features=0", False),
        ("max_failed_fraction=0.05", False),
        ("max_failed_fraction=0.95", True),
    ],
)
def test_v2_failed_features_and_thresholds(dag_runner, emulator, thresholds, succeeds):
    server = emulator("v2")
    wait = f", results_url={server.data_dir.as_uri()!r}, {thresholds}"
    dag_id = "results_v2_" + thresholds.split("=")[0]
    result = dag_runner(dag_source(dag_id, "v2", wait=wait), dag_id)
    assert result.succeeded is succeeds, result.describe()
    if not succeeds:
        log = result.log("wait")
        assert "features failed, over max_failed_" in log and "Failed: " in log
        return
    manifest = result.xcom("wait")["results"]
    counts = manifest["counts"]
    assert 0 < counts["failed"] < counts["total"] and counts["done"] + counts["failed"] == counts["total"]
    assert len(manifest["failed"]) == counts["failed"]
    assert all(f["error"] and f["name"] for f in manifest["failed"])
    assert manifest["failed_fraction"] == pytest.approx(counts["failed"] / counts["total"], abs=1e-6)


@pytest.mark.sentinel_batch_emulator(tile_failure_rate=0.2, seed=3)
def test_v1_partial_accepted_with_warning_still_fails_over_the_threshold(dag_runner, emulator):
    emulator("v1")
    wait = ", partial_policy='succeed_with_warning', max_failed_fraction=0.01"
    result = dag_runner(dag_source("results_v1_partial", "v1", wait=wait), "results_v1_partial")
    assert result.task_states["wait"] == "failed", result.describe()
    assert "tiles failed, over max_failed_fraction=0.01" in result.log("wait")


def test_lists_are_capped_and_counts_stay_complete(dag_runner, emulator):
    emulator("v1")
    result = dag_runner(dag_source("results_cap", "v1", wait=", manifest_limit=3"), "results_cap")
    assert result.succeeded, result.describe()
    manifest = result.xcom("wait")["results"]
    assert len(manifest["outputs"]) == 3 and manifest["outputs_truncated"] is True
    assert manifest["counts"]["done"] > 3 and manifest["limit"] == 3


def test_strict_manifest_fails_when_the_bucket_cannot_be_read(dag_runner, emulator, tmp_path):
    emulator("v2")
    wait = f", result_manifest=True, results_url={tmp_path.as_uri()!r}"
    result = dag_runner(dag_source("results_strict", "v2", wait=wait), "results_strict")
    assert result.task_states["wait"] == "failed", result.describe()
    assert "result manifest could not be read" in result.log("wait")
    assert "execution database of" in result.log("wait")


def test_bucket_credentials_never_reach_xcom(dag_runner, emulator, monkeypatch):
    server = emulator("v2")
    monkeypatch.setenv(
        "AIRFLOW_CONN_RESULTS_BUCKET",
        json.dumps({"conn_type": "aws", "login": "AKIARESULTS", "password": BUCKET_SECRET}),
    )
    # a local mirror ignores the s3 keys; the connection is still resolved and turned into fsspec options
    wait = f", results_url={server.data_dir.as_uri()!r}, results_conn_id='results_bucket'"
    result = dag_runner(dag_source("results_secret", "v2", wait=wait), "results_secret")
    assert result.succeeded, result.describe()
    assert result.xcom("wait")["results"]["counts"]["done"] > 0
    for task in result.tasks.values():
        assert BUCKET_SECRET not in json.dumps(task.xcom, default=str), task.task_id
        assert BUCKET_SECRET not in task.log, task.task_id


def test_asset_alias_outlet_gets_an_event_for_the_requests_own_folder(dag_runner, emulator, tmp_path):
    from tests.integration import asset_scheduling as sched

    emulator("v1")
    dag_file = tmp_path / "results_alias.py"
    dag_file.write_text(
        dag_source("results_alias", "v1", outlets='outlets=[AssetAlias("sentinel-batch-results")],')
    )
    # the alias row must exist in the DB, as after the DAG processor parsed the file (Airflow 2.11 needs it)
    sched.place_files(dag_file, [])
    sched.sync_and_unpause([])
    result = dag_runner(dag_file, "results_alias")
    assert result.succeeded, result.describe()
    rid = result.xcom("wait")["request_id"]

    events = sched.asset_events(f"s3://results-bucket/{rid}", "results_alias") or sched.asset_events(
        f"s3://results-bucket/{rid}/", "results_alias"
    )
    assert len(events) == 1, events
    assert events[0]["extra"]["request_id"] == rid and events[0]["extra"]["done"] > 0
