"""Helpers for the emulator tests: an authenticated client, payloads, clock control."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from airflow_provider_sentinel_batch.emulator import EmulatorServer

# The seed document's evalscript, verbatim (max NDVI over Corsica).
CORSICA_EVALSCRIPT = """//VERSION=3
function setup() {
  return {
    input: [{bands: ["B04", "B08"]}],
    output: [{id: "default", bands: 3}],
    mosaicking: Mosaicking.ORBIT
  }
}
function calcNDVI(sample) {
  var denom = sample.B04 + sample.B08
  return ((denom != 0) ? (sample.B08 - sample.B04) / denom : 0.0)
}
const maxNDVIcolors = [[-0.2, 0xbfbfbf],[0, 0xebebeb],[0.1, 0xc8c682],
  [0.2, 0x91bf52],[0.4, 0x4f8a2e],[0.6, 0x0f540c]]
const visualizer = new ColorRampVisualizer(maxNDVIcolors);
function evaluatePixel(samples) {
  var max = 0
  for (var i = 0; i < samples.length; i++) {
    var ndvi = calcNDVI(samples[i])
    max = ndvi > max ? ndvi : max
  }
  ndvi = max
  return visualizer.process(ndvi)
}
"""

CORSICA_BBOX = [8.44, 41.31, 9.66, 43.1]
SMALL_BBOX = [9.0, 42.0, 9.1, 42.1]  # 1-4 tiles on grid 0: quick jobs
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"


def process_request(bbox: list[float] | None = None, data_type: str = "sentinel-2-l2a") -> dict[str, Any]:
    return {
        "input": {
            "bounds": {"bbox": bbox or SMALL_BBOX, "properties": {"crs": CRS84}},
            "data": [
                {
                    "type": data_type,
                    "dataFilter": {
                        "timeRange": {"from": "2019-04-01T00:00:00Z", "to": "2019-06-30T00:00:00Z"},
                        "maxCloudCoverage": 70.0,
                    },
                }
            ],
        },
        "output": {"responses": [{"identifier": "default", "format": {"type": "image/tiff"}}]},
        "evalscript": CORSICA_EVALSCRIPT,
    }


def v1_payload(bbox: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "processRequest": process_request(bbox),
        "tilingGrid": {"id": 0, "resolution": 60.0},
        "bucketName": "my-bucket",
        "description": "emulator test",
    }
    payload.update(extra)
    return payload


def v2_payload(bbox: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "processRequest": process_request(bbox),
        "input": {"type": "tiling-grid", "id": 0, "resolution": 60.0},
        "output": {
            "type": "raster",
            "delivery": {
                "s3": {
                    "url": "s3://my-bucket/v2/<tileName>/<outputId>.tiff",
                    "accessKey": "a",
                    "secretAccessKey": "b",
                }
            },
        },
        "instanceType": "normal",
        "description": "emulator test v2",
    }
    payload.update(extra)
    return payload


class Api:
    """A bearer-authenticated ``requests`` session against one emulator."""

    def __init__(self, server: EmulatorServer) -> None:
        self.server = server
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {server.access_token()}"

    def url(self, path: str) -> str:
        return path if path.startswith("http") else self.server.base_url + path

    def request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        kwargs.setdefault("timeout", 10)
        return self.session.request(method, self.url(path), **kwargs)

    def get(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("POST", path, **kwargs)

    def put(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("PUT", path, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> requests.Response:
        return self.request("DELETE", path, **kwargs)

    def create(self, api: int, payload: dict[str, Any] | None = None, **kwargs: Any) -> dict[str, Any]:
        body = payload if payload is not None else (v1_payload() if api == 1 else v2_payload())
        response = self.post(f"/api/v{api}/batch/process", json=body, **kwargs)
        assert response.status_code == 201, response.text
        return response.json()

    def job(self, api: int, job_id: str) -> dict[str, Any]:
        response = self.get(f"/api/v{api}/batch/process/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def action(self, api: int, job_id: str, action: str) -> requests.Response:
        return self.post(f"/api/v{api}/batch/process/{job_id}/{action}")

    def wait(
        self, api: int, job_id: str, until: Callable[[dict[str, Any]], bool] | set[str], timeout: float = 10.0
    ) -> tuple[dict[str, Any], list[str]]:
        """Poll until ``until`` holds (or the status is in the set); returns the body and statuses seen."""
        check = until if callable(until) else (lambda b: b["status"] in until)  # type: ignore[operator]
        seen: list[str] = []
        deadline = time.monotonic() + timeout
        while True:
            body = self.job(api, job_id)
            if not seen or seen[-1] != body["status"]:
                seen.append(body["status"])
            if check(body):
                return body, seen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out; statuses seen: {seen}; last body: {body}")
            time.sleep(0.005)


def freeze(server: EmulatorServer) -> None:
    """Nearly stop the emulated clock so tests move it with ``server.advance`` only (fully deterministic)."""
    server.state.set_time_scale(1e-6)
