"""Batch Statistical in the emulator: shapes, lifecycle, per-feature JSON, STOP / OUT_OF_PU rules, payload errors."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from airflow_provider_sentinel_batch.emulator.statistical import split_intervals
from tests.emulator.helpers import Api, freeze
from tests.emulator.stat_helpers import DROP, GPKG_URL, STAT, stat_payload, write_parcels

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def create(api: Api, payload: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
    response = api.post(STAT, json=payload if payload is not None else stat_payload(), **kwargs)
    assert response.status_code == 201, response.text
    return response.json()


def status(api: Api, rid: str) -> dict[str, Any]:
    response = api.get(f"{STAT}/{rid}/status")
    assert response.status_code == 200, response.text
    return response.json()


def results(emu: EmulatorServer, rid: str) -> dict[str, dict[str, Any]]:
    folder = emu.data_dir / "stat-bucket" / "stats" / rid
    return {p.name: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}


def test_create_and_status_shapes(api: Api, emu: EmulatorServer) -> None:
    write_parcels(emu.data_dir)
    body = create(api)
    assert body["status"] == "CREATED" and body["userAction"] == "NONE"
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert str(uuid.UUID(body["domainAccountId"])) == body["domainAccountId"]
    assert body["completionPercentage"] == 0
    assert body["costPU"] == body["costPu"] == 0  # the spec spells costPu, sentinelhub-py reads costPU
    for key in ("created", "lastUpdated", "userActionUpdated"):
        assert ISO_Z.match(body[key]), key
    assert body["request"]["aggregation"]["aggregationInterval"] == {"of": "P1M"}
    st = status(api, body["id"])
    assert set(st) == {"id", "status", "completionPercentage", "lastUpdated", "costPu", "costPU", "created"}
    assert api.get(f"{STAT}/{body['id']}").json()["id"] == body["id"]
    assert api.get(f"{STAT}/{uuid.uuid4()}").status_code == 404


def test_analyse_start_done_writes_one_json_per_feature(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    write_parcels(emu.data_dir, count=20)
    rid = create(api)["id"]
    assert api.post(f"{STAT}/{rid}/analyse").status_code == 204
    assert status(api, rid)["status"] == "ANALYSING"
    emu.advance(100)
    assert status(api, rid)["status"] == "ANALYSIS_DONE"
    assert api.post(f"{STAT}/{rid}/start").status_code == 204
    emu.advance(25)
    st = status(api, rid)
    assert st["status"] == "PROCESSING"
    emu.advance(35)
    middle = status(api, rid)
    assert middle["status"] == "PROCESSING" and 0 < middle["completionPercentage"] < 100
    assert 0 < middle["costPU"] < 100
    emu.advance(1000)
    st = status(api, rid)
    assert (st["status"], st["completionPercentage"]) == ("DONE", 100.0)
    assert st["costPU"] >= 100.0  # minimal cost of a request
    files = results(emu, rid)
    assert sorted(files, key=lambda n: int(n.split(".")[0])) == [f"{i}.json" for i in range(1, 21)]
    doc = files["1.json"]
    assert doc["id"] == 1 and doc["identifier"] == "FIELD-0001"
    assert doc["response"]["status"] == "OK"
    intervals = [d["interval"] for d in doc["response"]["data"]]
    assert intervals[0] == {"from": "2024-04-01T00:00:00Z", "to": "2024-05-01T00:00:00Z"}
    band = doc["response"]["data"][0]["outputs"]["ndvi"]["bands"]["B0"]
    assert "dataMask" not in doc["response"]["data"][0]["outputs"]
    stats = band["stats"]
    assert set(stats) >= {"min", "max", "mean", "stDev", "sampleCount", "noDataCount", "percentiles"}
    assert set(stats["percentiles"]) == {"10.0", "50.0", "90.0"}
    if stats["mean"] != "NaN":
        assert -1 <= stats["min"] <= stats["mean"] <= stats["max"] <= 1
        assert stats["percentiles"]["10.0"] <= stats["percentiles"]["50.0"] <= stats["percentiles"]["90.0"]
        bins = band["histogram"]["bins"]
        assert [b["lowEdge"] for b in bins] == [-1.0, -0.5, 0.0, 0.5]
        assert sum(b["count"] for b in bins) + band["histogram"]["overflowCount"] + band["histogram"][
            "underflowCount"
        ] == (stats["sampleCount"] - stats["noDataCount"])
    assert api.post(f"{STAT}/{rid}/start").status_code == 400  # a finished request cannot start again


def test_statistics_are_deterministic_for_the_same_seed(tmp_path: Path) -> None:
    outputs = []
    for run in ("a", "b"):
        data_dir = tmp_path / run
        write_parcels(data_dir, count=3)
        with EmulatorServer(port=0, time_scale=1e-6, data_dir=data_dir, seed=7) as emu:
            api = Api(emu)
            rid = create(api)["id"]
            api.post(f"{STAT}/{rid}/start")
            emu.advance(5000)
            assert status(api, rid)["status"] == "DONE"
            outputs.append((rid, results(emu, rid)))
    assert outputs[0] == outputs[1]


def test_identifier_template_and_start_without_analyse(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    write_parcels(emu.data_dir, count=2)
    payload = stat_payload(**{"output.s3": {"url": "s3://stat-bucket/by-id/<REQUEST_ID>/<IDENTIFIER>.json"}})
    rid = create(api, payload)["id"]
    api.post(f"{STAT}/{rid}/start")
    body = api.get(f"{STAT}/{rid}").json()
    assert (body["status"], body["userAction"]) == ("CREATED", "START")
    emu.advance(5000)
    assert status(api, rid)["status"] == "DONE"
    names = sorted(p.name for p in (emu.data_dir / "stat-bucket" / "by-id" / rid).iterdir())
    assert names == ["FIELD-0001.json", "FIELD-0002.json"]


def test_missing_geopackage_fails_the_analysis(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    missing = GPKG_URL.replace("parcels", "missing")
    rid = create(api, stat_payload(**{"input.features": {"s3": {"url": missing}}}))[
        "id"
    ]  # create reads nothing
    api.post(f"{STAT}/{rid}/analyse")
    emu.advance(100)
    st = status(api, rid)
    assert st["status"] == "FAILED"
    assert st["error"] == f"Failed to read input features from {missing}: the GeoPackage does not exist."


def test_evalscript_without_evaluate_pixel_fails_the_analysis(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    write_parcels(emu.data_dir)
    rid = create(api, stat_payload(**{"aggregation.evalscript": "//VERSION=3\nfunction setup() {}"}))["id"]
    api.post(f"{STAT}/{rid}/start")
    emu.advance(200)
    st = status(api, rid)
    assert st["status"] == "FAILED" and "evaluatePixel is not defined" in st["error"]


def test_failed_features_and_all_failed(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    write_parcels(emu.data_dir, count=4)
    rid = create(api, headers={"X-Emulator-Tile-Failure-Rate": "0.5"})["id"]
    api.post(f"{STAT}/{rid}/start")
    emu.advance(5000)
    assert status(api, rid)["status"] == "DONE"  # failed features do not fail the request
    failed = [d for d in results(emu, rid).values() if d["response"]["status"] == "FAILED"]
    assert len(failed) == 2 and all(d["response"]["data"] is None for d in failed)

    rid = create(api, headers={"X-Emulator-Tile-Failure-Rate": "1"})["id"]
    api.post(f"{STAT}/{rid}/start")
    emu.advance(5000)
    st = status(api, rid)
    assert (st["status"], st["error"]) == ("FAILED", "Processing failed for all features.")


def test_user_stop_and_the_30_minute_block(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    write_parcels(emu.data_dir, count=30)
    rid = create(api)["id"]
    api.post(f"{STAT}/{rid}/start")
    emu.advance(100)
    assert status(api, rid)["status"] == "PROCESSING"
    assert api.post(f"{STAT}/{rid}/stop").status_code == 204
    st = status(api, rid)
    assert (st["status"], st["stoppedStatusReason"]) == ("STOPPED", "USER_ACTION")
    assert api.get(f"{STAT}/{rid}").json()["userAction"] == "STOP"
    refused = api.post(f"{STAT}/{rid}/start")
    assert refused.status_code == 400 and "30 minutes" in refused.json()["error"]["message"]
    emu.advance(1801)
    assert api.post(f"{STAT}/{rid}/start").status_code == 204
    emu.advance(10_000)
    assert status(api, rid)["status"] == "DONE"
    assert len(results(emu, rid)) == 30


def test_stop_answers_204_in_every_status(api: Api, emu: EmulatorServer) -> None:
    """The API lists no 400 for STOP: where there is nothing to stop, nothing changes."""
    freeze(emu)
    write_parcels(emu.data_dir)
    rid = create(api)["id"]
    assert api.post(f"{STAT}/{rid}/stop").status_code == 204
    body = api.get(f"{STAT}/{rid}").json()
    assert (body["status"], body["userAction"]) == ("CREATED", "NONE")
    api.post(f"{STAT}/{rid}/analyse")
    assert api.post(f"{STAT}/{rid}/cancel").status_code == 204  # the older name of stop
    assert status(api, rid)["status"] == "ANALYSING"  # the analysis completes first
    emu.advance(100)
    st = status(api, rid)
    assert (st["status"], st["stoppedStatusReason"]) == ("STOPPED", "USER_ACTION")
    assert api.post(f"{STAT}/{rid}/stop").status_code == 204


def test_out_of_pu_stops_and_blocks_restart_for_60_minutes(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    write_parcels(emu.data_dir, count=40)
    emu.state.set_pu_budget(1000.05)  # creatable, but processing drops the balance below 1000 at once
    rid = create(api)["id"]
    api.post(f"{STAT}/{rid}/start")
    emu.advance(200)
    st = status(api, rid)
    assert (st["status"], st["stoppedStatusReason"]) == ("STOPPED", "OUT_OF_PU")
    assert st["completionPercentage"] < 100
    emu.state.set_pu_budget(100_000)
    emu.advance(1900)  # past the 30 minutes of a user STOP, not the 60 of OUT_OF_PU
    refused = api.post(f"{STAT}/{rid}/start")
    assert refused.status_code == 400 and "60 minutes" in refused.json()["error"]["message"]
    emu.advance(1800)
    assert api.post(f"{STAT}/{rid}/start").status_code == 204
    emu.advance(10_000)
    assert status(api, rid)["status"] == "DONE"


def test_1000_pu_needed_to_create_analyse_and_start(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    write_parcels(emu.data_dir)
    rid = create(api)["id"]
    emu.state.set_pu_budget(999)
    for response in (api.post(STAT, json=stat_payload()), api.post(f"{STAT}/{rid}/analyse")):
        assert response.status_code == 403
        assert response.json()["error"]["message"] == (
            "Insufficient processing units: batch statistical requests need at least 1000 PU on the account "
            "(999.0 PU left)."
        )
    assert api.post(f"{STAT}/{rid}/start").status_code == 403


def test_list_pagination_sort_and_previous_links(api: Api) -> None:
    ids = [create(api)["id"] for _ in range(5)]
    first = api.get(STAT, params={"count": 2}).json()
    assert [r["id"] for r in first["data"]] == ids[:2]
    assert "previousToken" not in first["links"] and first["links"]["nextToken"] == "2"
    second = api.get(first["links"]["next"]).json()
    assert second["links"]["previousToken"] == "0" and second["links"]["nextToken"] == "4"
    desc = api.get(STAT, params={"sort": "created:desc"}).json()["data"]
    assert [r["id"] for r in desc] == ids[::-1]
    assert api.get(STAT, params={"sort": "name"}).status_code == 400


def test_faults_apply_to_statistical_endpoints(api: Api, emu: EmulatorServer) -> None:
    rid = create(api)["id"]
    emu.set_faults(rate_429=1.0, retry_after_ms=250)
    response = api.get(f"{STAT}/{rid}/status")
    assert response.status_code == 429 and response.headers["Retry-After"] == "250"
    emu.clear_faults()
    emu.set_faults(not_found_after_create=30)
    fresh = create(api)["id"]
    assert api.get(f"{STAT}/{fresh}/status").status_code == 404
    assert emu.stats()["calls"]["GET /api/v1/statistics/batch/{id}/status"] >= 2


def test_control_plane_force_and_configure(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    write_parcels(emu.data_dir)
    rid = create(api)["id"]
    forced = api.post(f"/_emulator/statistical/{rid}/force", json={"status": "FAILED", "error": "boom"})
    assert forced.status_code == 200 and forced.json()["status"] == "FAILED"
    assert status(api, rid)["error"] == "boom"
    rid = create(api)["id"]
    stopped = api.post(
        f"/_emulator/statistical/{rid}/force", json={"status": "STOPPED", "stoppedStatusReason": "OUT_OF_PU"}
    )
    assert stopped.json()["stoppedStatusReason"] == "OUT_OF_PU"
    assert api.post(f"{STAT}/{rid}/start").status_code == 400  # the 60-minute block applies to forced stops
    info = api.get(f"/_emulator/statistical/{rid}").json()["_emulator"]
    assert info["features"] == 6
    assert api.post(f"/_emulator/statistical/{rid}/configure", json={"bogus": 1}).status_code == 400
    assert api.get("/_emulator/statistical/nope").status_code == 404


def test_no_credential_in_any_file_the_emulator_writes(tmp_path: Path) -> None:
    state_file = tmp_path / "state.json"
    with EmulatorServer(port=0, time_scale=1e-6, data_dir=tmp_path / "data", state_file=state_file) as emu:
        write_parcels(emu.data_dir)
        api = Api(emu)
        rid = create(api)["id"]
        api.post(f"{STAT}/{rid}/start")
        from tests.emulator.helpers import v2_payload

        v2 = v2_payload()
        v2["output"]["delivery"]["s3"].update(accessKey="AK", secretAccessKey="SK-secret")
        api.create(2, v2)
        api.create(1)
        emu.advance(10_000)
        assert status(api, rid)["status"] == "DONE"
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert state_file in written and any(p.name.startswith("request-") for p in written)
    assert len([p for p in written if p.suffix == ".json"]) > 6
    for path in written:
        content = path.read_bytes()
        assert b"SK-secret" not in content, path
        assert b"emulator-secret" not in content, path


def test_state_file_keeps_statistical_requests_across_a_restart(tmp_path: Path) -> None:
    """``--state-file``: requests, their features, costs, user actions and the OUT_OF_PU block survive a
    restart; the file holds no bucket key."""
    from airflow_provider_sentinel_batch.emulator import EmulatorConfig

    config = EmulatorConfig(
        port=0, time_scale=1e-6, data_dir=tmp_path / "data", state_file=tmp_path / "s.json"
    )
    with EmulatorServer(config) as first:
        write_parcels(first.data_dir, count=5)
        api = Api(first)
        done = create(api)["id"]
        api.post(f"{STAT}/{done}/start")
        first.advance(10_000)
        before_done = status(api, done)
        assert before_done["status"] == "DONE" and len(results(first, done)) == 5
        analysing = create(api)["id"]
        assert api.post(f"{STAT}/{analysing}/analyse").status_code == 204
        stopped = create(api)["id"]
        forced = api.post(
            f"/_emulator/statistical/{stopped}/force",
            json={"status": "STOPPED", "stoppedStatusReason": "OUT_OF_PU"},
        )
        assert forced.status_code == 200
        listed = [r["id"] for r in api.get(STAT).json()["data"]]
    text = config.state_file.read_text()  # type: ignore[union-attr]
    assert "SK-secret" not in text and "secretAccessKey" not in text and "accessKey" not in text
    assert {r["id"] for r in json.loads(text)["stat_requests"]} == {analysing, done, stopped}

    with EmulatorServer(config) as second:
        api.server = second  # same credentials and seed: the old token is still valid
        assert [r["id"] for r in api.get(STAT).json()["data"]] == listed
        assert second.stats()["jobs_created"] == 3
        again = status(api, done)
        assert (again["status"], again["costPU"], again["completionPercentage"]) == (
            "DONE",
            before_done["costPU"],
            100.0,
        )
        view = api.get(f"{STAT}/{analysing}").json()
        assert (view["status"], view["userAction"]) == ("ANALYSING", "ANALYSE")
        assert "accessKey" not in json.dumps(view["request"])  # the keys stayed with the first process
        blocked = api.post(f"{STAT}/{stopped}/start")  # the 60-minute OUT_OF_PU block is kept too
        assert blocked.status_code == 400 and "within 60 minutes" in blocked.text
        second.advance(100)
        assert status(api, analysing)["status"] == "ANALYSIS_DONE"
        assert api.post(f"{STAT}/{analysing}/start").status_code == 204
        second.advance(10_000)
        assert status(api, analysing)["status"] == "DONE" and len(results(second, analysing)) == 5
        assert create(api)["id"] not in {analysing, done, stopped}


@pytest.mark.parametrize(
    ("of", "behaviour", "expected"),
    [
        (
            "P30D",
            "SKIP",
            [("2024-04-01", "2024-05-01"), ("2024-05-01", "2024-05-31"), ("2024-05-31", "2024-06-30")],
        ),
        (
            "P1M",
            "SKIP",
            [("2024-04-01", "2024-05-01"), ("2024-05-01", "2024-06-01"), ("2024-06-01", "2024-07-01")],
        ),
        ("P2M", "SKIP", [("2024-04-01", "2024-06-01")]),
        ("P2M", "SHORTEN", [("2024-04-01", "2024-06-01"), ("2024-06-01", "2024-07-01")]),
        ("P2M", "EXTEND", [("2024-04-01", "2024-06-01"), ("2024-06-01", "2024-08-01")]),
    ],
)
def test_interval_split(of: str, behaviour: str, expected: list[tuple[str, str]]) -> None:
    from datetime import UTC, datetime

    got = split_intervals(datetime(2024, 4, 1, tzinfo=UTC), datetime(2024, 7, 1, tzinfo=UTC), of, behaviour)
    assert [(a[:10], b[:10]) for a, b in got] == expected


BAD_PAYLOADS = [
    (
        {"aggregation.evalscript": DROP},
        "aggregation->evalscript",
        "either evalscript or evalscriptReference is required",
    ),
    (
        {"input.features": DROP},
        "input->features",
        "is required (the GeoPackage with the polygons, input->features->s3)",
    ),
    (
        {"input.features": {"s3": {"url": "https://x/y.gpkg"}}},
        "input->features->s3->url",
        "is required and must be an s3:// URL",
    ),
    ({"input.data": []}, "input->data", "must be a non-empty array"),
    (
        {"aggregation.timeRange": {"from": "2024-07-01T00:00:00Z", "to": "2024-04-01T00:00:00Z"}},
        "aggregation->timeRange",
        "from must be before to",
    ),
    (
        {"aggregation.aggregationInterval": {"of": "30 days"}},
        "aggregation->aggregationInterval->of",
        "must be an ISO-8601 duration of days, weeks, months or years, e.g. P1D, P30D, P1M",
    ),
    (
        {"aggregation.width": 100},
        "aggregation",
        "only one pair of parameters width/height or resx/resy must be set",
    ),
    (
        {"aggregation.resx": DROP, "aggregation.resy": DROP},
        "aggregation",
        "resx and resy, or width and height, are required",
    ),
    (
        {"output.s3": {"url": "s3://b/stats/<REQUEST_ID>.json"}},
        "output->s3->url",
        "a URL template must contain <ID> or <IDENTIFIER>",
    ),
    (
        {"calculations.ndvi": {"statistics": {"default": {"percentiles": {"k": [50]}}}}},
        "calculations->ndvi->statistics->default->percentiles->k",
        "must be a non-empty array of numbers in [0, 1]",
    ),
    (
        {"aggregation.evalscriptReference": {"s3": {"url": "s3://b/script.js"}}},
        "aggregation->evalscript",
        "evalscript and evalscriptReference are mutually exclusive",
    ),
]


@pytest.mark.parametrize(("changes", "parameter", "violation"), BAD_PAYLOADS)
def test_bad_payloads_get_the_service_error_shape(
    api: Api, changes: dict[str, Any], parameter: str, violation: str
) -> None:
    response = api.post(STAT, json=stat_payload(**changes))
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["status"], error["reason"], error["code"]) == (400, "Bad Request", "COMMON_BAD_PAYLOAD")
    assert error["message"] == f"Invalid request payload: {parameter}: {violation}"
    assert error["errors"] == [{"parameter": parameter, "violation": violation}]
    assert emu_jobs(api) == 0


def emu_jobs(api: Api) -> int:
    return int(api.server.stats()["jobs_created"])


def test_results_go_over_s3_with_the_request_keys(tmp_path: Path) -> None:
    """With an S3 endpoint the GeoPackage is read and the per-feature JSON files are PUT over S3, with the
    request's ``input.features.s3`` and ``output.s3`` keys."""
    from tests.s3server import S3Server

    with (
        S3Server() as s3,
        EmulatorServer(port=0, time_scale=1e-6, data_dir=tmp_path, s3=s3.emulator_delivery()) as emu,
    ):
        bucket = s3.create_bucket()
        gpkg = write_parcels(tmp_path / "scratch", count=3)
        s3.client().put_object(Bucket=bucket, Key="input/parcels.gpkg", Body=gpkg.read_bytes())
        keys = s3.writer_keys
        output = {
            "url": f"s3://{bucket}/stats",
            "accessKey": keys.access_key,
            "secretAccessKey": keys.secret_key,
        }
        features = {**output, "url": f"s3://{bucket}/input/parcels.gpkg"}
        api = Api(emu)
        rid = create(api, stat_payload(**{"output.s3": output, "input.features.s3": features}))["id"]
        api.post(f"{STAT}/{rid}/start")
        emu.advance(5000)
        assert status(api, rid)["status"] == "DONE"
        assert s3.keys_in(bucket) == ["input/parcels.gpkg", *[f"stats/{rid}/{i}.json" for i in (1, 2, 3)]]
        doc = json.loads(s3.get(bucket, f"stats/{rid}/2.json"))
        assert doc["id"] == 2 and doc["response"]["status"] == "OK"
        assert not (tmp_path / bucket).exists()  # nothing went to the data dir
