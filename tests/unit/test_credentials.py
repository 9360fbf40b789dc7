"""Credentials: the token cache is keyed by the secret too, test_connection proves the credentials, and
refused credentials or permissions fail the task without Airflow's retries."""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import httpx
import pytest
import respx
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_sentinel_batch.auth import TOKEN_CACHE, secret_fingerprint, token_key
from airflow_provider_sentinel_batch.deployments import settings_from_connection
from airflow_provider_sentinel_batch.exceptions import (
    SentinelBatchAPIError,
    SentinelBatchAuthError,
    SentinelBatchConfigError,
    SentinelBatchCredentialsError,
    SentinelBatchPermissionError,
)
from airflow_provider_sentinel_batch.hooks.async_client import SentinelBatchAsyncClient
from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
from airflow_provider_sentinel_batch.retry import RetryPolicy

from .conftest import BASE, CLIENT_ID, GRIDS, SECRET, TOKEN_URL, FakeSleep

V1 = f"{BASE}/api/v1/batch"
RID = "5e1a2b3c-0000-4000-8000-000000000001"
WRONG = "wrong-secret-7c9f0e"


def set_conn(monkeypatch, secret: str, conn_id: str = "sentinel_batch_default") -> None:
    value = {
        "conn_type": "sentinel_batch",
        "login": CLIENT_ID,
        "password": secret,
        "extra": {"deployment": "sentinel-hub-eu", "api_version": "v1"},
    }
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))


def token_endpoint(request, context):
    """A token endpoint that checks the secret, like the real one: one token per issue, numbered."""
    form = parse_qs(request.text)
    if form.get("client_id") != [CLIENT_ID] or form.get("client_secret") != [SECRET]:
        context.status_code = 401
        return {
            "error": "invalid_client",
            "error_description": "Invalid client or Invalid client credentials",
        }
    token_endpoint.issued += 1
    return {"access_token": f"tok-{token_endpoint.issued}", "expires_in": 3600, "token_type": "Bearer"}


@pytest.fixture
def real_token_endpoint(requests_mock):
    token_endpoint.issued = 0
    return requests_mock.post(TOKEN_URL, json=token_endpoint)


def hook_for(conn_id: str) -> SentinelBatchHook:
    hook = SentinelBatchHook(sentinel_batch_conn_id=conn_id, retry_policy=RetryPolicy(max_attempts=2))
    hook._sleep = FakeSleep()
    return hook


# ------------------------------------------------------------------------------------ cache identity
def test_wrong_secret_never_rides_a_cached_token(monkeypatch, real_token_endpoint, requests_mock):
    set_conn(monkeypatch, SECRET, "right")
    set_conn(monkeypatch, WRONG, "wrong")
    route = requests_mock.get(f"{V1}/process/{RID}", json={"id": RID, "status": "DONE"})
    assert hook_for("right").get_status(RID) == "DONE"  # the process now holds a token for CLIENT_ID
    with pytest.raises(SentinelBatchCredentialsError, match="HTTP 401 invalid_client"):
        hook_for("wrong").get_status(RID)
    assert route.call_count == 1  # the wrong-secret hook never reached the API
    assert real_token_endpoint.call_count == 2
    assert hook_for("right").get_status(RID) == "DONE"  # the right one still shares its token
    assert real_token_endpoint.call_count == 2


def test_cache_identity_is_a_keyed_hash_of_the_secret(monkeypatch, real_token_endpoint, requests_mock):
    set_conn(monkeypatch, SECRET, "right")
    requests_mock.get(f"{V1}/process/{RID}", json={"id": RID, "status": "DONE"})
    hook = hook_for("right")
    hook.get_status(RID)
    (key,) = TOKEN_CACHE.fetches
    assert key == token_key(hook.settings)
    assert key[:2] == (TOKEN_URL, CLIENT_ID)
    assert SECRET not in repr(key) and SECRET not in repr(TOKEN_CACHE.__dict__)
    # keyed: not a plain digest that could be checked against guessed secrets
    import hashlib

    for plain in (hashlib.sha256, hashlib.sha1, hashlib.md5):
        assert plain(SECRET.encode()).hexdigest() not in repr(key)
    assert secret_fingerprint(SECRET) == secret_fingerprint(SECRET) != secret_fingerprint(WRONG)


async def test_async_client_keys_the_cache_by_secret_too(monkeypatch):
    set_conn(monkeypatch, SECRET, "right")
    set_conn(monkeypatch, WRONG, "wrong")
    from airflow.providers.common.compat.sdk import BaseHook

    def settings(conn_id):
        conn = BaseHook.get_connection(conn_id)
        return settings_from_connection(conn, conn.extra_dejson)

    def issue(request):
        form = parse_qs(request.content.decode())
        if form.get("client_secret") != [SECRET]:
            return httpx.Response(
                401, json={"error": "invalid_client", "error_description": "Invalid client"}
            )
        return httpx.Response(200, json={"access_token": "async-tok", "expires_in": 3600})

    with respx.mock(assert_all_called=False) as api:
        tokens = api.post(TOKEN_URL).mock(side_effect=issue)
        api.get(f"{V1}/process/{RID}").mock(return_value=httpx.Response(200, json={"id": RID}))
        policy = RetryPolicy(max_attempts=1)
        async with SentinelBatchAsyncClient(settings("right"), retry_policy=policy) as client:
            assert (await client.get_request(RID, "v1"))["id"] == RID
        async with SentinelBatchAsyncClient(settings("wrong"), retry_policy=policy) as client:
            with pytest.raises(SentinelBatchCredentialsError, match="invalid_client"):
                await client.get_request(RID, "v1")
        assert tokens.call_count == 2


# ---------------------------------------------------------------------------------- test_connection
def test_test_connection_refuses_a_wrong_secret_even_with_a_cached_token(
    monkeypatch, real_token_endpoint, requests_mock
):
    set_conn(monkeypatch, SECRET, "right")
    set_conn(monkeypatch, WRONG, "wrong")
    requests_mock.get(f"{V1}/tilinggrids", json=GRIDS)
    hook_for("right").get_token()
    ok, message = hook_for("wrong").test_connection()
    assert not ok and "invalid_client" in message and WRONG not in message


def test_test_connection_uses_a_fresh_token_and_does_not_store_it(
    monkeypatch, real_token_endpoint, requests_mock
):
    set_conn(monkeypatch, SECRET, "right")
    grids = requests_mock.get(f"{V1}/tilinggrids", json=GRIDS)
    hook = hook_for("right")
    hook.get_token()  # tok-1 cached
    ok, message = hook.test_connection()
    assert ok and "3 tiling grids" in message, message
    assert real_token_endpoint.call_count == 2  # a fresh token was fetched although one was cached
    assert grids.last_request.headers["Authorization"] == "Bearer tok-2"  # and used
    assert hook.get_token() == "tok-1"  # but not stored: the cache still holds the first one
    assert sum(TOKEN_CACHE.fetches.values()) == 1


def test_test_connection_does_not_refresh_on_401(monkeypatch, real_token_endpoint, requests_mock):
    set_conn(monkeypatch, SECRET, "right")
    requests_mock.get(f"{V1}/tilinggrids", status_code=401, json={"error": {"message": "Token is not valid"}})
    ok, message = hook_for("right").test_connection()
    assert not ok and "Token is not valid" in message
    assert real_token_endpoint.call_count == 1


# -------------------------------------------------------------------------- fail without retrying
@pytest.mark.parametrize(
    ("status", "body"),
    [
        (
            401,
            {"error": "invalid_client", "error_description": "Invalid client or Invalid client credentials"},
        ),
        (400, {"error": "unauthorized_client", "error_description": "Client not enabled"}),
        (403, {"error": "access_denied"}),
    ],
)
def test_refused_credentials_fail_without_retry(conn_env, requests_mock, status, body):
    token = requests_mock.post(TOKEN_URL, status_code=status, json=body)
    hook = SentinelBatchHook()
    hook._sleep = FakeSleep()
    with pytest.raises(SentinelBatchCredentialsError) as exc:
        hook.get_request(RID)
    assert isinstance(exc.value, AirflowFailException) and isinstance(exc.value, SentinelBatchAuthError)
    assert token.call_count == 1 and hook._sleep.calls == []


def test_unreachable_token_endpoint_stays_retryable(conn_env, requests_mock):
    requests_mock.post(TOKEN_URL, status_code=503, text="down")
    hook = SentinelBatchHook(retry_policy=RetryPolicy(max_attempts=2))
    hook._sleep = FakeSleep()
    with pytest.raises(SentinelBatchAuthError) as exc:
        hook.get_token()
    assert not isinstance(exc.value, AirflowFailException)


@pytest.mark.parametrize(
    ("status", "hint"), [(401, "different deployments"), (403, "not allowed to do this")]
)
def test_api_refusing_the_token_fails_without_retry(hook, requests_mock, status, hint):
    body = {"error": {"status": status, "message": "You are not authorized", "code": "COMMON_UNAUTHORIZED"}}
    route = requests_mock.get(f"{V1}/process/{RID}", status_code=status, json=body)
    with pytest.raises(SentinelBatchPermissionError) as exc:
        hook.get_request(RID)
    assert isinstance(exc.value, AirflowFailException) and isinstance(exc.value, SentinelBatchAPIError)
    assert (
        exc.value.status == status and hint in str(exc.value) and "You are not authorized" in str(exc.value)
    )
    assert route.call_count == (2 if status == 401 else 1)  # a 401 refreshes the token once, never more


def test_configuration_errors_fail_without_retry(conn_env):
    conn_env(deployment="atlantis")
    with pytest.raises(SentinelBatchConfigError) as exc:
        SentinelBatchHook().get_token()
    assert isinstance(exc.value, AirflowFailException) and isinstance(exc.value, ValueError)
