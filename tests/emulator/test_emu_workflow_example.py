"""Sentinel Hub's Batch Processing workflow example (v1, Corsica max NDVI), call by call as published, with
requests-oauthlib against the emulator (only the host differs)."""

from __future__ import annotations

import pytest
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.payloads import EVALSCRIPT, corsica_v1


def test_published_workflow_call_by_call(emu: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    host = emu.base_url  # stands for https://services.sentinel-hub.com

    # "create an OAuth client ... It is named oauth in these examples"
    client = BackendApplicationClient(client_id=emu.client_id)
    oauth = OAuth2Session(client=client)
    oauth.fetch_token(token_url=emu.token_url, client_secret=emu.client_secret, include_client_id=True)

    # Create a batch processing request
    url = f"{host}/api/v1/batch/process"
    payload = corsica_v1(
        "<MyBucket>"
    )  # the published body; its evalscript is dags_examples/include/max_ndvi.js
    headers = {"Content-Type": "application/json"}
    response = oauth.request("POST", url, headers=headers, json=payload)
    assert response.status_code == 201
    response.json()

    # Extracting the batch request id from the response
    batch_request_id = response.json()["id"]

    # Get information about all your batch processing requests
    url = f"{host}/api/v1/batch/process"
    response = oauth.request("GET", url)
    assert [r["id"] for r in response.json()["data"]] == [batch_request_id]

    # Get information about a batch processing request
    url = f"{host}/api/v1/batch/process/{batch_request_id}"
    response = oauth.request("GET", url)
    assert response.json()["description"] == "Max NDVI over Corsica"

    # Get current status of a batch processing request
    url = f"{host}/api/v1/batch/process/{batch_request_id}"
    response = oauth.request("GET", url)
    assert response.json()["status"] == "CREATED"

    # Request detailed analysis (ANALYSE)
    url = f"{host}/api/v1/batch/process/{batch_request_id}/analyse"
    response = oauth.request("POST", url)
    assert response.status_code == 204

    # Get tiles for a batch processing request (optional): there are tiles once the analysis is done
    emu.advance(120)
    url = f"{host}/api/v1/batch/process/{batch_request_id}/tiles"
    response = oauth.request("GET", url)
    tiles = response.json()["data"]
    assert 60 <= len(tiles) <= 80

    # Request the start of processing (START)
    url = f"{host}/api/v1/batch/process/{batch_request_id}/start"
    response = oauth.request("POST", url)
    assert response.status_code == 204

    # Get the latest user's action for a batch processing request
    url = f"{host}/api/v1/batch/process/{batch_request_id}"
    response = oauth.request("GET", url)
    assert response.json()["userAction"] == "START"

    # Cancel a batch processing request (CANCEL)
    url = f"{host}/api/v1/batch/process/{batch_request_id}/cancel"
    response = oauth.request("POST", url)
    assert response.status_code == 204
    assert (
        oauth.request("GET", f"{host}/api/v1/batch/process/{batch_request_id}").json()["status"] == "CANCELED"
    )


def test_evalscript_without_newlines_is_accepted(
    emu: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The published page lost the evalscript's newlines; such a payload is still a valid create (the JS is not
    executed)."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    oauth = OAuth2Session(client=BackendApplicationClient(client_id=emu.client_id))
    oauth.fetch_token(token_url=emu.token_url, client_secret=emu.client_secret, include_client_id=True)
    flat = " ".join(line.strip() for line in EVALSCRIPT.splitlines())
    payload = {
        "processRequest": {
            "input": {"bounds": {"bbox": [8.44, 41.31, 9.66, 43.1]}, "data": [{"type": "S2L2A"}]},
            "evalscript": flat,
        },
        "tilingGrid": {"id": 0, "resolution": 60.0},
        "bucketName": "<MyBucket>",
    }
    response = oauth.request("POST", f"{emu.base_url}/api/v1/batch/process", json=payload)
    assert response.status_code == 201
