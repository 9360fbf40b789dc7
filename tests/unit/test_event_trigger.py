"""SentinelBatchEventTrigger: edge detection, pagination, filters, retries, the state store and shared polls."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
import threading
import time
from datetime import UTC, datetime
from importlib.metadata import version

import httpx
import pytest
import respx

from .conftest import BASE, SECRET, TOKEN_URL

if version("apache-airflow").startswith("2."):
    pytest.skip("asset watchers (BaseEventTrigger) exist from Airflow 3 on", allow_module_level=True)

from airflow_provider_sentinel_batch.models import search_matches
from airflow_provider_sentinel_batch.triggers.events import (
    SentinelBatchEventTrigger,
    WatchState,
    compact,
)

LIST_V2 = f"{BASE}/api/v2/batch/process"
LIST_V1 = f"{BASE}/api/v1/batch/process"
LIST_STAT = f"{BASE}/api/v1/statistics/batch"
FAST = {"max_attempts": 2, "max_rate_limited": 2, "backoff_initial": 0.0, "default_retry_after": 0.0}
NOW = time.time()  # reset before every test (below): the watcher compares with the real clock


@pytest.fixture(autouse=True)
def _now(monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "NOW", time.time())


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def v2(
    rid: str, status: str, *, updated: float | None = None, created: float | None = None, desc: str = "ndvi"
):
    updated = NOW if updated is None else updated
    return {
        "id": rid,
        "status": status,
        "created": iso(created if created is not None else updated - 600),
        "lastUpdated": iso(updated),
        "costPU": 12.5,
        "request": {
            "description": desc,
            "output": {
                "type": "raster",
                "delivery": {
                    "s3": {"url": "s3://bucket/out/<requestId>/<tileName>", "secretAccessKey": "KEY-123"}
                },
            },
        },
    }


def page(*items, next_token: str | None = None) -> httpx.Response:
    links = {"nextToken": next_token} if next_token else {}
    return httpx.Response(200, json={"data": list(items), "links": links})


@pytest.fixture
def no_sleep(monkeypatch):
    """Record waits instead of sleeping (only in this test's thread; an emulator thread keeps real sleeps)."""
    waits: list[float] = []
    real_sleep = asyncio.sleep
    test_thread = threading.get_ident()

    async def fake_sleep(delay, *args, **kwargs):
        if threading.get_ident() != test_thread:
            return await real_sleep(delay, *args, **kwargs)
        waits.append(delay)
        await real_sleep(0)

    monkeypatch.setattr(asyncio, "sleep", fake_sleep)
    return waits


@pytest.fixture
def api(conn_env):
    conn_env(api_version="v2")
    with respx.mock(assert_all_called=False) as router:
        router.post(TOKEN_URL).respond(json={"access_token": "tok", "expires_in": 3600})
        yield router


@pytest.fixture
def logs(monkeypatch, caplog):
    """The watcher's log lines (structlog on Airflow 3: routed to a stdlib logger caplog sees)."""
    monkeypatch.setattr(
        SentinelBatchEventTrigger, "log", property(lambda _: logging.getLogger("test_event_trigger"))
    )
    caplog.set_level(logging.INFO)
    return caplog


def watcher(**kwargs) -> SentinelBatchEventTrigger:
    return SentinelBatchEventTrigger(
        **{"api_version": "v2", "retry_policy": FAST, "event_spacing": 0, **kwargs}
    )


class Stop(BaseException):
    """Ends a test's listing sequence: not an ``Exception``, so it passes the trigger's error handling."""


def then_stop(*responses):
    """A respx side effect: these answers in order, then ``Stop`` (the trigger's loop ends there)."""
    answers = iter(responses)
    requests: list[httpx.Request] = []

    def effect(request):
        requests.append(request)
        try:
            answer = next(answers)
        except StopIteration:
            raise Stop from None
        if isinstance(answer, Exception):
            raise answer
        return answer

    effect.requests = requests  # every call, the final one that stopped the loop included
    return effect


async def drain(stream, *, timeout: float = 10.0) -> list[dict]:
    """Every event payload of a trigger until its listings run out (``Stop``)."""
    out: list[dict] = []

    async def collect():
        try:
            async for event in stream:
                out.append(event.payload)
        except Stop:
            pass

    await asyncio.wait_for(collect(), timeout)
    return out


async def take(stream, n: int, *, timeout: float = 5.0) -> list[dict]:
    """The payloads of the first ``n`` events of a trigger's stream."""
    out: list[dict] = []

    async def collect():
        async for event in stream:
            out.append(event.payload)
            if len(out) >= n:
                return

    await asyncio.wait_for(collect(), timeout)
    return out


class FakeStore:
    """The asset state store accessor (aget/aset) of Airflow 3.3, in memory."""

    def __init__(
        self, data: dict | None = None, *, fail_get: Exception | None = None, fail_set: bool = False
    ):
        self.data = dict(data or {})
        self.fail_get = fail_get
        self.fail_set = fail_set
        self.sets = 0

    async def aget(self, key, default=None):
        if self.fail_get is not None:
            raise self.fail_get
        return self.data.get(key, default)

    async def aset(self, key, value):
        if self.fail_set:
            raise RuntimeError("state store unavailable")
        self.sets += 1
        self.data[key] = json.loads(json.dumps(value))  # stored as JSON, like the real one


# ------------------------------------------------------------------------------------------- arguments
def test_serialize_round_trip_has_no_secret(conn_env):
    t = watcher(
        statuses=["done", "FAILED"], search="ndvi&corsica", tag="[events]", since="2026-01-01T00:00:00Z"
    )
    path, kwargs = t.serialize()
    assert path == "airflow_provider_sentinel_batch.triggers.events.SentinelBatchEventTrigger"
    assert SentinelBatchEventTrigger(**kwargs).serialize() == (path, kwargs)
    assert kwargs["statuses"] == ["DONE", "FAILED"]
    assert SECRET not in json.dumps(kwargs)


@pytest.mark.parametrize(
    ("kwargs", "text"),
    [
        ({"api_version": "v2", "statuses": ["PARTIAL"]}, "cannot watch v2 requests for PARTIAL"),
        ({"api_version": "v1", "statuses": ["STOPPED"]}, "cannot watch v1 requests for STOPPED"),
        ({"api_version": "v3"}, "api_version must be one of"),
        (
            {"api_version": "statistical", "statuses": ["PARTIAL"]},
            "cannot watch statistical requests for PARTIAL",
        ),
        ({"since": "yesterday"}, "since must be an ISO-8601 time"),
        ({"poll_interval": 0}, "poll_interval must be positive"),
    ],
)
def test_bad_arguments_are_refused_at_parse_time(kwargs, text):
    with pytest.raises(ValueError, match=text):
        SentinelBatchEventTrigger(**kwargs)


def test_search_rule_and_compact_record_without_secrets():
    assert search_matches("Corsica NDVI [airflow-1]", "corsica & ndvi | nothing")
    assert not search_matches("Corsica NDVI", "corsica & evi")
    record = compact("v2", v2("r1", "DONE"))
    assert record["output_location"] == "s3://bucket/out/r1/"
    assert record["description"] == "ndvi" and record["cost_pu"] == 12.5 and record["finished"]
    assert "KEY-123" not in json.dumps(record)
    v1 = compact(
        "v1", {"id": "a", "status": "DONE", "created": iso(NOW), "valueEstimate": 30.0, "bucketName": "b"}
    )
    assert v1["cost_pu"] == 10.0 and v1["output_location"] == "s3://b/a/" and v1["finished"] is None


def test_shared_stream_key_ignores_filters_but_not_the_connection():
    a = watcher(search="corsica").shared_stream_key()
    assert a == watcher(tag="x", statuses=["FAILED"]).shared_stream_key()
    assert a != watcher(conn_id="other").shared_stream_key()
    assert a != watcher(api_version="v1").shared_stream_key()
    assert a != watcher(poll_interval=30).shared_stream_key()
    hash(a)
    assert watcher(share_poll=False).shared_stream_key() is None  # its own poll, searched by the service
    assert watcher(search="a").state_key() != watcher(search="b").state_key()


# --------------------------------------------------------------------------------------- edge detection
def records(*items, api_version="v2"):
    return [compact(api_version, i) for i in items]


def observe(state, items, *, targets=("DONE",), watermark=None, matches=lambda r: True):
    watermark = NOW - 60 if watermark is None else watermark
    fired = state.observe(items, matches=matches, targets=frozenset(targets), watermark=watermark)
    return [r["id"] for r in fired]


def test_fires_once_per_transition_never_while_it_stays_done():
    state = WatchState()
    first = records(
        v2("old", "DONE", updated=NOW - 7200), v2("new", "DONE", updated=NOW), v2("run", "PROCESSING")
    )
    assert observe(state, first) == ["new"]  # finished after the start watermark: reported; "old" is not
    assert observe(state, first) == []  # still DONE: never again
    second = records(
        v2("old", "DONE", updated=NOW - 7200), v2("new", "DONE"), v2("run", "DONE", updated=NOW + 60)
    )
    assert observe(state, second) == ["run"]
    assert observe(state, second) == []


def test_other_final_statuses_do_not_fire_a_done_watcher_but_a_failed_watcher_sees_them():
    done, failed = WatchState(), WatchState()
    assert observe(done, records(v2("a", "PROCESSING"), v2("b", "PROCESSING"))) == []
    assert observe(failed, records(v2("a", "PROCESSING"), v2("b", "PROCESSING")), targets=("FAILED",)) == []
    later = records(v2("a", "FAILED", updated=NOW + 5), v2("b", "DONE", updated=NOW + 6))
    assert observe(done, later) == ["b"]
    assert observe(failed, later, targets=("FAILED",)) == ["a"]


def test_a_new_target_status_of_the_same_request_fires_again():
    state = WatchState()
    p = {"id": "j", "created": iso(NOW), "userActionUpdated": iso(NOW)}
    assert (
        observe(state, records({**p, "status": "PROCESSING"}, api_version="v1"), targets=("DONE", "PARTIAL"))
        == []
    )
    partial = records({**p, "status": "PARTIAL"}, api_version="v1")
    assert observe(state, partial, targets=("DONE", "PARTIAL")) == ["j"]
    done = records({**p, "status": "DONE"}, api_version="v1")
    assert observe(state, done, targets=("DONE", "PARTIAL")) == ["j"]  # restarted partial, then DONE
    assert observe(state, done, targets=("DONE", "PARTIAL")) == []


def test_since_reaches_back_and_filters_apply():
    state = WatchState()
    items = records(
        v2("a", "DONE", updated=NOW - 5000, desc="corsica ndvi"),
        v2("b", "DONE", updated=NOW - 5000, desc="sardinia ndvi"),
        v2("c", "DONE", updated=NOW - 90000, desc="corsica ndvi"),
    )
    fired = observe(state, items, watermark=NOW - 6000, matches=lambda r: "corsica" in r["description"])
    assert fired == ["a"]  # b does not match, c finished before the watermark


def test_a_request_created_and_finished_between_two_polls_fires():
    state = WatchState()
    assert observe(state, records(v2("a", "PROCESSING"))) == []
    assert observe(state, records(v2("a", "PROCESSING"), v2("quick", "DONE", updated=NOW + 30))) == ["quick"]


def test_memory_is_bounded_and_forgotten_requests_never_fire_twice():
    state = WatchState(max_remembered=3)
    observe(state, [])
    items = records(*(v2(f"r{i}", "DONE", updated=NOW + i) for i in range(5)))
    assert observe(state, items) == [f"r{i}" for i in range(5)]
    assert len(state.reported) == 3 and set(state.reported) == {"r2", "r3", "r4"}
    assert state.floor == math.ceil(NOW + 1)  # whole seconds, rounded up
    assert observe(state, items) == []  # r0/r1 are below the floor: not reported again
    # a request that leaves the listing (deleted / out of the window) is forgotten without raising the floor
    assert observe(state, items[2:4]) == [] and set(state.reported) == {"r2", "r3"}
    newer = records(v2("r9", "DONE", updated=NOW + 100))
    assert observe(state, items[2:4] + newer) == ["r9"]


def test_state_json_round_trip_and_unknown_versions():
    state = WatchState()
    observe(state, records(v2("a", "DONE", updated=NOW)))
    again = WatchState.from_json(json.loads(json.dumps(state.to_json())), max_remembered=10)
    assert again is not None and again.reported == state.reported and again.baseline_done
    assert WatchState.from_json({"version": 99}, max_remembered=10) is None
    assert WatchState.from_json("garbage", max_remembered=10) is None


# ---------------------------------------------------------------------------------- listing over HTTP
async def test_pagination_filters_and_the_age_window(api, no_sleep):
    effect = then_stop(
        page(v2("a", "DONE", updated=NOW, desc="x corsica"), next_token="2"),
        page(
            v2("b", "DONE", updated=NOW, desc="y corsica"),
            v2("old", "DONE", updated=NOW, created=NOW - 40 * 86400, desc="corsica"),
            next_token="4",
        ),
    )
    api.get(LIST_V2).mock(side_effect=effect)
    t = watcher(search="corsica", since=NOW - 60, max_age=30 * 86400, page_size=2)
    events = await drain(t.run())
    assert [e["request_id"] for e in events] == ["a", "b"]
    # two pages, then the next poll: the third page (past the 30-day window) was never asked for
    first, second, third = (r.url.params for r in effect.requests)
    assert first["sort"] == "created:desc" and first["search"] == "corsica" and first["count"] == "2"
    assert second["viewtoken"] == "2" and "viewtoken" not in third
    assert len(no_sleep) == 1 and 55 < no_sleep[0] <= 60.0  # the interval, minus the poll's time


async def test_event_payload_is_small_flat_and_secret_free(api, no_sleep):
    api.get(LIST_V2).mock(side_effect=then_stop(page(v2("rid-1", "DONE", updated=NOW))))
    (event,) = await drain(watcher().run())
    assert event == {
        "event_id": "v2:rid-1:DONE",
        "request_id": "rid-1",
        "api_version": "v2",
        "status": "DONE",
        "cost_pu": 12.5,
        "output_location": "s3://bucket/out/rid-1/",
        "description": "ndvi",
        "created": iso(NOW - 600),
        "finished": iso(NOW),
        "error": None,
    }
    assert "KEY-123" not in json.dumps(event)


async def test_rate_limits_and_server_errors_never_raise_out_of_the_trigger(api, no_sleep, logs):
    effect = then_stop(
        page(v2("a", "PROCESSING")),
        httpx.Response(429, headers={"Retry-After": "1500"}),
        page(v2("a", "PROCESSING")),  # one 429 ridden out inside the call (shared retry policy)
        httpx.Response(503),
        httpx.Response(503),  # this poll's retries ran out: logged and skipped
        httpx.Response(403, json={"error": {"message": "Forbidden", "code": "COMMON_FORBIDDEN"}}),
        httpx.ConnectError("connection refused"),
        httpx.ConnectError("connection refused"),
        page(v2("a", "DONE", updated=NOW + 1)),
    )
    api.get(LIST_V2).mock(side_effect=effect)
    events = await drain(watcher(poll_interval=30).run())
    assert [e["request_id"] for e in events] == ["a"] and len(effect.requests) == 10
    assert any(1.5 <= w < 2.5 for w in no_sleep)  # Retry-After (milliseconds) plus jitter
    assert "failed (1 in a row" in logs.text and "failed (3 in a row" in logs.text
    assert "COMMON_FORBIDDEN" in logs.text


async def test_the_client_is_kept_across_polls_and_reopened_after_a_failure(api, no_sleep, monkeypatch):
    opened = []
    real_client = SentinelBatchEventTrigger._client

    def counting_client(self, settings):
        opened.append(settings)
        return real_client(self, settings)

    monkeypatch.setattr(SentinelBatchEventTrigger, "_client", counting_client)
    effect = then_stop(
        page(v2("a", "PROCESSING")),
        page(v2("a", "PROCESSING")),
        httpx.Response(500),
        httpx.Response(500),  # retries exhausted: this poll failed
        page(v2("a", "DONE", updated=NOW + 1)),
    )
    api.get(LIST_V2).mock(side_effect=effect)
    assert [e["request_id"] for e in await drain(watcher().run())] == ["a"]
    assert len(opened) == 2  # once at the start, once after the failed poll


async def test_v1_watcher_lists_the_v1_endpoint(api, no_sleep):
    effect = then_stop(
        page({"id": "p", "status": "PROCESSING", "created": iso(NOW), "description": "d"}),
        page({"id": "p", "status": "DONE", "created": iso(NOW), "description": "d", "valueEstimate": 3}),
    )
    api.get(LIST_V1).mock(side_effect=effect)
    (event,) = await drain(watcher(api_version="v1").run())
    assert event["request_id"] == "p" and event["api_version"] == "v1" and event["cost_pu"] == 1.0
    assert len(effect.requests) == 3


def stat(rid: str, status: str, *, updated: float | None = None, url: str = "s3://stats/ndvi") -> dict:
    """A Batch Statistical request as its list returns it (``costPu``, the spec's spelling; no description)."""
    updated = NOW if updated is None else updated
    return {
        "id": rid,
        "status": status,
        "created": iso(updated - 600),
        "lastUpdated": iso(updated),
        "costPu": 100.0,
        "request": {"output": {"s3": {"url": url, "secretAccessKey": "KEY-123"}}},
    }


async def test_batch_statistical_watcher_filters_on_the_output_url(api, no_sleep):
    effect = then_stop(
        page(stat("s1", "PROCESSING"), stat("s2", "PROCESSING", url="s3://other/x")),
        page(stat("s1", "DONE", updated=NOW + 1), stat("s2", "DONE", updated=NOW + 1, url="s3://other/x")),
    )
    api.get(LIST_STAT).mock(side_effect=effect)
    (event,) = await drain(watcher(api_version="statistical", tag="s3://stats/", search="ndvi").run())
    assert event["request_id"] == "s1" and event["api_version"] == "statistical"
    assert event["cost_pu"] == 100.0 and event["output_location"] == "s3://stats/ndvi/s1/"
    assert event["event_id"] == "statistical:s1:DONE" and "KEY-123" not in json.dumps(event)
    assert all("search" not in r.url.params for r in effect.requests)  # the statistical list has no search
    assert effect.requests[0].url.params["sort"] == "created:desc"


# ---------------------------------------------------------------------------------------- state store
async def test_state_store_survives_a_restart_exactly_once(api, no_sleep):
    store = FakeStore()
    route = api.get(LIST_V2).mock(
        side_effect=then_stop(
            page(v2("a", "PROCESSING"), v2("b", "PROCESSING")),
            page(v2("a", "DONE", updated=NOW + 1), v2("b", "PROCESSING")),
        )
    )
    first = watcher()
    first.asset_state_store = store
    assert [e["request_id"] for e in await drain(first.run())] == ["a"]
    (key,) = store.data
    assert key == first.state_key() and set(store.data[key]["reported"]) == {"a"}

    # the triggerer restarts; b finished meanwhile, a day before the new process started
    later = [page(v2("a", "DONE", updated=NOW + 1), v2("b", "DONE", updated=NOW - 86400))] * 2
    route.side_effect = then_stop(*later)
    second = watcher()
    second.asset_state_store = store
    assert [e["request_id"] for e in await drain(second.run())] == ["b"]  # once, and not "a" again
    assert set(store.data[key]["reported"]) == {"a", "b"}


async def test_without_a_state_store_a_restart_reports_recent_jobs_again(api, no_sleep):
    """Airflow 3.0-3.2: at-least-once within catch_up; consumers deduplicate on request_id / event_id."""
    done = page(v2("a", "DONE", updated=NOW - 100), v2("z", "DONE", updated=NOW - 86400))
    route = api.get(LIST_V2).mock(side_effect=then_stop(done, done))
    assert [e["event_id"] for e in await drain(watcher(catch_up=600).run())] == ["v2:a:DONE"]
    route.side_effect = then_stop(done)
    assert [e["event_id"] for e in await drain(watcher(catch_up=600).run())] == ["v2:a:DONE"]


@pytest.mark.parametrize(
    ("store", "text"),
    [
        (
            FakeStore(fail_get=ValueError("Task has 2 concrete inlets and outlets — use ...")),
            "more than one asset",
        ),
        (FakeStore(fail_get=RuntimeError("supervisor gone")), "Could not read the watcher state"),
        (FakeStore(fail_set=True), "Could not save the watcher state"),
    ],
)
async def test_state_store_failures_fall_back_to_memory(api, no_sleep, store, text, logs):
    listings = [page(v2("a", "PROCESSING")), page(v2("a", "DONE", updated=NOW + 1)), page(v2("a", "DONE"))]
    api.get(LIST_V2).mock(side_effect=then_stop(*listings))
    t = watcher()
    t.asset_state_store = store
    events = await drain(t.run())
    assert [e["request_id"] for e in events] == ["a"]  # edge detection still works, in memory
    assert text in logs.text
    assert store.sets == 0


async def test_events_of_one_poll_are_spaced_so_each_gets_its_own_run(api, no_sleep):
    api.get(LIST_V2).mock(
        side_effect=then_stop(
            page(
                v2("a", "DONE", updated=NOW + 1),
                v2("b", "DONE", updated=NOW + 2),
                v2("c", "DONE", updated=NOW + 3),
            )
        )
    )
    events = await drain(watcher(event_spacing=5.0, poll_interval=60).run())
    assert [e["request_id"] for e in events] == ["a", "b", "c"]  # oldest first
    spacing = [w for w in no_sleep if w < 10]
    assert len(spacing) == 2 and all(4.5 < w <= 5.0 for w in spacing), no_sleep


async def test_a_restart_between_spaced_events_emits_the_rest_not_the_first(api, no_sleep):
    store = FakeStore()
    listing = page(v2("a", "PROCESSING"), v2("b", "PROCESSING"))
    done = page(v2("a", "DONE", updated=NOW + 1), v2("b", "DONE", updated=NOW + 2))
    route = api.get(LIST_V2).mock(side_effect=then_stop(listing, done))
    first = watcher(event_spacing=5.0)
    first.asset_state_store = store
    stream = first.run()
    assert [e["request_id"] for e in await take(stream, 1)] == ["a"]
    await asyncio.wait_for(
        stream.__anext__(), 5
    )  # b, after the spacing: the state saved after a is handed over
    await stream.aclose()  # the triggerer stops before b's turn was acknowledged
    assert set(store.data[first.state_key()]["reported"]) == {"a"}
    route.side_effect = then_stop(done)
    second = watcher()
    second.asset_state_store = store
    assert [e["request_id"] for e in await drain(second.run())] == ["b"]


# ---------------------------------------------------------------------------------------- shared poll
async def test_many_watchers_share_one_poll_per_interval(api):
    """Airflow's own SharedStreamManager: 20 watchers with different filters, one list call per interval."""
    shared_stream = pytest.importorskip("airflow.triggers.shared_stream")
    listings = [
        page(*(v2(f"r{i}", "PROCESSING", desc=f"aoi-{i % 4}") for i in range(8))),
        *[page(*(v2(f"r{i}", "DONE", updated=NOW + i, desc=f"aoi-{i % 4}") for i in range(8)))] * 20,
    ]
    route = api.get(LIST_V2).mock(side_effect=listings)
    manager = shared_stream.SharedStreamManager()
    watchers = [watcher(search=f"aoi-{i % 4}", poll_interval=0.3) for i in range(20)]
    keys = {w.shared_stream_key() for w in watchers}
    assert len(keys) == 1
    (key,) = keys

    async def one(i, w):
        stream = w.filter_shared_stream(manager.subscribe(trigger_id=i, trigger=w, key=key))
        return await take(stream, 2)

    try:
        results = await asyncio.gather(*(one(i, w) for i, w in enumerate(watchers)))
        calls = route.call_count
    finally:
        await manager.stop_all()
    for i, events in enumerate(results):
        assert sorted(e["request_id"] for e in events) == sorted(f"r{j}" for j in range(8) if j % 4 == i % 4)
    # each watcher got 2 events from the second listing; 20 watchers cost 2 list calls, not 40
    assert calls == 2


async def test_open_shared_stream_lists_without_the_watchers_search(api):
    route = api.get(LIST_V2).mock(side_effect=[page(v2("a", "DONE"))])
    stream = SentinelBatchEventTrigger.open_shared_stream(watcher(search="only-mine").serialize()[1])
    listing = await asyncio.wait_for(stream.__anext__(), 5)
    await stream.aclose()
    assert [r["id"] for r in listing] == ["a"]
    assert "search" not in route.calls[0].request.url.params
