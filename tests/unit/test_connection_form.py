"""The connection form and the Test button: labelled presets, visible preset URLs, and answers that say exactly
what was tested, quickly, in plain words."""

from __future__ import annotations

import json
import socket
import time
from importlib import metadata

import pytest

from airflow_provider_sentinel_batch import get_provider_info as info_module
from airflow_provider_sentinel_batch.deployments import DEPLOYMENT_NAMES, DEPLOYMENTS
from airflow_provider_sentinel_batch.hooks import sentinel_batch
from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook

from .conftest import BASE, GRIDS, TOKEN_URL

V1 = f"{BASE}/api/v1/batch"


def conn_fields() -> dict:
    (entry,) = info_module.get_provider_info()["connection-types"]
    return entry["conn-fields"]


def set_conn(monkeypatch, conn_id: str = "sentinel_batch_default", **extra) -> None:
    value = {"conn_type": "sentinel_batch", "login": "client-1", "password": "a-secret-value", "extra": extra}
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))


# ------------------------------------------------------------------------------------------------ form
def test_deployments_are_offered_with_labels_for_every_preset():
    schema = conn_fields()["deployment"]["schema"]
    assert schema["enum"] == list(DEPLOYMENT_NAMES)
    assert set(schema["values_display"]) == set(DEPLOYMENT_NAMES)
    for name, dep in DEPLOYMENTS.items():
        label = schema["values_display"][name]
        assert label.startswith(dep.label) and dep.base_url.removeprefix("https://") in label


def test_the_form_shows_the_preset_urls():
    description = conn_fields()["deployment"]["description"]
    for dep in DEPLOYMENTS.values():
        assert dep.base_url in description and dep.token_url in description


def test_api_version_may_stay_empty():
    schema = conn_fields()["api_version"]["schema"]
    assert "default" not in schema and None in schema["enum"] and "null" in schema["type"]


# ------------------------------------------------------------------------------------- Test button
def test_message_names_the_preset(conn_env, requests_mock):
    requests_mock.post(TOKEN_URL, json={"access_token": "t", "expires_in": 600})
    requests_mock.get(f"{V1}/tilinggrids", json=GRIDS)
    ok, message = SentinelBatchHook().test_connection()
    assert ok, message
    assert message.startswith(
        f"Connected to Sentinel Hub EU ({BASE}), Batch v1: token issued, 3 tiling grids"
    )


def test_message_says_when_the_urls_override_the_preset(monkeypatch, requests_mock):
    base = "http://127.0.0.1:8787"
    set_conn(monkeypatch, deployment="sentinel-hub-eu", base_url=base, auth_url=f"{base}/token")
    requests_mock.post(f"{base}/token", json={"access_token": "t", "expires_in": 600})
    requests_mock.get(f"{base}/api/v2/batch/tilinggrids", json=GRIDS)
    ok, message = SentinelBatchHook().test_connection()
    assert ok, message
    assert message.startswith(
        f"Connected to {base} (token URL {base}/token; overrides the Sentinel Hub EU preset), Batch v2"
    )


def test_custom_without_urls_does_not_name_the_random_test_id(monkeypatch):
    set_conn(monkeypatch, "x7kq2mzt", deployment="custom")  # the UI tests an unsaved form under a random id
    ok, message = SentinelBatchHook(sentinel_batch_conn_id="x7kq2mzt").test_connection()
    assert not ok
    assert message == (
        "this connection: deployment 'custom' needs both 'base_url' and 'auth_url' (the OAuth2 token URL) in the "
        "connection extra."
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_host_is_a_quick_plain_answer(monkeypatch):
    base = f"http://127.0.0.1:{_closed_port()}"
    set_conn(monkeypatch, deployment="custom", base_url=base, auth_url=f"{base}/token")
    started = time.monotonic()
    ok, message = SentinelBatchHook().test_connection()
    assert not ok and time.monotonic() - started < 3
    assert message == (
        f"Could not reach Sentinel Hub at POST {base}/token: connection refused (nothing answers at that host "
        "and port)."
    )


def test_silent_host_is_bounded_by_the_test_timeout(monkeypatch):
    monkeypatch.setattr(sentinel_batch, "TEST_CONNECTION_TIMEOUT", 1.0)
    with socket.socket() as listener:  # accepts connections (kernel backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        base = f"http://127.0.0.1:{listener.getsockname()[1]}"
        set_conn(monkeypatch, deployment="custom", base_url=base, auth_url=f"{base}/token")
        started = time.monotonic()
        ok, message = SentinelBatchHook().test_connection()
        elapsed = time.monotonic() - started
    assert not ok and elapsed < 3, (elapsed, message)
    assert message == f"Could not reach Sentinel Hub at POST {base}/token: no answer in time (timed out)."


def test_one_try_only(conn_env, requests_mock):
    token = requests_mock.post(TOKEN_URL, status_code=503, text="down")
    ok, message = SentinelBatchHook().test_connection()
    assert not ok and "HTTP 503" in message and token.call_count == 1


# ------------------------------------------------------------------------------------ Providers page
def test_the_distribution_declares_its_documentation_url():
    urls = dict(
        entry.split(",", 1)
        for entry in metadata.distribution("airflow-provider-sentinel-batch").metadata.get_all("Project-URL")
        or []
    )
    assert urls.get("Documentation", "").strip().startswith("https://"), urls


def test_airflow_reads_the_documentation_url():
    discovery = pytest.importorskip("airflow._shared.providers_discovery.providers_discovery")
    from airflow.providers_manager import ProvidersManager

    assert discovery  # Airflow 3.2+: the Providers page links this URL (2.11 builds its own link)
    provider = ProvidersManager().providers["airflow-provider-sentinel-batch"]
    assert str(provider.data.get("documentation-url", "")).startswith("https://")
