"""Every bucket-touching feature over the S3 protocol, on real Airflow, against a real S3-compatible server.

The emulator delivers into a moto S3 server on 127.0.0.1 (``emulator.s3server``) with the keys the create task
took from ``bucket_conn_id`` (v2) or with the bucket-policy stand-in (v1); the waiting task reads the execution
database and the feature manifest back through s3fs with ``results_conn_id`` (an ``aws`` connection: access key
as login, secret as password, extra ``endpoint_url``). Nothing here reads the emulator's data directory.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_sentinel_batch.emulator.s3server import S3Keys, S3Server
from tests.payloads import corsica_v1, corsica_v2

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def s3_server(sentinel_batch_s3_server: S3Server) -> S3Server:
    """The session's S3 server (the package's pytest plugin starts it)."""
    return sentinel_batch_s3_server


@pytest.fixture
def s3_bucket(sentinel_batch_s3_bucket: str) -> str:
    """A fresh bucket on it."""
    return sentinel_batch_s3_bucket


@pytest.fixture(scope="module")
def s3_emulator(s3_server: S3Server) -> Iterator[EmulatorServer]:
    config = EmulatorConfig(port=0, time_scale=1000, s3=s3_server.emulator_delivery(), seed=11)
    with EmulatorServer(config) as server:
        yield server


@pytest.fixture
def emu(s3_emulator: EmulatorServer, s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> EmulatorServer:
    """The S3-delivering emulator, reset, with the delivery (writer) and results (reader) connections set."""
    s3_emulator.reset()
    monkeypatch.setenv(
        "AIRFLOW_CONN_S3_DELIVERY",
        json.dumps(s3_server.airflow_conn(s3_server.writer_keys)),
    )
    monkeypatch.setenv(
        "AIRFLOW_CONN_S3_RESULTS",
        json.dumps(s3_server.airflow_conn(s3_server.reader_keys)),
    )
    return s3_emulator


def use(monkeypatch: pytest.MonkeyPatch, emu: EmulatorServer, version: str) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", emu.airflow_conn_json(version))


def payload(version: str, bucket: str) -> dict[str, Any]:
    return corsica_v1(bucket) if version == "v1" else corsica_v2(f"s3://{bucket}/ndvi")


def dag_source(dag_id: str, version: str, bucket: str, create: str = "", wait: str = "") -> str:
    return textwrap.dedent(
        f"""
        import json
        from datetime import datetime

        from airflow.providers.common.compat.sdk import DAG
        from airflow_provider_sentinel_batch.operators.batch import (
            SentinelBatchCreateOperator,
            SentinelBatchStartOperator,
        )
        from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

        PAYLOAD = json.loads({json.dumps(payload(version, bucket))!r})
        FAST = dict(deferrable=True, poll_interval=0.2, analysis_poll_interval=0.1, api_version="{version}")

        with DAG("{dag_id}", schedule=None, start_date=datetime(2024, 1, 1), catchup=False) as dag:
            create = SentinelBatchCreateOperator(
                task_id="create", payload=PAYLOAD, api_version="{version}"{create}
            )
            start = SentinelBatchStartOperator(task_id="start", request_id=create.output, **FAST)
            wait = SentinelBatchSensor(task_id="wait", request_id=create.output, wait_for="DONE", **FAST{wait})
            create >> start >> wait
        """
    )


DELIVERY = ", bucket_conn_id='s3_delivery'"
RESULTS = ", results_conn_id='s3_results'"


def assert_no_secrets(result: Any, *secrets: str) -> None:
    for task in result.tasks.values():
        text = task.log + json.dumps(task.xcom, default=str)
        for secret in secrets:
            assert secret not in text, task.task_id


def test_v2_manifest_read_over_s3_with_results_conn_id(dag_runner, emu, s3_server, s3_bucket, monkeypatch):
    use(monkeypatch, emu, "v2")
    result = dag_runner(dag_source("s3_v2", "v2", s3_bucket, DELIVERY, RESULTS), "s3_v2")
    assert result.succeeded, result.describe()
    summary = result.xcom("wait")
    rid = summary["request_id"]
    manifest = summary["results"]
    assert manifest["source"] == "execution database"
    assert manifest["location"] == summary["location"] == f"s3://{s3_bucket}/ndvi/{rid}/"
    assert manifest["execution_db"] == f"s3://{s3_bucket}/ndvi/{rid}/execution-{rid}.sqlite"
    assert manifest["feature_manifest"] == f"s3://{s3_bucket}/ndvi/{rid}/featureManifest-{rid}.gpkg"
    counts = manifest["counts"]
    tiles = {t.name for t in emu.state.get_job(rid).tiles}
    assert (
        counts["total"] == counts["done"] == len(tiles) > 0 and counts["failed"] == counts["undelivered"] == 0
    )
    # every path of the manifest is an object the S3 server holds, and every delivered tiff is in the manifest
    objects = set(s3_server.keys_in(s3_bucket, f"ndvi/{rid}/"))
    paths = {p for entry in manifest["outputs"] for p in entry["paths"]}
    prefix = f"s3://{s3_bucket}/"
    assert {p.removeprefix(prefix) for p in paths} == {k for k in objects if k.endswith(".tif")}
    assert len(paths) == len(tiles)
    assert f"ndvi/{rid}/request-{rid}.json" in objects
    assert_no_secrets(
        result,
        s3_server.writer_keys.secret_key,
        s3_server.reader_keys.secret_key,
    )


@pytest.mark.parametrize(
    ("thresholds", "succeeds"),
    [("max_failed_features=0", False), ("max_failed_fraction=0.95", True)],
)
def test_v2_failure_thresholds_over_s3(dag_runner, emu, s3_bucket, monkeypatch, thresholds, succeeds):
    use(monkeypatch, emu, "v2")
    emu.set_faults(tile_failure_rate=0.3)
    dag_id = "s3_thresholds_" + thresholds.split("=")[0]
    wait = f"{RESULTS}, {thresholds}"
    result = dag_runner(dag_source(dag_id, "v2", s3_bucket, DELIVERY, wait), dag_id)
    assert result.succeeded is succeeds, result.describe()
    if not succeeds:
        assert result.task_states["wait"] == "failed"
        log = result.log("wait")
        assert "features failed, over max_failed_features=0" in log and "Failed: " in log
        return
    counts = result.xcom("wait")["results"]["counts"]
    assert 0 < counts["failed"] < counts["total"] and counts["done"] + counts["failed"] == counts["total"]


def test_v1_manifest_paths_are_objects_in_the_bucket(dag_runner, emu, s3_server, s3_bucket, monkeypatch):
    use(monkeypatch, emu, "v1")
    result = dag_runner(dag_source("s3_v1", "v1", s3_bucket), "s3_v1")
    assert result.succeeded, result.describe()
    summary = result.xcom("wait")
    rid = summary["request_id"]
    manifest = summary["results"]
    assert manifest["source"] == "tiles endpoint" and manifest["location"] == f"s3://{s3_bucket}/{rid}/"
    paths = [p for entry in manifest["outputs"] for p in entry["paths"]]
    assert len(paths) == manifest["counts"]["done"] == summary["tiles"]["PROCESSED"] > 0
    objects = s3_server.keys_in(s3_bucket)
    assert sorted(p.removeprefix(f"s3://{s3_bucket}/") for p in paths) == objects


def test_wrong_delivery_keys_fail_the_create_without_the_secret(
    dag_runner, emu, s3_server, s3_bucket, monkeypatch
):
    use(monkeypatch, emu, "v2")
    wrong = S3Keys(s3_server.writer_keys.access_key, "canary-wrong-delivery-secret-5e1d")
    monkeypatch.setenv("AIRFLOW_CONN_S3_DELIVERY", json.dumps(s3_server.airflow_conn(wrong)))
    result = dag_runner(dag_source("s3_wrong_keys", "v2", s3_bucket, DELIVERY, RESULTS), "s3_wrong_keys")
    assert result.task_states["create"] == "failed", result.describe()
    log = result.log("create")
    assert f"Cannot write to bucket {s3_bucket}: access denied (SignatureDoesNotMatch" in log
    assert emu.stats()["jobs_created"] == 0 and s3_server.keys_in(s3_bucket) == []
    assert_no_secrets(result, wrong.secret_key)


def test_wrong_results_keys_fail_the_wait_clearly_without_the_secret(
    dag_runner, emu, s3_server, s3_bucket, monkeypatch
):
    use(monkeypatch, emu, "v2")
    wrong = S3Keys(s3_server.reader_keys.access_key, "canary-wrong-results-secret-9b7c")
    monkeypatch.setenv("AIRFLOW_CONN_S3_RESULTS", json.dumps(s3_server.airflow_conn(wrong)))
    wait = f"{RESULTS}, result_manifest=True"
    result = dag_runner(dag_source("s3_wrong_results", "v2", s3_bucket, DELIVERY, wait), "s3_wrong_results")
    assert result.task_states["create"] == "success" and result.task_states["wait"] == "failed", (
        result.describe()
    )
    log = result.log("wait")
    assert "result manifest could not be read: access to s3://" in log
    # the S3 server's own reason, quoted (a HEAD answer alone only says "Forbidden")
    assert "The request signature we calculated does not match the signature you provided." in log
    assert_no_secrets(result, wrong.secret_key, s3_server.writer_keys.secret_key)


def test_missing_bucket_fails_the_create_on_both_versions(dag_runner, emu, s3_server, monkeypatch):
    missing = "no-such-bucket-c0ffee"
    for version in ("v2", "v1"):
        use(monkeypatch, emu, version)
        dag_id = f"s3_missing_{version}"
        create = DELIVERY if version == "v2" else ""
        result = dag_runner(dag_source(dag_id, version, missing, create), dag_id)
        assert result.task_states["create"] == "failed", result.describe()
        assert f"Bucket {missing} does not exist." in result.log("create")
    assert emu.stats()["jobs_created"] == 0


def test_bucket_gone_before_the_read_fails_the_wait_clearly(emu, s3_server, s3_bucket, monkeypatch):
    """The job delivered, then the bucket was emptied and deleted: a required manifest fails with the reason."""
    from airflow.providers.common.compat.sdk import DAG

    from airflow_provider_sentinel_batch.exceptions import SentinelBatchJobError
    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
    from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

    use(monkeypatch, emu, "v2")
    body = payload("v2", s3_bucket)
    body["output"]["delivery"]["s3"].update(
        accessKey=s3_server.writer_keys.access_key,
        secretAccessKey=s3_server.writer_keys.secret_key,
    )
    hook = SentinelBatchHook(api_version="v2")
    rid = hook.create_request(body)["id"]
    hook.start(rid)
    deadline = time.monotonic() + 60
    while hook.get_status(rid) != "DONE":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    client = s3_server.client()
    for key in s3_server.keys_in(s3_bucket):
        client.delete_object(Bucket=s3_bucket, Key=key)
    client.delete_bucket(Bucket=s3_bucket)

    with DAG("s3_gone", schedule=None, start_date=datetime(2024, 1, 1)):
        wait = SentinelBatchSensor(
            task_id="wait",
            request_id=rid,
            deferrable=False,
            api_version="v2",
            results_conn_id="s3_results",
            result_manifest=True,
        )
    with pytest.raises(SentinelBatchJobError) as caught:
        wait.poke({"ti": _FakeTI(), "run_id": "manual__s3_gone"})
    message = str(caught.value)
    assert "result manifest could not be read" in message
    assert f": bucket {s3_bucket} does not exist (or these keys cannot see it)" in message
    assert s3_server.reader_keys.secret_key not in message


class _FakeTI:
    """Enough of a task instance for ``execute``/``poke`` and the OpenLineage extractor."""

    def __init__(self) -> None:
        self.dag_id, self.task_id, self.map_index, self.run_id, self.try_number = (
            "s3",
            "wait",
            -1,
            "manual__s3",
            1,
        )
        self.xcoms: dict[str, Any] = {}

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[key] = value

    def xcom_pull(self, task_ids: Any = None, key: str = "return_value", **_: Any) -> Any:
        return self.xcoms.get(key)


def test_lineage_output_file_count_from_the_bucket(emu, s3_server, s3_bucket, monkeypatch):
    """The sensor's OpenLineage output facet counts the files the S3 server really holds."""
    pytest.importorskip("airflow.providers.openlineage")
    from types import SimpleNamespace

    from airflow.providers.common.compat.sdk import DAG
    from airflow.providers.openlineage.extractors.manager import ExtractorManager
    from airflow.utils.state import TaskInstanceState

    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
    from airflow_provider_sentinel_batch.operators.batch import SentinelBatchCreateOperator
    from airflow_provider_sentinel_batch.sensors.batch import SentinelBatchSensor

    use(monkeypatch, emu, "v2")
    with DAG("s3_ol", schedule=None, start_date=datetime(2024, 1, 1)):
        create = SentinelBatchCreateOperator(
            task_id="create", payload=payload("v2", s3_bucket), bucket_conn_id="s3_delivery"
        )
        wait = SentinelBatchSensor(
            task_id="wait",
            request_id="{{ ti.xcom_pull('create') }}",
            deferrable=False,
            results_conn_id="s3_results",
        )
    rid = create.execute({"ti": _FakeTI(), "run_id": "manual__s3_ol"})
    hook = SentinelBatchHook()
    hook.start(rid)
    deadline = time.monotonic() + 60
    while hook.get_status(rid) != "DONE":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    wait.request_id = rid
    ti = _FakeTI()
    done = wait.poke({"ti": ti, "run_id": "manual__s3_ol"})
    assert done and done.xcom_value["results"]["source"] == "execution database"
    metadata = ExtractorManager().extract_metadata(
        dagrun=SimpleNamespace(run_id=ti.run_id),
        task=wait,
        task_instance_state=TaskInstanceState.SUCCESS,
        task_instance=ti,
    )
    tiffs = [k for k in s3_server.keys_in(s3_bucket, f"ndvi/{rid}/") if k.endswith(".tif")]
    output = metadata.outputs[0]
    assert (output.namespace, output.name) == (f"s3://{s3_bucket}", f"ndvi/{rid}")
    assert output.outputFacets["outputStatistics"].fileCount == len(tiffs) > 0


ROOT = Path(__file__).resolve().parents[2]


def test_example_v2_dag_reads_its_manifest_over_s3(dag_runner, emu, s3_server, monkeypatch):
    """The Corsica v2 example with SENTINEL_BATCH_RESULTS_CONN_ID: what ``bash .ci/demo --s3`` shows."""
    use(monkeypatch, emu, "v2")
    if "sentinel-batch-demo" not in _buckets(s3_server):  # the example's default bucket
        s3_server.create_bucket("sentinel-batch-demo")
    monkeypatch.setenv(
        "AIRFLOW_CONN_SENTINEL_BATCH_BUCKET", json.dumps(s3_server.airflow_conn(s3_server.writer_keys))
    )
    monkeypatch.setenv("AIRFLOW_CONN_S3_RESULTS", json.dumps(s3_server.airflow_conn(s3_server.reader_keys)))
    env = {
        "SENTINEL_BATCH_POLL_INTERVAL": "0.2",
        "SENTINEL_BATCH_ANALYSIS_POLL_INTERVAL": "0.1",
        "SENTINEL_BATCH_RESULTS_CONN_ID": "s3_results",
    }
    dags = ROOT / "dags_examples"
    result = dag_runner(
        dags / "corsica_max_ndvi_v2.py", "corsica_max_ndvi_v2", support_files=[dags / "include"], env=env
    )
    assert result.succeeded, result.describe()
    summary = result.xcom("summary")
    rid = summary["request_id"]
    assert summary["results"]["source"] == "execution database"
    assert summary["results"]["execution_db"] == f"s3://sentinel-batch-demo/{rid}/execution-{rid}.sqlite"
    counts = summary["results"]["counts"]
    tiffs = [k for k in s3_server.keys_in("sentinel-batch-demo", f"{rid}/") if k.endswith(".tif")]
    assert counts["total"] == counts["done"] == len(tiffs) > 0 and counts["failed"] == 0
    assert_no_secrets(result, s3_server.writer_keys.secret_key, s3_server.reader_keys.secret_key)


def _buckets(s3_server: S3Server) -> set[str]:
    return {b["Name"] for b in s3_server.client().list_buckets().get("Buckets", [])}


def test_demo_s3_flag_shows_the_v2_manifest_read_over_s3(tmp_path):
    """``bash .ci/demo --s3`` on this Airflow line: its own S3 server, delivery into it, manifest read back."""
    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_HOME"}
    command = [sys.executable, str(ROOT / "tools" / "demo.py"), "--workdir", str(tmp_path / "demo")]
    command += ["--s3", "--dag", "corsica_max_ndvi_v2", "--time-scale", "200", "--poll-interval", "0.5"]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=280)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    out = done.stdout
    assert "==> S3 server (moto): http://127.0.0.1:" in out
    assert "objects in the S3 server)" in out and "default.tif" in out
    assert "manifest   : execution database read over S3 (results_conn_id): 66 done, 0 failed of 66" in out
    assert "DONE: demo ran in" in out


def test_statistical_geopackage_in_json_out_and_the_table_over_s3(
    emu, s3_server, s3_bucket, monkeypatch, tmp_path
):
    """Batch Statistical: the GeoPackage read from the bucket with the input's keys, the per-feature JSON written
    with the output's keys, the table operator reading them with results_conn_id and writing its CSV into the
    bucket with table_conn_id: every step over the S3 API."""
    from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
    from airflow_provider_sentinel_batch.operators.statistical import SentinelBatchStatisticalTableOperator
    from tests.emulator.stat_helpers import stat_payload, write_parcels

    use(monkeypatch, emu, "v2")
    gpkg = write_parcels(tmp_path, count=6)
    s3_server.client().put_object(Bucket=s3_bucket, Key="input/parcels.gpkg", Body=gpkg.read_bytes())
    reader, writer = s3_server.reader_keys, s3_server.writer_keys
    payload = stat_payload(
        **{
            "input.features.s3": {
                "url": f"s3://{s3_bucket}/input/parcels.gpkg",
                "accessKey": reader.access_key,
                "secretAccessKey": reader.secret_key,
            },
            "output.s3": {
                "url": f"s3://{s3_bucket}/stats",
                "accessKey": writer.access_key,
                "secretAccessKey": writer.secret_key,
            },
        }
    )
    emu.state.set_time_scale(1e-6)
    emu.state.queue_job_overrides(tile_failure_rate=0.34)
    hook = SentinelBatchHook()
    rid = hook.create_statistical_request(payload)["id"]
    hook.start_statistical(rid)
    emu.advance(10_000)
    assert hook.get_statistical_status(rid)["status"] == "DONE"
    assert len(s3_server.keys_in(s3_bucket, f"stats/{rid}/")) == 6

    op = SentinelBatchStatisticalTableOperator(
        task_id="table",
        request_id=rid,
        results_conn_id="s3_results",
        table_path=f"s3://{s3_bucket}/tables/ndvi",
        table_conn_id="s3_delivery",
        parquet=False,
    )
    summary = op.execute({})
    counts = summary["counts"]
    assert counts["features"] == 6 and counts["ok"] + counts["failed"] == 6 and 0 < counts["failed"] < 6
    assert summary["tables"] == [f"s3://{s3_bucket}/tables/ndvi.csv"]
    csv_text = s3_server.get(s3_bucket, "tables/ndvi.csv").decode()
    assert len(csv_text.strip().splitlines()) == counts["rows"] + 1  # header + one line per row
    assert reader.secret_key not in str(summary) and writer.secret_key not in str(summary)
