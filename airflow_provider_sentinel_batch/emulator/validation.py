"""Payload validation for v1 and v2 creates, with the service's ``errors: [{parameter, violation}]`` list.

Each check names the offending field with the service's ``a->b->c`` path notation so a client (or a user
reading a failed Airflow task log) sees exactly what to fix. Everything found is reported at once.
"""

from __future__ import annotations

import math
import re
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from . import grids
from .errors import ApiError, bad_payload

CANONICAL_TYPES = frozenset(
    {
        "sentinel-2-l1c",
        "sentinel-2-l2a",
        "sentinel-1-grd",
        "sentinel-3-olci",
        "sentinel-3-olci-l2",
        "sentinel-3-slstr",
        "sentinel-3-syn-l2",
        "sentinel-5p-l2",
        "landsat-ot-l1",
        "landsat-ot-l2",
        "landsat-etm-l1",
        "landsat-etm-l2",
        "landsat-tm-l1",
        "landsat-tm-l2",
        "landsat-mss-l1",
        "hls",
        "modis",
        "dem",
    }
)
#: Older spellings still found in docs, e.g. Sentinel Hub's Batch workflow example (``"type": "S2L2A"``).
LEGACY_TYPES = {
    "S2L1C": "sentinel-2-l1c",
    "S2L2A": "sentinel-2-l2a",
    "S1GRD": "sentinel-1-grd",
    "S3OLCI": "sentinel-3-olci",
    "S3SLSTR": "sentinel-3-slstr",
    "S5PL2": "sentinel-5p-l2",
    "L8L1C": "landsat-ot-l1",
    "LOTL1": "landsat-ot-l1",
    "LOTL2": "landsat-ot-l2",
    "LETML1": "landsat-etm-l1",
    "LETML2": "landsat-etm-l2",
    "LTML1": "landsat-tm-l1",
    "LTML2": "landsat-tm-l2",
    "LMSSL1": "landsat-mss-l1",
    "HLS": "hls",
    "MODIS": "modis",
    "DEM": "dem",
}
CUSTOM_PREFIXES = ("byoc-", "batch-", "zarr-")

FORMATS = {"image/tiff": "tif", "application/json": "json", "zarr/array": "zarr"}
PLACEHOLDERS = ("<requestId>", "<tileName>", "<tileId>", "<outputId>", "<format>")
RESAMPLING = {"nearest", "average", "gauss", "cubic", "cubicspline", "lanczos", "average_magphase", "mode"}

V1_ONLY_KEYS = ("tilingGrid", "tilingGridId", "resolution", "bucketName", "zarrOutput")
V2_ONLY_KEYS = ("input", "instanceType", "request")


@dataclass
class Plan:
    """What a valid create payload means for the emulator: the tiles and where outputs go."""

    grid: grids.TilingGrid | None
    resolution: float
    tiles: list[grids.TileSpec]
    responses: list[tuple[str, str]]  # (identifier, format type)
    output_kind: str  # raster | zarr
    output_url: str  # s3:// template or prefix
    evalscript: str
    pu_per_tile: float
    tile_px: tuple[int, int]
    geopackage: bool = False
    normalized: dict[str, Any] = field(default_factory=dict)


class _Errors:
    def __init__(self) -> None:
        self.items: list[dict[str, str]] = []

    def add(self, parameter: str, violation: str) -> None:
        self.items.append({"parameter": parameter, "violation": violation})

    def raise_if_any(self) -> None:
        if self.items:
            first = self.items[0]
            more = f" (and {len(self.items) - 1} more)" if len(self.items) > 1 else ""
            raise bad_payload(
                f"Invalid request payload: {first['parameter']}: {first['violation']}{more}", self.items
            )


def _is_number(v: object) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _obj(v: object) -> dict[str, Any] | None:
    return v if isinstance(v, dict) else None


# --------------------------------------------------------------------------------------------- entry points
def validate_v1(payload: object) -> Plan:
    """Check a Batch v1 create payload and plan its tiles; 400 ``COMMON_BAD_PAYLOAD`` lists every problem."""
    err = _Errors()
    body = _require_object(payload, err)
    for key in V2_ONLY_KEYS:
        if key in body:
            err.add(key, "not a Batch v1 field; it belongs to Batch v2 payloads (POST /api/v2/batch/process)")
    pr = _process_request(body, err, bounds_required=True)
    grid, resolution, _ = _v1_tiling_grid(body, err)
    has = [k for k in ("output", "bucketName", "zarrOutput") if body.get(k) is not None]
    output_kind, output_url = "raster", ""
    if not has:
        err.add("output", "one of output, bucketName or zarrOutput is required")
    elif len(has) > 1:
        err.add(has[1], f"{' and '.join(has)} are mutually exclusive; specify only one of them")
    elif has[0] == "bucketName":
        if not isinstance(body["bucketName"], str) or not body["bucketName"].strip():
            err.add("bucketName", "must be a non-empty string")
        else:
            output_url = f"s3://{body['bucketName'].strip()}/<requestId>/<tileName>/<outputId>.<format>"
    elif has[0] == "output":
        output_url = _raster_output(body["output"], "output", "defaultTilePath", pr["responses"], err)
    else:
        output_kind = "zarr"
        output_url = _zarr_output(body["zarrOutput"], "zarrOutput", grid, err, path_key="path")
    _check_formats(pr["responses"], output_kind, err)
    if body.get("description") is not None and not isinstance(body["description"], str):
        err.add("description", "must be a string")
    err.raise_if_any()
    assert grid is not None
    return _plan(pr, grid, resolution, output_kind, output_url, err, geopackage=False)


def validate_v2(payload: object) -> Plan:
    """Check a Batch v2 create payload and plan its features; 400 ``COMMON_BAD_PAYLOAD`` lists every problem.

    A GeoPackage input is cut like grid 0 at 60 m where bounds are known (ten stand-in features otherwise).
    """
    err = _Errors()
    body = _require_object(payload, err)
    for key in V1_ONLY_KEYS:
        if key in body:
            err.add(
                key, "not a Batch v2 field; Batch v2 uses input (tiling-grid) and output.delivery instead"
            )
    inp = _obj(body.get("input"))
    grid: grids.TilingGrid | None = None
    resolution = 0.0
    geopackage = False
    if inp is None:
        err.add("input", "is required (type tiling-grid or geopackage)")
    elif inp.get("type") == "tiling-grid":
        grid, resolution = _grid_and_resolution(inp, "input", err)
    elif inp.get("type") == "geopackage":
        geopackage = True
        url = (_obj(_obj(inp.get("features")) or {}) or {}).get("s3")
        if not isinstance(_obj(url), dict) or not str((url or {}).get("url", "")).startswith("s3://"):
            err.add("input->features->s3->url", "is required and must be an s3:// URL")
    else:
        err.add("input->type", "must be one of tiling-grid, geopackage")
    pr = _process_request(body, err, bounds_required=not geopackage)
    out = _obj(body.get("output"))
    output_kind, output_url = "raster", ""
    if out is None:
        err.add("output", "is required (type raster or zarr)")
    else:
        if "defaultTilePath" in out:
            err.add("output->defaultTilePath", "not a Batch v2 field; use output->delivery->s3->url")
        if out.get("type") == "raster":
            output_url = _raster_output(out, "output", None, pr["responses"], err)
        elif out.get("type") == "zarr":
            output_kind = "zarr"
            output_url = _zarr_output(out, "output", grid, err, path_key=None, geopackage=geopackage)
        else:
            err.add("output->type", "must be one of raster, zarr")
    _check_formats(pr["responses"], output_kind, err)
    if body.get("instanceType", "normal") not in {"normal", "large"}:
        err.add("instanceType", "must be one of normal, large")
    if body.get("description") is not None and not isinstance(body["description"], str):
        err.add("description", "must be a string")
    err.raise_if_any()
    if geopackage:
        grid, resolution = grids.GRIDS[0], 60.0  # features are cut like 20 km tiles when bounds are known
    assert grid is not None
    return _plan(pr, grid, resolution, output_kind, output_url, err, geopackage=geopackage)


# ----------------------------------------------------------------------------------------------- sections
def _require_object(payload: object, err: _Errors) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise bad_payload("Request body should be a JSON object.")
    if not payload:
        raise bad_payload("Request body should be non-empty.")
    return payload


def _process_request(body: dict[str, Any], err: _Errors, *, bounds_required: bool) -> dict[str, Any]:
    """Checks ``processRequest``; returns what later steps need (rings, responses, evalscript, PU hints)."""
    result: dict[str, Any] = {"rings": [], "responses": [], "evalscript": "", "days": 1.0}
    pr = _obj(body.get("processRequest"))
    if pr is None:
        err.add("processRequest", "is required and must be an object")
        return result
    inp = _obj(pr.get("input"))
    if inp is None:
        err.add("processRequest->input", "is required and must be an object")
    else:
        bounds = _obj(inp.get("bounds"))
        if bounds is None:
            if bounds_required:
                err.add("processRequest->input->bounds", "is required (bbox and/or geometry)")
        else:
            result["rings"] = _bounds(bounds, err)
        data = inp.get("data")
        if not isinstance(data, list) or not data:
            err.add("processRequest->input->data", "must be a non-empty array")
        else:
            for i, item in enumerate(data):
                result["days"] = max(
                    result["days"], _data_item(item, f"processRequest->input->data[{i}]", err)
                )
    evalscript = pr.get("evalscript")
    if not isinstance(evalscript, str) or not evalscript.strip():
        err.add("processRequest->evalscript", "is required and must be a non-empty string")
    else:
        result["evalscript"] = evalscript
    out = pr.get("output")
    responses: list[tuple[str, str]] = []
    if out is None:
        responses = [("default", "image/tiff")]
    elif not isinstance(out, dict):
        err.add("processRequest->output", "must be an object")
    else:
        for key in sorted(set(out) - {"responses"}):
            err.add(f"processRequest->output->{key}", "not allowed in batch requests (only responses)")
        raw = out.get("responses", [{"identifier": "default", "format": {"type": "image/tiff"}}])
        if not isinstance(raw, list) or not raw:
            err.add("processRequest->output->responses", "must be a non-empty array")
        else:
            seen: set[str] = set()
            for i, resp in enumerate(raw):
                path = f"processRequest->output->responses[{i}]"
                r = _obj(resp)
                ident = r.get("identifier") if r else None
                fmt = (_obj(r.get("format")) or {}).get("type", "image/tiff") if r else None
                if not isinstance(ident, str) or not ident:
                    err.add(f"{path}->identifier", "is required and must be a non-empty string")
                    continue
                if ident in seen:
                    err.add(f"{path}->identifier", f"duplicate identifier {ident!r}")
                seen.add(ident)
                if fmt not in FORMATS:
                    err.add(f"{path}->format->type", f"must be one of {', '.join(FORMATS)}")
                    continue
                responses.append((ident, str(fmt)))
    result["responses"] = responses
    return result


def _bounds(bounds: dict[str, Any], err: _Errors) -> list[grids.Ring]:
    base = "processRequest->input->bounds"
    props = _obj(bounds.get("properties")) or {}
    crs = props.get("crs", grids.CRS84)
    code = grids.parse_crs(crs)
    if code is None:
        err.add(
            f"{base}->properties->crs",
            "must be http://www.opengis.net/def/crs/OGC/1.3/CRS84 or http://www.opengis.net/def/crs/EPSG/0/<code>",
        )
        return []
    if not grids.supported_input_epsg(code):
        err.add(f"{base}->properties->crs", f"EPSG:{code} is not supported by the emulator")
        return []
    geographic = code in {4326, 4258}
    to_ll = grids.to_lonlat_func(code)
    rings: list[grids.Ring] = []
    bbox, geometry = bounds.get("bbox"), bounds.get("geometry")
    if bbox is None and geometry is None:
        err.add(base, "bbox or geometry is required")
        return []
    if bbox is not None:
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            err.add(f"{base}->bbox", "must be an array of 4 numbers [minX, minY, maxX, maxY]")
        else:
            minx, miny, maxx, maxy = (float(v) for v in bbox)
            ok = True
            if minx >= maxx:
                err.add(f"{base}->bbox", f"minX ({minx}) must be smaller than maxX ({maxx})")
                ok = False
            if miny >= maxy:
                err.add(f"{base}->bbox", f"minY ({miny}) must be smaller than maxY ({maxy})")
                ok = False
            if geographic and not all(-180 <= v <= 180 for v in (minx, maxx)):
                err.add(f"{base}->bbox", "longitudes must be within [-180, 180] for a geographic CRS")
                ok = False
            if geographic and not all(-90 <= v <= 90 for v in (miny, maxy)):
                err.add(f"{base}->bbox", "latitudes must be within [-90, 90] for a geographic CRS")
                ok = False
            if ok:
                ring = grids.bbox_ring(minx, miny, maxx, maxy)
                step = (maxx - minx + maxy - miny) / 32
                rings = [[to_ll(x, y) for x, y in grids.densify(ring, step)]]
    if geometry is not None:
        geo_rings = _geometry(geometry, f"{base}->geometry", geographic, err)
        if geo_rings:
            converted = []
            for ring in geo_rings:
                xs = [p[0] for p in ring]
                step = max((max(xs) - min(xs)) / 32, 1e-9)
                converted.append([to_ll(x, y) for x, y in grids.densify(ring, step)])
            rings = converted  # the geometry is the tighter description of the AOI
    return rings


def _geometry(geometry: object, path: str, geographic: bool, err: _Errors) -> list[grids.Ring]:
    g = _obj(geometry)
    if g is None or g.get("type") not in {"Polygon", "MultiPolygon"}:
        err.add(path, "must be a GeoJSON Polygon or MultiPolygon")
        return []
    coords = g.get("coordinates")
    polygons = [coords] if g["type"] == "Polygon" else coords
    if not isinstance(polygons, list) or not polygons:
        err.add(f"{path}->coordinates", "must be a non-empty array")
        return []
    rings: list[grids.Ring] = []
    for pi, polygon in enumerate(polygons):
        ppath = f"{path}->coordinates" if g["type"] == "Polygon" else f"{path}->coordinates[{pi}]"
        if not isinstance(polygon, list) or not polygon:
            err.add(ppath, "a polygon must be a non-empty array of linear rings")
            continue
        for ri, ring in enumerate(polygon):
            rpath = f"{ppath}[{ri}]"
            if not isinstance(ring, list) or len(ring) < 4:
                err.add(rpath, "a linear ring needs at least 4 positions")
                continue
            if not all(
                isinstance(p, list) and len(p) >= 2 and all(_is_number(v) for v in p[:2]) for p in ring
            ):
                err.add(rpath, "positions must be arrays of numbers [x, y]")
                continue
            if ring[0][:2] != ring[-1][:2]:
                err.add(rpath, "a linear ring must be closed (first and last positions equal)")
                continue
            if geographic and not all(-180 <= p[0] <= 180 and -90 <= p[1] <= 90 for p in ring):
                err.add(rpath, "coordinates must be within [-180, 180] x [-90, 90] for a geographic CRS")
                continue
            if ri == 0:
                rings.append([(float(p[0]), float(p[1])) for p in ring])
    return rings


def _data_item(item: object, path: str, err: _Errors) -> float:
    """Checks one ``input.data`` entry; returns the time range length in days (for the PU estimate)."""
    d = _obj(item)
    if d is None:
        err.add(path, "must be an object")
        return 1.0
    t = d.get("type")
    if not isinstance(t, str) or not _known_type(t):
        err.add(
            f"{path}->type",
            f"unknown data collection type {t!r}; use e.g. sentinel-2-l2a, sentinel-2-l1c, sentinel-1-grd, "
            "landsat-ot-l2, dem or byoc-<collection id>",
        )
    days = 1.0
    flt = _obj(d.get("dataFilter")) or {}
    tr = flt.get("timeRange")
    if tr is not None:
        tro = _obj(tr) or {}
        parsed = []
        for key in ("from", "to"):
            value = tro.get(key)
            try:
                parsed.append(datetime.fromisoformat(str(value).replace("Z", "+00:00")))
            except ValueError:
                err.add(f"{path}->dataFilter->timeRange->{key}", "must be an ISO-8601 date-time")
        if len(parsed) == 2:
            try:
                span = (parsed[1] - parsed[0]).total_seconds()
            except TypeError:
                span = 0.0
                err.add(f"{path}->dataFilter->timeRange", "from and to must both have (or lack) a time zone")
            if span < 0:
                err.add(f"{path}->dataFilter->timeRange", "from must not be after to")
            days = max(1.0, span / 86400)
    mcc = flt.get("maxCloudCoverage")
    if mcc is not None and (not _is_number(mcc) or not 0 <= mcc <= 100):
        err.add(f"{path}->dataFilter->maxCloudCoverage", "must be a number within [0, 100]")
    return days


def _known_type(t: str) -> bool:
    if t in CANONICAL_TYPES or t in LEGACY_TYPES:
        return True
    for prefix in CUSTOM_PREFIXES:
        if t.startswith(prefix):
            try:
                uuid.UUID(t[len(prefix) :])
                return True
            except ValueError:
                return False
    return False


def _grid_and_resolution(
    obj: dict[str, Any], path: str, err: _Errors
) -> tuple[grids.TilingGrid | None, float]:
    gid, raw_res = obj.get("id"), obj.get("resolution")
    grid = None
    if not isinstance(gid, int) or isinstance(gid, bool):
        err.add(f"{path}->id", "is required and must be an integer")
    elif gid not in grids.GRIDS:
        err.add(f"{path}->id", f"unknown tiling grid {gid}; available: {', '.join(map(str, grids.GRIDS))}")
    else:
        grid = grids.GRIDS[gid]
    if not isinstance(raw_res, int | float) or not _is_number(raw_res) or raw_res <= 0:
        err.add(f"{path}->resolution", "is required and must be a positive number")
        return grid, 0.0
    res = float(raw_res)
    if grid is not None and not grid.allows_resolution(res):
        allowed = ", ".join(str(r) for r in grid.resolutions)
        err.add(
            f"{path}->resolution",
            f"resolution {res} is not allowed for tiling grid {grid.id} (allowed: {allowed})",
        )
    for key in ("bufferX", "bufferY"):
        value = obj.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 1000
        ):
            err.add(f"{path}->{key}", "must be an integer number of pixels within [0, 1000]")
    return grid, res


def _v1_tiling_grid(body: dict[str, Any], err: _Errors) -> tuple[grids.TilingGrid | None, float, str]:
    tg = body.get("tilingGrid")
    if tg is not None:
        if not isinstance(tg, dict):
            err.add("tilingGrid", "must be an object {id, resolution}")
            return None, 0.0, "tilingGrid"
        grid, res = _grid_and_resolution(tg, "tilingGrid", err)
        return grid, res, "tilingGrid"
    if body.get("tilingGridId") is not None:  # deprecated top-level form
        grid, res = _grid_and_resolution(
            {"id": body.get("tilingGridId"), "resolution": body.get("resolution")}, "tilingGridId", err
        )
        return grid, res, "tilingGridId"
    err.add("tilingGrid", "is required (an object {id, resolution})")
    return None, 0.0, "tilingGrid"


def _output_url(o: dict[str, Any], path: str, key: str | None, err: _Errors, problem: str) -> tuple[str, str]:
    """An output's bucket URL: at ``key`` (v1 ``tilePath``) or at ``delivery->s3->url`` (v2); ``""`` and an
    error at its path when it is not an ``s3://`` URL."""
    if key is not None:
        url_path, url = f"{path}->{key}", o.get(key)
    else:
        url_path = f"{path}->delivery->s3->url"
        url = (_obj((_obj(o.get("delivery")) or {}).get("s3")) or {}).get("url")
    if not isinstance(url, str) or not url.startswith("s3://") or len(url) <= len("s3://"):
        err.add(url_path, problem)
        return url_path, ""
    return url_path, url


def _raster_output(
    out: object, path: str, tile_path_key: str | None, responses: list[tuple[str, str]], err: _Errors
) -> str:
    o = _obj(out)
    if o is None:
        err.add(path, "must be an object")
        return ""
    url_path, url = _output_url(
        o, path, tile_path_key, err, "is required and must be an s3:// URL or path template"
    )
    if "<" in url:
        unknown = [p for p in re.findall(r"<[^<>]*>", url) if p not in PLACEHOLDERS]
        if unknown:
            err.add(
                url_path, f"unknown placeholder(s) {', '.join(unknown)}; allowed: {', '.join(PLACEHOLDERS)}"
            )
        if "<tileName>" not in url and "<tileId>" not in url:
            err.add(url_path, "a path template must contain <tileName> or <tileId>")
        if len(responses) > 1 and "<outputId>" not in url:
            err.add(url_path, "a path template must contain <outputId> when there are several outputs")
    if o.get("createCollection") and o.get("collectionId"):
        err.add(f"{path}->collectionId", "createCollection and collectionId are mutually exclusive")
    if (o.get("createCollection") or o.get("collectionId")) and not o.get("cogOutput"):
        err.add(f"{path}->cogOutput", "must be true when createCollection or collectionId is set")
    for key in ("overwrite", "skipExisting", "cogOutput", "createCollection"):
        if key in o and not isinstance(o[key], bool):
            err.add(f"{path}->{key}", "must be a boolean")
    cog = o.get("cogParameters")
    if cog is not None:
        c = _obj(cog)
        if c is None:
            err.add(f"{path}->cogParameters", "must be an object")
        elif c.get("resamplingAlgorithm") is not None and c["resamplingAlgorithm"] not in RESAMPLING:
            err.add(
                f"{path}->cogParameters->resamplingAlgorithm",
                f"must be one of {', '.join(sorted(RESAMPLING))}",
            )
    return url


def _zarr_output(
    out: object,
    path: str,
    grid: grids.TilingGrid | None,
    err: _Errors,
    *,
    path_key: str | None,
    geopackage: bool = False,
) -> str:
    o = _obj(out)
    if o is None:
        err.add(path, "must be an object")
        return ""
    _, url = _output_url(o, path, path_key, err, "is required and must be an s3:// URL")
    if o.get("arrayParameters") is None and o.get("arrayParameter") is None:
        err.add(f"{path}->arrayParameters", "is required for zarr output")
    if geopackage:
        err.add(path, "zarr output requires a tiling-grid input")
    elif grid is not None and not grid.supports_zarr:
        err.add(
            path, f"zarr output is only supported on tiling grids 3, 6 and 7 (WGS84, LAEA), not {grid.id}"
        )
    return str(url or "")


def _check_formats(responses: list[tuple[str, str]], output_kind: str, err: _Errors) -> None:
    for i, (_, fmt) in enumerate(responses):
        if output_kind == "zarr" and fmt != "zarr/array":
            err.add(
                f"processRequest->output->responses[{i}]->format->type", "must be zarr/array for zarr output"
            )
        if output_kind != "zarr" and fmt == "zarr/array":
            err.add(f"processRequest->output->responses[{i}]->format->type", "zarr/array needs zarr output")


# --------------------------------------------------------------------------------------------------- plan
_BANDS = re.compile(r"bands\s*:\s*\[([^\]]*)\]")


def _pu_per_tile(evalscript: str, days: float, px: tuple[int, int]) -> float:
    """Processing units of one tile by the published formula (pre-discount, as ``valueEstimate`` is)."""
    match = _BANDS.search(evalscript)
    bands = len(re.findall(r"[\"']([^\"']+)[\"']", match.group(1))) if match else 3
    samples = (
        max(1.0, days / 3) if re.search(r"Mosaicking\.(ORBIT|TILE)|\"(ORBIT|TILE)\"", evalscript) else 1.0
    )
    fmt = 2.0 if "FLOAT32" in evalscript else 1.0
    return (px[0] * px[1] / 512**2) * (max(bands, 1) / 3) * samples * fmt


def _plan(
    pr: dict[str, Any],
    grid: grids.TilingGrid,
    resolution: float,
    output_kind: str,
    output_url: str,
    err: _Errors,
    *,
    geopackage: bool,
) -> Plan:
    rings = pr["rings"]
    try:
        tiles = grids.tiles_for(grid, rings) if rings else []
    except grids.TooManyTilesError as exc:
        raise bad_payload(str(exc), [{"parameter": "processRequest->input->bounds", "violation": str(exc)}])
    if geopackage and not tiles:
        tiles = [_synthetic_feature(i) for i in range(10)]
    if not tiles:
        violation = f"the area of interest does not intersect tiling grid {grid.id} ({grid.name})"
        raise ApiError(
            400,
            f"Invalid request payload: processRequest->input->bounds: {violation}",
            "COMMON_BAD_PAYLOAD",
            [{"parameter": "processRequest->input->bounds", "violation": violation}],
        )
    px = (grid.tile_px(resolution), grid.tile_px(resolution))
    return Plan(
        grid=grid,
        resolution=resolution,
        tiles=tiles,
        responses=pr["responses"],
        output_kind=output_kind,
        output_url=output_url,
        evalscript=pr["evalscript"],
        pu_per_tile=_pu_per_tile(pr["evalscript"], pr["days"], px),
        tile_px=px,
        geopackage=geopackage,
    )


def _synthetic_feature(i: int) -> grids.TileSpec:
    x0, y0 = float(i), 0.0
    ring = [[x0, y0], [x0 + 0.1, y0], [x0 + 0.1, y0 + 0.1], [x0, y0 + 0.1], [x0, y0]]
    return grids.TileSpec(
        i + 1,
        f"feature-{i + 1}",
        4326,
        x0,
        y0,
        x0 + 0.1,
        y0 + 0.1,
        {"type": "Polygon", "coordinates": [ring]},
    )
