"""The seed document's calls, verbatim, with requests-oauthlib against the emulator (only the host differs)."""

from __future__ import annotations

import pytest
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.emulator.helpers import CORSICA_EVALSCRIPT


def test_seed_workflow_verbatim(emu: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback
    host = emu.base_url  # stands for https://services.sentinel-hub.com

    # "create an OAuth client ... It is named oauth in these examples"
    client = BackendApplicationClient(client_id=emu.client_id)
    oauth = OAuth2Session(client=client)
    oauth.fetch_token(token_url=emu.token_url, client_secret=emu.client_secret, include_client_id=True)

    # Create a batch processing request
    url = f"{host}/api/v1/batch/process"
    evalscript = CORSICA_EVALSCRIPT
    payload = {
        "processRequest": {
            "input": {
                "bounds": {
                    "bbox": [8.44, 41.31, 9.66, 43.1],
                    "properties": {"crs": "http://www.opengis.net/def/crs/OGC/1.3/CRS84"},
                },
                "data": [
                    {
                        "dataFilter": {
                            "timeRange": {"from": "2019-04-01T00:00:00Z", "to": "2019-06-30T00:00:00Z"},
                            "maxCloudCoverage": 70.0,
                        },
                        "type": "S2L2A",
                    }
                ],
            },
            "output": {"responses": [{"identifier": "default", "format": {"type": "image/tiff"}}]},
            "evalscript": evalscript,
        },
        "tilingGrid": {"id": 0, "resolution": 60.0},
        "bucketName": "<MyBucket>",
        "description": "Max NDVI over Corsica",
    }
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


def test_seed_evalscript_as_printed_is_accepted(emu: EmulatorServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The seed text lost its newlines; the payload is still a valid create (the JS is not executed)."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    oauth = OAuth2Session(client=BackendApplicationClient(client_id=emu.client_id))
    oauth.fetch_token(token_url=emu.token_url, client_secret=emu.client_secret, include_client_id=True)
    flat = " ".join(line.strip() for line in CORSICA_EVALSCRIPT.splitlines())
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
