"""Helpers for the emulator tests: an authenticated client, payloads, clock control."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import requests

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from tests.payloads import CORSICA_BBOX, SMALL_BBOX, corsica_v1, corsica_v2, process_request

__all__ = ["CORSICA_BBOX", "SMALL_BBOX", "Api", "freeze", "process_request", "v1_payload", "v2_payload"]


def v1_payload(bbox: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    """A quick v1 job (``SMALL_BBOX`` unless ``bbox``), top-level fields replaced by ``extra``."""
    payload = corsica_v1(
        "my-bucket", description="emulator test", bbox=bbox or SMALL_BBOX, data_type="sentinel-2-l2a"
    )
    return {**payload, **extra}


def v2_payload(bbox: list[float] | None = None, **extra: Any) -> dict[str, Any]:
    """A quick v2 job delivering per tile (with bucket keys), top-level fields replaced by ``extra``."""
    payload = corsica_v2(
        "s3://my-bucket/v2/<tileName>/<outputId>.tiff",
        delivery={"accessKey": "a", "secretAccessKey": "b"},
        description="emulator test v2",
        bbox=bbox or SMALL_BBOX,
        data_type="sentinel-2-l2a",
    )
    return {**payload, "instanceType": "normal", **extra}


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
