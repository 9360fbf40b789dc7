"""The wait on a batch request, without I/O: what one look means, when to look next, and the event it ends with.

:class:`Watch` is the one place that keeps the state of a wait (last status, progress samples, the window in
which a stale status is ignored, the deadline), judges each look, decides when tile counts belong in the summary
and builds the event. The three loops that wait (the trigger on the triggerer, the task polling on the worker
and the sensor's ``poke``) only fetch, sleep, stop and count: the I/O.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from airflow_provider_sentinel_batch.layout import location_of
from airflow_provider_sentinel_batch.models import (
    ANALYSIS_PHASE,
    ANALYSIS_REACHED,
    AWAITING_START,
    FAILURE,
    KNOWN,
    TERMINAL,
    TILES_COUNTED_AT,
    Status,
    UserAction,
    cost_of,
    nobody_asked,
)


class Outcome(StrEnum):
    """How a look (or a whole wait) ends; a verdict of this provider, never a service status."""

    WAIT = "wait"
    SUCCESS = "success"
    FAILED = "failed"
    PARTIAL = "partial"
    NOT_STARTED = "not_started"
    COST_EXCEEDED = "cost_exceeded"
    TIMEOUT = "timeout"
    ERROR = "error"


#: The key of a wait event that holds its :class:`Outcome` (``summary["status"]`` is the service status).
OUTCOME_KEY = "outcome"

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
    """What one look concluded: an :class:`Outcome` and the message a user reads."""

    outcome: Outcome
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
    summary["location"] = location_of(api_version, request)
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
    if api_version in ("v2", "statistical") and cost_of(api_version, request) is not None:
        parts.append(f"cost {cost_of(api_version, request)} PU so far")
    if api_version == "v1" and request.get("valueEstimate") is not None:
        estimate = float(request["valueEstimate"])
        parts.append(f"estimate {estimate:g} PU before the batch discount (~{estimate / 3:.1f} PU charged)")
    return ", ".join(parts)


def failure_message(request: dict[str, Any]) -> str:
    """``Batch request <id> ended <status> (stoppedStatusReason …): <error>`` for a failed job."""
    detail = f"Batch request {request.get('id')} ended {request.get('status')}"
    if request.get("stoppedStatusReason"):
        detail += f" (stoppedStatusReason {request['stoppedStatusReason']})"
    if request.get("error"):
        detail += f": {request['error']}"
    return detail


def judge(
    api_version: str, wait_for: str, request: dict[str, Any], *, max_cost_pu: float | None = None
) -> Verdict:
    """Decide from one request object whether the wait is over, and how."""
    status = str(request.get("status"))
    action = request.get("userAction")
    rid = request.get("id")
    if status in FAILURE[api_version]:
        return Verdict(Outcome.FAILED, failure_message(request))
    if max_cost_pu is not None and api_version in ("v2", "statistical"):
        cost = cost_of(api_version, request)
        if cost is not None and cost > max_cost_pu and status not in TERMINAL[api_version]:
            return Verdict(
                Outcome.COST_EXCEEDED,
                f"Batch request {rid} has cost {cost:g} PU, over max_cost_pu={max_cost_pu:g}",
            )
    if wait_for == Status.ANALYSIS_DONE:
        if status in ANALYSIS_REACHED:
            return Verdict(Outcome.SUCCESS, f"Batch request {rid} analysed ({status})")
        if status == Status.CREATED and nobody_asked(action):
            return Verdict(
                Outcome.NOT_STARTED, f"Batch request {rid} is CREATED and nobody asked for analysis (ANALYSE)"
            )
        return Verdict(Outcome.WAIT, status)
    if status == Status.DONE:
        return Verdict(Outcome.SUCCESS, f"Batch request {rid} is DONE")
    if status == Status.PARTIAL:
        return Verdict(Outcome.PARTIAL, f"Batch request {rid} ended PARTIAL: some tiles failed")
    if status in AWAITING_START and action != UserAction.START:
        return Verdict(
            Outcome.NOT_STARTED,
            f"Batch request {rid} is {status} with user action {action or 'NONE'}: nobody started this job "
            "(START it, e.g. with SentinelBatchStartOperator, before waiting for DONE)",
        )
    if status not in KNOWN[api_version]:
        # unknown status from a newer API: keep waiting (forward compatible) but say so
        return Verdict(Outcome.WAIT, f"unknown status {status!r}")
    return Verdict(Outcome.WAIT, status)


def next_delay(
    status: str | None,
    *,
    poll_interval: float,
    analysis_poll_interval: float,
    progress: list[tuple[float, float]] | None = None,
    max_poll_interval: float | None = None,
    now: float | None = None,
    elapsed: float | None = None,
    looks: int | None = None,
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
      poller would), one at 100 % (final status pending) every ``analysis_poll_interval``.

    With ``elapsed`` and ``looks`` (how many looks the wait has made so far, the first one at ``elapsed`` 0)
    the wait never costs more than a fixed-interval poller started at the same moment, nor detects the end
    later (unless the job finishes well before the rate of its progress predicted): the next look is never
    before ``looks * poll_interval`` (so at any moment there have been no more looks than the fixed poller's)
    and never after the fixed poller's next look, except while stretching towards a finish far away. Looks
    saved by stretching are spent on a look aimed just after the predicted end or at 100 %.
    """
    if elapsed is not None and looks is not None:
        raw = next_delay(
            status,
            poll_interval=poll_interval,
            analysis_poll_interval=analysis_poll_interval,
            progress=progress,
            max_poll_interval=max_poll_interval,
            now=now,
        )
        return _on_budget(raw, status, poll_interval=poll_interval, elapsed=elapsed, looks=looks)
    if status is None or status in ANALYSIS_PHASE:
        if elapsed is None:
            return analysis_poll_interval
        return min(max(analysis_poll_interval, elapsed), max(poll_interval, analysis_poll_interval))
    limit = max_poll_interval if max_poll_interval is not None else poll_interval * 10
    if not progress or len(progress) < 2:
        return poll_interval
    fastest = 0.0
    if len(progress) >= 4:
        (a0, q0), (b0, p0), (a1, before), (b1, p1) = progress[0], progress[1], progress[-2], progress[-1]
        first, latest, uncertainty, jump = (a0 + b0) / 2, (a1 + b1) / 2, (b1 - a1) / 2, p1 - before
        if p1 < 100.0 and a1 <= b0:
            return (
                poll_interval  # the first and the latest change fall in adjacent gaps: no rate to trust yet
            )
        # the fastest pace the looks allow: everything from q0 to p1 moved after b0 at the latest and before a1
        fastest = (p1 - q0) / (a1 - b0) if a1 > b0 else 0.0
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
    since = max(0.0, now - latest) if now is not None else 0.0
    remaining = (100.0 - p1) / rate - since
    if remaining <= 0:
        return poll_interval  # later than predicted: look as often as a fixed-interval poller would
    earliest = 0.9 * remaining - uncertainty  # the rate may be off, and the change time is not exact
    if fastest > rate:
        # never sleep past the finish at the fastest pace the looks allow (a coarse look hides fast steps)
        earliest = min(earliest, 0.9 * ((100.0 - p1) / fastest - since - uncertainty))
    if earliest > 2 * poll_interval:
        # far from the finish: sleep until shortly before it could be over (re-measured at every look)
        return min(limit, max(poll_interval, earliest - poll_interval))
    # close to the finish: look a little after the predicted end, and no later than usual
    return max(min(poll_interval, remaining + 0.05 * poll_interval), analysis_poll_interval)


def _on_budget(raw: float, status: str | None, *, poll_interval: float, elapsed: float, looks: int) -> float:
    """``raw`` (a delay from now) moved so the looks stay within those of a fixed ``poll_interval`` poller."""
    if poll_interval <= 0:
        return raw
    earliest = looks * poll_interval  # the fixed poller has made ``looks + 1`` looks by then
    next_fixed = (int(elapsed // poll_interval) + 1) * poll_interval  # its next look after now
    wanted = elapsed + raw
    stretching = status == Status.PROCESSING and raw > poll_interval
    at = max(earliest, wanted if stretching else min(wanted, next_fixed))
    return max(0.0, at - elapsed)


def stop_action(api_version: str) -> str:
    """The verb of stopping a job in this API version: v1 ``cancel``, v2 ``stop``."""
    return "cancel" if api_version == "v1" else "stop"


def stop_note(
    log: Any, api_version: str, request_id: str, why: str, error: BaseException | None = None
) -> str:
    """Log how asking the service to stop a job went, and return the note that ends the task's message.

    ``error`` is what the stop call raised (``None``: the service accepted it). A 400/409 means the job had
    already finished: nothing was left to stop.
    """
    from airflow_provider_sentinel_batch.exceptions import SentinelBatchAPIError

    action = stop_action(api_version)
    if error is None:
        log.info("Asked the service to %s batch request %s (%s)", action, request_id, why)
        return f"; the job was asked to {action}"
    if isinstance(error, SentinelBatchAPIError) and error.status in (400, 409):
        return f"; {action} not needed ({error.message})"
    log.warning("Could not %s %s after %s: %s", action, request_id, why, error)
    return f"; {action} FAILED ({error}) — check the job in the dashboard"


#: The polling pace of a :class:`Watch`, named as on the tasks and the trigger.
PACE_FIELDS = ("poll_interval", "analysis_poll_interval", "max_poll_interval")
#: The fields of a :class:`Watch` that a trigger takes over as keyword arguments of the same name.
TRIGGER_FIELDS = (
    "request_id",
    "api_version",
    "wait_for",
    *PACE_FIELDS,
    "max_cost_pu",
    "deadline",
    "stale_status",
    "stale_until",
)


@dataclass(frozen=True)
class Look:
    """What one look at the request told the waiting loop: the verdict, and whether the status changed."""

    verdict: Verdict
    changed: bool

    @property
    def over(self) -> bool:
        """The wait ends with this look."""
        return self.verdict.outcome != Outcome.WAIT


@dataclass(slots=True)
class Watch:
    """The state of one wait on one batch request, and every decision about it; the caller does the I/O.

    Feed each answer of ``GET`` the request to :meth:`look`; sleep :meth:`delay` seconds while the wait goes
    on; ask :meth:`expired` before each look. :meth:`event` builds the dict the wait ends with (the trigger
    yields it, the task resumes with it), :meth:`counts_tiles` says when that needs a tile count first.

    :param deadline: wall-clock epoch seconds; past it the wait ends ``timeout``.
    :param stale_status: a status to treat as "not yet updated" until ``stale_until`` (after ``restartpartial``
        the service keeps showing ``PARTIAL`` for a while); forgotten once the status has moved.
    :param adaptive: stretch the interval from the rate of ``completionPercentage`` (see :func:`next_delay`);
        otherwise ``analysis_poll_interval`` before processing and ``poll_interval`` after.
    """

    # what is waited for
    request_id: str
    api_version: str
    wait_for: str
    # how often to look
    poll_interval: float = 60.0
    analysis_poll_interval: float = 10.0
    max_poll_interval: float | None = None
    adaptive: bool = False
    # when to give up, and what to ignore
    max_cost_pu: float | None = None
    deadline: float | None = None
    stale_status: str | None = None
    stale_until: float | None = None
    # what the looks so far have shown
    started: float = field(default_factory=lambda: time.time())  # looked up per call: a clock can be swapped
    last_status: str | None = None
    # (time, completionPercentage) of the looks just before and at the first and the latest change
    progress: list[tuple[float, float]] = field(default_factory=list)
    last_sample: tuple[float, float] | None = None
    # how many looks so far, and when the first one was (the fixed poller the wait is held to starts then)
    looks: int = 0
    first_look: float | None = None

    def trigger_kwargs(self) -> dict[str, Any]:
        """What a trigger needs to go on with this wait elsewhere (primitives only; see :data:`TRIGGER_FIELDS`)."""
        return {name: getattr(self, name) for name in TRIGGER_FIELDS}

    def expect_stale(self, status: str, until: float) -> None:
        """Ignore ``status`` until ``until`` (epoch seconds): the service shows it a while after a restart."""
        self.stale_status, self.stale_until = status, until

    def expired(self, now: float | None = None) -> bool:
        """The deadline has passed."""
        return self.deadline is not None and (time.time() if now is None else now) >= self.deadline

    def look(self, request: dict[str, Any], now: float | None = None) -> Look:
        """Judge one answer of ``GET`` the request; remembers its status and progress."""
        now = time.time() if now is None else now
        self.looks += 1
        if self.first_look is None:
            self.first_look = now
        status = request.get("status")
        changed = status != self.last_status
        if changed:
            self.last_status = status
            self.progress.clear()
            self.last_sample = None
        pct = request.get("completionPercentage")
        if status == Status.PROCESSING and isinstance(pct, int | float):
            sample = (now, float(pct))
            if self.last_sample is not None and sample[1] != self.last_sample[1]:
                del self.progress[2:]  # keep the first change, replace the latest one
                self.progress += [self.last_sample, sample]  # it changed between these two looks
            self.last_sample = sample
        verdict = judge(self.api_version, self.wait_for, request, max_cost_pu=self.max_cost_pu)
        if self.stale_status is not None:
            if status != self.stale_status:
                self.stale_status = None  # the service has caught up
            elif now < (self.stale_until or 0.0):
                verdict = Verdict(Outcome.WAIT, f"still {status} (not updated yet)")
        return Look(verdict, changed)

    def delay(self, now: float | None = None) -> float:
        """Seconds until the next look, never past the deadline (so a timeout is reported on time)."""
        now = time.time() if now is None else now
        if self.adaptive:
            delay = next_delay(
                self.last_status,
                poll_interval=self.poll_interval,
                analysis_poll_interval=self.analysis_poll_interval,
                progress=self.progress if len(self.progress) >= 4 else None,  # a rate needs two changes
                max_poll_interval=self.max_poll_interval,
                now=now,
                # waiting for DONE, the analysis is only a preamble: never more looks than a fixed poller
                elapsed=now - (self.first_look or self.started) if self.wait_for == Status.DONE else None,
                looks=max(1, self.looks) if self.wait_for == Status.DONE else None,
            )
        else:
            delay = next_delay(
                self.last_status,
                poll_interval=self.poll_interval,
                analysis_poll_interval=self.analysis_poll_interval,
            )
        return self.bounded(delay, now)

    def bounded(self, delay: float, now: float | None = None) -> float:
        """``delay`` cut short at the deadline."""
        if self.deadline is None:
            return delay
        return max(0.0, min(delay, self.deadline - (time.time() if now is None else now)))

    def counts_tiles(self, request: dict[str, Any]) -> bool:
        """The event's summary needs the tile counts (v1 DONE or PARTIAL: the ends whose summary a task returns)."""
        return self.api_version == "v1" and request.get("status") in TILES_COUNTED_AT

    def timeout(self, note: str = "") -> dict[str, Any]:
        """The event of a wait that passed its deadline (``note``: how stopping the job went, if it was asked)."""
        message = f"Batch request {self.request_id} did not reach {self.wait_for} before the deadline"
        return self.event(Verdict(Outcome.TIMEOUT, message + note))

    def error(self, message: str) -> dict[str, Any]:
        """The event of a wait that broke (service unreachable, rate limited too long): a task retry may help."""
        return self.event(Verdict(Outcome.ERROR, message))

    def event(
        self,
        verdict: Verdict,
        request: dict[str, Any] | None = None,
        *,
        tiles: dict[str, int] | None = None,
        note: str = "",
    ) -> dict[str, Any]:
        """The dict a wait ends with: outcome, message (plus ``note``) and, from the last look, the summary."""
        event: dict[str, Any] = {
            OUTCOME_KEY: verdict.outcome.value,
            "request_id": self.request_id,
            "api_version": self.api_version,
            "message": verdict.message + note,
        }
        if request is not None:
            event["summary"] = summarize(self.api_version, request)
            if self.counts_tiles(request):
                event["summary"]["tiles"] = tiles
        return event
