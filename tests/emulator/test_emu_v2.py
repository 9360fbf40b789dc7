"""Batch v2: the task state machine, STOP rules, OUT_OF_PU, progress/cost, the execution database."""

from __future__ import annotations

import re
import sqlite3
import uuid

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.emulator.helpers import CORSICA_BBOX, Api, freeze, v2_payload

ISO_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
V2 = "/api/v2/batch/process"
V2_STATUSES = {"CREATED", "ANALYSING", "ANALYSIS_DONE", "PROCESSING", "DONE", "FAILED", "STOPPED"}


def test_create_body_shape(api: Api) -> None:
    body = api.create(2)
    assert body["status"] == "CREATED"
    assert body["userAction"] == "NONE"
    assert str(uuid.UUID(body["domainAccountId"])) == body["domainAccountId"]  # the spec: a uuid string
    assert set(body["request"]) >= {"processRequest", "input", "output", "instanceType", "description"}
    assert body["request"]["description"] == "emulator test v2"
    for key in ("created", "lastUpdated", "userActionUpdated"):
        assert ISO_Z.match(body[key]), key
    assert body["completionPercentage"] == 0
    assert body["costPU"] == 0
    for v1_only in ("tileCount", "valueEstimate", "tileWidthPx", "processRequest"):
        assert v1_only not in body


def test_analyse_start_done_with_progress_cost_and_outputs(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(2, v2_payload(CORSICA_BBOX))["id"]
    assert api.action(2, jid, "analyse").status_code == 204
    assert api.job(2, jid)["status"] == "ANALYSING"
    emu.advance(100)
    assert api.job(2, jid)["status"] == "ANALYSIS_DONE"
    assert (emu.data_dir / "my-bucket" / "v2" / f"featureManifest-{jid}.gpkg").exists()
    request_copy = (emu.data_dir / "my-bucket" / "v2" / f"request-{jid}.json").read_text()
    assert '"url": "s3://my-bucket/v2/<tileName>/<outputId>.tiff"' in request_copy
    assert "secretAccessKey" not in request_copy and "accessKey" not in request_copy  # no credential on disk
    response = api.action(2, jid, "analyse")
    assert response.status_code == 400
    assert response.json()["error"]["message"] == (
        "Illegal to change userAction from ANALYSE to ANALYSE with task status ANALYSIS_DONE"
    )

    assert api.action(2, jid, "start").status_code == 204
    progress: list[float] = []
    costs: list[float] = []
    statuses: list[str] = []
    for _ in range(100):
        body = api.job(2, jid)
        assert body["status"] in V2_STATUSES
        if not statuses or statuses[-1] != body["status"]:
            statuses.append(body["status"])
        progress.append(body["completionPercentage"])
        costs.append(body["costPU"])
        if body["status"] == "DONE":
            break
        emu.advance(15)
    assert statuses == ["ANALYSIS_DONE", "PROCESSING", "DONE"]
    assert progress == sorted(progress)
    assert progress[-1] == 100
    assert any(0 < p < 100 for p in progress)
    assert costs == sorted(costs)
    assert costs[-1] > 0
    db = emu.data_dir / "my-bucket" / "v2" / f"execution-{jid}.sqlite"
    rows = sqlite3.connect(db).execute("SELECT id, name, status, error, delivered FROM features").fetchall()
    assert len(rows) >= 60
    assert {r[2] for r in rows} == {"DONE"}
    assert all(r[4] == 1 for r in rows)
    assert len(list(emu.data_dir.glob("my-bucket/v2/*/default.tiff"))) == len(rows)


def test_stop_right_after_start_in_created_is_illegal(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(2)["id"]
    response = api.action(2, jid, "stop")
    assert response.status_code == 400
    assert (
        response.json()["error"]["message"]
        == "Illegal to change userAction from NONE to STOP with task status CREATED"
    )
    api.action(2, jid, "start")
    body = api.job(2, jid)
    assert (body["status"], body["userAction"]) == ("CREATED", "START")  # status lags the START
    response = api.action(2, jid, "stop")
    assert response.status_code == 400
    assert response.json() == {
        "error": {
            "status": 400,
            "reason": "Bad Request",
            "message": "Illegal to change userAction from START to STOP with task status CREATED",
            "code": "COMMON_BAD_PAYLOAD",
        }
    }
    emu.advance(10)
    assert api.job(2, jid)["status"] == "ANALYSING"


def test_stop_in_processing_then_restart_block(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(2, v2_payload(CORSICA_BBOX))["id"]
    api.action(2, jid, "start")
    emu.advance(200)
    body = api.job(2, jid)
    assert body["status"] == "PROCESSING"
    assert 0 < body["completionPercentage"] < 100
    assert api.action(2, jid, "stop").status_code == 204
    stopped = api.job(2, jid)
    assert stopped["status"] == "STOPPED"
    assert stopped["stoppedStatusReason"] == "USER_ACTION"
    assert stopped["userAction"] == "STOP"
    emu.advance(600)
    later = api.job(2, jid)
    assert later["status"] == "STOPPED"
    assert later["completionPercentage"] <= stopped["completionPercentage"] + 15  # only running tiles finish

    response = api.action(2, jid, "start")
    assert response.status_code == 400
    assert "30 minutes" in response.json()["error"]["message"]
    emu.advance(1800)
    assert api.action(2, jid, "start").status_code == 204
    body = api.job(2, jid)
    assert body["status"] == "ANALYSIS_DONE"
    assert "stoppedStatusReason" not in body
    emu.advance(2000)
    done = api.job(2, jid)
    assert done["status"] == "DONE"
    assert done["costPU"] >= later["costPU"]


def test_stop_during_analysis_lets_analysis_finish(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(2)["id"]
    api.action(2, jid, "analyse")
    assert api.action(2, jid, "stop").status_code == 204
    assert api.job(2, jid)["status"] == "ANALYSING"
    emu.advance(100)
    body = api.job(2, jid)
    assert body["status"] == "STOPPED"
    assert body["stoppedStatusReason"] == "USER_ACTION"


def test_out_of_pu(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    emu.state.set_pu_budget(1500)
    payload = v2_payload(CORSICA_BBOX)
    payload["input"]["resolution"] = 10.0  # ~100 PU per tile after the batch discount
    jid = api.create(2, payload)["id"]
    api.action(2, jid, "start")
    emu.advance(5000)
    body = api.job(2, jid)
    assert body["status"] == "STOPPED"
    assert body["stoppedStatusReason"] == "OUT_OF_PU"
    assert 1400 < body["costPU"] < 1700
    assert body["completionPercentage"] < 50
    emu.advance(1800)
    response = api.action(2, jid, "start")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "COMMON_INSUFFICIENT_PERMISSIONS"
    refused = api.post(V2, json=v2_payload())
    assert refused.status_code == 403
    emu.state.set_pu_budget(1_000_000)
    assert api.action(2, jid, "start").status_code == 204
    emu.advance(5000)
    assert api.job(2, jid)["status"] == "DONE"


def test_failed_features_recorded_as_fatal(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(2, v2_payload(CORSICA_BBOX), headers={"X-Emulator-Tile-Failure-Rate": "0.25"})["id"]
    api.action(2, jid, "start")
    emu.advance(3000)
    body = api.job(2, jid)
    assert body["status"] == "DONE"  # v2 has no PARTIAL
    db = emu.data_dir / "my-bucket" / "v2" / f"execution-{jid}.sqlite"
    rows = sqlite3.connect(db).execute("SELECT status, error, delivered FROM features").fetchall()
    fatal = [r for r in rows if r[0] == "FATAL"]
    assert len(fatal) == round(0.25 * len(rows))
    assert all(r[1] and r[2] == 0 for r in fatal)


def test_all_features_failing_gives_failed(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(2, headers={"X-Emulator-Tile-Failure-Rate": "1.0"})["id"]
    api.action(2, jid, "start")
    emu.advance(3000)
    body = api.job(2, jid)
    assert body["status"] == "FAILED"
    assert body["error"]


def test_put_delete_and_missing_v1_endpoints(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(2)["id"]
    response = api.put(f"{V2}/{jid}", json={"description": "renamed"})
    assert response.status_code == 200
    assert response.json()["request"]["description"] == "renamed"
    assert api.get(V2, params={"search": "renamed"}).json()["data"][0]["id"] == jid
    bad = api.put(f"{V2}/{jid}", json={"input": {}})
    assert bad.status_code == 400
    assert bad.json()["error"]["errors"] == [
        {"parameter": "input", "violation": "cannot be updated; updatable fields: description"}
    ]
    api.action(2, jid, "start")
    emu.advance(70)
    assert api.job(2, jid)["status"] == "PROCESSING"
    assert api.put(f"{V2}/{jid}", json={"description": "x"}).status_code == 409
    delete = api.delete(f"{V2}/{jid}")
    assert delete.status_code == 405
    assert delete.json()["error"]["code"] == "COMMON_METHOD_NOT_ALLOWED"
    for action in ("cancel", "restartpartial", "tiles"):
        assert api.request("GET" if action == "tiles" else "POST", f"{V2}/{jid}/{action}").status_code == 404


def test_real_time_run_to_done(api: Api) -> None:
    """No clock tricks: at the fixture's time scale a small task finishes in well under a second."""
    jid = api.create(2)["id"]
    api.action(2, jid, "start")
    body, seen = api.wait(2, jid, {"DONE", "FAILED", "STOPPED"}, timeout=5)
    assert body["status"] == "DONE"
    assert set(seen) <= V2_STATUSES
