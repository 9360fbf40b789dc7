"""The sans-IO watch of one wait, and the three choices that made the trigger, the worker loop and poke agree."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from airflow_provider_sentinel_batch.exceptions import SentinelBatchAPIError
from airflow_provider_sentinel_batch.waiting import OUTCOME_KEY, Outcome, Watch, next_delay, stop_note

RID = "r-1"


def watch(**kwargs):
    return Watch(request_id=RID, **{"api_version": "v2", "wait_for": "DONE", **kwargs})


class Log:
    def __init__(self):
        self.lines = []

    def info(self, msg, *args):
        self.lines.append(("info", msg % args))

    def warning(self, msg, *args):
        self.lines.append(("warning", msg % args))


def test_look_reports_changes_and_ends_on_a_verdict():
    w = watch()
    first = w.look({"id": RID, "status": "PROCESSING", "userAction": "START"}, now=0.0)
    again = w.look({"id": RID, "status": "PROCESSING", "userAction": "START"}, now=1.0)
    done = w.look({"id": RID, "status": "DONE"}, now=2.0)
    assert (first.changed, first.over) == (True, False)
    assert (again.changed, again.over) == (False, False)
    assert done.changed and done.over and done.verdict.outcome == Outcome.SUCCESS
    assert w.last_status == "DONE"


def test_stale_status_is_waited_through_until_it_moves_or_expires():
    w = watch(api_version="v1")
    w.expect_stale("PARTIAL", until=100.0)
    still = w.look({"id": RID, "status": "PARTIAL"}, now=10.0)
    assert still.verdict.outcome == Outcome.WAIT and "not updated yet" in still.verdict.message
    w.look({"id": RID, "status": "PROCESSING", "userAction": "START"}, now=20.0)
    assert w.stale_status is None  # moved: a later PARTIAL is the new result, inside the window or not
    assert w.look({"id": RID, "status": "PARTIAL"}, now=30.0).verdict.outcome == Outcome.PARTIAL
    late = watch(api_version="v1")
    late.expect_stale("PARTIAL", until=100.0)
    assert late.look({"id": RID, "status": "PARTIAL"}, now=101.0).verdict.outcome == Outcome.PARTIAL


def test_progress_samples_feed_the_adaptive_delay_and_reset_on_a_status_change():
    w = watch(adaptive=True, poll_interval=60, analysis_poll_interval=10, started=0.0)
    for t, pct in ((0, 0), (60, 0), (120, 10), (180, 10), (240, 20)):
        w.look({"id": RID, "status": "PROCESSING", "userAction": "START", "completionPercentage": pct}, now=t)
    assert len(w.progress) == 4
    assert w.delay(now=240) == next_delay(
        "PROCESSING",
        poll_interval=60,
        analysis_poll_interval=10,
        progress=w.progress,
        now=240,
        elapsed=240,
        looks=5,
    )
    assert w.delay(now=240) > 60  # far from the end: sleeps longer than the fixed interval
    w.look({"id": RID, "status": "DONE"}, now=300)
    assert w.progress == [] and w.last_sample is None


def test_delay_is_cut_at_the_deadline_and_expired_after_it():
    w = watch(deadline=1000.0)
    w.look({"id": RID, "status": "PROCESSING", "userAction": "START"}, now=980.0)
    assert w.delay(now=980.0) == 20.0
    assert not w.expired(now=999.9) and w.expired(now=1000.0)
    event = w.timeout("; the job was asked to stop")
    assert event == {
        OUTCOME_KEY: "timeout",
        "request_id": RID,
        "api_version": "v2",
        "message": f"Batch request {RID} did not reach DONE before the deadline; the job was asked to stop",
    }


def test_event_carries_the_outcome_apart_from_the_service_status():
    w = watch(api_version="v1")
    request = {"id": RID, "status": "PARTIAL", "bucketName": "b"}
    look = w.look(request, now=0.0)
    event = w.event(look.verdict, request, tiles={"PROCESSED": 3, "FAILED": 1})
    assert event[OUTCOME_KEY] == "partial" and event["summary"]["status"] == "PARTIAL"
    assert "status" not in event  # one word for one thing: the verdict is the outcome
    assert event["summary"]["tiles"] == {"PROCESSED": 3, "FAILED": 1}
    assert event["summary"]["location"] == f"s3://b/{RID}/"


def test_cost_verdict_and_error_event():
    w = watch(max_cost_pu=10.0)
    look = w.look({"id": RID, "status": "PROCESSING", "userAction": "START", "costPU": 12.0}, now=0.0)
    assert look.over and look.verdict.outcome == Outcome.COST_EXCEEDED
    assert w.error("boom") == {
        OUTCOME_KEY: "error",
        "request_id": RID,
        "api_version": "v2",
        "message": "boom",
    }


# ------------------------------------------------------------------------- the three decisions
@pytest.mark.parametrize(
    ("version", "status", "counted"),
    [
        ("v1", "DONE", True),
        ("v1", "PARTIAL", True),  # succeed_with_warning returns this summary: it needs the counts
        ("v1", "FAILED", False),  # the task fails with the service's error: nobody reads tile counts
        ("v1", "CANCELED", False),
        ("v2", "DONE", False),  # v2 has no tiles endpoint
    ],
)
def test_decision_tiles_are_counted_where_a_summary_is_returned(version, status, counted):
    """Decision 1: one rule for all three loops (the sensor counted only on DONE, the others also on FAILED)."""
    w = watch(api_version=version)
    request = {"id": RID, "status": status}
    assert w.counts_tiles(request) is counted
    summary = w.event(w.look(request, now=0.0).verdict, request, tiles={"PROCESSED": 1})["summary"]
    assert ("tiles" in summary) is counted


def test_decision_every_stop_says_how_it_went():
    """Decision 2: the worker and the trigger end a cost-stop or timeout message with the same note."""
    log = Log()
    assert stop_note(log, "v2", RID, "the cost guard") == "; the job was asked to stop"
    assert stop_note(log, "v1", RID, "the deadline") == "; the job was asked to cancel"
    finished = SentinelBatchAPIError(status=409, method="POST", url="u", message="already DONE")
    assert stop_note(log, "v2", RID, "the deadline", finished) == "; stop not needed (already DONE)"
    broken = stop_note(log, "v2", RID, "the deadline", RuntimeError("down"))
    assert broken.startswith("; stop FAILED (down)")
    assert [level for level, _ in log.lines] == ["info", "info", "warning"]


def test_decision_the_worker_appends_the_stop_note_like_the_trigger():
    from airflow_provider_sentinel_batch.waiting_task import WaitsForBatch

    calls = []
    task = SimpleNamespace(
        hook=SimpleNamespace(stop_or_cancel=lambda rid: calls.append(rid), count_tiles=lambda rid: {}),
        version="v2",
        log=Log(),
    )
    task._stop = WaitsForBatch._stop.__get__(task)
    task._count_tiles = WaitsForBatch._count_tiles.__get__(task)
    w = watch(max_cost_pu=1.0)
    request = {"id": RID, "status": "PROCESSING", "userAction": "START", "costPU": 5.0}
    event = WaitsForBatch._end_event(task, w, w.look(request, now=0.0).verdict, request)
    assert calls == [RID]
    assert (
        event["message"]
        == f"Batch request {RID} has cost 5 PU, over max_cost_pu=1; the job was asked to stop"
    )


@pytest.mark.parametrize(
    ("adaptive", "wait_for", "analysis_delay"),
    [(False, "DONE", 10), (False, "ANALYSIS_DONE", 10), (True, "ANALYSIS_DONE", 10), (True, "DONE", 60)],
)
@pytest.mark.parametrize("status", ["CREATED", "ANALYSING", "ANALYSIS_DONE"])
def test_decision_analysis_done_is_polled_at_the_analysis_interval(
    status, adaptive, wait_for, analysis_delay
):
    """Decision 3: ANALYSIS_DONE is before processing in every mode (the fixed-interval trigger used poll_interval).

    An adaptive wait for DONE is held to a fixed ``poll_interval`` poller's looks: the analysis is only its preamble.
    """
    w = watch(adaptive=adaptive, wait_for=wait_for, poll_interval=60, analysis_poll_interval=10, started=0.0)
    w.look({"id": RID, "status": status, "userAction": "START"}, now=0.0)
    assert w.delay(now=0.0) == analysis_delay
    if wait_for == "DONE":
        w.look({"id": RID, "status": "PROCESSING", "userAction": "START"}, now=60.0)
        assert w.delay(now=60.0) == 60
