"""Every fault demonstrably changes behaviour, is deterministic with the seed and spares ``/_emulator``."""

from __future__ import annotations

import time

import pytest
import requests

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.emulator.helpers import Api

GRIDS = "/api/v1/batch/tilinggrids"


def _statuses(api: Api, n: int, path: str = GRIDS) -> list[int]:
    return [api.get(path).status_code for _ in range(n)]


def test_429_with_retry_after_in_ms(api: Api, emu: EmulatorServer) -> None:
    emu.set_faults(rate_429=1.0, retry_after_ms=1234)
    response = api.get(GRIDS)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1234"
    assert response.json() == {
        "error": {
            "status": 429,
            "reason": "Too Many Requests",
            "message": "You have exceeded your rate limit",
            "code": "RATE_LIMIT_EXCEEDED",
        }
    }
    emu.set_faults(no_retry_after=True)
    assert "Retry-After" not in api.get(GRIDS).headers
    stats = requests.get(emu.base_url + "/_emulator/stats", timeout=5)  # the control plane is never faulted
    assert stats.status_code == 200
    assert stats.json()["faults_injected"]["429"] == 2


def test_partial_rate_is_deterministic_with_the_seed(api: Api, emu: EmulatorServer) -> None:
    emu.set_faults(rate_429=0.5)
    first = _statuses(api, 40)
    assert 8 < first.count(429) < 32
    assert set(first) == {200, 429}
    emu.reset()  # reseeds the fault generators
    api = Api(emu)
    emu.set_faults(rate_429=0.5)
    assert _statuses(api, 40) == first


def test_5xx_bursts(api: Api, emu: EmulatorServer) -> None:
    emu.set_faults(rate_5xx=0.1, burst_5xx=4)
    statuses = _statuses(api, 60)
    runs: list[int] = []
    count = 0
    for s in [*statuses, 200]:
        if s == 503:
            count += 1
        elif count:
            runs.append(count)
            count = 0
    assert runs
    assert all(r >= 4 for r in runs[:-1] or runs)
    assert api.get(GRIDS).status_code in {200, 503}
    emu.clear_faults()
    emu.set_faults(rate_5xx=1.0, status_5xx=500)
    response = api.get(GRIDS)
    assert response.status_code == 500
    assert response.json()["error"]["code"] == "COMMON_EXCEPTION"


def test_dropped_connections(api: Api, emu: EmulatorServer) -> None:
    emu.set_faults(drop_rate=1.0)
    with pytest.raises(requests.ConnectionError):
        requests.get(emu.base_url + GRIDS, headers=api.session.headers, timeout=5)
    with pytest.raises(requests.ConnectionError):
        requests.post(emu.token_url, data={"grant_type": "client_credentials"}, timeout=5)
    emu.clear_faults()
    assert requests.get(emu.base_url + GRIDS, headers=api.session.headers, timeout=5).status_code == 200
    assert emu.stats()["faults_injected"]["drop"] == 2


def test_404_window_after_create(api: Api, emu: EmulatorServer) -> None:
    emu.set_faults(not_found_after_create=0.4)
    jid = api.create(1)["id"]
    response = api.get(f"/api/v1/batch/process/{jid}")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "COMMON_NOT_FOUND"
    assert api.action(1, jid, "analyse").status_code == 404
    assert api.get("/api/v1/batch/process").json()["data"] == []
    time.sleep(0.45)
    assert api.get(f"/api/v1/batch/process/{jid}").status_code == 200
    assert emu.stats()["faults_injected"]["404_after_create"] == 2


def test_token_endpoint_faults_and_short_lifetime(emu: EmulatorServer) -> None:
    form = {
        "grant_type": "client_credentials",
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
    }
    emu.set_faults(token_429_rate=1.0, retry_after_ms=700)
    limited = requests.post(emu.token_url, data=form, timeout=5)
    assert limited.status_code == 429
    assert limited.headers["Retry-After"] == "700"
    emu.set_faults(token_429_rate=0.0, token_5xx_rate=1.0)
    assert requests.post(emu.token_url, data=form, timeout=5).status_code == 503
    emu.set_faults(token_5xx_rate=0.0, token_lifetime=2.5)
    assert requests.post(emu.token_url, data=form, timeout=5).json()["expires_in"] == 2.5


def test_slow_responses(api: Api, emu: EmulatorServer) -> None:
    emu.set_faults(slow_ms=150)
    start = time.monotonic()
    assert api.get(GRIDS).status_code == 200
    assert time.monotonic() - start >= 0.15


def test_faults_via_control_plane(api: Api, emu: EmulatorServer) -> None:
    url = emu.base_url + "/_emulator/faults"
    current = requests.post(url, json={"rate_429": 1.0}, timeout=5).json()
    assert current["rate_429"] == 1.0
    assert api.get(GRIDS).status_code == 429
    assert requests.post(url, json={}, timeout=5).json()["rate_429"] == 0.0
    assert api.get(GRIDS).status_code == 200
    requests.post(url, json={"rate_5xx": 1.0}, timeout=5)
    assert requests.post(url, json={"clear": True, "slow_ms": 1}, timeout=5).json()["rate_5xx"] == 0.0
    bad = requests.post(url, json={"rate_429": 3}, timeout=5)
    assert bad.status_code == 400
    assert "rate_429" in bad.json()["error"]["message"]
    assert requests.post(url, json={"nope": 1}, timeout=5).status_code == 400


def test_create_delay_holds_the_job_back_until_the_answer(api: Api, emu: EmulatorServer) -> None:
    import threading

    from tests.payloads import corsica_v1

    emu.set_faults(create_delay_ms=400)
    payload = corsica_v1("bucket")
    answers: list[int] = []
    creating = threading.Thread(
        target=lambda: answers.append(api.post("/api/v1/batch/process", json=payload).status_code)
    )
    start = time.monotonic()
    creating.start()
    time.sleep(0.15)
    listed_meanwhile = api.get("/api/v1/batch/process").json()["data"]  # other calls are not held up
    assert time.monotonic() - start < 0.4
    creating.join(5)
    assert answers == [201] and time.monotonic() - start >= 0.4
    assert listed_meanwhile == [] and len(api.get("/api/v1/batch/process").json()["data"]) == 1
    assert emu.stats()["faults_injected"]["create_delay"] == 1
    with pytest.raises(ValueError, match="negative"):
        emu.set_faults(create_delay_ms=-1)


def test_create_answer_delay_lists_the_job_before_the_answer(api: Api, emu: EmulatorServer) -> None:
    import threading

    from tests.payloads import corsica_v1

    emu.set_faults(create_answer_delay_ms=600)
    answers: list[int] = []
    creating = threading.Thread(
        target=lambda: answers.append(
            api.post("/api/v1/batch/process", json=corsica_v1("bucket")).status_code
        )
    )
    start = time.monotonic()
    creating.start()
    time.sleep(0.3)
    listed_meanwhile = api.get("/api/v1/batch/process").json()["data"]  # accepted, not answered yet
    assert answers == [] and time.monotonic() - start < 0.6
    creating.join(5)
    assert answers == [201] and time.monotonic() - start >= 0.6
    assert len(listed_meanwhile) == 1
    assert emu.stats()["faults_injected"]["create_answer_delay"] == 1
    with pytest.raises(ValueError, match="negative"):
        emu.set_faults(create_answer_delay_ms=-1)
