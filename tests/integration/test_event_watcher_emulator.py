"""SentinelBatchEventTrigger against the emulator: real list endpoints (pagination, sort, search), jobs that run
to their end on the emulator's clock, Batch v2 and Batch Statistical. (The real-triggerer test runs it under
Airflow's daemons; here its own poll loop runs in the test's event loop.)"""

from __future__ import annotations

import asyncio
import time
from importlib.metadata import version
from typing import Any

import pytest

from airflow_provider_sentinel_batch.hooks.sentinel_batch import SentinelBatchHook
from tests.emulator.stat_helpers import OUTPUT_URL, stat_payload, write_parcels
from tests.payloads import SMALL_BBOX, corsica_v2

if version("apache-airflow").startswith("2."):
    pytest.skip("asset watchers (BaseEventTrigger) exist from Airflow 3 on", allow_module_level=True)

from airflow_provider_sentinel_batch.triggers.events import SentinelBatchEventTrigger

MARKER = "[watched]"


def v2_payload(description: str) -> dict[str, Any]:
    """A quick v2 job (1-4 tiles) delivering under ``s3://watched/``."""
    return corsica_v2(
        "s3://watched/<requestId>/<tileName>",
        description=description,
        bbox=SMALL_BBOX,
        data_type="sentinel-2-l2a",
        max_cloud_coverage=None,
    )


class Collector:
    """Runs a watcher's own poll loop in the background and keeps its event payloads."""

    def __init__(self, watcher: SentinelBatchEventTrigger) -> None:
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._run(watcher))

    async def _run(self, watcher: SentinelBatchEventTrigger) -> None:
        async for event in watcher.run():
            self.events.append(event.payload)

    async def until(self, count: int, timeout: float = 60.0) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(self.events) < count:
            assert not self.task.done(), self.task
            assert time.monotonic() < deadline, f"{len(self.events)} events, expected {count}: {self.events}"
            await asyncio.sleep(0.1)
        return self.events

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def wait_status(
    hook: SentinelBatchHook, request_id: str, status: str, *, statistical: bool = False
) -> None:
    deadline = time.monotonic() + 60
    while True:
        body = hook.get_statistical_status(request_id) if statistical else hook.get_request(request_id)
        if body["status"] == status:
            return
        assert time.monotonic() < deadline, f"{request_id} still {body['status']}"
        await asyncio.sleep(0.2)


async def test_v2_jobs_finishing_on_the_emulator_fire_once_each(sentinel_batch_emulator, monkeypatch):
    emu = sentinel_batch_emulator
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", emu.airflow_conn_json("v2"))
    hook = SentinelBatchHook(api_version="v2")

    def started(description: str) -> str:
        request_id = hook.create_request(v2_payload(description))["id"]
        hook.start(request_id)
        return str(request_id)

    old = started(f"finished before the watcher {MARKER}")
    await wait_status(hook, old, "DONE")
    for i in range(5):  # more than one list page (page_size=2)
        hook.create_request(v2_payload(f"never started {i} {MARKER}"))

    collector = Collector(
        SentinelBatchEventTrigger(
            api_version="v2", tag=MARKER, poll_interval=0.2, catch_up=0, page_size=2, event_spacing=0
        )
    )
    try:
        await asyncio.sleep(1.0)  # a few polls see the account as it was
        a, b = started(f"a {MARKER}"), started(f"b {MARKER}")
        other = started("not marked")
        failing = started(f"fails {MARKER}")
        emu.state.force(failing, "FAILED")
        for request_id in (a, b, other):
            await wait_status(hook, request_id, "DONE")
        events = await collector.until(2)
        await asyncio.sleep(1.5)  # several more polls: nothing else
    finally:
        await collector.stop()
    assert sorted(e["request_id"] for e in events) == sorted([a, b])
    for event in events:
        assert (
            event["status"] == "DONE" and event["output_location"] == f"s3://watched/{event['request_id']}/"
        )
        assert event["finished"] and event["cost_pu"] is not None and MARKER in event["description"]
    list_calls = emu.stats()["calls"]["GET /api/v2/batch/process"]
    assert list_calls >= 10, list_calls  # it kept polling, page by page


async def test_batch_statistical_requests_are_watched_too(sentinel_batch_emulator, monkeypatch):
    emu = sentinel_batch_emulator
    monkeypatch.setenv("AIRFLOW_CONN_SENTINEL_BATCH_DEFAULT", emu.airflow_conn_json("v2"))
    write_parcels(emu.data_dir, count=3)
    hook = SentinelBatchHook()
    collector = Collector(
        SentinelBatchEventTrigger(
            api_version="statistical", tag=OUTPUT_URL, poll_interval=0.2, catch_up=0, event_spacing=0
        )
    )
    try:
        await asyncio.sleep(0.5)
        request_id = str(hook.create_statistical_request(stat_payload())["id"])
        other = str(
            hook.create_statistical_request(stat_payload(**{"output.s3.url": "s3://elsewhere/x"}))["id"]
        )
        for rid in (request_id, other):
            hook.start_statistical(rid)
        for rid in (request_id, other):
            await wait_status(hook, rid, "DONE", statistical=True)
        (event,) = await collector.until(1)
        await asyncio.sleep(1.0)
    finally:
        await collector.stop()
    assert len(collector.events) == 1
    assert event["request_id"] == request_id and event["api_version"] == "statistical"
    assert event["status"] == "DONE" and event["output_location"] == f"{OUTPUT_URL}/{request_id}/"
    assert event["cost_pu"] and event["cost_pu"] >= 100.0
    assert "SK-secret" not in str(event)
