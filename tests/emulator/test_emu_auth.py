"""OAuth2 client credentials: the three token endpoints, JWT claims, bad credentials, expiry, revocation."""

from __future__ import annotations

import base64
import json
import time

import pytest
import requests
from oauthlib.oauth2 import BackendApplicationClient, InvalidClientError
from requests_oauthlib import OAuth2Session

from airflow_provider_sentinel_batch.emulator import EmulatorServer

TOKEN_PATHS = {
    "/oauth/token": "",
    "/auth/realms/main/protocol/openid-connect/token": "/auth/realms/main",
    "/auth/realms/CDSE/protocol/openid-connect/token": "/auth/realms/CDSE",
}


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@pytest.mark.parametrize("path", list(TOKEN_PATHS))
def test_token_endpoints_issue_jwt_shaped_tokens(emu: EmulatorServer, path: str) -> None:
    response = requests.post(
        emu.base_url + path,
        data={
            "grant_type": "client_credentials",
            "client_id": emu.client_id,
            "client_secret": emu.client_secret,
        },
        timeout=5,
    )
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 3600
    claims = _claims(body["access_token"])
    assert claims["azp"] == emu.client_id
    assert claims["iss"] == emu.base_url + TOKEN_PATHS[path]
    assert claims["exp"] - claims["iat"] == 3600
    api = requests.get(
        emu.base_url + "/api/v2/batch/tilinggrids",
        headers={"Authorization": f"Bearer {body['access_token']}"},
        timeout=5,
    )
    assert api.status_code == 200


def test_bad_credentials_and_grant(emu: EmulatorServer) -> None:
    bad = requests.post(
        emu.token_url,
        data={"grant_type": "client_credentials", "client_id": emu.client_id, "client_secret": "wrong"},
        timeout=5,
    )
    assert bad.status_code == 401
    assert bad.json() == {
        "error": "invalid_client",
        "error_description": "Invalid client or Invalid client credentials",
    }
    missing = requests.post(
        emu.token_url, data={"client_id": emu.client_id, "client_secret": emu.client_secret}, timeout=5
    )
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"
    basic = requests.post(
        emu.token_url,
        data={"grant_type": "client_credentials"},
        auth=(emu.client_id, emu.client_secret),
        timeout=5,
    )
    assert basic.status_code == 200


def test_requests_oauthlib_both_client_auth_styles(
    emu: EmulatorServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    for include_client_id in (True, None):
        oauth = OAuth2Session(client=BackendApplicationClient(client_id=emu.client_id))
        token = oauth.fetch_token(
            token_url=emu.token_url, client_secret=emu.client_secret, include_client_id=include_client_id
        )
        assert token["expires_at"] > time.time()
        assert oauth.get(emu.base_url + "/api/v1/batch/process").status_code == 200
    wrong = OAuth2Session(client=BackendApplicationClient(client_id=emu.client_id))
    with pytest.raises(InvalidClientError):
        wrong.fetch_token(token_url=emu.token_url, client_secret="nope", include_client_id=True)


def test_api_requires_a_valid_bearer_token(emu: EmulatorServer) -> None:
    token = emu.access_token()
    head, payload, sig = token.split(".")
    tampered = f"{head}.{payload[:-2]}xx.{sig}"
    for headers in (
        {},
        {"Authorization": "Basic abc"},
        {"Authorization": "Bearer garbage"},
        {"Authorization": f"Bearer {tampered}"},
    ):
        response = requests.get(emu.base_url + "/api/v1/batch/process", headers=headers, timeout=5)
        assert response.status_code == 401
        error = response.json()["error"]
        assert error["status"] == 401
        assert error["code"] == "COMMON_UNAUTHORIZED"
        assert error["message"].startswith("You are not authorized!")


@pytest.mark.sentinel_batch_emulator(token_lifetime=0.3)
def test_expired_token_is_rejected(sentinel_batch_emulator: EmulatorServer) -> None:
    emu = sentinel_batch_emulator
    token = emu.access_token()
    headers = {"Authorization": f"Bearer {token}"}
    assert requests.get(emu.base_url + "/api/v2/batch/process", headers=headers, timeout=5).status_code == 200
    time.sleep(0.35)
    expired = requests.get(emu.base_url + "/api/v2/batch/process", headers=headers, timeout=5)
    assert expired.status_code == 401
    assert "expired" in expired.json()["error"]["message"]


def test_revoked_tokens_are_rejected_mid_wait(emu: EmulatorServer) -> None:
    old = {"Authorization": f"Bearer {emu.access_token()}"}
    assert requests.get(emu.base_url + "/api/v1/batch/process", headers=old, timeout=5).status_code == 200
    assert requests.post(emu.base_url + "/_emulator/revoke-tokens", timeout=5).status_code == 200
    revoked = requests.get(emu.base_url + "/api/v1/batch/process", headers=old, timeout=5)
    assert revoked.status_code == 401
    assert "revoked" in revoked.json()["error"]["message"]
    new = {"Authorization": f"Bearer {emu.access_token()}"}
    assert requests.get(emu.base_url + "/api/v1/batch/process", headers=new, timeout=5).status_code == 200
