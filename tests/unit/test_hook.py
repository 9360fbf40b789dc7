"""SentinelBatchHook against requests-mock: every endpoint, auth, retries, errors, pagination."""

from __future__ import annotations

import logging
import time
from functools import partial

import pytest

from airflow_provider_sentinel_batch.auth import TOKEN_CACHE
from airflow_provider_sentinel_batch.exceptions import (
    SentinelBatchAPIError,
    SentinelBatchAuthError,
    SentinelBatchConfigError,
    SentinelBatchNotFoundError,
    SentinelBatchValidationError,
)
from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
from airflow_provider_sentinel_batch.retry import RECENT_REQUESTS, RetryPolicy
from tests.payloads import corsica_v1, corsica_v2

from .conftest import BASE, CLIENT_ID, GRIDS, SECRET, TOKEN_URL, FakeSleep

V1 = f"{BASE}/api/v1/batch"
V2 = f"{BASE}/api/v2/batch"
RID = "5e1a2b3c-0000-4000-8000-000000000001"


v1_payload = partial(corsica_v1, "bucket", data_type="sentinel-2-l2a")
v2_payload = partial(corsica_v2, "s3://bucket/prefix", data_type="sentinel-2-l2a")


# ------------------------------------------------------------------------------------------- endpoints v1
@pytest.mark.parametrize(
    ("call", "method", "url", "status", "body"),
    [
        (lambda h: h.get_request(RID), "GET", f"{V1}/process/{RID}", 200, {"id": RID, "status": "CREATED"}),
        (lambda h: h.analyse(RID), "POST", f"{V1}/process/{RID}/analyse", 204, None),
        (lambda h: h.start(RID), "POST", f"{V1}/process/{RID}/start", 204, None),
        (lambda h: h.cancel(RID), "POST", f"{V1}/process/{RID}/cancel", 204, None),
        (lambda h: h.restart_partial(RID), "POST", f"{V1}/process/{RID}/restartpartial", 204, None),
        (lambda h: h.delete_request(RID), "DELETE", f"{V1}/process/{RID}", 204, None),
        (
            lambda h: h.get_tile(RID, 7),
            "GET",
            f"{V1}/process/{RID}/tiles/7",
            200,
            {"id": 7, "status": "PENDING"},
        ),
        (lambda h: h.get_tiling_grid(0), "GET", f"{V1}/tilinggrids/0", 200, GRIDS["data"][0]),
        (
            lambda h: h.update_request(RID, description="new", output={"collectionId": None}),
            "PUT",
            f"{V1}/process/{RID}",
            200,
            {"id": RID, "description": "new"},
        ),
    ],
)
def test_v1_endpoints(hook, requests_mock, call, method, url, status, body):
    kwargs = {"status_code": status}
    if body is not None:
        kwargs["json"] = body
    route = requests_mock.register_uri(method, url, **kwargs)
    result = call(hook)
    assert route.call_count == 1
    assert route.last_request.headers["Authorization"] == "Bearer tok-1"
    assert result == body


def test_update_sends_only_given_fields(hook, requests_mock):
    route = requests_mock.put(f"{V1}/process/{RID}", json={"id": RID})
    hook.update_request(RID, description="d")
    assert route.last_request.json() == {"description": "d"}
    with pytest.raises(SentinelBatchConfigError, match="description"):
        hook.update_request(RID)


def test_status_and_user_action(hook, requests_mock):
    requests_mock.get(f"{V1}/process/{RID}", json={"id": RID, "status": "ANALYSING", "userAction": "START"})
    assert hook.get_status(RID) == "ANALYSING"
    assert hook.get_user_action(RID) == "START"


def test_v1_create_validates_and_posts(hook, requests_mock):
    requests_mock.get(f"{V1}/tilinggrids", json=GRIDS)
    route = requests_mock.post(
        f"{V1}/process", status_code=201, json={"id": RID, "status": "CREATED", "tileCount": 3}
    )
    created = hook.create_request(v1_payload())
    assert created["id"] == RID
    assert route.last_request.json() == v1_payload()
    assert RECENT_REQUESTS.within(RID, 60)


def test_tiles_with_status_filter_paginated(hook, requests_mock):
    route = requests_mock.get(
        f"{V1}/process/{RID}/tiles",
        [
            {"json": {"data": [{"id": 1, "status": "FAILED"}], "links": {"nextToken": "p2"}}},
            {"json": {"data": [{"id": 2, "status": "FAILED"}], "links": {}}},
        ],
    )
    tiles = hook.list_tiles(RID, status="FAILED")
    assert [t["id"] for t in tiles] == [1, 2]
    assert route.request_history[0].qs == {"status": ["failed"]}
    assert route.request_history[1].qs == {"status": ["failed"], "viewtoken": ["p2"]}


# ------------------------------------------------------------------------------------------- endpoints v2
@pytest.mark.parametrize(
    ("call", "method", "url"),
    [
        (lambda h: h.analyse(RID), "POST", f"{V2}/process/{RID}/analyse"),
        (lambda h: h.start(RID), "POST", f"{V2}/process/{RID}/start"),
        (lambda h: h.stop(RID), "POST", f"{V2}/process/{RID}/stop"),
        (lambda h: h.stop_or_cancel(RID), "POST", f"{V2}/process/{RID}/stop"),
    ],
)
def test_v2_actions(conn_env, token_mock, requests_mock, call, method, url):
    conn_env(api_version="v2")
    route = requests_mock.register_uri(method, url, status_code=204)
    call(SentinelBatchHook())
    assert route.call_count == 1


def test_v2_crud_and_grids(conn_env, token_mock, requests_mock):
    conn_env(api_version="v2")
    hook = SentinelBatchHook()
    requests_mock.get(f"{V2}/tilinggrids", json=GRIDS)
    create = requests_mock.post(
        f"{V2}/process", status_code=201, json={"id": RID, "status": "CREATED", "request": {}}
    )
    get = requests_mock.get(f"{V2}/process/{RID}", json={"id": RID, "status": "PROCESSING", "costPU": 12.5})
    put = requests_mock.put(f"{V2}/process/{RID}", json={"id": RID, "description": "d"})
    requests_mock.get(f"{V2}/tilinggrids/6", json=GRIDS["data"][2])
    assert hook.create_request(v2_payload())["id"] == RID
    assert create.last_request.json()["input"]["type"] == "tiling-grid"
    assert hook.get_request(RID)["costPU"] == 12.5 and get.call_count == 1
    hook.update_request(RID, description="d")
    assert put.last_request.json() == {"description": "d"}
    with pytest.raises(SentinelBatchConfigError, match="only update 'description'"):
        hook.update_request(RID, output={"x": 1})
    assert [g["id"] for g in hook.list_tiling_grids()] == [0, 1, 6]
    assert hook.get_tiling_grid(6)["name"] == "LAEA 100km grid"


def test_explicit_api_version_overrides_connection(hook, requests_mock):
    route = requests_mock.get(f"{V2}/process/{RID}", json={"id": RID, "status": "DONE"})
    assert hook.get_status(RID, api_version="v2") == "DONE"
    assert route.call_count == 1
    assert SentinelBatchHook(api_version="v2").api_version == "v2"
    assert SentinelBatchHook(api_version="statistical").api_version == "statistical"
    with pytest.raises(SentinelBatchConfigError, match="'v1', 'v2' or 'statistical'"):
        SentinelBatchHook(api_version="v3")


# ------------------------------------------------------------------------------------------- pagination
def test_list_follows_next_token_and_search(hook, requests_mock):
    route = requests_mock.get(
        f"{V1}/process",
        [
            {"json": {"data": [{"id": "a"}, {"id": "b"}], "links": {"nextToken": "t2", "next": "ignored"}}},
            {"json": {"data": [{"id": "c"}], "links": {"nextToken": "t3"}}},
            {"json": {"data": [], "links": {}}},
        ],
    )
    ids = [r["id"] for r in hook.iter_requests(search="tag-1|tag-2", sort="created:desc", page_size=2)]
    assert ids == ["a", "b", "c"]
    assert route.call_count == 3
    assert route.request_history[0].qs == {
        "search": ["tag-1|tag-2"],
        "sort": ["created:desc"],
        "count": ["2"],
    }
    assert route.request_history[2].qs["viewtoken"] == ["t3"]


def test_list_follows_next_link_when_no_token(hook, requests_mock):
    requests_mock.get(
        f"{V1}/process", json={"data": [{"id": "a"}], "links": {"next": f"{V1}/process?page=2"}}
    )
    requests_mock.get(f"{V1}/process?page=2", json={"data": [{"id": "b"}], "links": {}})
    assert [r["id"] for r in hook.list_requests()] == ["a", "b"]


# ------------------------------------------------------------------------------------------- auth
def test_token_reused_across_calls_and_hooks(hook, token_mock, requests_mock):
    requests_mock.get(f"{V1}/process/{RID}", json={"id": RID, "status": "CREATED"})
    for _ in range(5):
        hook.get_request(RID)
    SentinelBatchHook().get_request(RID)
    assert token_mock.call_count == 1
    body = token_mock.last_request.text
    assert "grant_type=client_credentials" in body and f"client_id={CLIENT_ID}" in body
    assert "client_secret=" in body  # in the form body, not a Basic header
    assert "Authorization" not in token_mock.last_request.headers


def test_token_refreshed_before_expiry(hook, requests_mock, monkeypatch):
    token = requests_mock.post(
        TOKEN_URL,
        [
            {"json": {"access_token": "tok-1", "expires_in": 3600}},
            {"json": {"access_token": "tok-2", "expires_in": 3600}},
        ],
    )
    api = requests_mock.get(f"{V1}/process/{RID}", json={"id": RID})
    hook.get_request(RID)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600 - 59)  # inside the 60-120 s refresh window
    hook.get_request(RID)
    assert token.call_count == 2
    assert api.last_request.headers["Authorization"] == "Bearer tok-2"


def test_401_refreshes_once_and_retries(hook, requests_mock):
    token = requests_mock.post(
        TOKEN_URL,
        [
            {"json": {"access_token": "old", "expires_in": 3600}},
            {"json": {"access_token": "new", "expires_in": 3600}},
        ],
    )
    route = requests_mock.get(
        f"{V1}/process/{RID}", [{"status_code": 401, "json": {}}, {"json": {"id": RID, "status": "DONE"}}]
    )
    assert hook.get_status(RID) == "DONE"
    assert token.call_count == 2
    assert [r.headers["Authorization"] for r in route.request_history] == ["Bearer old", "Bearer new"]


def test_persistent_401_is_not_a_retry_storm(hook, token_mock, requests_mock):
    route = requests_mock.get(
        f"{V1}/process/{RID}",
        status_code=401,
        json={
            "error": {
                "status": 401,
                "reason": "Unauthorized",
                "message": "Token is not valid",
                "code": "COMMON_UNAUTHORIZED",
            }
        },
    )
    with pytest.raises(SentinelBatchAPIError, match="Token is not valid") as exc:
        hook.get_request(RID)
    assert exc.value.status == 401
    assert route.call_count == 2 and token_mock.call_count == 2


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            401,
            {"error": "invalid_client", "error_description": "Invalid client or Invalid client credentials"},
            "HTTP 401 invalid_client: Invalid client or Invalid client credentials",
        ),
        (
            400,
            {"error": "unauthorized_client", "error_description": "Client not enabled"},
            "unauthorized_client",
        ),
    ],
)
def test_token_rejection_is_clear_and_secret_free(conn_env, requests_mock, caplog, status, body, expected):
    requests_mock.post(TOKEN_URL, status_code=status, json=body)
    hook = SentinelBatchHook()
    caplog.set_level(logging.DEBUG)
    with pytest.raises(SentinelBatchAuthError) as exc:
        hook.get_request(RID)
    text = str(exc.value)
    assert expected in text and TOKEN_URL in text and CLIENT_ID in text
    assert SECRET not in text and SECRET not in caplog.text
    assert SECRET not in repr(hook.settings)


def test_token_endpoint_429_and_5xx_are_retried(conn_env, requests_mock):
    token = requests_mock.post(
        TOKEN_URL,
        [
            {"status_code": 429, "headers": {"Retry-After": "1500"}, "json": {}},
            {"status_code": 503, "text": "upstream down"},
            {"json": {"access_token": "tok", "expires_in": 3600}},
        ],
    )
    requests_mock.get(f"{V1}/process/{RID}", json={"id": RID})
    hook = SentinelBatchHook()
    hook._sleep = sleeper = FakeSleep()
    hook.get_request(RID)
    assert token.call_count == 3
    assert 1.5 <= sleeper.calls[0] <= 1.65  # Retry-After is milliseconds


def test_token_endpoint_5xx_gives_up_with_clear_error(conn_env, requests_mock):
    requests_mock.post(TOKEN_URL, status_code=502, text="<html>bad gateway</html>")
    hook = SentinelBatchHook(retry_policy=RetryPolicy(max_attempts=3))
    hook._sleep = FakeSleep()
    with pytest.raises(SentinelBatchAuthError, match=r"Token request to .* failed: HTTP 502"):
        hook.get_token()
    assert len(hook._sleep.calls) == 2


# ------------------------------------------------------------------------------------------- retries
def test_429_waits_retry_after_milliseconds(hook, requests_mock):
    route = requests_mock.get(
        f"{V1}/process/{RID}",
        [
            {
                "status_code": 429,
                "headers": {"Retry-After": "3398"},
                "json": {
                    "status": 429,
                    "code": "RATE_LIMIT_EXCEEDED",
                    "message": "You have exceeded your rate limit",
                },
            },
            {"json": {"id": RID, "status": "DONE"}},
        ],
    )
    assert hook.get_status(RID) == "DONE"
    assert route.call_count == 2
    assert 3.398 <= hook._sleep.calls[0] <= 3.398 * 1.1 + 0.01


def test_429_without_retry_after_uses_default(hook, requests_mock):
    requests_mock.get(f"{V1}/process/{RID}", [{"status_code": 429}, {"json": {"id": RID}}])
    hook.get_request(RID)
    assert 7.0 <= hook._sleep.calls[0] <= 7.0 * 1.1 + 0.01  # fast_policy.default_retry_after


def test_429_storm_is_bounded(hook, requests_mock):
    route = requests_mock.get(
        f"{V1}/process/{RID}",
        status_code=429,
        headers={"Retry-After": "10"},
        json={
            "error": {
                "status": 429,
                "message": "You have exceeded your rate limit",
                "code": "RATE_LIMIT_EXCEEDED",
            }
        },
    )
    with pytest.raises(SentinelBatchAPIError, match="still rate limited") as exc:
        hook.get_request(RID)
    assert exc.value.status == 429 and exc.value.code == "RATE_LIMIT_EXCEEDED"
    assert route.call_count == 5  # fast_policy.max_rate_limited


def test_5xx_burst_backs_off_exponentially(hook, requests_mock):
    route = requests_mock.get(
        f"{V1}/process/{RID}",
        [
            {"status_code": 503},
            {"status_code": 500, "json": {"error": {"message": "x", "code": "RENDERER_EXCEPTION"}}},
            {"status_code": 502},
            {"json": {"id": RID}},
        ],
    )
    hook.get_request(RID)
    assert route.call_count == 4
    waits = hook._sleep.calls
    assert len(waits) == 3
    assert 0.5 <= waits[0] <= 1.0 and 1.0 <= waits[1] <= 2.0 and 2.0 <= waits[2] <= 4.0


def test_5xx_gives_up_after_max_attempts(hook, requests_mock):
    route = requests_mock.get(
        f"{V1}/process/{RID}",
        status_code=500,
        json={"error": {"status": 500, "message": "Internal", "code": "COMMON_EXCEPTION"}},
    )
    with pytest.raises(SentinelBatchAPIError, match="HTTP 500 COMMON_EXCEPTION: Internal"):
        hook.get_request(RID)
    assert route.call_count == 4


def test_connection_errors_are_retried(hook, requests_mock):
    import requests

    route = requests_mock.get(
        f"{V1}/process/{RID}", [{"exc": requests.ConnectionError("reset by peer")}, {"json": {"id": RID}}]
    )
    hook.get_request(RID)
    assert route.call_count == 2


def test_404_right_after_create_is_retried(hook, requests_mock):
    RECENT_REQUESTS.note(RID)
    route = requests_mock.get(
        f"{V1}/process/{RID}",
        [
            {
                "status_code": 404,
                "json": {"error": {"status": 404, "message": "not found", "code": "COMMON_NOT_FOUND"}},
            }
        ]
        * 2
        + [{"json": {"id": RID, "status": "CREATED"}}],
    )
    assert hook.get_status(RID) == "CREATED"
    assert route.call_count == 3


def test_404_after_grace_is_a_clear_not_found(hook, requests_mock):
    RECENT_REQUESTS.note(RID, created_at=time.time() - 3600)
    route = requests_mock.get(
        f"{V1}/process/{RID}",
        status_code=404,
        json={
            "error": {
                "status": 404,
                "reason": "Not Found",
                "message": "Batch request not found",
                "code": "COMMON_NOT_FOUND",
            }
        },
    )
    with pytest.raises(SentinelBatchNotFoundError, match="does not exist here") as exc:
        hook.get_request(RID)
    assert route.call_count == 1
    assert "Batch request not found" in str(exc.value)


def test_400_is_not_retried_and_renders_violations(hook, requests_mock):
    body = {
        "error": {
            "status": 400,
            "reason": "Bad Request",
            "message": "Invalid request",
            "code": "COMMON_BAD_PAYLOAD",
            "errors": [
                {"parameter": "processRequest->input->bounds->bbox", "violation": "must be 4 numbers"}
            ],
        }
    }
    route = requests_mock.post(f"{V1}/process/{RID}/start", status_code=400, json=body)
    with pytest.raises(SentinelBatchAPIError) as exc:
        hook.start(RID)
    assert route.call_count == 1
    err = exc.value
    assert (err.status, err.code, err.message) == (400, "COMMON_BAD_PAYLOAD", "Invalid request")
    assert err.errors == body["error"]["errors"]
    assert "processRequest->input->bounds->bbox: must be 4 numbers" in str(err)


def test_non_json_body_is_a_clear_error(hook, requests_mock):
    requests_mock.get(f"{V1}/process/{RID}", text="<html>proxy</html>")
    with pytest.raises(SentinelBatchAPIError, match="expected a JSON body"):
        hook.get_request(RID)


# ------------------------------------------------------------------------------------------- validation
def test_bad_payload_fails_before_any_call(hook, requests_mock):
    route = requests_mock.post(f"{V1}/process", status_code=201, json={"id": RID})
    payload = v1_payload()
    payload["processRequest"]["input"]["bounds"]["bbox"] = [9.66, 41.31, 8.44, 43.1]
    del payload["processRequest"]["evalscript"]
    with pytest.raises(SentinelBatchValidationError) as exc:
        hook.create_request(payload)
    assert "min >= max" in str(exc.value) and "evalscript is missing" in str(exc.value)
    assert route.call_count == 0


def test_grid_resolution_checked_against_cached_grids(hook, requests_mock):
    grids = requests_mock.get(f"{V1}/tilinggrids", json=GRIDS)
    requests_mock.post(f"{V1}/process", status_code=201, json={"id": RID})
    payload = v1_payload()
    payload["tilingGrid"]["resolution"] = 30.0
    with pytest.raises(
        SentinelBatchValidationError,
        match=r"resolution 30.0 is not offered by '20km grid' \(id 0\); choose one of 10.0, 20.0, 60.0",
    ):
        hook.create_request(payload)
    payload["tilingGrid"] = {"id": 42, "resolution": 60.0}
    with pytest.raises(SentinelBatchValidationError, match="id 42 is not a tiling grid"):
        hook.create_request(payload)
    assert grids.call_count == 1  # cached


# ------------------------------------------------------------------------------------------- connection
def test_connection_presets_and_overrides(conn_env, monkeypatch):
    conn_env(deployment="cdse")
    s = SentinelBatchHook().settings
    assert s.base_url == "https://sh.dataspace.copernicus.eu"
    assert s.token_url.startswith("https://identity.dataspace.copernicus.eu/auth/realms/CDSE/")
    conn_env(deployment="sentinel-hub-us")
    assert SentinelBatchHook().settings.base_url == "https://services-uswest2.sentinel-hub.com"
    conn_env(
        deployment="custom", base_url="http://127.0.0.1:8787", token_url="http://127.0.0.1:8787/oauth/token"
    )
    assert SentinelBatchHook().settings.base_url == "http://127.0.0.1:8787"
    monkeypatch.setenv(
        "AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT",
        f"sentinel-batch://{CLIENT_ID}:{SECRET}@?deployment=cdse&api_version=v1",
    )
    s = SentinelBatchHook().settings
    assert (s.deployment, s.api_version, s.client_secret) == ("copernicus-dataspace", "v1", SECRET)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"deployment": "mars"}, "unknown deployment 'mars'"),
        ({"deployment": "custom", "base_url": "http://example.com"}, "needs both 'base_url' and 'auth_url'"),
        (
            {"deployment": "custom", "base_url": "http://example.com", "token_url": "https://x/t"},
            "plain http to a non-loopback",
        ),
        ({"api_version": "v3"}, r"api_version must be 2 or 1 \(or 'v2'/'v1'\), got 'v3'"),
    ],
)
def test_bad_connection_settings(conn_env, extra, message):
    conn_env(**extra)
    with pytest.raises(SentinelBatchConfigError, match=message):
        SentinelBatchHook().settings  # noqa: B018


def test_test_connection_ok_and_mismatch_warning(conn_env, requests_mock):
    cdse_token = "https://identity.dataspace.copernicus.eu/auth/realms/CDSE/protocol/openid-connect/token"
    conn_env(deployment="custom", base_url=BASE, token_url=cdse_token)
    requests_mock.post(cdse_token, json={"access_token": "t", "expires_in": 600})
    requests_mock.get(f"{V1}/tilinggrids", json=GRIDS)
    ok, message = SentinelBatchHook().test_connection()
    assert ok and "3 tiling grids" in message and "issues CDSE tokens" in message


def test_test_connection_reports_failure(conn_env, requests_mock):
    requests_mock.post(TOKEN_URL, status_code=401, json={"error": "invalid_client"})
    ok, message = SentinelBatchHook().test_connection()
    assert not ok and "invalid_client" in message and SECRET not in message


def test_get_conn_session_authenticates_raw_calls(hook, requests_mock):
    route = requests_mock.get(f"{V1}/process", json={"data": []})
    hook.get_conn().get(f"{V1}/process")
    assert route.last_request.headers["Authorization"] == "Bearer tok-1"


def test_token_cache_counts_fetches(hook, requests_mock):
    requests_mock.get(f"{V1}/process/{RID}", json={"id": RID})
    hook.get_request(RID)
    assert sum(TOKEN_CACHE.fetches.values()) == 1


def test_create_is_resent_only_when_surely_refused(hook, requests_mock):
    requests_mock.get(f"{V1}/tilinggrids", json=GRIDS)
    route = requests_mock.post(
        f"{V1}/process",
        [
            {"status_code": 429, "headers": {"Retry-After": "10"}},
            {"status_code": 201, "json": {"id": RID, "status": "CREATED"}},
        ],
    )
    assert hook.create_request(v1_payload())["id"] == RID
    assert route.call_count == 2  # a 429 means the service did not create anything: resent
    route = requests_mock.post(f"{V1}/process", status_code=503)
    with pytest.raises(SentinelBatchAPIError) as exc:
        hook.create_request(v1_payload())
    assert route.call_count == 1  # a 5xx may hide a created job: never resent blindly
    assert exc.value.status == 503 and getattr(exc.value, "retries_exhausted", False)


def test_session_reads_proxy_and_ca_settings_from_the_environment_once(conn_env, monkeypatch):
    """requests would scan the environment on every call; the hook's session takes the settings at creation."""
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/custom.pem")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = SentinelBatchHook().session
    assert session.trust_env is False
    assert session.proxies.get("https") == "http://proxy.example:3128"
    assert session.verify == "/etc/ssl/custom.pem"
    monkeypatch.setenv("NO_PROXY", "services.sentinel-hub.com")  # the base URL's host bypasses the proxy
    assert "https" not in SentinelBatchHook().session.proxies
