"""The per-account request budget: even pacing, a small burst, actions first, 429s honoured, one per account."""

from __future__ import annotations

import itertools
import random
import time

import pytest

from airflow_provider_sentinel_batch.budget import (
    BURST_S,
    DEFAULT_REQUESTS_PER_MINUTE,
    HEADROOM,
    RECOVERY_S,
    RequestBudget,
    budget_for,
    forget_budgets,
)
from airflow_provider_sentinel_batch.deployments import settings_from_connection
from airflow_provider_sentinel_batch.exceptions import SentinelBatchConfigError


@pytest.fixture(autouse=True)
def _fresh(monkeypatch):
    from airflow_provider_sentinel_batch import budget

    # the real defaults (the shared test setup turns them off for every other test)
    monkeypatch.setattr(budget, "DEFAULT_REQUESTS_PER_MINUTE", DEFAULT_REQUESTS_PER_MINUTE)
    forget_budgets()
    yield
    forget_budgets()


def grant_times(budget: RequestBudget, n: int, now: float = 1000.0) -> list[float]:
    """When each of ``n`` routine calls asked at ``now`` may go."""
    return [now + budget.reserve(now=now) for _ in range(n)]


def most_in_a_minute(times: list[float]) -> int:
    """The largest number of ``times`` within any closed 60 s window (the service counts a sliding window)."""
    ordered = sorted(times)
    first, best = 0, 0
    for i, t in enumerate(ordered):
        while ordered[first] < t - 60.0:
            first += 1
        best = max(best, i - first + 1)
    return best


def test_polls_due_together_are_spread_evenly_after_a_short_burst():
    budget = RequestBudget(600)
    step = budget.interval  # a little over 0.1 s: the burst and the headroom are part of the 600
    times = grant_times(budget, 1000)
    burst = sum(1 for t in times if t < 1000.0 + 1e-6)
    assert burst - 1 <= BURST_S / step <= burst  # an idle account lets a short burst through
    gaps = [b - a for a, b in zip(times[burst:], times[burst + 1 :], strict=False)]
    assert all(gap == pytest.approx(step) for gap in gaps)
    assert times[-1] - 1000.0 == pytest.approx((1000 - burst) * step, abs=step)
    # never more than the limit less the headroom within any minute, burst included; and not much less
    assert 600 * (1 - HEADROOM) - 1 <= most_in_a_minute(times) <= 600 * (1 - HEADROOM)
    assert 60.0 / step > 600 * (1 - HEADROOM) * 0.95  # the sustained pace stays close to that


def test_no_minute_holds_more_than_the_budget_whatever_the_arrivals_and_429s():
    rng = random.Random(7)
    for rpm in (10, 60, 600):
        budget = RequestBudget(rpm)
        slots: list[float] = []
        now = 0.0
        for _ in range(3000):
            now += rng.expovariate(rpm / 60.0 * rng.choice((0.3, 1.0, 3.0)))  # idle spells and floods
            if rng.random() < 0.01:
                budget.rate_limited_for(rng.choice((None, 0.5, 3.4)), now=now)
            if rng.random() < 0.02:
                budget.reserve(action=True, now=now)
                continue
            slots.append(now + budget.reserve(now=now))
        assert most_in_a_minute(slots) <= rpm * (1 - HEADROOM), rpm


def test_the_burst_never_jumps_a_queue_when_the_pace_recovers():
    budget = RequestBudget(600)
    budget.rate_limited_for(1.0, now=1000.0)  # held for 1 s, then half pace recovering over a minute
    # polls keep asking twice as fast as the full pace allows: a queue that outlasts the slow minute
    asks = [1000.0 + i * budget.interval / 2 for i in range(2000)]
    times = [now + budget.reserve(now=now) for now in asks]
    assert asks[-1] > 1001.0 + RECOVERY_S
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert min(gaps) >= budget.interval * (1 - 1e-9)  # evenly spaced throughout: no burst once it is over
    assert times[0] == pytest.approx(1001.0)  # the first poll goes when the hold ends
    assert most_in_a_minute(times) <= 600 * (1 - HEADROOM)


def test_a_poll_waiting_inside_a_new_429_hold_takes_a_slot_after_it():
    budget = RequestBudget(60)
    grant_times(budget, 5, now=time.monotonic())  # the burst is used up: the next poll waits
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 1:
            budget.rate_limited_for(5.0)  # another call's 429 arrives while this poll waits

    budget.acquire(sleep=sleep)
    assert len(waits) == 2 and waits[1] == pytest.approx(5.0, abs=0.5)  # a new slot after the hold
    unrelated: list[float] = []
    budget.acquire(sleep=unrelated.append)  # no new 429 while it waits: one wait, on the slowed schedule
    assert len(unrelated) == 1


def test_actions_never_wait_behind_polls_and_polls_make_room():
    budget = RequestBudget(60)  # about one per second
    polls = grant_times(budget, 30)
    assert polls[-1] > 1020.0  # the schedule is full for the next half minute
    assert budget.reserve(action=True, now=1000.0) == 0.0  # an action goes now
    step = budget.interval
    assert budget.reserve(now=1000.0) == pytest.approx(
        polls[-1] - 1000.0 + 2 * step
    )  # polls moved back a slot


def test_a_429_holds_polls_for_the_window_it_names_then_slows_down():
    budget = RequestBudget(60)
    budget.rate_limited_for(5.0, now=1000.0)
    assert budget.reserve(now=1000.0) == pytest.approx(5.0)  # held until the named window has passed
    after = budget.reserve(now=1005.0)
    assert after > 1.5 * budget.interval  # slower than the plain pace right after
    assert budget.reserve(action=True, now=1005.0) == 0.0  # actions still go
    later = RequestBudget(60)
    later.rate_limited_for(1.0, now=0.0)
    assert later._pace(1.0 + RECOVERY_S + 1) == later.interval  # full pace again after the recovery minute
    no_header = RequestBudget(60)
    no_header.rate_limited_for(None, now=0.0)
    assert no_header.reserve(now=0.0) == pytest.approx(10.0)  # no Retry-After: 10 s, as the retry policy


def test_one_budget_per_account_in_a_process():
    a = budget_for("https://id/token", "client", 600)
    assert budget_for("https://id/token", "client", 600) is a
    assert budget_for("https://id/token", "other", 600) is not a
    assert budget_for("https://other/token", "client", 600) is not a
    assert budget_for("https://id/token", "client", 300) is a and a.requests_per_minute == 300  # lower wins
    assert budget_for("https://id/token", "client", None) is None
    assert budget_for("https://id/token", "client", 0) is None


class Conn:
    conn_id = "c"
    login = "id"
    password = "secret"
    host = None
    port = None


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({}, DEFAULT_REQUESTS_PER_MINUTE["sentinel-hub-eu"]),
        ({"deployment": "copernicus-dataspace"}, DEFAULT_REQUESTS_PER_MINUTE["copernicus-dataspace"]),
        ({"deployment": "cdse"}, DEFAULT_REQUESTS_PER_MINUTE["copernicus-dataspace"]),
        ({"requests_per_minute": 600}, 600.0),
        ({"requests_per_minute": "120"}, 120.0),
        ({"requests_per_minute": 0}, None),
        (
            {"deployment": "custom", "base_url": "http://127.0.0.1:1", "auth_url": "http://127.0.0.1:1/t"},
            None,
        ),
    ],
)
def test_requests_per_minute_from_the_connection(extra, expected):
    assert settings_from_connection(Conn(), extra).requests_per_minute == expected


def test_requests_per_minute_must_be_a_number():
    with pytest.raises(SentinelBatchConfigError, match="requests_per_minute"):
        settings_from_connection(Conn(), {"requests_per_minute": "lots"})


async def test_async_client_paces_polls_lets_actions_through_and_notes_429s(monkeypatch):
    import httpx

    from airflow_provider_sentinel_batch import budget as budget_module
    from airflow_provider_sentinel_batch.auth import TOKEN_CACHE, token_key
    from airflow_provider_sentinel_batch.deployments import ConnectionSettings
    from airflow_provider_sentinel_batch.hooks.async_client import SentinelBatchAsyncClient
    from airflow_provider_sentinel_batch.retry import RetryPolicy

    settings = ConnectionSettings(
        client_id="budget-client",
        client_secret="s",
        base_url="http://127.0.0.1:9",
        token_url="http://127.0.0.1:9/token",
        requests_per_minute=60.0,
    )
    answers = iter([429, 200, 200, 200])
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/token":
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        seen.append(request.method)
        if request.method == "POST":
            return httpx.Response(204)
        status = next(answers)
        if status == 429:
            return httpx.Response(429, headers={"Retry-After": "3000"}, json={"error": {"status": 429}})
        return httpx.Response(200, json={"id": "r", "status": "PROCESSING"})

    waits: list[float] = []

    async def no_sleep(seconds: float) -> None:
        waits.append(seconds)

    monkeypatch.setattr(budget_module.asyncio, "sleep", no_sleep)
    TOKEN_CACHE.invalidate(token_key(settings), "t")
    client = SentinelBatchAsyncClient(
        settings, retry_policy=RetryPolicy(), transport=httpx.MockTransport(handler), sleep=no_sleep
    )
    async with client:
        await client.get_request("r", "v2")  # 429 (3 s), then the retry
        budget = budget_for(settings.token_url, settings.client_id, 60.0)
        assert budget is not None and budget.rate_limited == 1
        before = len(waits)
        await client.stop_or_cancel("r", "v2")  # an action: no budget wait
        assert len(waits) == before
        await client.get_request("r", "v2")
    assert seen == ["GET", "GET", "POST", "GET"]
    assert budget.granted == 3 and budget.actions == 1
    assert any(w >= 2.9 for w in waits)  # the retry waited for the window the 429 named
