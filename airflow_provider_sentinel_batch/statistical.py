"""Batch Statistical API facts shared by the hook, the async client and the tasks: statuses, cost field,
output locations, and the local payload checks run before any call that could cost processing units.

Batch Statistical computes statistics (mean, percentiles, histograms, …) per polygon of a GeoPackage in a
bucket and per aggregation interval, and writes one JSON file per polygon. Its lifecycle is Batch v2's
(CREATED → ANALYSING → ANALYSIS_DONE → PROCESSING → DONE | FAILED | STOPPED); the published OpenAPI spells the
cost ``costPu`` where sentinelhub-py reads ``costPU``, so both are accepted.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from airflow_provider_sentinel_batch.exceptions import SentinelBatchValidationError
from airflow_provider_sentinel_batch.validation import data_problems, time_range_problems

#: The value of ``api`` / ``api_version`` arguments that selects Batch Statistical.
STATISTICAL = "statistical"

STATUSES = ("CREATED", "ANALYSING", "ANALYSIS_DONE", "PROCESSING", "DONE", "FAILED", "STOPPED")
TERMINAL = frozenset({"DONE", "FAILED", "STOPPED"})
RESTART_BLOCK_MINUTES = {"USER_ACTION": 30, "OUT_OF_PU": 60}

MAX_INLINE_EVALSCRIPT_BYTES = 32 * 1024
OUTPUT_PLACEHOLDERS = ("<REQUEST_ID>", "<ID>", "<IDENTIFIER>")
INTERVAL_BEHAVIOURS = ("SKIP", "SHORTEN", "EXTEND")
_DURATION = re.compile(r"^P(?=\d)(?:\d+Y)?(?:\d+M)?(?:\d+W)?(?:\d+D)?$")
_BATCH_ONLY = ("processRequest", "tilingGrid", "bucketName", "zarrOutput", "instanceType")


def cost_pu(body: Mapping[str, Any]) -> float | None:
    """The cost in PU of a request or status body, whichever spelling (``costPU`` / ``costPu``) it uses."""
    for key in ("costPU", "costPu"):
        value = body.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    return None


def normalised(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with ``costPU`` set (from ``costPu`` when only that is present), as Batch v2 bodies have it."""
    if "costPU" not in body and "costPu" in body:
        body = {**body, "costPU": body["costPu"]}
    return body


def output_root(output_url: str, request_id: str) -> str:
    """The folder under which a request's per-feature JSON files land.

    A plain ``s3://bucket/prefix`` means ``<prefix>/<requestId>/<id>.json``; a template is cut before the first
    per-feature placeholder (``<ID>`` / ``<IDENTIFIER>``), with ``<REQUEST_ID>`` filled in.
    """
    if not any(p in output_url for p in OUTPUT_PLACEHOLDERS):
        return output_url.rstrip("/") + f"/{request_id}/"
    cut = min(output_url.find(p) for p in ("<ID>", "<IDENTIFIER>") if p in output_url)
    return output_url[:cut].replace("<REQUEST_ID>", request_id).rsplit("/", 1)[0] + "/"


def output_url(payload: Mapping[str, Any]) -> str | None:
    """``output.s3.url`` of a payload (or of a request body's ``request``), if any."""
    request = payload.get("request") if isinstance(payload.get("request"), Mapping) else payload
    url = ((request.get("output") or {}).get("s3") or {}).get("url") if isinstance(request, Mapping) else None
    return url if isinstance(url, str) else None


# --------------------------------------------------------------------------------------------- validation
def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _s3_problems(node: Any, where: str, what: str) -> list[str]:
    s3 = node.get("s3") if isinstance(node, Mapping) else None
    url = s3.get("url") if isinstance(s3, Mapping) else None
    if url is None:
        return [f"{where}.s3.url is missing: {what}"]
    problems = []
    if not isinstance(url, str) or not url.startswith("s3://") or len(url.rstrip("/")) <= len("s3://"):
        problems.append(f"{where}.s3.url {url!r} is not an s3:// URL")
    assert isinstance(s3, Mapping)
    if bool(s3.get("accessKey")) != bool(s3.get("secretAccessKey")):
        problems.append(f"{where}.s3 needs both accessKey and secretAccessKey (or neither)")
    return problems


def _time_problems(time_range: Any) -> list[str]:
    where = "aggregation.timeRange"
    if not isinstance(time_range, Mapping):
        return [f"{where} is missing: {{'from': <ISO 8601 date-time>, 'to': <ISO 8601 date-time>}}"]
    return time_range_problems(time_range, where, example="2024-04-01T00:00:00Z")


def _evalscript_problems(aggregation: Mapping[str, Any]) -> list[str]:
    script, reference = aggregation.get("evalscript"), aggregation.get("evalscriptReference")
    if script is not None and reference is not None:
        return ["aggregation.evalscript and aggregation.evalscriptReference are mutually exclusive; keep one"]
    if reference is not None:
        return _s3_problems(reference, "aggregation.evalscriptReference", "where the evalscript is stored")
    if script is None:
        return [
            "aggregation.evalscript is missing: give the evalscript inline, or its location as "
            "aggregation.evalscriptReference {'s3': {'url': ...}}"
        ]
    if not isinstance(script, str) or not script.strip():
        return ["aggregation.evalscript is empty"]
    size = len(script.encode("utf-8"))
    if size > MAX_INLINE_EVALSCRIPT_BYTES:
        return [
            f"aggregation.evalscript has {size} bytes; inline evalscripts are limited to 32 KB: store it in a "
            "bucket and use aggregation.evalscriptReference"
        ]
    if "evaluatePixel" not in script:
        return ["aggregation.evalscript has no evaluatePixel function: the analysis would fail"]
    return []


def _sampling_problems(aggregation: Mapping[str, Any]) -> list[str]:
    res = [k for k in ("resx", "resy") if aggregation.get(k) is not None]
    size = [k for k in ("width", "height") if aggregation.get(k) is not None]
    if res and size:
        return ["aggregation has both resx/resy and width/height; set only one pair"]
    if not res and not size:
        return [
            "aggregation needs resx and resy (resolution in the units of the GeoPackage's CRS) or width and "
            "height (pixels)"
        ]
    pair = ("resx", "resy") if res else ("width", "height")
    problems = []
    for key in pair:
        value = aggregation.get(key)
        if value is None:
            problems.append(f"aggregation.{key} is missing ({pair[0]} and {pair[1]} go together)")
        elif res and (not _number(value) or value <= 0):
            problems.append(f"aggregation.{key} must be a positive number, got {value!r}")
        elif size and (not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= 2500):
            problems.append(f"aggregation.{key} must be an integer from 1 to 2500, got {value!r}")
    return problems


def _interval_problems(aggregation: Mapping[str, Any]) -> list[str]:
    interval = aggregation.get("aggregationInterval")
    if not isinstance(interval, Mapping) or interval.get("of") is None:
        return ["aggregation.aggregationInterval.of is missing (an ISO 8601 duration, e.g. 'P30D' or 'P1M')"]
    problems = []
    of = interval["of"]
    if not isinstance(of, str) or not _DURATION.match(of):
        problems.append(
            f"aggregation.aggregationInterval.of {of!r} is not an ISO 8601 duration of days, weeks, months or "
            "years (e.g. 'P1D', 'P30D', 'P1M')"
        )
    behaviour = interval.get("lastIntervalBehavior")
    if behaviour is not None and behaviour not in INTERVAL_BEHAVIOURS:
        problems.append(
            f"aggregation.aggregationInterval.lastIntervalBehavior {behaviour!r} is not one of "
            + ", ".join(INTERVAL_BEHAVIOURS)
        )
    return problems


def _calculation_problems(calculations: Any) -> list[str]:
    if calculations is None:
        return []
    if not isinstance(calculations, Mapping):
        return ["'calculations' must be an object keyed by evalscript output id (or 'default')"]
    problems = []
    for output, definition in calculations.items():
        where = f"calculations.{output}"
        if not isinstance(definition, Mapping):
            problems.append(f"{where} must be an object with 'statistics' and/or 'histograms'")
            continue
        for band, stat in (definition.get("statistics") or {}).items():
            k = ((stat or {}).get("percentiles") or {}).get("k") if isinstance(stat, Mapping) else None
            if k is not None and (
                not isinstance(k, list) or not k or not all(_number(v) and 0 <= v <= 1 for v in k)
            ):
                problems.append(
                    f"{where}.statistics.{band}.percentiles.k must be a list of numbers between 0 and 1, got {k!r}"
                )
        for band, hist in (definition.get("histograms") or {}).items():
            given = [
                key for key in ("nBins", "binWidth", "bins") if isinstance(hist, Mapping) and key in hist
            ]
            if len(given) != 1:
                problems.append(f"{where}.histograms.{band} needs exactly one of nBins, binWidth or bins")
    return problems


def _output_problems(output: Any) -> list[str]:
    problems = _s3_problems(output, "output", "the bucket/prefix the per-feature JSON files go to")
    url = ((output or {}).get("s3") or {}).get("url") if isinstance(output, Mapping) else None
    if isinstance(url, str) and "<" in url:
        unknown = [p for p in re.findall(r"<[^<>]*>", url) if p not in OUTPUT_PLACEHOLDERS]
        if unknown:
            problems.append(
                f"output.s3.url has unknown placeholder(s) {', '.join(unknown)}; allowed: "
                + ", ".join(OUTPUT_PLACEHOLDERS)
            )
        elif "<ID>" not in url and "<IDENTIFIER>" not in url:
            problems.append(
                f"output.s3.url {url!r} is a template without <ID> or <IDENTIFIER>: every feature would be "
                "written to the same file"
            )
    return problems


def statistical_payload_problems(payload: Any) -> list[str]:
    """Every problem found in a Batch Statistical create payload (empty when it looks valid)."""
    if not isinstance(payload, Mapping):
        return [f"the payload must be a JSON object (dict), got {type(payload).__name__}"]
    problems = []
    batch_keys = [k for k in _BATCH_ONLY if k in payload]
    if batch_keys:
        problems.append(
            f"{', '.join(batch_keys)} {'belongs' if len(batch_keys) == 1 else 'belong'} to Batch Processing; "
            "a Batch Statistical request has input, "
            "aggregation, calculations and output"
        )
    source = payload.get("input")
    if not isinstance(source, Mapping):
        problems.append(
            "'input' is missing: {'features': {'s3': {'url': 's3://<bucket>/<key>.gpkg'}}, 'data': [...]}"
        )
    else:
        problems += _s3_problems(
            source.get("features"), "input.features", "where the GeoPackage of polygons is"
        )
        problems += data_problems(source.get("data"), "input.data")
    aggregation = payload.get("aggregation")
    if not isinstance(aggregation, Mapping):
        problems.append(
            "'aggregation' is missing: timeRange, aggregationInterval, evalscript (or evalscriptReference) and "
            "resx/resy or width/height"
        )
    else:
        problems += _time_problems(aggregation.get("timeRange"))
        problems += _interval_problems(aggregation)
        problems += _evalscript_problems(aggregation)
        problems += _sampling_problems(aggregation)
    problems += _calculation_problems(payload.get("calculations"))
    problems += _output_problems(payload.get("output"))
    return problems


def validate_statistical_payload(payload: Any) -> None:
    """Raise :class:`SentinelBatchValidationError` listing every problem found, or return quietly."""
    problems = statistical_payload_problems(payload)
    if problems:
        raise SentinelBatchValidationError(
            "The Batch Statistical request payload is not valid (nothing was sent):", problems
        )
