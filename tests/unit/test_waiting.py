"""The shared judgement of a request's state and the polling schedule (pure functions)."""

from __future__ import annotations

import pytest

from airflow_provider_sentinel_batch.waiting import judge, next_delay, summarize


@pytest.mark.parametrize(
    ("version", "wait_for", "job", "outcome"),
    [
        ("v1", "DONE", {"status": "DONE"}, "success"),
        ("v1", "DONE", {"status": "PARTIAL"}, "partial"),
        ("v1", "DONE", {"status": "CANCELED"}, "failed"),
        ("v1", "DONE", {"status": "PROCESSING"}, "wait"),
        ("v1", "DONE", {"status": "ANALYSING", "userAction": "START"}, "wait"),
        ("v1", "DONE", {"status": "CREATED", "userAction": "NONE"}, "not_started"),
        ("v1", "DONE", {"status": "ANALYSIS_DONE", "userAction": "ANALYSE"}, "not_started"),
        ("v1", "DONE", {"status": "ANALYSIS_DONE", "userAction": "START"}, "wait"),
        ("v1", "ANALYSIS_DONE", {"status": "ANALYSIS_DONE"}, "success"),
        ("v1", "ANALYSIS_DONE", {"status": "PROCESSING"}, "success"),
        ("v1", "ANALYSIS_DONE", {"status": "CREATED", "userAction": "NONE"}, "not_started"),
        ("v1", "ANALYSIS_DONE", {"status": "CREATED", "userAction": "ANALYSE"}, "wait"),
        ("v1", "ANALYSIS_DONE", {"status": "FAILED", "error": "x"}, "failed"),
        ("v2", "DONE", {"status": "STOPPED", "stoppedStatusReason": "USER_ACTION"}, "failed"),
        ("v2", "DONE", {"status": "DONE"}, "success"),
        ("v2", "DONE", {"status": "SOMETHING_NEW", "userAction": "START"}, "wait"),  # forward compatible
    ],
)
def test_judge(version, wait_for, job, outcome):
    assert judge(version, wait_for, {"id": "r", **job}).outcome == outcome


def test_cost_guard_only_while_running():
    running = {"id": "r", "status": "PROCESSING", "costPU": 101.0}
    assert judge("v2", "DONE", running, max_cost_pu=100).outcome == "cost_exceeded"
    assert judge("v2", "DONE", {**running, "status": "DONE"}, max_cost_pu=100).outcome == "success"
    assert judge("v2", "DONE", {**running, "costPU": 99.0}, max_cost_pu=100).outcome == "wait"


def test_summary_never_carries_the_payload():
    request = {
        "id": "r",
        "status": "DONE",
        "costPU": 3.0,
        "request": {
            "description": "d",
            "output": {"delivery": {"s3": {"url": "s3://b/", "secretAccessKey": "S"}}},
        },
    }
    summary = summarize("v2", request)
    assert summary == {
        "request_id": "r",
        "api_version": "v2",
        "status": "DONE",
        "costPU": 3.0,
        "description": "d",
        "cost_pu": 3.0,
        "location": "s3://b/r/",
    }


def test_fast_while_analysing_slow_while_processing():
    assert next_delay("ANALYSING", poll_interval=60, analysis_poll_interval=10) == 10
    assert next_delay("PROCESSING", poll_interval=60, analysis_poll_interval=10) == 60


def test_adaptive_sleeps_towards_the_predicted_finish():
    # 1 % per 60 s: ~99 min left -> sleep long, but never past max_poll_interval
    far = next_delay(
        "PROCESSING",
        poll_interval=60,
        analysis_poll_interval=10,
        progress=[(0, 0.0), (60, 1.0)],
        max_poll_interval=900,
    )
    assert far == 900
    # 10 % per minute with 80 % done: 2 min left -> come back just after the predicted end, not later
    near = next_delay(
        "PROCESSING", poll_interval=60, analysis_poll_interval=10, progress=[(0, 70.0), (60, 80.0)]
    )
    assert 10 <= near <= 60
    # no progress measured: the plain interval
    assert (
        next_delay("PROCESSING", poll_interval=60, analysis_poll_interval=10, progress=[(0, 5.0), (60, 5.0)])
        == 60
    )


def test_analysis_backs_off_with_the_time_waited_when_waiting_for_done():
    kw = {"poll_interval": 60, "analysis_poll_interval": 10}
    assert next_delay("ANALYSING", **kw, elapsed=0) == 10
    assert next_delay("ANALYSING", **kw, elapsed=25) == 25
    assert next_delay("ANALYSIS_DONE", **kw, elapsed=600) == 60


def test_four_samples_time_the_finish_from_the_changes():
    kw = {"poll_interval": 60, "analysis_poll_interval": 10}
    # looks before/at the first change (0 -> 10 %) and before/at the latest (50 -> 60 %): 50 % in 940 s
    progress = [(1000.0, 0.0), (1060.0, 10.0), (1940.0, 50.0), (2000.0, 60.0)]
    far = next_delay("PROCESSING", **kw, progress=progress, now=2000.0)
    assert 60 < far <= 600  # ~750 s left: sleep most of it, never past the default cap
    # later than predicted: back to the plain interval, as a fixed poller
    assert next_delay("PROCESSING", **kw, progress=progress, now=4000.0) == 60
    # what is left is no more than twice the last jump: plain interval until it ends
    near_end = [(1000.0, 0.0), (1060.0, 10.0), (1940.0, 50.0), (2000.0, 80.0)]
    assert next_delay("PROCESSING", **kw, progress=near_end, now=2000.0) == 60
    # every tile done, final status pending: look again soon
    done = [(1000.0, 0.0), (1060.0, 10.0), (1940.0, 90.0), (2000.0, 100.0)]
    assert next_delay("PROCESSING", **kw, progress=done, now=2000.0) == 10
