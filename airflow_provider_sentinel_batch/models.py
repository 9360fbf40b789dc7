"""Batch API statuses per version, and the small facts about them the operators and trigger rely on.

Unknown values from the server are passed through as plain strings (forward compatible), never crash.
"""

from __future__ import annotations

from typing import Any

V1_STATUSES = ("CREATED", "ANALYSING", "ANALYSIS_DONE", "PROCESSING", "DONE", "PARTIAL", "FAILED", "CANCELED")
V2_STATUSES = ("CREATED", "ANALYSING", "ANALYSIS_DONE", "PROCESSING", "DONE", "FAILED", "STOPPED")
STATUSES = {"v1": V1_STATUSES, "v2": V2_STATUSES}

TERMINAL = {
    "v1": frozenset({"DONE", "PARTIAL", "FAILED", "CANCELED"}),
    "v2": frozenset({"DONE", "FAILED", "STOPPED"}),
}
FAILURE = {"v1": frozenset({"FAILED", "CANCELED"}), "v2": frozenset({"FAILED", "STOPPED"})}
TILE_STATUSES = ("PENDING", "SCHEDULED", "QUEUED", "PROCESSING", "PROCESSED", "FAILED")

# Where a job can be told to analyse / start / cancel-or-stop without the service refusing.
CAN_ANALYSE = frozenset({"CREATED"})
CAN_START = {
    "v1": frozenset({"CREATED", "ANALYSING", "ANALYSIS_DONE"}),
    "v2": frozenset({"CREATED", "ANALYSING", "ANALYSIS_DONE", "STOPPED"}),
}
ANALYSIS_REACHED = frozenset({"ANALYSIS_DONE", "PROCESSING", "DONE", "PARTIAL"})
STARTED_OR_LATER = frozenset({"PROCESSING", "DONE", "PARTIAL"})


def is_terminal(api_version: str, status: str | None) -> bool:
    return status in TERMINAL[api_version]


def cost_of(api_version: str, request: dict[str, Any]) -> float | None:
    """Best known cost in PU: v2 ``costPU`` (billed so far), v1 ``valueEstimate / 3`` (the batch discount)."""
    if api_version == "v2":
        value = request.get("costPU")
        return float(value) if isinstance(value, int | float) else None
    estimate = request.get("valueEstimate")
    return float(estimate) / 3.0 if isinstance(estimate, int | float) else None


def request_payload(api_version: str, request: dict[str, Any]) -> dict[str, Any]:
    """The user's payload inside a request object (v1 keeps it top level, v2 under ``request``)."""
    if api_version == "v2":
        inner = request.get("request")
        return inner if isinstance(inner, dict) else {}
    return request


def output_location(api_version: str, payload: dict[str, Any], request_id: str | None = None) -> str | None:
    """Where the service writes results (``s3://...``), from a create payload or a request object.

    For v1 the default layout is ``s3://<bucket>/<requestId>/<tileName>/...``, so with a known id the location
    is that request's folder; a path template (v1 ``defaultTilePath``, v2 delivery URL) gets ``<requestId>``
    filled in and is cut at its first per-tile placeholder.
    """
    request_id = request_id or payload.get("id")
    payload = request_payload(api_version, payload) if "request" in payload else payload
    if api_version == "v2":
        output = payload.get("output") or {}
        template = (((output.get("delivery") or {}).get("s3")) or {}).get("url")
    elif payload.get("bucketName"):
        suffix = f"/{request_id}/" if request_id else ""
        return f"s3://{payload['bucketName']}{suffix}"
    else:
        output = payload.get("output") or {}
        template = output.get("defaultTilePath") or (payload.get("zarrOutput") or {}).get("path")
    if not template:
        return None
    template = str(template)
    if request_id:
        template = template.replace("<requestId>", str(request_id))
    return template.split("<", 1)[0]
