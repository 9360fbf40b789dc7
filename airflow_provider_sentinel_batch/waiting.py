"""What a waiting task concludes from one look at a batch request, and when to look next.

Pure functions shared by the sensor's ``poke`` (worker) and the trigger's ``run`` (triggerer), so both modes
judge the same states the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from airflow_provider_sentinel_batch.models import (
    ANALYSIS_REACHED,
    FAILURE,
    TERMINAL,
    cost_of,
    output_location,
)

WAIT_TARGETS = ("ANALYSIS_DONE", "DONE")

# Verdict outcomes
WAIT = "wait"
SUCCESS = "success"
FAILED = "failed"
PARTIAL = "partial"
NOT_STARTED = "not_started"
COST_EXCEEDED = "cost_exceeded"
TIMEOUT = "timeout"
ERROR = "error"

_SUMMARY_FIELDS = (
    "status",
    "userAction",
    "userActionUpdated",
    "created",
    "lastUpdated",
    "error",
    "stoppedStatusReason",
    "completionPercentage",
    "costPU",
    "valueEstimate",
    "tileCount",
    "tileWidthPx",
    "tileHeightPx",
    "description",
)


@dataclass(frozen=True)
class Verdict:
    outcome: str
    message: str


def summarize(api_version: str, request: dict[str, Any]) -> dict[str, Any]:
    """The safe, useful part of a request object: never the payload (v2 payloads may carry bucket keys)."""
    summary: dict[str, Any] = {"request_id": request.get("id"), "api_version": api_version}
    for key in _SUMMARY_FIELDS:
        if key in request and request[key] is not None:
            summary[key] = request[key]
    if api_version == "v2" and "description" not in summary:
        inner = request.get("request")
        if isinstance(inner, dict) and inner.get("description"):
            summary["description"] = inner["description"]
    summary["cost_pu"] = cost_of(api_version, request)
    summary["output_location"] = output_location(api_version, request)
    return summary


def describe(api_version: str, request: dict[str, Any]) -> str:
    """One log line per status change: status, progress and cost."""
    parts = [f"status {request.get('status')}"]
    if request.get("userAction"):
        parts.append(f"user action {request['userAction']}")
    if request.get("completionPercentage") is not None:
        parts.append(f"{request['completionPercentage']}% complete")
    if request.get("tileCount") is not None:
        parts.append(f"{request['tileCount']} tiles")
    if api_version == "v2" and request.get("costPU") is not None:
        parts.append(f"cost {request['costPU']} PU so far")
    if api_version == "v1" and request.get("valueEstimate") is not None:
        estimate = float(request["valueEstimate"])
        parts.append(f"estimate {estimate:g} PU before the batch discount (~{estimate / 3:.1f} PU charged)")
    return ", ".join(parts)


def judge(
    api_version: str, wait_for: str, request: dict[str, Any], *, max_cost_pu: float | None = None
) -> Verdict:
    """Decide from one request object whether the wait is over, and how."""
    status = str(request.get("status"))
    action = request.get("userAction")
    rid = request.get("id")
    if status in FAILURE[api_version]:
        detail = f"Batch request {rid} ended {status}"
        if request.get("stoppedStatusReason"):
            detail += f" (stoppedStatusReason {request['stoppedStatusReason']})"
        if request.get("error"):
            detail += f": {request['error']}"
        return Verdict(FAILED, detail)
    if max_cost_pu is not None and api_version == "v2":
        cost = cost_of(api_version, request)
        if cost is not None and cost > max_cost_pu and status not in TERMINAL[api_version]:
            return Verdict(
                COST_EXCEEDED, f"Batch request {rid} has cost {cost:g} PU, over max_cost_pu={max_cost_pu:g}"
            )
    if wait_for == "ANALYSIS_DONE":
        if status in ANALYSIS_REACHED:
            return Verdict(SUCCESS, f"Batch request {rid} analysed ({status})")
        if status == "CREATED" and action in (None, "NONE"):
            return Verdict(
                NOT_STARTED, f"Batch request {rid} is CREATED and nobody asked for analysis (ANALYSE)"
            )
        return Verdict(WAIT, status)
    if status == "DONE":
        return Verdict(SUCCESS, f"Batch request {rid} is DONE")
    if status == "PARTIAL":
        return Verdict(PARTIAL, f"Batch request {rid} ended PARTIAL: some tiles failed")
    if status in ("CREATED", "ANALYSIS_DONE") and action != "START":
        return Verdict(
            NOT_STARTED,
            f"Batch request {rid} is {status} with user action {action or 'NONE'}: nobody started this job "
            "(START it, e.g. with SentinelBatchStartOperator, before waiting for DONE)",
        )
    if status not in (*TERMINAL[api_version], "CREATED", "ANALYSING", "ANALYSIS_DONE", "PROCESSING"):
        # unknown status from a newer API: keep waiting (forward compatible) but say so
        return Verdict(WAIT, f"unknown status {status!r}")
    return Verdict(WAIT, status)


def next_delay(
    status: str | None,
    *,
    poll_interval: float,
    analysis_poll_interval: float,
    progress: list[tuple[float, float]] | None = None,
    max_poll_interval: float | None = None,
    now: float | None = None,
    elapsed: float | None = None,
) -> float:
    """Seconds until the next look.

    * CREATED/ANALYSING/ANALYSIS_DONE: ``analysis_poll_interval`` (analysis takes seconds to minutes). With
      ``elapsed`` (seconds since the wait began; pass it when waiting for ``DONE``, where the analysis is
      only the preamble) the interval grows with the time already waited, up to ``poll_interval``.
    * PROCESSING: ``poll_interval`` until the rate of ``completionPercentage`` is known. ``progress`` holds
      ``(time, percentage)`` samples: either the first and the latest change as two points, or four
      samples, the looks just before and at the first change and just before and at the latest change
      (each change is then placed in the middle of its gap, and the start-up time before the first tile
      finished does not dilute the rate). The wait stretches to shortly before the earliest plausible
      finish (never beyond ``max_poll_interval``, default ``10 * poll_interval``), then looks at least every
      ``poll_interval``, once aimed just after the predicted end. ``now`` counts the time already spent since
      the latest change. A job later than predicted is looked at every ``poll_interval`` (as a fixed-interval
      poller would), one at 100 % (final status pending) every ``analysis_poll_interval``. Measured in
      ``docs/benchmarks.md`` (polls per job).
    """
    if status in ("CREATED", "ANALYSING", "ANALYSIS_DONE", None):
        if elapsed is None:
            return analysis_poll_interval
        return min(max(analysis_poll_interval, elapsed), max(poll_interval, analysis_poll_interval))
    limit = max_poll_interval if max_poll_interval is not None else poll_interval * 10
    if not progress or len(progress) < 2:
        return poll_interval
    if len(progress) >= 4:
        (a0, _), (b0, p0), (a1, before), (b1, p1) = progress[0], progress[1], progress[-2], progress[-1]
        first, latest, uncertainty, jump = (a0 + b0) / 2, (a1 + b1) / 2, (b1 - a1) / 2, p1 - before
    else:
        (first, p0), (latest, p1), uncertainty, jump = progress[0], progress[-1], 0.0, 0.0
    if latest <= first or p1 <= p0:
        return poll_interval
    if p1 >= 100.0:
        return analysis_poll_interval  # every tile is done; the final status follows within seconds
    if 100.0 - p1 <= 2 * jump:
        # what is left is about what moved in the last gap: the end cannot be timed more finely than that
        return poll_interval
    rate = (p1 - p0) / (latest - first)
    if jump > 0 and uncertainty > 0:
        rate = max(rate, jump / (2 * uncertainty))  # speeding up (the last tiles): trust the recent rate
    remaining = (100.0 - p1) / rate - (max(0.0, now - latest) if now is not None else 0.0)
    if remaining <= 0:
        return poll_interval  # later than predicted: look as often as a fixed-interval poller would
    earliest = 0.9 * remaining - uncertainty  # the rate may be off, and the change time is not exact
    if earliest > 2 * poll_interval:
        # far from the finish: sleep until shortly before it could be over (re-measured at every look)
        return min(limit, max(poll_interval, earliest - poll_interval))
    # close to the finish: look a little after the predicted end, and no later than usual
    return max(min(poll_interval, remaining + 0.05 * poll_interval), analysis_poll_interval)
