"""The ``/_emulator`` control plane and the in-process ``EmulatorServer.state`` hooks."""

from __future__ import annotations

import requests

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from airflow_provider_sentinel_batch.emulator.config import DEFAULT_TIME_SCALE
from tests.emulator.helpers import CORSICA_BBOX, Api, freeze, v1_payload, v2_payload


def _control(emu: EmulatorServer, method: str, path: str, **kwargs: object) -> requests.Response:
    return requests.request(method, f"{emu.base_url}/_emulator{path}", timeout=5, **kwargs)  # type: ignore[arg-type]


def test_stats_count_calls_by_route_template(api: Api, emu: EmulatorServer) -> None:
    jid = api.create(1)["id"]
    api.job(1, jid)
    api.job(1, jid)
    api.action(1, jid, "analyse")
    requests.get(emu.base_url + "/api/v1/batch/process", timeout=5)  # 401, still counted
    stats = _control(emu, "GET", "/stats").json()
    assert stats["token_requests"] == 1
    assert stats["jobs_created"] == 1
    assert stats["calls"]["GET /api/v1/batch/process/{id}"] == 2
    assert stats["calls"]["POST /api/v1/batch/process"] == 1
    assert stats["calls"]["POST /api/v1/batch/process/{id}/analyse"] == 1
    assert stats["calls"]["GET /api/v1/batch/process"] == 1
    assert stats["calls"]["POST /auth/realms/main/protocol/openid-connect/token"] == 1
    assert stats["responses"]["401"] == 1
    assert stats["faults_injected"] == {}
    assert set(stats["jobs"]["v1"]) <= {"ANALYSING", "ANALYSIS_DONE"}
    assert sum(stats["jobs"]["v1"].values()) == 1
    assert not any(key.startswith("GET /_emulator") for key in stats["calls"])


def test_reset_forgets_jobs_and_stats(api: Api, emu: EmulatorServer) -> None:
    api.create(2)
    assert _control(emu, "POST", "/reset").json() == {"status": "reset"}
    assert emu.stats()["jobs_created"] == 0
    assert api.get("/api/v2/batch/process").json()["data"] == []  # the old token still works


def test_force_statuses(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(1, v1_payload(CORSICA_BBOX))["id"]
    forced = _control(emu, "POST", f"/jobs/{jid}/force", json={"status": "FAILED", "error": "boom"})
    assert forced.status_code == 200
    body = api.job(1, jid)
    assert (body["status"], body["error"]) == ("FAILED", "boom")

    jid = api.create(1)["id"]
    emu.state.force(jid, "PARTIAL")
    assert api.job(1, jid)["status"] == "PARTIAL"
    assert api.action(1, jid, "restartpartial").status_code == 204
    emu.advance(1000)
    assert api.job(1, jid)["status"] == "DONE"

    tid = api.create(2)["id"]
    _control(
        emu, "POST", f"/jobs/{tid}/force", json={"status": "STOPPED", "stoppedStatusReason": "UNHEALTHY"}
    )
    body = api.job(2, tid)
    assert (body["status"], body["stoppedStatusReason"]) == ("STOPPED", "UNHEALTHY")
    assert _control(emu, "POST", f"/jobs/{tid}/force", json={"status": "PARTIAL"}).status_code == 400
    assert _control(emu, "POST", "/jobs/nope/force", json={"status": "DONE"}).status_code == 404


def test_configure_job_and_next_jobs(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    jid = api.create(1, v1_payload(CORSICA_BBOX))["id"]
    configured = _control(emu, "POST", f"/jobs/{jid}/configure", json={"tile_failure_rate": 0.5})
    assert configured.status_code == 200
    api.action(1, jid, "start")
    emu.advance(3000)
    assert api.job(1, jid)["status"] == "PARTIAL"

    assert _control(emu, "POST", "/next-jobs", json={"count": 2, "analysis_error": "no data"}).json() == {
        "queued": 2
    }
    first, second, third = (api.create(2)["id"] for _ in range(3))
    for tid in (first, second, third):
        api.action(2, tid, "analyse")
    emu.advance(100)
    assert [api.job(2, t)["status"] for t in (first, second, third)] == ["FAILED", "FAILED", "ANALYSIS_DONE"]
    assert api.job(2, first)["error"] == "no data"
    detail = _control(emu, "GET", f"/jobs/{third}").json()
    assert detail["_emulator"]["tile_statuses"] == {"PENDING": len(emu.state.get_job(third).tiles)}


def test_clock_and_account_endpoints(api: Api, emu: EmulatorServer) -> None:
    before = emu.stats()["emulated_seconds"]
    after = _control(emu, "POST", "/advance", json={"seconds": 500}).json()["emulated_seconds"]
    assert after >= before + 500
    assert _control(emu, "POST", "/time-scale", json={"time_scale": 2.0}).json() == {"time_scale": 2.0}
    assert _control(emu, "POST", "/account", json={"pu_budget": 5000}).json()["pu_budget"] == 5000
    assert _control(emu, "GET", "/account").json() == {"pu_budget": 5000.0, "pu_spent": 0.0}
    assert _control(emu, "GET", "/health").json() == {"status": "ok"}
    assert [j["api"] for j in _control(emu, "GET", "/jobs").json()] == []
    api.create(2, v2_payload())
    assert [j["api"] for j in _control(emu, "GET", "/jobs").json()] == ["v2"]


def test_default_time_scale_runs_corsica_in_20_to_30_seconds(api: Api, emu: EmulatorServer) -> None:
    """The CLI default: the Corsica job (v1, grid 0, 60 m) goes from START to DONE in ~25 s of wall-clock time."""
    freeze(emu)
    jid = api.create(1, v1_payload(CORSICA_BBOX))["id"]
    api.action(1, jid, "start")
    emulated = 0.0
    while emu.state.job_status(jid) != "DONE":  # in-process: no HTTP round trip per emulated second
        emu.advance(1)
        emulated += 1
        assert emulated < 2000
    assert 20 <= emulated / DEFAULT_TIME_SCALE <= 30


def test_bulk_create_validates_once_and_starts(api: Api, emu: EmulatorServer) -> None:
    freeze(emu)
    files_before = set(emu.data_dir.rglob("*"))  # the session's emulator: other tests' files may be there
    body = {"api": "v2", "payload": v2_payload(), "count": 3, "action": "start", "write_outputs": False}
    ids = _control(emu, "POST", "/jobs/bulk", json=body).json()["ids"]
    assert len(set(ids)) == 3 and emu.stats()["jobs_created"] == 3
    for jid in ids:
        assert api.job(2, jid)["userAction"] == "START"
    emu.advance(10_000)
    assert {api.job(2, jid)["status"] for jid in ids} == {"DONE"}
    assert set(emu.data_dir.rglob("*")) == files_before  # write_outputs=False: no bucket files
    bad = _control(emu, "POST", "/jobs/bulk", json={"api": "v2", "payload": {"input": {}}, "count": 2})
    assert bad.status_code == 400 and emu.stats()["jobs_created"] == 3
    assert _control(emu, "POST", "/jobs/bulk", json={"api": "v3", "payload": {}}).status_code == 400
