"""Cheap local checks of a create payload, so obvious mistakes fail before any call that costs PU.

The service stays the authority (it validates far more); these checks only catch what users get wrong most
often: mixing v1 and v2 shapes, a missing evalscript or delivery, an impossible bbox, a grid resolution the grid
does not offer, Zarr on a UTM grid. Grid id ``0`` is a real grid (the Corsica one), so checks use ``is None``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from airflow_provider_sentinel_batch.exceptions import SentinelBatchValidationError

V1_ONLY_KEYS = ("tilingGrid", "tilingGridId", "resolution", "bucketName", "zarrOutput")
V2_ONLY_KEYS = ("input", "output.type", "output.delivery", "instanceType")
ZARR_GRIDS = frozenset({3, 6, 7})  # WGS84 and LAEA grids; UTM grids (0, 1, 2) give multi-CRS output
CRS84 = "http://www.opengis.net/def/crs/OGC/1.3/CRS84"
MIGRATION = "https://docs.sentinel-hub.com/api/latest/api/batchv2/migration/"


def _grid_problems(
    grid_id: Any, resolution: Any, where: str, grids: Iterable[Mapping[str, Any]] | None
) -> list[str]:
    problems = []
    if grid_id is None:
        problems.append(f"{where}.id is missing (e.g. 0 for the 20 km UTM grid)")
    elif not isinstance(grid_id, int) or isinstance(grid_id, bool):
        problems.append(f"{where}.id must be an integer grid id, got {grid_id!r}")
    if resolution is None:
        problems.append(f"{where}.resolution is missing (metres, or degrees for the WGS84 grid)")
    elif not isinstance(resolution, int | float) or isinstance(resolution, bool) or resolution <= 0:
        problems.append(f"{where}.resolution must be a positive number, got {resolution!r}")
    if problems or grids is None:
        return problems
    known = {g.get("id"): g for g in grids}
    grid = known.get(grid_id)
    if grid is None:
        ids = ", ".join(str(i) for i in sorted(k for k in known if isinstance(k, int)))
        return [f"{where}.id {grid_id} is not a tiling grid of this deployment (known: {ids})"]
    allowed = (grid.get("properties") or {}).get("resolutions") or []
    if allowed and not any(abs(float(r) - float(resolution)) <= 1e-9 * max(1.0, float(r)) for r in allowed):
        name = grid.get("name") or f"grid {grid_id}"
        problems.append(
            f"{where}.resolution {resolution} is not offered by {name!r} (id {grid_id}); choose one of "
            + ", ".join(str(r) for r in allowed)
        )
    return problems


def _bounds_problems(process_request: Mapping[str, Any]) -> list[str]:
    bounds = (process_request.get("input") or {}).get("bounds")
    if not isinstance(bounds, Mapping) or ("bbox" not in bounds and "geometry" not in bounds):
        return ["processRequest.input.bounds needs a 'bbox' or a 'geometry'"]
    problems: list[str] = []
    crs = ((bounds.get("properties") or {}).get("crs")) or CRS84
    if crs != CRS84 and "/def/crs/EPSG/0/" not in str(crs):
        problems.append(
            f"processRequest.input.bounds.properties.crs {crs!r} is not a CRS Sentinel Hub accepts; use "
            f"{CRS84!r} or 'http://www.opengis.net/def/crs/EPSG/0/<code>'"
        )
    bbox = bounds.get("bbox")
    if bbox is not None:
        if (
            not isinstance(bbox, list | tuple)
            or len(bbox) != 4
            or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in bbox)
        ):
            return [
                *problems,
                f"processRequest.input.bounds.bbox must be [minX, minY, maxX, maxY], got {bbox!r}",
            ]
        min_x, min_y, max_x, max_y = bbox
        if min_x >= max_x or min_y >= max_y:
            problems.append(
                f"processRequest.input.bounds.bbox {list(bbox)} has min >= max; order is [minX, minY, maxX, maxY]"
            )
        if crs == CRS84 and not (
            -180 <= min_x <= 180 and -180 <= max_x <= 180 and -90 <= min_y <= 90 and -90 <= max_y <= 90
        ):
            problems.append(
                f"processRequest.input.bounds.bbox {list(bbox)} is outside lon -180..180 / lat -90..90 (CRS84)"
            )
    return problems


def _time_range_problems(item: Mapping[str, Any], where: str) -> list[str]:
    """``from`` and ``to`` are ISO 8601 date-times and ``from`` comes first (often templated, so often wrong)."""
    data_filter = item.get("dataFilter")
    time_range = data_filter.get("timeRange") if isinstance(data_filter, Mapping) else None
    if time_range is None:
        return []
    if not isinstance(time_range, Mapping):
        return [f"{where} must be {{'from': <ISO 8601 date-time>, 'to': <ISO 8601 date-time>}}"]
    return time_range_problems(time_range, where, example="2019-04-01T00:00:00Z")


def time_range_problems(time_range: Mapping[str, Any], where: str, *, example: str) -> list[str]:
    """Problems of a ``{'from', 'to'}`` range: both ISO 8601 date-times, the same time-zone style, from < to."""
    problems: list[str] = []
    parsed: dict[str, datetime] = {}
    for key in ("from", "to"):
        value = time_range.get(key)
        if value is None:
            problems.append(f"{where}.{key} is missing")
            continue
        try:
            parsed[key] = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError:
            hint = " (an unrendered template?)" if "{{" in str(value) or "{%" in str(value) else ""
            problems.append(f"{where}.{key} {value!r} is not an ISO 8601 date-time (e.g. '{example}'){hint}")
    if len(parsed) == 2:
        start, end = parsed["from"], parsed["to"]
        if (start.tzinfo is None) != (end.tzinfo is None):
            problems.append(
                f"{where}: 'from' and 'to' must both have a time zone (e.g. 'Z') or both lack one"
            )
        elif start >= end:
            problems.append(f"{where}.from {time_range['from']!r} is not before to {time_range['to']!r}")
    return problems


def data_problems(
    data: Any, where: str, item_problems: Callable[[Mapping[str, Any], str], list[str]] | None = None
) -> list[str]:
    """``<where>`` (a request's ``input.data``) must list data collections, each with a ``type``;
    ``item_problems(item, "<where>[i]")`` adds checks of each collection."""
    if not isinstance(data, list) or not data:
        return [f"{where} must list at least one data collection"]
    problems: list[str] = []
    for i, item in enumerate(data):
        if not isinstance(item, Mapping) or not item.get("type"):
            problems.append(f"{where}[{i}].type is missing (e.g. 'sentinel-2-l2a')")
        if isinstance(item, Mapping) and item_problems is not None:
            problems += item_problems(item, f"{where}[{i}]")
    return problems


def _process_request_problems(payload: Mapping[str, Any]) -> list[str]:
    process_request = payload.get("processRequest")
    if not isinstance(process_request, Mapping):
        return ["'processRequest' is missing (the Process API request: input, output.responses, evalscript)"]
    problems = _bounds_problems(process_request)
    problems += data_problems(
        (process_request.get("input") or {}).get("data"),
        "processRequest.input.data",
        lambda item, where: _time_range_problems(item, f"{where}.dataFilter.timeRange"),
    )
    evalscript = process_request.get("evalscript")
    if not isinstance(evalscript, str) or not evalscript.strip():
        problems.append("processRequest.evalscript is missing or empty")
    responses = (process_request.get("output") or {}).get("responses")
    if responses is not None and (not isinstance(responses, list) or not responses):
        problems.append("processRequest.output.responses must be a non-empty list")
    return problems


def _has(payload: Mapping[str, Any], dotted: str) -> bool:
    node: Any = payload
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False
        node = node[part]
    return True


def validate_payload(
    payload: Any, api_version: str, *, grids: Iterable[Mapping[str, Any]] | None = None
) -> None:
    """Raise :class:`SentinelBatchValidationError` listing every problem found, or return quietly."""
    if not isinstance(payload, Mapping):
        raise SentinelBatchValidationError(
            f"The batch request payload must be a JSON object (dict), got {type(payload).__name__}."
        )
    grids = list(grids) if grids is not None else None
    problems = _process_request_problems(payload)
    if api_version == "v1":
        mixed = [k for k in V2_ONLY_KEYS if _has(payload, k)]
        if mixed:
            problems.append(
                f"{', '.join(mixed)} belong to Batch v2; this is a v1 request (use tilingGrid and bucketName or "
                f"output.defaultTilePath), or set api_version='v2'. See {MIGRATION}"
            )
        grid = payload.get("tilingGrid")
        if grid is None and "tilingGridId" in payload:
            grid = {"id": payload.get("tilingGridId"), "resolution": payload.get("resolution")}
        if not isinstance(grid, Mapping):
            problems.append("'tilingGrid' is missing: {'id': <grid id>, 'resolution': <metres>}")
            grid_id = None
        else:
            problems += _grid_problems(grid.get("id"), grid.get("resolution"), "tilingGrid", grids)
            grid_id = grid.get("id")
        outputs = [k for k in ("bucketName", "output", "zarrOutput") if payload.get(k)]
        if not outputs:
            problems.append("no output location: set 'bucketName', 'output.defaultTilePath' or 'zarrOutput'")
        elif "zarrOutput" in outputs and len(outputs) > 1:
            problems.append("'zarrOutput' cannot be combined with 'bucketName' or 'output'")
        if payload.get("zarrOutput") and isinstance(grid_id, int) and grid_id not in ZARR_GRIDS:
            problems.append(f"zarrOutput needs a WGS84 or LAEA grid (3, 6 or 7), not grid {grid_id} (UTM)")
    else:
        mixed = [k for k in (*V1_ONLY_KEYS, "output.defaultTilePath") if _has(payload, k)]
        if mixed:
            problems.append(
                f"{', '.join(mixed)} belong to Batch v1; in v2 use input={{'type': 'tiling-grid', 'id', "
                f"'resolution'}} and output={{'type': 'raster', 'delivery': {{'s3': {{'url': ...}}}}}}, "
                f"or set api_version='v1'. See {MIGRATION}"
            )
        source = payload.get("input")
        grid_id = None
        if not isinstance(source, Mapping) or source.get("type") not in ("tiling-grid", "geopackage"):
            problems.append(
                "'input' must be {'type': 'tiling-grid', 'id', 'resolution'} or {'type': 'geopackage', ...}"
            )
        elif source["type"] == "tiling-grid":
            problems += _grid_problems(source.get("id"), source.get("resolution"), "input", grids)
            grid_id = source.get("id")
        elif not _has(source, "features.s3"):
            problems.append("input.features.s3 is missing: where the GeoPackage lives ({'url': 's3://...'})")
        output = payload.get("output")
        if not isinstance(output, Mapping) or output.get("type") not in ("raster", "zarr"):
            problems.append("'output' must be {'type': 'raster' | 'zarr', 'delivery': {'s3': {'url': ...}}}")
        else:
            if not _has(output, "delivery.s3.url"):
                problems.append("output.delivery.s3.url is missing: the bucket/prefix the results go to")
            if output.get("type") == "zarr" and isinstance(grid_id, int) and grid_id not in ZARR_GRIDS:
                problems.append(
                    f"zarr output needs a WGS84 or LAEA grid (3, 6 or 7), not grid {grid_id} (UTM)"
                )
    if problems:
        raise SentinelBatchValidationError(
            f"The Batch {api_version} request payload is not valid (nothing was sent):", problems
        )
