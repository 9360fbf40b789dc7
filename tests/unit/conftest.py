from __future__ import annotations

import json

import pytest

from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
from airflow_provider_sentinel_batch.retry import RetryPolicy

BASE = "https://services.sentinel-hub.com"
TOKEN_URL = "https://services.sentinel-hub.com/auth/realms/main/protocol/openid-connect/token"
SECRET = "canary-secret-d3adb33f"
CLIENT_ID = "my-client"

GRIDS = {
    "data": [
        {
            "id": 0,
            "name": "20km grid",
            "properties": {
                "tileWidth": 20040.0,
                "tileHeight": 20040.0,
                "resolutions": [10.0, 20.0, 60.0],
                "unit": "METRE",
            },
        },
        {
            "id": 1,
            "name": "10km grid",
            "properties": {
                "tileWidth": 10000.0,
                "tileHeight": 10000.0,
                "resolutions": [10.0, 20.0],
                "unit": "METRE",
            },
        },
        {
            "id": 6,
            "name": "LAEA 100km grid",
            "properties": {"resolutions": [40.0, 50.0, 100.0], "unit": "METRE"},
        },
    ],
    "links": {},
}


class FakeSleep:
    """Records requested waits instead of sleeping."""

    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(seconds)


@pytest.fixture
def conn_env(monkeypatch):
    def set_conn(api_version: str = "v1", deployment: str = "sentinel-hub-eu", **extra):
        value = {
            "conn_type": "sentinel_batch",
            "login": CLIENT_ID,
            "password": SECRET,
            "extra": {"deployment": deployment, "api_version": api_version, **extra},
        }
        monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", json.dumps(value))

    set_conn()
    return set_conn


@pytest.fixture
def token_mock(requests_mock):
    return requests_mock.post(
        TOKEN_URL, json={"access_token": "tok-1", "expires_in": 3600, "token_type": "Bearer"}
    )


@pytest.fixture
def fast_policy():
    return RetryPolicy(max_attempts=4, max_rate_limited=5, default_retry_after=7.0, not_found_grace=60.0)


@pytest.fixture
def hook(conn_env, token_mock, fast_policy):
    h = SentinelBatchHook(retry_policy=fast_policy)
    h._sleep = FakeSleep()
    return h
