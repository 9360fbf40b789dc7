"""The emulator delivering over the S3 protocol into a real S3-compatible server on loopback (moto).

v2 writes with the request's ``output.delivery.s3`` keys, v1 with the keys standing in for a bucket policy; a
bucket that cannot be written (unknown key, wrong secret, read-only key, missing bucket) refuses the create with
the service's error body, naming the bucket and never a key; no object or file the emulator writes holds a
credential.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorConfig, EmulatorServer
from airflow_provider_sentinel_batch.emulator.s3server import S3Keys, S3Server
from tests.emulator.helpers import CORSICA_BBOX, Api, freeze, v1_payload, v2_payload

pytestmark = pytest.mark.timeout(180)


@pytest.fixture(scope="module")
def s3_server(sentinel_batch_s3_server: S3Server) -> S3Server:
    """The session's S3 server (the package's pytest plugin starts it)."""
    return sentinel_batch_s3_server


@pytest.fixture
def s3_bucket(sentinel_batch_s3_bucket: str) -> str:
    """A fresh bucket on it."""
    return sentinel_batch_s3_bucket


@pytest.fixture(scope="module")
def s3_emu(s3_server: S3Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    state_file = tmp_path_factory.mktemp("s3-emu") / "state.json"
    config = EmulatorConfig(
        port=0,
        time_scale=1000,
        s3=s3_server.emulator_delivery(),
        state_file=state_file,
        seed=7,
    )
    with EmulatorServer(config) as server:
        yield server


@pytest.fixture
def api(s3_emu: EmulatorServer) -> Iterator[Api]:
    s3_emu.reset()
    yield Api(s3_emu)
    s3_emu.reset()


def v2_s3_payload(bucket: str, keys: S3Keys, bbox: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    payload = v2_payload(bbox, **extra)
    payload["output"]["delivery"]["s3"] = {
        "url": f"s3://{bucket}/ndvi/<tileName>/<outputId>.tiff",
        "accessKey": keys.access_key,
        "secretAccessKey": keys.secret_key,
    }
    return payload


def run_to(api: Api, emu: EmulatorServer, api_version: int, jid: str, status: str) -> dict[str, Any]:
    freeze(emu)
    for _ in range(400):
        body = api.job(api_version, jid)
        if body["status"] == status:
            return body
        emu.advance(30)
    raise AssertionError(f"{jid} never reached {status}: {api.job(api_version, jid)}")


def test_v2_delivers_every_object_over_s3_with_the_request_keys(
    api: Api,
    s3_emu: EmulatorServer,
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    keys = s3_server.writer_keys
    jid = api.create(2, v2_s3_payload(s3_bucket, keys, CORSICA_BBOX))["id"]
    # the request copy is in the bucket right after create, without any credential
    copy_key = f"ndvi/request-{jid}.json"
    assert s3_server.keys_in(s3_bucket) == [copy_key]
    copy_text = s3_server.get(s3_bucket, copy_key).decode()
    copy = json.loads(copy_text)
    assert copy["output"]["delivery"]["s3"] == {"url": f"s3://{s3_bucket}/ndvi/<tileName>/<outputId>.tiff"}
    assert keys.secret_key not in copy_text and keys.access_key not in copy_text
    assert "secretAccessKey" not in copy_text

    assert api.action(2, jid, "analyse").status_code == 204
    run_to(api, s3_emu, 2, jid, "ANALYSIS_DONE")
    assert f"ndvi/featureManifest-{jid}.gpkg" in s3_server.keys_in(s3_bucket)
    assert api.action(2, jid, "start").status_code == 204
    run_to(api, s3_emu, 2, jid, "DONE")

    job = s3_emu.state.get_job(jid)
    tiles = {t.name for t in job.tiles}
    objects = s3_server.keys_in(s3_bucket)
    assert sorted(k for k in objects if k.endswith("/default.tiff")) == sorted(
        f"ndvi/{name}/default.tiff" for name in tiles
    )
    assert len(tiles) >= 60
    assert s3_server.get(s3_bucket, f"ndvi/{sorted(tiles)[0]}/default.tiff").startswith(b"II*\x00")
    # the execution database read back over S3 is a real SQLite file with every feature DONE
    db = s3_emu.data_dir / "downloaded.sqlite"
    db.write_bytes(s3_server.get(s3_bucket, f"ndvi/execution-{jid}.sqlite"))
    rows = sqlite3.connect(db).execute("SELECT name, status, delivered FROM features").fetchall()
    assert {r[0] for r in rows} == tiles and {r[1] for r in rows} == {"DONE"} and {r[2] for r in rows} == {1}
    db.unlink()
    # nothing went to the local data dir: S3 delivery replaces it
    assert not any(p.is_file() for p in s3_emu.data_dir.rglob("*") if p.name != "state.json")
    # the state file never holds the keys
    state_text = Path(s3_emu.state.state_file or "").read_text()
    assert jid in state_text and keys.secret_key not in state_text and keys.access_key not in state_text


def test_v1_delivers_with_the_bucket_policy_keys(
    api: Api,
    s3_emu: EmulatorServer,
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    jid = api.create(1, v1_payload(bucketName=s3_bucket))["id"]
    assert s3_server.keys_in(s3_bucket) == []  # v1 writes no request copy
    assert api.action(1, jid, "start").status_code == 204
    run_to(api, s3_emu, 1, jid, "DONE")
    tiles = api.get(f"/api/v1/batch/process/{jid}/tiles").json()["data"]
    assert tiles and {t["status"] for t in tiles} == {"PROCESSED"}
    assert s3_server.keys_in(s3_bucket) == sorted(f"{jid}/{t['name']}/default.tif" for t in tiles)


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("unknown access key", "InvalidAccessKeyId"),
        ("wrong secret", "SignatureDoesNotMatch"),
        ("read-only key", "AccessDenied"),
    ],
)
def test_v2_create_refuses_keys_that_cannot_write(
    api: Api,
    s3_emu: EmulatorServer,
    s3_server: S3Server,
    s3_bucket: str,
    case: str,
    code: str,
) -> None:
    keys = {
        "unknown access key": S3Keys("AKIAUNKNOWN000000000", "canary-secret-unknown-key-0001"),
        "wrong secret": S3Keys(s3_server.writer_keys.access_key, "canary-secret-wrong-0002"),
        "read-only key": s3_server.reader_keys,
    }[case]
    response = api.post("/api/v2/batch/process", json=v2_s3_payload(s3_bucket, keys))
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (
        error["status"] == 400 and error["reason"] == "Bad Request" and error["code"] == "COMMON_BAD_PAYLOAD"
    )
    assert error["message"].startswith(f"Cannot write to bucket {s3_bucket}: access denied ({code}:")
    assert error["errors"] == [{"parameter": "output->delivery->s3", "violation": error["message"]}]
    assert keys.secret_key not in response.text
    assert s3_server.keys_in(s3_bucket) == []
    assert s3_emu.stats()["jobs_created"] == 0
    assert api.get("/api/v2/batch/process").json()["data"] == []


def test_missing_bucket_refuses_create_on_both_versions(
    api: Api,
    s3_emu: EmulatorServer,
    s3_server: S3Server,
) -> None:
    missing = "no-such-bucket-7f3e"
    response = api.post("/api/v2/batch/process", json=v2_s3_payload(missing, s3_server.writer_keys))
    assert response.status_code == 400, response.text
    assert response.json()["error"]["message"] == f"Bucket {missing} does not exist."
    assert response.json()["error"]["errors"][0]["parameter"] == "output->delivery->s3"
    response = api.post("/api/v1/batch/process", json=v1_payload(bucketName=missing))
    assert response.status_code == 400, response.text
    assert response.json()["error"] == {
        "status": 400,
        "reason": "Bad Request",
        "message": f"Bucket {missing} does not exist.",
        "code": "COMMON_BAD_PAYLOAD",
        "errors": [{"parameter": "bucketName", "violation": f"Bucket {missing} does not exist."}],
    }
    assert s3_emu.stats()["jobs_created"] == 0


def test_v1_without_a_bucket_policy_stand_in_is_refused(
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    config = EmulatorConfig(port=0, time_scale=1000, s3=s3_server.emulator_delivery(policy=False))
    with EmulatorServer(config) as server:
        api = Api(server)
        response = api.post("/api/v1/batch/process", json=v1_payload(bucketName=s3_bucket))
        assert response.status_code == 400, response.text
        assert response.json()["error"]["message"].startswith(
            f"No credentials to write to bucket {s3_bucket}"
        )
        # v2 with its own keys still works on that emulator
        api.create(2, v2_s3_payload(s3_bucket, s3_server.writer_keys))


def test_zarr_group_delivered_over_s3(
    api: Api,
    s3_emu: EmulatorServer,
    s3_server: S3Server,
    s3_bucket: str,
) -> None:
    payload = v2_s3_payload(s3_bucket, s3_server.writer_keys)
    payload["input"] = {"type": "tiling-grid", "id": 6, "resolution": 100.0}
    payload["output"] = {
        "type": "zarr",
        "delivery": {"s3": {**payload["output"]["delivery"]["s3"], "url": f"s3://{s3_bucket}/cube"}},
        "group": {"zarr_format": 2},
        "arrayParameters": {
            "dtype": "|u1",
            "order": "C",
            "chunks": [1, 1000, 1000],
            "fill_value": 0,
        },
    }
    payload["processRequest"]["input"]["bounds"] = {
        "bbox": [4300000, 2900000, 4400000, 3000000],
        "properties": {"crs": "http://www.opengis.net/def/crs/EPSG/0/3035"},
    }
    payload["processRequest"]["output"]["responses"][0]["format"] = {"type": "zarr/array"}
    response = api.post("/api/v2/batch/process", json=payload)
    assert response.status_code == 201, response.text
    jid = response.json()["id"]
    assert api.action(2, jid, "start").status_code == 204
    run_to(api, s3_emu, 2, jid, "DONE")
    objects = s3_server.keys_in(s3_bucket, "cube/")
    assert f"cube/{jid}/.zgroup" in objects and f"cube/{jid}/default/.zarray" in objects, objects


def test_local_data_dir_request_copy_and_state_file_hold_no_credentials(tmp_path: Path) -> None:
    """Without S3 the same rule holds for the data dir and the state file."""
    config = EmulatorConfig(
        port=0, time_scale=1000, data_dir=tmp_path / "data", state_file=tmp_path / "s.json"
    )
    with EmulatorServer(config) as server:
        api = Api(server)
        payload = v2_payload()
        payload["output"]["delivery"]["s3"].update(
            accessKey="AKIALOCAL", secretAccessKey="canary-local-secret"
        )
        jid = api.create(2, payload)["id"]
        written = [p for p in (tmp_path / "data").rglob("*") if p.is_file()]
        assert [p.name for p in written] == [f"request-{jid}.json"]
        for path in [*written, tmp_path / "s.json"]:
            text = path.read_text()
            assert "canary-local-secret" not in text and "secretAccessKey" not in text, path
        # the service itself still got the keys (they are only kept out of files)
        assert (
            server.state.jobs[jid].body["output"]["delivery"]["s3"]["secretAccessKey"]
            == "canary-local-secret"
        )


def test_cli_flags_take_the_policy_keys_from_the_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    from airflow_provider_sentinel_batch.emulator.__main__ import build_parser, config_from_args

    monkeypatch.setenv("SENTINEL_BATCH_EMULATOR_S3_ACCESS_KEY", "AKIAPOLICY")
    monkeypatch.setenv("SENTINEL_BATCH_EMULATOR_S3_SECRET_KEY", "canary-policy-secret")
    args = build_parser().parse_args(
        ["--port", "0", "--s3-endpoint-url", "http://127.0.0.1:9", "--s3-region", "eu-central-1"]
    )
    config = config_from_args(args)
    assert config.s3 is not None
    assert (config.s3.endpoint_url, config.s3.region) == ("http://127.0.0.1:9", "eu-central-1")
    assert config.s3.policy_keys is not None and config.s3.policy_keys.secret_key == "canary-policy-secret"
    assert "canary-policy-secret" not in repr(config)
    with EmulatorServer(config) as server:
        line = server.ready_line()
    assert "s3_endpoint_url=http://127.0.0.1:9" in line and "canary-policy-secret" not in line
    assert config_from_args(build_parser().parse_args(["--port", "0"])).s3 is None


# ------------------------------------------------------------------------------------------ Batch Statistical
def stat_run(api: Api, emu: EmulatorServer, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    from tests.emulator.stat_helpers import STAT

    response = api.post(STAT, json=payload)
    assert response.status_code == 201, response.text
    rid = response.json()["id"]
    assert api.post(f"{STAT}/{rid}/start").status_code == 204
    freeze(emu)
    emu.advance(10_000)
    status = api.get(f"{STAT}/{rid}/status").json()
    return rid, status


def upload_parcels(s3_server: S3Server, bucket: str, scratch: Path, count: int) -> str:
    from tests.emulator.stat_helpers import write_parcels

    gpkg = write_parcels(scratch, count=count)
    s3_server.client().put_object(Bucket=bucket, Key="input/parcels.gpkg", Body=gpkg.read_bytes())
    return f"s3://{bucket}/input/parcels.gpkg"


def test_statistical_reads_its_geopackage_and_writes_its_json_over_s3(
    api: Api, s3_emu: EmulatorServer, s3_server: S3Server, s3_bucket: str, tmp_path: Path
) -> None:
    """Input read with the input's own (read-only) keys, outputs written with the output's keys; the provider's
    results table reads them back over S3."""
    from airflow_provider_sentinel_batch.statistical_results import read_table
    from tests.emulator.stat_helpers import stat_payload

    features_url = upload_parcels(s3_server, s3_bucket, tmp_path, count=4)
    reader, writer = s3_server.reader_keys, s3_server.writer_keys
    payload = stat_payload(
        **{
            "input.features.s3": {
                "url": features_url,
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
    rid, status = stat_run(api, s3_emu, payload)
    assert status["status"] == "DONE", status
    assert s3_server.keys_in(s3_bucket, "stats/") == [f"stats/{rid}/{i}.json" for i in (1, 2, 3, 4)]
    table = read_table(
        request_id=rid,
        output_url=f"s3://{s3_bucket}/stats",
        storage_options={
            "key": reader.access_key,
            "secret": reader.secret_key,
            "client_kwargs": {"endpoint_url": s3_server.endpoint_url, "region_name": s3_server.region},
        },
    )
    counts = table.counts()
    assert counts["features"] == 4 and counts["ok"] == 4 and counts["failed"] == 0
    assert {row["feature_id"] for row in table.rows} == {1, 2, 3, 4}
    assert not any(p.is_file() for p in s3_emu.data_dir.rglob("*.json"))


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("wrong secret", "Cannot read from bucket {bucket}: access denied (SignatureDoesNotMatch: "),
        ("missing object", "the GeoPackage does not exist."),
        ("missing bucket", "Bucket no-such-input-bucket does not exist."),
    ],
)
def test_statistical_input_that_cannot_be_read_fails_the_analysis_without_the_secret(
    api: Api,
    s3_emu: EmulatorServer,
    s3_server: S3Server,
    s3_bucket: str,
    tmp_path: Path,
    case: str,
    reason: str,
) -> None:
    from tests.emulator.stat_helpers import stat_payload

    features_url = upload_parcels(s3_server, s3_bucket, tmp_path, count=2)
    secret = "canary-input-secret-3a9d" if case == "wrong secret" else s3_server.reader_keys.secret_key
    if case == "missing object":
        features_url = f"s3://{s3_bucket}/input/nothing-here.gpkg"
    if case == "missing bucket":
        features_url = "s3://no-such-input-bucket/input/parcels.gpkg"
    features = {"url": features_url, "accessKey": s3_server.reader_keys.access_key, "secretAccessKey": secret}
    output = {"url": f"s3://{s3_bucket}/stats", **{k: v for k, v in features.items() if k != "url"}}
    output.update(
        accessKey=s3_server.writer_keys.access_key, secretAccessKey=s3_server.writer_keys.secret_key
    )
    _, status = stat_run(api, s3_emu, stat_payload(**{"input.features.s3": features, "output.s3": output}))
    assert status["status"] == "FAILED", status
    expected = f"Failed to read input features from {features_url}: " + reason.format(bucket=s3_bucket)
    assert status["error"].startswith(expected), status["error"]
    assert secret not in json.dumps(status)
    assert s3_server.keys_in(s3_bucket, "stats/") == []
