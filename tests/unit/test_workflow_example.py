"""Sentinel Hub's Batch Processing workflow example (v1, Corsica max NDVI): its calls, in its order, through the
Hook (requests-mock), with its exact payload."""

from __future__ import annotations

import re

import pytest

from tests.payloads import EVALSCRIPT, PUBLISHED_EVALSCRIPT_FLAT, corsica_v1

from .conftest import GRIDS

URL = "https://services.sentinel-hub.com/api/v1/batch/process"
RID = "9a1c64bc-7b4c-4b7a-9a5b-1c2d3e4f5a6b"


def _squash(text: str) -> str:
    return re.sub(r"\s+", "", text)


def test_evalscript_is_the_published_one():
    assert _squash(EVALSCRIPT) == _squash(PUBLISHED_EVALSCRIPT_FLAT)


def test_published_calls_in_order(hook, requests_mock):
    requests_mock.get("https://services.sentinel-hub.com/api/v1/batch/tilinggrids", json=GRIDS)
    created = {
        "id": RID,
        "status": "CREATED",
        "tileCount": 72,
        "processRequest": corsica_v1("my-bucket")["processRequest"],
    }
    create = requests_mock.post(URL, status_code=201, json=created)
    listing = requests_mock.get(URL, json={"data": [created], "links": {}})
    analysed = {**created, "status": "ANALYSIS_DONE", "userAction": "ANALYSE", "valueEstimate": 1234.5}
    started = {**created, "status": "PROCESSING", "userAction": "START"}
    canceled = {**created, "status": "CANCELED", "userAction": "CANCEL"}
    get = requests_mock.get(
        f"{URL}/{RID}", [{"json": created}, {"json": analysed}, {"json": started}, {"json": canceled}]
    )
    analyse = requests_mock.post(f"{URL}/{RID}/analyse", status_code=204)
    tiles = requests_mock.get(
        f"{URL}/{RID}/tiles", json={"data": [{"id": 1, "status": "PENDING"}], "links": {}}
    )
    start = requests_mock.post(f"{URL}/{RID}/start", status_code=204)
    cancel = requests_mock.post(f"{URL}/{RID}/cancel", status_code=204)

    # 1. create (the exact published payload)
    batch_request_id = hook.create_request(corsica_v1("my-bucket"))["id"]
    assert batch_request_id == RID
    assert create.last_request.json() == corsica_v1("my-bucket")
    assert create.last_request.headers["Content-Type"] == "application/json"
    # 2. all requests, 3. one request, 4. its status
    assert [r["id"] for r in hook.list_requests()] == [RID]
    assert hook.get_request(RID)["status"] == "CREATED"
    # 5. analyse (204)
    hook.analyse(RID)
    assert hook.get_status(RID) == "ANALYSIS_DONE"
    # 6. tiles
    assert hook.list_tiles(RID) == [{"id": 1, "status": "PENDING"}]
    # 7. start, 8. latest user action
    hook.start(RID)
    assert hook.get_user_action(RID) == "START"
    # 9. cancel
    hook.cancel(RID)
    assert hook.get_status(RID) == "CANCELED"
    assert [c.call_count for c in (create, listing, analyse, tiles, start, cancel)] == [1, 1, 1, 1, 1, 1]
    assert get.call_count == 4
    order = [(r.method, r.path) for r in requests_mock.request_history if "/process" in r.path]
    assert order[0] == ("POST", "/api/v1/batch/process")
    assert order[-1] == ("GET", f"/api/v1/batch/process/{RID}")


@pytest.mark.parametrize("bucket", ["<MyBucket>", "my-bucket"])
def test_published_payload_passes_local_validation(hook, requests_mock, bucket):
    requests_mock.get("https://services.sentinel-hub.com/api/v1/batch/tilinggrids", json=GRIDS)
    hook.validate_payload(corsica_v1(bucket))
