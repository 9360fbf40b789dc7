"""Batch v1: the request state machine, tiles, actions, PUT/DELETE rules and outputs."""

from __future__ import annotations

import re

import pytest

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.emulator.helpers import CORSICA_BBOX, Api, freeze, v1_payload

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
V1 = "/api/v1/batch/process"


def test_create_returns_sdk_required_fields_and_tile_geometry(api: Api) -> None:
    body = api.create(1, v1_payload(CORSICA_BBOX))
    assert {"id", "processRequest", "tileCount", "status"} <= set(body)
    assert body["status"] == "CREATED"
    assert body["userAction"] == "NONE"
    assert 60 <= body["tileCount"] <= 80  # Corsica at grid 0 / 60 m
    assert body["tileWidthPx"] == body["tileHeightPx"] == 334  # 20040 m / 60 m
    assert "valueEstimate" not in body  # only after analysis
    assert ISO_Z.match(body["created"])
    assert ISO_Z.match(body["userActionUpdated"])
    assert body["tilingGrid"] == {"id": 0, "resolution": 60.0}
    assert body["description"] == "emulator test"


def test_analyse_then_start_runs_to_done(api: Api, emu: EmulatorServer) -> None:
    job = api.create(1)
    jid = job["id"]
    assert api.get(f"{V1}/{jid}/tiles").json() == {"data": [], "links": {}}  # no tiles before analysis
    response = api.action(1, jid, "analyse")
    assert response.status_code == 204
    assert response.content == b""
    body, seen = api.wait(1, jid, {"ANALYSIS_DONE"})
    assert seen[0] in {"ANALYSING", "ANALYSIS_DONE"}
    assert body["userAction"] == "ANALYSE"
    assert body["valueEstimate"] >= 100
    tiles = api.get(f"{V1}/{jid}/tiles").json()["data"]
    assert len(tiles) == body["tileCount"]
    assert {t["status"] for t in tiles} == {"PENDING"}
    tile = tiles[0]
    assert {"id", "requestId", "name", "geometry", "origin", "status", "cost"} <= set(tile)
    assert tile["origin"]["crs"]["properties"]["name"].startswith("urn:ogc:def:crs:EPSG::326")
    assert api.get(f"{V1}/{jid}/tiles/{tile['id']}").json()["id"] == tile["id"]

    assert api.action(1, jid, "start").status_code == 204
    body, seen = api.wait(1, jid, {"DONE", "PARTIAL", "FAILED"})
    assert body["status"] == "DONE"
    assert body["userAction"] == "START"
    tiles = api.get(f"{V1}/{jid}/tiles").json()["data"]
    assert {t["status"] for t in tiles} == {"PROCESSED"}
    assert all(t["cost"] > 0 for t in tiles)
    files = sorted(emu.data_dir.glob(f"my-bucket/{jid}/*/default.tif"))
    assert len(files) == body["tileCount"]
    assert files[0].read_bytes().startswith(b"II*\x00")


def test_tiles_pass_pending_scheduled_processing_processed(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(1, v1_payload(CORSICA_BBOX))["id"]
    api.action(1, jid, "start")
    seen: set[str] = set()
    statuses: list[str] = []
    for _ in range(200):
        body = api.job(1, jid)
        if not statuses or statuses[-1] != body["status"]:
            statuses.append(body["status"])
        if body["status"] in {"PROCESSING", "DONE"}:
            seen |= {t["status"] for t in api.get(f"{V1}/{jid}/tiles").json()["data"]}
        if body["status"] == "DONE":
            break
        emu.advance(5)
    assert statuses == ["ANALYSING", "ANALYSIS_DONE", "PROCESSING", "DONE"]
    assert {"PENDING", "SCHEDULED", "PROCESSING", "PROCESSED"} <= seen


def test_start_without_analyse_analyses_first(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(1)["id"]
    api.action(1, jid, "start")
    body = api.job(1, jid)
    assert (body["status"], body["userAction"]) == ("ANALYSING", "START")
    emu.advance(40)  # analysis (30 s + 0.5 s/tile) done, still queued (20 s)
    body = api.job(1, jid)
    assert (body["status"], body["userAction"]) == ("ANALYSIS_DONE", "START")
    assert body["valueEstimate"] > 0
    emu.advance(15)
    assert api.job(1, jid)["status"] == "PROCESSING"
    emu.advance(600)
    assert api.job(1, jid)["status"] == "DONE"


def test_restartpartial_only_from_partial_exact_error(api: Api) -> None:
    jid = api.create(1)["id"]
    response = api.action(1, jid, "restartpartial")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "status": 400,
            "reason": "Bad Request",
            "message": "Only requests with status PARTIAL can be restarted.",
            "code": "COMMON_BAD_PAYLOAD",
        }
    }


def test_partial_then_restart_with_status_lag(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(1, v1_payload(CORSICA_BBOX), headers={"X-Emulator-Tile-Failure-Rate": "0.1"})["id"]
    api.action(1, jid, "start")
    emu.advance(2000)
    body = api.job(1, jid)
    assert body["status"] == "PARTIAL"
    tiles = api.get(f"{V1}/{jid}/tiles").json()["data"]
    failed = [t for t in tiles if t["status"] == "FAILED"]
    assert len(failed) == round(0.1 * body["tileCount"])
    assert len(api.get(f"{V1}/{jid}/tiles", params={"status": "FAILED"}).json()["data"]) == len(failed)

    assert api.action(1, jid, "restartpartial").status_code == 204
    body = api.job(1, jid)
    assert body["status"] == "PARTIAL"  # the status lags behind the restart
    pending = api.get(f"{V1}/{jid}/tiles", params={"status": "PENDING"}).json()["data"]
    assert {t["id"] for t in pending} == {t["id"] for t in failed}
    emu.advance(20)
    assert api.job(1, jid)["status"] == "PROCESSING"
    emu.advance(600)
    assert api.job(1, jid)["status"] == "DONE"  # restarted tiles succeed by default


def test_all_tiles_failing_gives_failed(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(1, headers={"X-Emulator-Tile-Failure-Rate": "1"})["id"]
    api.action(1, jid, "start")
    emu.advance(2000)
    body = api.job(1, jid)
    assert body["status"] == "FAILED"
    assert body["error"]


def test_tile_failures_are_deterministic_with_the_seed(api: Api, emu: EmulatorServer) -> None:
    def failed_names() -> list[str]:
        emu.reset()
        freeze(emu)
        client = Api(emu)
        jid = client.create(1, v1_payload(CORSICA_BBOX), headers={"X-Emulator-Tile-Failure-Rate": "0.2"})[
            "id"
        ]
        client.action(1, jid, "start")
        emu.advance(3000)
        tiles = client.get(f"{V1}/{jid}/tiles", params={"status": "FAILED"}).json()["data"]
        return sorted(t["name"] for t in tiles)

    first = failed_names()
    assert first
    assert first == failed_names()


def test_analysis_failure(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    payload = v1_payload()
    payload["processRequest"]["evalscript"] = "//VERSION=3\nfunction setup() { return {} }"
    jid = api.create(1, payload)["id"]
    api.action(1, jid, "analyse")
    emu.advance(100)
    body = api.job(1, jid)
    assert body["status"] == "FAILED"
    assert "evaluatePixel" in body["error"]


def test_cancel(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(1)["id"]
    assert api.action(1, jid, "cancel").status_code == 204
    body = api.job(1, jid)
    assert (body["status"], body["userAction"]) == ("CANCELED", "CANCEL")
    # "may cancel at any time" and the spec lists no 400: a finished request stays as it is
    assert api.action(1, jid, "cancel").status_code == 204
    assert api.job(1, jid)["status"] == "CANCELED"
    assert api.action(1, jid, "start").status_code == 400

    jid = api.create(1)["id"]
    api.action(1, jid, "analyse")
    api.action(1, jid, "cancel")
    assert api.job(1, jid)["status"] == "ANALYSING"  # a running analysis completes first
    emu.advance(100)
    assert api.job(1, jid)["status"] == "CANCELED"

    jid = api.create(1, v1_payload(CORSICA_BBOX))["id"]
    api.action(1, jid, "start")
    emu.advance(100)
    assert api.job(1, jid)["status"] == "PROCESSING"
    api.action(1, jid, "cancel")
    emu.advance(5000)
    assert api.job(1, jid)["status"] == "CANCELED"


def test_invalid_actions_and_unknown_ids(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(1)["id"]
    api.action(1, jid, "analyse")
    response = api.action(1, jid, "analyse")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "COMMON_BAD_PAYLOAD"
    missing = "00000000-0000-4000-8000-000000000000"
    for method, path in (
        ("GET", f"{V1}/{missing}"),
        ("POST", f"{V1}/{missing}/start"),
        ("GET", f"{V1}/{missing}/tiles"),
        ("DELETE", f"{V1}/{missing}"),
        ("GET", f"{V1}/{jid}/tiles/12345"),
    ):
        response = api.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "COMMON_NOT_FOUND"
    # A v1 id is not a v2 task.
    assert api.get(f"/api/v2/batch/process/{jid}").status_code == 404


def test_put_and_delete_rules(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(1)["id"]
    response = api.put(f"{V1}/{jid}", json={"description": "renamed", "output": {"collectionId": None}})
    assert response.status_code == 200
    assert response.json()["description"] == "renamed"
    bad = api.put(f"{V1}/{jid}", json={"tilingGrid": {"id": 1, "resolution": 10.0}})
    assert bad.status_code == 400
    assert bad.json()["error"]["errors"][0]["parameter"] == "tilingGrid"

    api.action(1, jid, "start")
    emu.advance(60)
    assert api.job(1, jid)["status"] == "PROCESSING"
    assert api.put(f"{V1}/{jid}", json={"description": "x"}).status_code == 409
    assert api.delete(f"{V1}/{jid}").status_code == 409
    emu.advance(1000)
    assert api.job(1, jid)["status"] == "DONE"
    assert api.delete(f"{V1}/{jid}").status_code == 409  # processed tiles

    jid2 = api.create(1)["id"]
    response = api.delete(f"{V1}/{jid2}")
    assert response.status_code == 204
    assert response.content == b""
    assert api.get(f"{V1}/{jid2}").status_code == 404


def test_output_path_template_and_multipart_create(api: Api, emu: EmulatorServer) -> None:
    payload = v1_payload(bucketName=None)
    payload.pop("bucketName")
    payload["output"] = {
        "defaultTilePath": "s3://bucket/out/<tileName>/<outputId>.<format>",
        "overwrite": True,
    }
    evalscript = payload["processRequest"].pop("evalscript")
    import json

    files = {
        "request": (None, json.dumps(payload), "application/json"),
        "evalscript": (None, evalscript, "text/plain"),
    }
    response = api.post(V1, files=files)
    assert response.status_code == 201, response.text
    jid = response.json()["id"]
    assert response.json()["processRequest"]["evalscript"] == evalscript
    api.action(1, jid, "start")
    api.wait(1, jid, {"DONE"})
    assert list(emu.data_dir.glob("bucket/out/*/default.tif"))


def test_deprecated_top_level_grid_fields(api: Api) -> None:
    payload = v1_payload()
    del payload["tilingGrid"]
    payload.update({"tilingGridId": 1, "resolution": 10.0})
    body = api.create(1, payload)
    assert body["tilingGrid"] == {"id": 1, "resolution": 10.0}
    assert body["tileWidthPx"] == 1000


@pytest.mark.parametrize(("grid", "resolution", "px"), [(1, 20.0, 500), (2, 60.0, 1668), (3, 0.0002, 5000)])
def test_other_grids_give_plausible_tiles(api: Api, grid: int, resolution: float, px: int) -> None:
    body = api.create(1, v1_payload(CORSICA_BBOX, tilingGrid={"id": grid, "resolution": resolution}))
    assert body["tileWidthPx"] == px
    assert body["tileCount"] >= 2
