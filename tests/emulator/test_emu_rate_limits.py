"""Per-account rate-limit policies: several at once, the service's 429 body, Retry-After in ms, counted in stats."""

from __future__ import annotations

import time

import pytest
import requests

from airflow_provider_sentinel_batch.emulator import EmulatorServer
from airflow_provider_sentinel_batch.emulator.__main__ import build_parser, config_from_args
from airflow_provider_sentinel_batch.emulator.ratelimit import RateLimit, RateLimiter, parse_limits
from tests.emulator.helpers import Api

GRIDS = "/api/v1/batch/tilinggrids"
BODY = {
    "error": {
        "status": 429,
        "reason": "Too Many Requests",
        "message": "You have exceeded your rate limit",
        "code": "RATE_LIMIT_EXCEEDED",
    }
}


def _real_time(emu: EmulatorServer) -> None:
    """Windows in real seconds for this test (the shared emulator runs fast; ``reset`` restores it)."""
    requests.post(
        emu.base_url + "/_emulator/time-scale", json={"time_scale": 1.0}, timeout=5
    ).raise_for_status()


def test_policy_from_the_control_plane_answers_429_with_retry_after_ms(api: Api, emu: EmulatorServer) -> None:
    _real_time(emu)
    set_ = requests.post(emu.base_url + "/_emulator/rate-limits", json={"policies": ["3/60"]}, timeout=5)
    assert set_.json() == {"policies": [{"requests": 3, "window_s": 60.0}]}
    assert [api.get(GRIDS).status_code for _ in range(3)] == [200, 200, 200]
    limited = api.get(GRIDS)
    assert limited.status_code == 429 and limited.json() == BODY
    retry_after = int(limited.headers["Retry-After"])
    assert 55_000 <= retry_after <= 60_000  # milliseconds until the oldest of the 3 leaves the 60 s window
    stats = requests.get(emu.base_url + "/_emulator/stats", timeout=5).json()
    assert stats["rate_limits"]["answered_429"] == 1
    assert stats["rate_limits"]["answered_429_by_policy"] == {"3/60": 1}
    assert stats["rate_limits"]["admitted_by_client"] == {emu.config.client_id: 3}
    assert stats["responses"]["429"] == 1
    # the token endpoint and the control plane are not the account's API calls
    assert requests.get(emu.base_url + "/_emulator/health", timeout=5).status_code == 200
    requests.post(emu.base_url + "/_emulator/rate-limits", json={"policies": []}, timeout=5)
    assert api.get(GRIDS).status_code == 200


def test_several_policies_at_once_the_tighter_window_first(api: Api, emu: EmulatorServer) -> None:
    _real_time(emu)
    emu.set_rate_limits(["2/0.5", "3/60"])
    assert [api.get(GRIDS).status_code for _ in range(3)] == [200, 200, 429]  # 2 per 0.5 s
    time.sleep(0.6)
    assert api.get(GRIDS).status_code == 200  # the short window refilled: 3 within 60 s
    assert api.get(GRIDS).status_code == 429  # now the long one is full
    by_policy = emu.stats()["rate_limits"]["answered_429_by_policy"]
    assert by_policy == {"2/0.5": 1, "3/60": 1}


@pytest.mark.sentinel_batch_emulator(rate_limits=["2/60"], time_scale=1.0)
def test_policy_from_the_pytest_marker(sentinel_batch_emulator: EmulatorServer) -> None:
    api = Api(sentinel_batch_emulator)
    assert [api.get(GRIDS).status_code for _ in range(3)] == [200, 200, 429]
    assert sentinel_batch_emulator.stats()["rate_limits"]["policies"] == [{"requests": 2, "window_s": 60.0}]


def test_policy_from_the_cli() -> None:
    args = build_parser().parse_args(["--rate-limit", "600/60", "--rate-limit", "30/1"])
    config = config_from_args(args)
    config.validate()
    assert parse_limits(config.rate_limits) == (RateLimit(requests=600, window_s=60), RateLimit(30, 1))
    bad = config_from_args(build_parser().parse_args(["--rate-limit", "600"]))
    with pytest.raises(ValueError, match="REQUESTS/SECONDS"):
        bad.validate()


def test_windows_are_emulated_time_and_retry_after_is_wall_ms() -> None:
    limiter = RateLimiter((RateLimit(requests=2, window_s=60),), time_scale=60.0)  # a 60 s window = 1 wall s
    assert limiter.admit("c", 100.0) is None
    assert limiter.admit("c", 100.25) is None
    assert limiter.admit("c", 100.5) == 500  # the first leaves the window at 101.0
    assert limiter.admit("other", 100.5) is None  # per client id
    assert limiter.admit("c", 101.01) is None


def _token_form(emu: EmulatorServer) -> dict[str, str]:
    return {
        "grant_type": "client_credentials",
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
    }


def test_token_requests_have_their_own_policies(api: Api, emu: EmulatorServer) -> None:
    _real_time(emu)
    url = emu.base_url + "/_emulator/rate-limits"
    requests.post(url, json={"policies": ["5/60"]}, timeout=5).raise_for_status()
    set_ = requests.post(url, json={"token_policies": ["2/60"]}, timeout=5)
    before = emu.stats()["token_requests"]  # the api fixture's own token
    assert set_.json() == {"token_policies": [{"requests": 2, "window_s": 60.0}]}
    answers = [requests.post(emu.token_url, data=_token_form(emu), timeout=5) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json() == BODY
    assert 55_000 <= int(answers[2].headers["Retry-After"]) <= 60_000
    # counted apart: API calls do not use up the token policy, token requests not the API one
    assert [api.get(GRIDS).status_code for _ in range(5)] == [200] * 5
    assert api.get(GRIDS).status_code == 429
    limits = requests.get(url, timeout=5).json()
    assert limits["policies"] == [{"requests": 5, "window_s": 60.0}]  # a token_policies POST left these alone
    assert limits["answered_429"] == 1
    assert limits["token"]["policies"] == [{"requests": 2, "window_s": 60.0}]
    assert limits["token"]["answered_429"] == 1
    assert limits["token"]["admitted_by_client"] == {emu.client_id: 2}
    stats = emu.stats()
    assert (
        stats["rate_limits"] == limits
        and stats["token_requests"] == before + 3
        and stats["responses"]["429"] == 2
    )
    # wrong credentials are refused before the policy counts them
    wrong = requests.post(emu.token_url, data={**_token_form(emu), "client_secret": "nope"}, timeout=5)
    assert wrong.status_code == 401
    emu.set_rate_limits([], tokens=True)
    assert requests.post(emu.token_url, data=_token_form(emu), timeout=5).status_code == 200


def test_the_provider_waits_out_a_token_429() -> None:
    from airflow_provider_sentinel_batch.auth import fetch_token_sync
    from airflow_provider_sentinel_batch.deployments import ConnectionSettings
    from airflow_provider_sentinel_batch.retry import RetryPolicy

    server = EmulatorServer(token_rate_limits=["1/0.5"], time_scale=1.0)
    with server:
        settings = ConnectionSettings(
            client_id=server.client_id,
            client_secret=server.client_secret,
            base_url=server.base_url,
            token_url=server.token_url,
        )
        waits: list[float] = []

        def sleep(seconds: float) -> None:
            waits.append(seconds)
            time.sleep(seconds)

        assert fetch_token_sync(settings, policy=RetryPolicy(), sleep=sleep)["access_token"]
        assert fetch_token_sync(settings, policy=RetryPolicy(), sleep=sleep)["access_token"]  # after a 429
        assert (
            len(waits) == 1 and 0.0 < waits[0] <= 0.6
        )  # the Retry-After it named (with the policy's jitter)
        assert server.stats()["rate_limits"]["token"]["answered_429"] == 1


def test_token_policy_from_the_cli_and_the_marker() -> None:
    config = config_from_args(build_parser().parse_args(["--token-rate-limit", "30/60"]))
    config.validate()
    assert parse_limits(config.token_rate_limits) == (RateLimit(requests=30, window_s=60),)
    assert parse_limits(config.rate_limits) == ()


@pytest.mark.sentinel_batch_emulator(token_rate_limits=["1/60"], time_scale=1.0)
def test_token_policy_from_the_pytest_marker(sentinel_batch_emulator: EmulatorServer) -> None:
    form = _token_form(sentinel_batch_emulator)
    url = sentinel_batch_emulator.token_url
    assert [requests.post(url, data=form, timeout=5).status_code for _ in range(2)] == [200, 429]
    assert sentinel_batch_emulator.stats()["rate_limits"]["token"]["answered_429"] == 1
