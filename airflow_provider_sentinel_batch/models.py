"""The Batch API's status vocabulary, per version, the phases the tasks and the trigger reason with, and the
list `search` rule of the service.

Every module compares service statuses through the names here, never retyped literals. Unknown values from the
server are passed through as plain strings (forward compatible), never crash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class Status:
    """Request statuses the service reports (``request.status``)."""

    CREATED = "CREATED"
    ANALYSING = "ANALYSING"
    ANALYSIS_DONE = "ANALYSIS_DONE"
    PROCESSING = "PROCESSING"
    DONE = "DONE"
    PARTIAL = "PARTIAL"  # v1 only: some tiles failed
    FAILED = "FAILED"
    CANCELED = "CANCELED"  # v1
    STOPPED = "STOPPED"  # v2


class UserAction:
    """What a user last asked of a request (``request.userAction``)."""

    NONE = "NONE"
    ANALYSE = "ANALYSE"
    START = "START"


class TileStatus:
    """Per-tile (v1) and per-feature (v2 execution database) statuses that the summaries count."""

    PROCESSED = "PROCESSED"  # v1 tile written
    FAILED = "FAILED"
    FEATURE_DONE = "DONE"  # v2 feature written (or "no data")
    FEATURE_FAILED = frozenset({"FAILED", "FATAL"})  # the service's docs say FAILED, its database uses FATAL


#: What a waiting task can wait for.
WAIT_TARGETS = (Status.ANALYSIS_DONE, Status.DONE)

#: Every status each version documents; anything else is a newer API's status and is waited through.
KNOWN = {
    "v1": frozenset(
        {
            Status.CREATED,
            Status.ANALYSING,
            Status.ANALYSIS_DONE,
            Status.PROCESSING,
            Status.DONE,
            Status.PARTIAL,
            Status.FAILED,
            Status.CANCELED,
        }
    ),
    "v2": frozenset(
        {
            Status.CREATED,
            Status.ANALYSING,
            Status.ANALYSIS_DONE,
            Status.PROCESSING,
            Status.DONE,
            Status.FAILED,
            Status.STOPPED,
        }
    ),
}
KNOWN["statistical"] = KNOWN["v2"]  # Batch Statistical: the v2 lifecycle (FAILED, STOPPED; no PARTIAL)

#: The job has ended: no status change follows without a user action.
TERMINAL = {
    "v1": frozenset({Status.DONE, Status.PARTIAL, Status.FAILED, Status.CANCELED}),
    "v2": frozenset({Status.DONE, Status.FAILED, Status.STOPPED}),
    "statistical": frozenset({Status.DONE, Status.FAILED, Status.STOPPED}),
}
#: Ends that fail a wait whatever it waited for.
FAILURE = {
    "v1": frozenset({Status.FAILED, Status.CANCELED}),
    "v2": frozenset({Status.FAILED, Status.STOPPED}),
    "statistical": frozenset({Status.FAILED, Status.STOPPED}),
}
#: Before processing: analysis is asked, running or done. Looked at every ``analysis_poll_interval``.
ANALYSIS_PHASE = frozenset({Status.CREATED, Status.ANALYSING, Status.ANALYSIS_DONE})
#: Statuses that still need a START before the job can reach DONE.
AWAITING_START = frozenset({Status.CREATED, Status.ANALYSIS_DONE})
#: Where ANALYSE may be sent without the service refusing.
CAN_ANALYSE = frozenset({Status.CREATED})
#: Where START may be sent without the service refusing.
CAN_START = {
    "v1": frozenset({Status.CREATED, Status.ANALYSING, Status.ANALYSIS_DONE}),
    "v2": frozenset({Status.CREATED, Status.ANALYSING, Status.ANALYSIS_DONE, Status.STOPPED}),
    "statistical": frozenset({Status.CREATED, Status.ANALYSING, Status.ANALYSIS_DONE, Status.STOPPED}),
}
#: The analysis is over (it happened, or processing already began).
ANALYSIS_REACHED = frozenset({Status.ANALYSIS_DONE, Status.PROCESSING, Status.DONE, Status.PARTIAL})
#: START was accepted: processing runs or ran.
STARTED_OR_LATER = frozenset({Status.PROCESSING, Status.DONE, Status.PARTIAL})
#: v1 ends whose tile counts go into the summary a task returns (a FAILED job fails the task: nobody reads them).
TILES_COUNTED_AT = frozenset({Status.DONE, Status.PARTIAL})


def nobody_asked(action: Any) -> bool:
    """True when no user action is pending on a request (``userAction`` absent or ``NONE``)."""
    return action in (None, UserAction.NONE)


def tile_counts(by_status: Mapping[str, int], *, done: str, failed: frozenset[str]) -> dict[str, int]:
    """``total``/``done``/``failed``/``pending`` from counts per tile or feature status."""
    total = sum(int(v) for v in by_status.values())
    n_done = int(by_status.get(done, 0))
    n_failed = sum(int(v) for k, v in by_status.items() if k in failed)
    return {"total": total, "done": n_done, "failed": n_failed, "pending": total - n_done - n_failed}


def v1_tile_counts(by_status: Mapping[str, int]) -> dict[str, int]:
    """The counts of v1 tiles (``PROCESSED`` done, ``FAILED`` failed)."""
    return tile_counts(by_status, done=TileStatus.PROCESSED, failed=frozenset({TileStatus.FAILED}))


def cost_of(api_version: str, request: Mapping[str, Any]) -> float | None:
    """Best known cost in PU: v2 ``costPU`` (billed so far), v1 ``valueEstimate / 3`` (the batch discount),
    Batch Statistical ``costPU`` or ``costPu`` (the spelling of its OpenAPI)."""
    if api_version == "statistical":
        from airflow_provider_sentinel_batch.statistical import cost_pu

        return cost_pu(request)
    if api_version == "v2":
        value = request.get("costPU")
        return float(value) if isinstance(value, int | float) else None
    estimate = request.get("valueEstimate")
    # rounded like the service's own figures (3 decimals), so 561.729 / 3 prints as 187.243, not 187.24300000000002
    return round(float(estimate) / 3.0, 3) if isinstance(estimate, int | float) else None


def request_payload(api_version: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """The user's payload inside a request object (v1 keeps it top level, v2 and statistical under ``request``)."""
    if api_version in ("v2", "statistical"):
        inner = request.get("request")
        return inner if isinstance(inner, dict) else {}
    return dict(request)


def search_matches(text: str, search: str | None) -> bool:
    """The list ``search`` rule of the service: ``|`` = OR, ``&`` = AND (binds tighter), case-insensitive substrings.

    Used by the event watcher to filter list pages and by the emulator to answer ``search``.
    """
    if not search or not search.strip():
        return True
    low = text.lower()
    for alternative in search.split("|"):
        terms = [t.strip().lower() for t in alternative.split("&") if t.strip()]
        if terms and all(t in low for t in terms):
            return True
    return False
